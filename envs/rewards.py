"""Proxy rewards for alignment improvement (docs/ALGORITHM.md §5; FALCON, arXiv 2505.11192).

Per-batch rewards are *before − after* differences of a loss on the batch just trained, with
the same masks / inputs, computed by the trainer under ``no_grad``:

- ``lm`` / ``mlm`` (FALCON, default; the same reward under two names): ``L_LM(θ_before) −
  L_LM(θ_after)`` of the framework's language-modelling loss — ALBEF's MLM (FALCON's ΔL_MLM),
  BLIP-2's image-grounded text generation (ITG) — both in eval mode on the same masks; the
  component is named after the loss (``mlm`` / ``itg``). With ``model.dropout = 0`` the training
  forward's own LM loss *is* the eval-mode "before" value (one extra LM forward per batch), with
  dropout > 0 it is not (dropout makes it noisier and larger), so "before" gets its own eval
  forward (two extra forwards); ``env.reward_estimator: subbatch`` computes the same difference
  on ``env.reward_subbatch`` evenly spaced pairs of the batch with the same masks and softmax
  classes ("before" from the training forward's per-token losses): one extra forward of k
  instead of B pairs, equal to the exact reward when k >= B;
- ``itc``, ``itm``, ``itc+itm``: the same on the in-batch ITC / hardest-negative ITM losses
  (two extra forwards each); the paper reports that these let the scheduler cheat with
  trivial negatives (COCO TR@1 57.6 vs 61.7 with ΔMLM);
- ``retrieval``: held-out gain of multi-positive image→text R@1 over the env step (analysis);
- ``toy``: a *diagnostic* with a known optimum and no training at all:
  ``−mean_i (q_i − env.toy_optimum[F_i − 1])²`` where ``F_i`` is member i's caption
  specificity. It tests that a scheduler can learn a per-anchor q from the state.
"""

from __future__ import annotations

import numpy as np
import torch

from falcon_rl.data.base import Batch, PairSplit
from falcon_rl.mining.similarity import text_image_similarity
from falcon_rl.timing import Timings
from falcon_rl.training import StepOutput, Trainer
from falcon_rl.training.evaluation import retrieval_metrics

#: rewards that need no training step (the env does not train under them)
TRAINING_FREE = ("toy",)
#: per-batch loss-difference rewards and the losses they difference (``lm``: the framework's LM loss)
LOSS_REWARDS: dict[str, tuple[str, ...]] = {"lm": ("lm",), "mlm": ("lm",), "itc": ("itc",), "itm": ("itm",),
                                            "itc+itm": ("itc", "itm")}
#: reward names of the LM-loss reward (``mlm``: its name before BLIP-2)
LM_REWARDS = ("lm", "mlm")


