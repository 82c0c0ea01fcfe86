"""``mafa`` section: MAFA's connection mining (Byun et al., CVPR 2024, arXiv 2312.06112).

Used when ``model.false_negatives: mafa`` (or the ``mafa`` scheduler, which sets it). For every
anchor of a batch, in both directions, its hardest in-batch negative (by the online model's ITC
similarity) is scored by a frozen *filter* model's ITM match probability p: p > ``high`` turns
the pair into a positive, p < ``low`` keeps it as the ITM negative, anything in between uses
the next-hardest negative instead (docs/ALGORITHM.md §11).
"""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param


@section_view("mafa")
@dataclass
class MafaConfig:
    """The filter model and the thresholds of connection mining, and MAFA's S-ITC ε."""

    filter: str = param("pretrain", "which frozen model scores the hardest negatives: pretrain = a separately "
                        "trained filter, trained first on the same data and step budget with random batches "
                        "(as in the paper; in mafa.filter_dir), path = a trainer checkpoint (mafa.path), "
                        "momentum = the EMA model (needs model.momentum), snapshot = a copy of the model renewed "
                        "every experimental.snapshot_every steps; connection mining runs from the first mined step",
                        choices=["pretrain", "path", "momentum", "snapshot"])
    path: str | None = param(None, "filter=path: a trainer checkpoint (e.g. <train.out_dir>/checkpoint.pt of "
                             "falcon-rl pretrain); its own model config is used")
    filter_dir: str | None = param(None, "filter=pretrain: where the filter is trained and found "
                                   "(<dir>/checkpoint.pt); null: <ablation.out_dir>/filter in ablate (one filter "
                                   "for all runs), <out>/filter in train-agent")
    high: float = param(0.8, "filter P(match) above which a hardest negative is a false negative and becomes a "
                        "positive (MAFA 0.8)", ge=0.0, le=1.0)
    low: float = param(0.5, "filter P(match) below which it stays the ITM negative; from low to high the "
                       "next-hardest negative is used instead (MAFA 0.5)", ge=0.0, le=1.0)
    smoothing: float = param(0.5, "S-ITC: the ITC label smoothing ε used with MAFA when experimental.itc_label_smoothing "
                             "is null (MAFA 0.5)", ge=0.0, lt=1.0)

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low={self.low} > high={self.high}")
