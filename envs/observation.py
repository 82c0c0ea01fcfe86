"""The observation of one search space, shared by the env and frozen-scheduler pretraining.

Cached embeddings of the members -> ``S = S_i2t + S_t2i`` -> per-member state (the softmaxed
quantiles of each sorted row, FALCON §2.1, §2.3), plus the enabled extra columns (e.g.
``positive_rank``: where the member's own pair falls in its row).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from falcon_rl.config.mining import MiningConfig
from falcon_rl.mining.similarity import own_pair_similarity, positive_rank, search_space_similarity
from falcon_rl.mining.state import scheduler_state, state_extras


class MemberHistory:
    """Per-pair values the optional state columns read: last ITC loss, previous q, specificity.

    :param n: training pairs.
    :param specificity: the split's caption specificities (or None); exposed as F / max F.
    """

    def __init__(self, n: int, specificity: np.ndarray | None) -> None:
        self.last_loss = np.zeros(n, dtype=np.float32)  # 0: never trained
        self.prev_q = np.full(n, 0.5, dtype=np.float32)  # 0.5: never scheduled
        self.specificity = None
        if specificity is not None and specificity.size:
            self.specificity = (specificity / max(1, int(specificity.max()))).astype(np.float32)

    def record_loss(self, index: np.ndarray, loss: np.ndarray) -> None:
        """Per-pair ITC losses of a training step."""
        self.last_loss[index] = np.nan_to_num(np.asarray(loss, dtype=np.float32), nan=0.0, posinf=0.0)

    def record_q(self, index: np.ndarray, q: np.ndarray) -> None:
        """The q each member was scheduled with."""
        self.prev_q[index] = q

    def state_dict(self) -> dict[str, Any]:
        """Arrays for a checkpoint (tensors / primitives only)."""
        import torch

        return {"last_loss": torch.from_numpy(self.last_loss.copy()), "prev_q": torch.from_numpy(self.prev_q.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (shapes must match this history's)."""
        for key in ("last_loss", "prev_q"):
            if tuple(state[key].shape) != self.last_loss.shape:
                raise ValueError(f"member history {key!r} has shape {tuple(state[key].shape)}, "
                                 f"expected {self.last_loss.shape}")
        self.last_loss = np.asarray(state["last_loss"], dtype=np.float32).copy()
        self.prev_q = np.asarray(state["prev_q"], dtype=np.float32).copy()


def space_observation(img: Any, txt: Any, members: np.ndarray, mining: MiningConfig, progress: float,
                      history: MemberHistory) -> tuple[np.ndarray, np.ndarray]:
    """``(S, obs)`` of a search space from its members' cached embeddings.

    :param img, txt: (|M|, D) cached normalised ITC embeddings of ``members``.
    :param members: dataset pair indices of the search space.
    :param progress: training progress in [0, 1] (the ``progress`` column).
    """
    S = search_space_similarity(img, txt)
    if hasattr(S, "detach") and S.device.type == "cpu":  # numpy on CPU: the numba chain reads it directly
        S = S.detach().numpy()
    spec = history.specificity[members] if history.specificity is not None else None
    if mining.state_specificity and spec is None:
        raise ValueError("experimental.state_specificity=true needs caption specificities, which this dataset lacks")
    rank = positive_rank(S, own_pair_similarity(img, txt), mining.state_chunk_rows) if mining.state_positive_rank else None
    extras = state_extras(mining, progress=float(min(max(progress, 0.0), 1.0)),
                          last_loss=history.last_loss[members], prev_q=history.prev_q[members], specificity=spec,
                          positive_rank=rank)
    obs = scheduler_state(S, mining.state_quantiles, mining.state_temperature, extras,
                          chunk_rows=mining.state_chunk_rows, profile=mining.state_profile)
    return S, np.asarray(obs, dtype=np.float32)
