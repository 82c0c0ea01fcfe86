"""Label-free exclusion of likely false negatives: candidates the model already scores about as
high as a member's own pair (``experimental.positive_margin``).

Positive-aware hard-negative mining (Moreira et al. 2024, NV-Retriever, §3.2 "TopK-MarginPos")
drops a query's candidate negatives whose score comes within a margin of the query's positive: a
candidate that the model ranks as high as the true pair is more likely an unlabelled match than a
hard negative. Here, over a search space's similarity ``S`` (:func:`search_space_similarity`,
``S[a, c] = img_a·txt_c + txt_a·img_c``) and each member's own pair on the same scale
(``own[a] = 2·img_a·txt_a``, :func:`own_pair_similarity`)::

    E[a, c] = S[a, c] >= min(own[a], own[c]) - margin

— the cross pair scores within ``margin`` of *either* member's own pair (S is symmetric, so E is
too, like the oracle's mask of true matches in either direction). The quantile chain skips such
candidates exactly as it skips the oracle's true matches (``exclude``, with ``experimental.oracle_scope``:
``batch`` keeps every two members of a batch apart, ``anchor`` only the anchor and its pick), so
``q`` keeps its meaning among the candidates left. It reads no labels: any dataset, any scheduler.
``margin = 0`` skips the candidates scored at least as high as a positive; a larger margin skips
more, a negative one fewer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from falcon_rl.mining.similarity import own_pair_similarity


def positive_margin_exclusion(S: np.ndarray | torch.Tensor, own: np.ndarray, margin: float,
                              chunk_rows: int = 1024) -> np.ndarray | torch.Tensor:
    """|M|×|M| bool ``E[a, c] = S[a, c] >= min(own[a], own[c]) - margin``, False on the diagonal.

    :param S: the search space's similarity (``-inf`` diagonal), numpy or a torch tensor.
    :param own: (|M|,) each member's own-pair score on ``S``'s scale (:func:`own_pair_similarity`).
    :param margin: how close to a positive's score a candidate may come before it is skipped.
    :return: numpy for a numpy ``S``, else a bool tensor on ``S``'s device.
    """
    n = int(S.shape[0])
    if tuple(S.shape) != (n, n):
        raise ValueError(f"S must be square (|M|, |M|), got shape {tuple(S.shape)}")
    own = np.asarray(own, dtype=np.float32)
    if own.shape != (n,):
        raise ValueError(f"own has shape {own.shape}, expected ({n},) like S's rows")
    if not np.isfinite(margin):
        raise ValueError(f"experimental.positive_margin must be a finite number, got {margin}")
    threshold = own - np.float32(margin)
    if isinstance(S, torch.Tensor):
        th = torch.as_tensor(threshold, device=S.device)
        E = torch.empty((n, n), dtype=torch.bool, device=S.device)
        for r0 in range(0, n, chunk_rows):
            r1 = min(r0 + chunk_rows, n)
            E[r0:r1] = S[r0:r1].to(torch.float32) >= torch.minimum(th[r0:r1, None], th[None, :])
        E.fill_diagonal_(False)
        return E
    E = np.empty((n, n), dtype=bool)
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        E[r0:r1] = np.asarray(S[r0:r1], dtype=np.float32) >= np.minimum(threshold[r0:r1, None], threshold[None, :])
    np.fill_diagonal(E, False)
    return E


def chain_exclusion(S: np.ndarray | torch.Tensor, img: Any, txt: Any, margin: float | None,
                    oracle_mask: np.ndarray | None, chunk_rows: int = 1024) -> np.ndarray | torch.Tensor | None:
    """The quantile chain's ``exclude`` mask of a search space: the oracle's true matches
    (``oracle_mask``, or None), the label-free positive-margin mask (``margin``, or None: off), both
    (their union), or None when neither is on.

    :param img, txt: the members' cached ITC embeddings (the own-pair scores come from them).
    """
    if margin is None:
        return oracle_mask
    E = positive_margin_exclusion(S, own_pair_similarity(img, txt), float(margin), chunk_rows)
    if oracle_mask is None:
        return E
    if isinstance(E, torch.Tensor):
        return E | torch.as_tensor(np.asarray(oracle_mask), device=E.device)
    return E | np.asarray(oracle_mask, dtype=bool)