def train_with_reward(trainer: Trainer, batch: Batch, reward: str, itc_targets: torch.Tensor | None = None,
                      *, compute: bool = True, estimator: str = "exact", subbatch: int = 32,
                      timing: Timings | None = None) -> tuple[StepOutput, dict[str, float]]:
    """One training step on ``batch`` and its reward components ``{loss: before − after}`` (the LM
    component named after the model's LM loss: ``mlm`` or ``itg``).

    For ``retrieval`` the components are empty (the gain is measured per env step).
    :param itc_targets: (B, B) multi-positive ITC targets of the step (``env.gt_targets``), or None.
    :param compute: run the reward's extra forwards; False trains only and returns no
        components (``env.compute_reward``: a scheduler that does not learn from the reward).
    :param estimator: ``exact`` or ``subbatch`` (lm / mlm only: the difference on ``subbatch``
        evenly spaced pairs of the batch, :func:`subbatch_rows`; "before" comes from the
        training forward's per-token losses, so it costs one forward of ``subbatch`` pairs).
    :param timing: accumulates ``train`` (the step) and ``reward`` (the extra forwards).
    """
    timing = timing if timing is not None else Timings()
    names = LOSS_REWARDS.get(reward, ())
    if not compute or not names:
        with timing("train"):
            return trainer.train_step(batch, itc_targets=itc_targets), {}
    dropout = trainer.cfg.model.dropout > 0
    lm = trainer.lm_name
    if reward in LM_REWARDS and estimator == "subbatch":
        rows = subbatch_rows(len(batch), subbatch)
        masks = trainer.make_lm_masks(batch)  # what train_step would draw: the same masks as exact
        if dropout:  # the training forward's loss is not the eval-mode L_LM(θ_before)
            with timing("reward"):
                before = trainer.lm_loss(batch, masks, rows)
        with timing("train"):
            out = trainer.train_step(batch, masks, itc_targets=itc_targets, mlm_tokens=not dropout)
        with timing("reward"):
            if not dropout:
                before = _rows_mean(out.mlm_tokens, masks.labels, rows)
            return out, {lm: before - trainer.lm_loss(batch, masks, rows)}
    if reward in LM_REWARDS and not dropout:
        with timing("train"):
            out = trainer.train_step(batch, itc_targets=itc_targets)
        with timing("reward"):
            return out, {lm: out.lm - trainer.lm_loss(batch, out.lm_masks)}
    if reward in LM_REWARDS:  # dropout: the training forward's loss is not the eval-mode L_LM(θ_before)
        masks = trainer.make_lm_masks(batch)
        with timing("reward"):
            before = trainer.lm_loss(batch, masks)
        with timing("train"):
            out = trainer.train_step(batch, masks, itc_targets=itc_targets)
        with timing("reward"):
            return out, {lm: before - trainer.lm_loss(batch, masks)}
    with timing("reward"):
        before = {n: _loss(trainer, n, batch) for n in names}
    with timing("train"):
        out = trainer.train_step(batch, itc_targets=itc_targets)
    with timing("reward"):
        return out, {n: before[n] - _loss(trainer, n, batch) for n in names}


def subbatch_rows(batch_size: int, k: int) -> np.ndarray:
    """``min(k, B)`` evenly spaced positions of a batch of ``B`` (all of them when ``k >= B``).

    Deterministic (no RNG to checkpoint); spread over the whole quantile chain of the batch.
    """
    if k >= batch_size:
        return np.arange(batch_size)
    return np.unique(np.linspace(0, batch_size - 1, k).round().astype(np.int64))


def _rows_mean(tokens: torch.Tensor | None, labels: torch.Tensor, rows: np.ndarray) -> float:
    """Mean of the per-token losses (row-major over ``labels != -100``) of the given rows (0 when
    they have no masked token, as :func:`~falcon_rl.models.losses.masked_lm_loss`)."""
    assert tokens is not None
    token_row = (labels != -100).nonzero()[:, 0]
    keep = torch.isin(token_row, torch.as_tensor(rows, dtype=token_row.dtype))
    return float(tokens[keep].double().mean()) if bool(keep.any()) else 0.0


def _loss(trainer: Trainer, name: str, batch: Batch) -> float:
    return trainer.itc_loss(batch) if name == "itc" else trainer.itm_loss(batch)


def toy_reward(q: np.ndarray, specificity: np.ndarray, optimum: list[float]) -> float:
    """``−mean (q − optimum[F − 1])²`` (F beyond the list uses its last entry)."""
    opt = np.asarray(optimum, dtype=np.float64)
    f = np.clip(np.asarray(specificity, dtype=np.int64) - 1, 0, len(opt) - 1)
    return -float(np.mean((np.asarray(q, dtype=np.float64) - opt[f]) ** 2))


class RetrievalProbe:
    """Multi-positive image→text R@1 (a fraction) on the first ``n`` pairs of a held-out split.

    :param split: held-out pairs (the test split).
    :param n: pairs used (``env.retrieval_pairs``).
    """

    def __init__(self, split: PairSplit, n: int) -> None:
        n = min(int(n), split.n_pairs)
        pairs = np.arange(n)
        self.split = split
        self.pairs = pairs
        self.image_ids, self.caption_image = np.unique(split.pair_image[pairs], return_inverse=True)
        self.match = None if split.match is None else split.match[pairs][:, self.image_ids]

    @torch.no_grad()
    def score(self, trainer: Trainer) -> float:
        """i2t R@1 (multi-positive) of the trainer's current model, in [0, 1]."""
        img = trainer.embed_images(self.split, self.image_ids)
        txt = trainer.embed_texts(self.split, self.pairs)
        metrics = retrieval_metrics(text_image_similarity(txt, img), self.caption_image, self.match, None, ks=(1,))
        return metrics["i2t_r1_mp"] / 100.0
