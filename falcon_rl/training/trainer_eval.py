"""The trainer's passes without gradients: ITC embeddings of pairs (the mining cache refresh,
docs/ALGORITHM.md §2) and zero-shot retrieval evaluation with optional ITM re-ranking
(docs/ALGORITHM.md §10; ALBEF's and BLIP-2's protocol).

:class:`EmbeddingEvaluation` is a mixin of :class:`falcon_rl.training.trainer.Trainer`; it uses the
trainer's ``cfg``, ``model`` (:class:`falcon_rl.models.protocol.VLPModel`), ``device``,
``image_vectors`` and ``_autocast()``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from falcon_rl.data.base import PairSplit
from falcon_rl.mining.similarity import text_image_similarity
from falcon_rl.models.text import trim_padding
from falcon_rl.progress import iterate
from falcon_rl.training.evaluation import chance_levels, rerank_with_scores, retrieval_metrics


class EmbeddingEvaluation:
    """Embedding passes and retrieval evaluation of a :class:`~falcon_rl.training.trainer.Trainer`."""

    cfg: Any
    model: Any
    device: torch.device
    image_vectors: int
    _autocast: Any

    # ------------------------------------------------------------------ embeddings
    def _chunks(self, n: int, batch_size: int | None, desc: str | None):
        size = int(batch_size or self.cfg.eval.batch_size)
        starts: Iterable[int] = range(0, n, size)
        if desc is not None:
            starts = iterate(starts, len(starts), desc, self.cfg.logging.progress)
        for s in starts:
            yield s, min(n, s + size)

    @torch.no_grad()
    def embed_images(self, split: PairSplit, image_ids: np.ndarray, batch_size: int | None = None,
                     desc: str | None = None) -> torch.Tensor:
        """Normalised ITC image embeddings, CPU float32: (n, D), or (n, Q, D) per query (BLIP-2)."""
        self.model.eval()
        ids = np.asarray(image_ids, dtype=np.int64)
        out = []
        for s, e in self._chunks(len(ids), batch_size, desc):
            with self._autocast():
                feat = self.model.image_embeddings(split.load_images(ids[s:e]).to(self.device))
            out.append(feat.float().cpu())
        d = self.cfg.model.embed_dim
        empty = (0, self.image_vectors, d) if self.image_vectors else (0, d)
        return torch.cat(out) if out else torch.zeros(empty)

    @torch.no_grad()
    def embed_texts(self, split: PairSplit, pair_indices: np.ndarray, batch_size: int | None = None,
                    desc: str | None = None) -> torch.Tensor:
        """Normalised ITC caption embeddings (n, D), CPU float32."""
        self.model.eval()
        idx = torch.as_tensor(np.asarray(pair_indices, dtype=np.int64))
        out = []
        for s, e in self._chunks(len(idx), batch_size, desc):
            ids = split.input_ids[idx[s:e]].to(self.device)
            mask = split.attention_mask[idx[s:e]].to(self.device)
            with self._autocast():
                out.append(self.model.text_embeddings(ids, mask).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.cfg.model.embed_dim)

    def embed_pairs(self, split: PairSplit, indices: np.ndarray | None = None, batch_size: int | None = None,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC embeddings (img, txt), CPU float32, of the given pairs
        (default all), in batches without gradients (the mining cache refresh, docs/ALGORITHM.md §2)."""
        idx = np.arange(split.n_pairs) if indices is None else np.asarray(indices, dtype=np.int64)
        img = self.embed_images(split, split.pair_image[idx], batch_size, "embed images" if progress else None)
        txt = self.embed_texts(split, idx, batch_size, "embed texts" if progress else None)
        return img, txt

    # ------------------------------------------------------------------ evaluation
    def eval_subset(self, split: PairSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None,
                                                    np.ndarray | None]:
        """What :meth:`evaluate` ranks: the first ``eval.max_test`` pairs (0: all) and their images.

        :returns: pair indices, image ids, each caption's image position in the image ids,
            the match sub-matrix (or None), the specificities (or None).
        """
        ecfg = self.cfg.eval
        n = split.n_pairs if ecfg.max_test <= 0 else min(ecfg.max_test, split.n_pairs)
        pairs = np.arange(n)
        image_ids, caption_image = np.unique(split.pair_image[pairs], return_inverse=True)
        match = None if split.match is None else np.asarray(split.match[pairs][:, image_ids])
        spec = None
        if ecfg.by_specificity and split.specificity is not None:
            spec = split.specificity[pairs]
        return pairs, image_ids, caption_image.reshape(-1), match, spec

    def chance(self, split: PairSplit) -> dict[str, float]:
        """Expected metrics of a random ranking on the pairs :meth:`evaluate` uses."""
        _, image_ids, caption_image, match, _ = self.eval_subset(split)
        return chance_levels(caption_image, len(image_ids), match, self.cfg.eval.ks)

    @torch.no_grad()
    def evaluate(self, split: PairSplit, progress: bool = False) -> dict[str, float]:
        """Zero-shot retrieval on ``split`` (first ``eval.max_test`` pairs when set): ITC ranking,
        and with ``eval.itm_rerank`` the ITC top-k re-ranked by ITM (keys prefixed ``itm_``).
        See :mod:`falcon_rl.training.evaluation` for the keys."""
        ecfg = self.cfg.eval
        pairs, image_ids, caption_image, match, spec = self.eval_subset(split)
        img = self.embed_images(split, image_ids, desc="eval images" if progress else None)
        txt = self.embed_texts(split, pairs, desc="eval texts" if progress else None)
        sim = text_image_similarity(txt, img)
        metrics = retrieval_metrics(sim, caption_image, match, spec, ecfg.ks)
        if ecfg.itm_rerank:
            sim_t2i, sim_i2t = self._itm_rerank(split, sim, pairs, image_ids)
            reranked = retrieval_metrics(sim_t2i, caption_image, match, spec, ecfg.ks, sim_i2t=sim_i2t)
            metrics.update({f"itm_{k}": v for k, v in reranked.items()})
        return metrics

    def _itm_rerank(self, split: PairSplit, sim: torch.Tensor, pairs: np.ndarray,
                    image_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """ALBEF's re-ranking (also BLIP-2's): ITM P(match) of each query's ITC top-k, placed above the rest."""
        ecfg = self.cfg.eval
        k_t2i = min(ecfg.k_t2i, sim.shape[1])
        k_i2t = min(ecfg.k_i2t, sim.shape[0])
        top_t2i = sim.topk(k_t2i, dim=1).indices  # (n_c, k) image positions
        top_i2t = sim.t().topk(k_i2t, dim=1).indices  # (n_i, k) caption positions
        scores_t2i = self._itm_scores(split, pairs, image_ids, queries_are_text=True, topk=top_t2i)
        scores_i2t = self._itm_scores(split, pairs, image_ids, queries_are_text=False, topk=top_i2t)
        return rerank_with_scores(sim, top_t2i, scores_t2i), rerank_with_scores(sim.t(), top_i2t, scores_i2t)

    def _itm_scores(self, split: PairSplit, pairs: np.ndarray, image_ids: np.ndarray, queries_are_text: bool,
                    topk: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        n_q, k = topk.shape
        per_chunk = max(1, self.cfg.eval.batch_size // k)
        out = torch.zeros(n_q, k)
        for s in range(0, n_q, per_chunk):
            e = min(n_q, s + per_chunk)
            q = np.arange(s, e)
            cand = topk[s:e].reshape(-1).numpy()
            if queries_are_text:
                cap = np.repeat(pairs[q], k)
                img = image_ids[cand]
            else:
                cap = pairs[cand]
                img = np.repeat(image_ids[q], k)
            ids = split.input_ids[torch.as_tensor(cap)].to(self.device)
            mask = split.attention_mask[torch.as_tensor(cap)].to(self.device)
            mask, ids = trim_padding(mask, ids)
            model = self.model
            with self._autocast():
                if queries_are_text:  # one text per query, k candidate images
                    tokens = model.itm_image_state(split.load_images(img).to(self.device))
                    text_state = model.itm_text_state(ids[::k], mask[::k]).repeat_interleave(k, dim=0)
                else:  # one image per query, k candidate texts
                    tokens = model.itm_image_state(split.load_images(image_ids[q]).to(self.device))
                    tokens = tokens.repeat_interleave(k, dim=0)
                    text_state = model.itm_text_state(ids, mask)
                scores = model.itm_scores(tokens, text_state, mask)
            out[s:e] = scores.float().cpu().view(e - s, k)
        return out
