"""The similarity matrix of a search space (DESIGN §2.1; GRIT-VLP, FALCON).

``S = S_i2t + S_t2i`` with ``S_i2t[a, b] = img_a · txt_b`` and ``S_t2i[a, b] = txt_a · img_b``:
how hard pair ``b`` is as a negative of anchor ``a`` in both ITC directions. Since
``img_a·txt_b + txt_a·img_b = [img_a, txt_a] · [txt_b, img_b]`` it is one matrix product of
inner size 2D, written into a single |M|×|M| float32 output (no temporaries of that size).
The diagonal, the anchor's own pair, is ``-inf``.
"""

from __future__ import annotations

import numpy as np
import torch


def _check_pair(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> None:
    if img.ndim != 2 or txt.ndim != 2 or tuple(img.shape) != tuple(txt.shape):
        raise ValueError(f"img and txt must both be (|M|, D) with the same shape, got {tuple(img.shape)} "
                         f"and {tuple(txt.shape)}")
    if img.shape[0] < 2:
        raise ValueError(f"a search space needs at least 2 members, got {img.shape[0]}")


def search_space_similarity(img: np.ndarray | torch.Tensor, txt: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """|M|×|M| float32 ``S = S_i2t + S_t2i`` with ``-inf`` on the diagonal.

    :param img: normalised image ITC embeddings of the members, (|M|, D).
    :param txt: normalised text ITC embeddings, (|M|, D), row ``a`` the caption of pair ``a``.
    :return: numpy for numpy inputs; a torch tensor on the inputs' device for torch inputs.
    """
    _check_pair(img, txt)
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
