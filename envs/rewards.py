"""Proxy rewards for alignment improvement: the computations that need no training step of their
own (docs/ALGORITHM.md §5; FALCON, arXiv 2505.11192).

What each ``env.reward`` option measures, needs and costs is the reward registry's
(:mod:`falcon_rl.config.rewards`). Per-batch rewards are *before − after* differences around a
training step (:mod:`falcon_rl.envs.reward_components`, one code path for all of them); this
module has what they are assembled from and the two rewards that are not per batch:

- a per-batch reward is the weighted sum of its parts (:func:`reward_value`): ``itc+itm`` =
  itc + itm, ``itc+val_itc`` = itc + λ·val_itc (λ = ``experimental.reward_val_weight``); the LM loss's
  component is named after it (``mlm`` / ``itg``), so ``lm`` and ``mlm`` are the same reward;
- ``experimental.reward_estimator: subbatch`` differences the LM loss on ``experimental.reward_subbatch`` evenly
  spaced pairs of the batch (:func:`subbatch_rows`) with the batch's masks and softmax classes;
- ``retrieval``: held-out gain of multi-positive image→text R@1 over the env step
  (:class:`RetrievalProbe`, analysis);
- ``toy``: a *diagnostic* with a known optimum and no training at all:
  ``−mean_i (q_i − experimental.toy_optimum[F_i − 1])²`` where ``F_i`` is member i's caption
  specificity (:func:`toy_reward`). It tests that a scheduler can learn a per-anchor q from the state.
"""

from __future__ import annotations

import numpy as np
import torch

from falcon_rl.config import rewards
from falcon_rl.data.base import PairSplit
from falcon_rl.mining.similarity import text_image_similarity
from falcon_rl.training import Trainer
from falcon_rl.training.evaluation import retrieval_metrics


def reward_parts(reward: str, lm_name: str = "mlm") -> tuple[str, ...]:
    """The component names whose (weighted) sum is reward ``reward`` (the LM loss's component is
    named after it, ``lm_name``: ``mlm`` or ``itg``; none for a reward that is not per batch)."""
    return tuple(p.component(lm_name) for p in rewards.spec(reward).parts)


def reward_weights(reward: str, lm_name: str = "mlm", val_weight: float = 1.0) -> dict[str, float]:
    """Component name -> weight in reward ``reward``: 1 for every part, ``val_weight``
    (``experimental.reward_val_weight``, λ) for the scaled (held-out) part of ``itc+val_itc``."""
    return {p.component(lm_name): w for p, w in rewards.spec(reward).weights(val_weight).items()}


def reward_value(components: dict[str, float], reward: str, lm_name: str = "mlm", val_weight: float = 1.0) -> float:
    """Reward ``reward`` of one batch from its measured ``components`` (a missing part counts 0)."""
    return float(sum(w * components.get(p, 0.0) for p, w in reward_weights(reward, lm_name, val_weight).items()))


def subbatch_rows(batch_size: int, k: int) -> np.ndarray:
    """``min(k, B)`` evenly spaced positions of a batch of ``B`` (all of them when ``k >= B``).

    Deterministic (no RNG to checkpoint); spread over the whole quantile chain of the batch.
    """
    if k >= batch_size:
        return np.arange(batch_size)
    return np.unique(np.linspace(0, batch_size - 1, k).round().astype(np.int64))


def rows_mean(tokens: torch.Tensor | None, labels: torch.Tensor, rows: np.ndarray) -> float:
    """Mean of the per-token losses (row-major over ``labels != -100``) of the given rows (0 when
    they have no masked token, as :func:`~falcon_rl.models.losses.masked_lm_loss`)."""
    assert tokens is not None
    token_row = (labels != -100).nonzero()[:, 0]
    keep = torch.isin(token_row, torch.as_tensor(rows, dtype=token_row.dtype))
    return float(tokens[keep].double().mean()) if bool(keep.any()) else 0.0


def row_means(tokens: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(B,) mean of the per-token losses (row-major over ``labels != -100``) of every row; NaN for a
    row without a masked token."""
    rows = (labels != -100).nonzero()[:, 0]
    b = labels.shape[0]
    sums = torch.zeros(b, dtype=torch.float64).index_add_(0, rows, tokens.double())
    counts = torch.bincount(rows, minlength=b).double()
    out = (sums / counts).numpy()
    out[counts.numpy() == 0] = np.nan
    return out


def toy_reward(q: np.ndarray, specificity: np.ndarray, optimum: list[float]) -> float:
    """``−mean (q − optimum[F − 1])²`` (F beyond the list uses its last entry)."""
    opt = np.asarray(optimum, dtype=np.float64)
    f = np.clip(np.asarray(specificity, dtype=np.int64) - 1, 0, len(opt) - 1)
    return -float(np.mean((np.asarray(q, dtype=np.float64) - opt[f]) ** 2))


def toy_member_values(q: np.ndarray, specificity: np.ndarray, optimum: list[float]) -> np.ndarray:
    """Each member's own term of the toy reward, ``−(q − optimum[F − 1])²`` (per-member credit)."""
    opt = np.asarray(optimum, dtype=np.float64)
    return -(q - opt[np.clip(specificity - 1, 0, len(opt) - 1)]) ** 2


class RetrievalProbe:
    """Multi-positive image→text R@1 (a fraction) on the first ``n`` pairs of a held-out split.

    :param split: held-out pairs (the test split).
    :param n: pairs used (``experimental.retrieval_pairs``).
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
