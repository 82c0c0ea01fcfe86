"""The similarity matrix of a search space (docs/ALGORITHM.md §2; GRIT-VLP, FALCON).

``S = S_i2t + S_t2i`` with ``S_i2t[a, b] = img_a · txt_b`` and ``S_t2i[a, b] = txt_a · img_b``:
how hard pair ``b`` is as a negative of anchor ``a`` in both ITC directions. Since
``img_a·txt_b + txt_a·img_b = [img_a, txt_a] · [txt_b, img_b]`` it is one matrix product of
inner size 2D, written into a single |M|×|M| float32 output (no temporaries of that size).
The diagonal, the anchor's own pair, is ``-inf``.

An image may have several ITC vectors (BLIP-2: one per Q-Former query, (|M|, Q, D)); its
similarity to a text is then the maximum over its vectors (Li et al. 2023, §3.2 ITC), so
``S_i2t[a, b] = max_k img_a^k · txt_b`` and ``S_t2i = S_i2tᵀ``: ``S = P + Pᵀ`` with one
(|M|·Q)×|M| product.
"""

from __future__ import annotations

import numpy as np
import torch


def _check_pair(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> None:
    ok = txt.ndim == 2 and img.ndim in (2, 3) and img.shape[0] == txt.shape[0] and img.shape[-1] == txt.shape[1]
    if not ok:
        raise ValueError(f"img and txt must both be (|M|, D) (or img (|M|, Q, D)) of the same shape, got "
                         f"{tuple(img.shape)} and {tuple(txt.shape)}")
    if img.shape[0] < 2:
        raise ValueError(f"a search space needs at least 2 members, got {img.shape[0]}")


def _max_over_vectors(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(n_i, n_t) ``max_k img[i, k] · txt[t]`` of (n_i, Q, D) images and (n_t, D) texts, float32."""
    n, q, d = img.shape
    if isinstance(img, torch.Tensor):
        prod = img.reshape(n * q, d).to(torch.float32) @ txt.to(torch.float32).T
        return prod.view(n, q, -1).amax(dim=1)
    prod = np.asarray(img, dtype=np.float32).reshape(n * q, d) @ np.asarray(txt, dtype=np.float32).T
    return prod.reshape(n, q, -1).max(axis=1)


def search_space_similarity(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """|M|×|M| float32 ``S = S_i2t + S_t2i`` with ``-inf`` on the diagonal.

    :param img: normalised image ITC embeddings of the members, (|M|, D), or (|M|, Q, D) several
        vectors per image compared by their maximum (BLIP-2).
    :param txt: normalised text ITC embeddings, (|M|, D), row ``a`` the caption of pair ``a``.
    :return: numpy for numpy inputs; a torch tensor on the inputs' device for torch inputs.
    """
    _check_pair(img, txt)
    if img.ndim == 3:
        if isinstance(img, torch.Tensor) or isinstance(txt, torch.Tensor):
            it = torch.as_tensor(img)
            P = _max_over_vectors(it, torch.as_tensor(txt, device=it.device))
            S = P + P.T
            S.fill_diagonal_(float("-inf"))
            return S
        P = _max_over_vectors(img, txt)
        S = (P + P.T).astype(np.float32, copy=False)
        np.fill_diagonal(S, -np.inf)
        return S
    if isinstance(img, torch.Tensor) or isinstance(txt, torch.Tensor):
        it = torch.as_tensor(img)
        tt = torch.as_tensor(txt, device=it.device)
        u = torch.cat([it, tt], dim=1).to(torch.float32)
        v = torch.cat([tt, it], dim=1).to(torch.float32)
        S = u @ v.T
        S.fill_diagonal_(float("-inf"))
        return S
    u = np.concatenate([img, txt], axis=1).astype(np.float32, copy=False)
    v = np.concatenate([txt, img], axis=1).astype(np.float32, copy=False)
    S = u @ v.T
    np.fill_diagonal(S, -np.inf)
    return S


def image_text_similarity(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """|M|×|M| float32 ``S_i2t[a, c] = img_a · txt_c`` (the largest over an image's vectors for
    BLIP-2); its transpose is S_t2i. What GRIT-VLP's alternating chain ranks by (``mining.chain:
    grit``, docs/ALGORITHM.md §3); the diagonal is never read. Numpy or torch, like the inputs."""
    _check_pair(img, txt)
    if isinstance(img, torch.Tensor) or isinstance(txt, torch.Tensor):
        it = torch.as_tensor(img)
        tt = torch.as_tensor(txt, device=it.device)
        if it.ndim == 3:
            return _max_over_vectors(it, tt).to(torch.float32)
        return (it.to(torch.float32) @ tt.to(torch.float32).T).contiguous()
    if img.ndim == 3:
        return np.ascontiguousarray(_max_over_vectors(img, txt), dtype=np.float32)
    return np.asarray(img, dtype=np.float32) @ np.asarray(txt, dtype=np.float32).T


def own_pair_similarity(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> np.ndarray:
    """(|M|,) float32 ``2 · s(img_a, txt_a)``: what ``S[a, a]`` of :func:`search_space_similarity`
    would be, each member's own pair on the scale of its row (the maximum over an image's vectors
    for (|M|, Q, D) images)."""
    _check_pair(img, txt)
    it = torch.as_tensor(img).detach().to(torch.float32)
    tt = torch.as_tensor(txt, device=it.device).detach().to(torch.float32)
    own = (it * tt[:, None, :]).sum(-1).amax(dim=1) if it.ndim == 3 else (it * tt).sum(-1)
    return (2.0 * own).cpu().numpy().astype(np.float32)


def positive_rank(S: np.ndarray | torch.Tensor, own: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
    """(|M|,) float32: the share of each member's |M| − 1 candidates ``j`` with ``S[a, j] >= own[a]``,
    i.e. the candidates the model already scores at least as high as the member's own pair.

    Label-free: a vague caption matches many images, so many candidates score near its own pair
    (a high value warns that its hardest negatives are likely false negatives). The diagonal is
    ignored. ``chunk_rows`` rows are compared at once (memory: rows × |M|).
    """
    n = int(S.shape[0])
    if n < 2:
        raise ValueError(f"positive_rank needs |M| >= 2 members, got {n}")
    own = np.asarray(own, dtype=np.float32)
    if own.shape != (n,):
        raise ValueError(f"own has shape {own.shape}, expected ({n},)")
    out = np.empty(n, dtype=np.float32)
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        if isinstance(S, torch.Tensor):
            block = S[r0:r1].detach().to(torch.float32)
            above = block >= torch.as_tensor(own[r0:r1], device=block.device)[:, None]
            rows = torch.arange(r1 - r0, device=block.device)
            above[rows, rows + r0] = False
            out[r0:r1] = above.sum(dim=1).cpu().numpy()
        else:
            above = np.asarray(S[r0:r1], dtype=np.float32) >= own[r0:r1, None]
            above[np.arange(r1 - r0), np.arange(r0, r1)] = False
            out[r0:r1] = above.sum(axis=1)
    return out / np.float32(n - 1)


def text_image_similarity(txt: torch.Tensor, img: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(n_t, n_i) float32 ITC similarity of texts (n_t, D) to images (n_i, D) — ``txt @ imgᵀ`` — or to
    images with several vectors (n_i, Q, D) — the maximum over each image's vectors (BLIP-2);
    computed ``chunk`` texts at a time (retrieval evaluation)."""
    if img.ndim == 2:
        return txt.float() @ img.float().T
    if img.ndim != 3 or txt.ndim != 2 or img.shape[-1] != txt.shape[-1]:
        raise ValueError(f"txt must be (n_t, D) and img (n_i, D) or (n_i, Q, D), got {tuple(txt.shape)} and "
                         f"{tuple(img.shape)}")
    parts = [_max_over_vectors(img, txt[s:s + chunk]).T for s in range(0, txt.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, img.shape[0])
