"""``eval`` section: zero-shot retrieval evaluation (docs/ALGORITHM.md §10)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param


@section_view("eval")
@dataclass
class EvalConfig:
    """Retrieval evaluation settings."""

    batch_size: int = param(256, "embedding / ITM re-ranking batch size", ge=1)
    ks: list[int] = param([1, 5, 10], "recall cut-offs R@k (1 among them: the headline i2t R@1)", each_ge=1)
    itm_rerank: bool = param(False, "also re-rank the ITC top-k with the ITM head (keys prefixed itm_)")
    k_i2t: int = param(16, "ITM re-ranking depth image->text (ALBEF: 256)", ge=1)
    k_t2i: int = param(16, "ITM re-ranking depth text->image (ALBEF: 128)", ge=1)
    max_test: int = param(0, "evaluate on the first N test pairs only (0 = all)", ge=0)
    at_start: bool = param(True, "also evaluate before training, logged at step 0: pretrain's initial model; "
                           "env runs right after reset (warm-up and embedding pass), before any mined batch")

    def __post_init__(self) -> None:
        if 1 not in self.ks:  # every command reports the headline metrics, image->text R@1 among them
            raise ValueError(f"ks={self.ks!r} must include 1 (the headline metric i2t_r1_mp is R@1)")
