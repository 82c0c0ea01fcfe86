"""Every reward option on the same training step, per-member loss changes, and the validation
probe (issue #10: which proxy reward tracks retrieval).

:func:`falcon_rl.envs.rewards.train_with_reward` computes the one reward ``env.reward`` names. To
compare reward options they must be measured on the *same* runs, so the env can also compute
extra components for logging only (``env.reward_log``; they land in ``info["reward_components"]``,
the run history and ``info["batch_stats"]``; the returned reward stays ``env.reward``).
:class:`RewardMeter` does one training step and every requested before − after difference around
it, through :class:`falcon_rl.models.protocol.VLPModel` (ALBEF or BLIP-2). Besides the options of
:mod:`falcon_rl.envs.rewards` (``lm`` / ``mlm``: the LM loss, its component named after the loss,
``mlm`` or ``itg``; ``itc``, ``itm``, ``itc+itm``):

- ``mlm_hi`` (ALBEF): ΔL_MLM on masks of its own, drawn at ``env.reward_mlm_prob`` (GRIT's 0.5)
  from a generator seeded by (run seed, trainer step), so drawing them changes nothing in
  training; two extra MLM forwards;
- ``lm_sample``: per-sample ΔL_LM: each pair's mean over its LM targets before − after (the
  training forward's per-token losses, and one per-token forward after); the batch value is the
  mean over its pairs (``lm`` weights every target token equally). Each member's own value is
  also the per-member credit of ``agent.credit: member`` (with ``lm`` and ``mlm_hi`` too; with
  ``itc`` each pair's own term of the in-batch ITC, its image→text and text→image rows averaged,
  before − after; with ``itc+val_itc`` that plus λ·Δ(held-out ITC) of its batch);
- ``val_itc``, ``val_lm``: label-free: the drop of the in-batch ITC / the LM loss (fixed masks)
  on a fixed validation subset of ``env.val_pairs`` *training* pairs (evenly spaced; every pair
  of their images is held out of the search spaces and the warm-up; never the test split, no
  match matrix), before − after each trained batch. "After" of one batch is "before" of the next
  (no update in between), so a step costs one validation pass per batch plus one.

Costs are timed as ``reward``; nothing here runs unless the env is asked for these options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from falcon_rl.config import ExperimentConfig
from falcon_rl.data.base import Batch, PairSplit
from falcon_rl.envs.member_influence import member_influence
from falcon_rl.envs.rewards import LM_REWARDS, LOSS_REWARDS, _rows_mean, subbatch_rows
from falcon_rl.mining.chain import ChainResult
from falcon_rl.mining.false_negatives import batch_false_negative_pairs
from falcon_rl.mining.similarity import text_image_similarity
from falcon_rl.models import MLMMasks, mask_tokens
from falcon_rl.timing import Timings
from falcon_rl.training import StepOutput, Trainer

#: every per-batch reward option (``env.reward``, ``env.reward_log``)
BATCH_REWARDS: tuple[str, ...] = ("lm", "mlm", "itc", "itm", "itc+itm", "mlm_hi", "lm_sample", "val_itc", "val_lm",
                                  "itc+val_itc")
#: weighted sums of other options: name -> its parts (the weights: :func:`reward_weights`)
COMBINED_REWARDS: dict[str, tuple[str, ...]] = {"itc+val_itc": ("itc", "val_itc")}
#: options only this module computes
NEW_REWARDS: tuple[str, ...] = ("mlm_hi", "lm_sample", "val_itc", "val_lm", "itc+val_itc")
#: options with a value per member (``info["member_own_reward"]``, ``agent.credit: member``)
MEMBER_REWARDS: tuple[str, ...] = ("lm", "mlm", "lm_sample", "mlm_hi", "itc", "itc+val_itc")
#: options measured on the held-out validation pairs
VAL_REWARDS: tuple[str, ...] = ("val_itc", "val_lm")
#: seed offset of the mlm_hi masks' generator (a stream of its own, not a hyper-parameter)
_HI_STREAM = 0x68692D6D
#: seed offset of the validation masks' generator
_VAL_STREAM = 0x76616C


def reward_parts(reward: str, lm_name: str = "mlm") -> tuple[str, ...]:
    """The component names whose (weighted) sum is reward ``reward`` (``itc+itm`` = itc + itm,
    ``itc+val_itc`` = itc + λ·val_itc; the LM loss's component is named after it, ``lm_name``:
    ``mlm`` or ``itg``)."""
    parts = COMBINED_REWARDS.get(reward) or LOSS_REWARDS.get(reward, (reward,))
    return tuple(lm_name if p == "lm" else p for p in parts)


def reward_weights(reward: str, lm_name: str = "mlm", val_weight: float = 1.0) -> dict[str, float]:
    """Component name -> weight in reward ``reward``: 1 for every part, ``val_weight``
    (``env.reward_val_weight``, λ) for the held-out part of ``itc+val_itc``."""
    combined = reward in COMBINED_REWARDS
    return {p: (float(val_weight) if combined and p in VAL_REWARDS else 1.0) for p in reward_parts(reward, lm_name)}


def reward_value(components: dict[str, float], reward: str, lm_name: str = "mlm", val_weight: float = 1.0) -> float:
    """Reward ``reward`` of one batch from its measured ``components`` (a missing part counts 0)."""
    return float(sum(w * components.get(p, 0.0) for p, w in reward_weights(reward, lm_name, val_weight).items()))


def validation_split(split: PairSplit, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(validation pairs, training pool)``: ``k`` evenly spaced pairs (deterministic, no RNG),
    and every pair whose image is none of theirs (what search spaces and the warm-up may use)."""
    n = split.n_pairs
    k = min(int(k), n)
    val = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)) if k > 0 else np.zeros(0, np.int64)
    held_images = np.isin(split.pair_image, split.pair_image[val])
    return val, np.flatnonzero(~held_images).astype(np.int64)


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


class ValidationProbe:
    """In-batch ITC and MLM (fixed masks) of the current model on fixed held-out training pairs.

    :param split: the training split.
    :param pairs: the held-out pair indices.
    :param batch_size: chunk size of the MLM passes (``train.batch_size``).
    :param seed: seed of the fixed MLM masks.
    """

    def __init__(self, split: PairSplit, pairs: np.ndarray, batch_size: int, seed: int) -> None:
        self.split = split
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.image_ids, self.caption_image = np.unique(split.pair_image[self.pairs], return_inverse=True)
        self._chunks: list[tuple[Batch, MLMMasks]] | None = None
        self._pairs_batch: Batch | None = None

    def pair_batch(self) -> Batch:
        """Every held-out pair in one batch (built once): the in-batch ITC that
        ``env.member_reward: val_influence`` differentiates."""
        if self._pairs_batch is None:
            self._pairs_batch = self.split.batch(self.pairs)
        return self._pairs_batch

    def _lm_chunks(self, trainer: Trainer) -> list[tuple[Batch, MLMMasks]]:
        """The held-out pairs in batches with fixed LM masks (drawn once, from their own generator)."""
        if self._chunks is None:  # built whole, then published (replicas of one process may ask at once)
            gen = torch.Generator().manual_seed(self.seed)
            chunks = []
            for s in range(0, self.pairs.size, self.batch_size):
                batch = self.split.batch(self.pairs[s:s + self.batch_size])
                masks = trainer.model.make_lm_masks(batch.input_ids, batch.attention_mask, gen)
                chunks.append((batch, masks))
            self._chunks = chunks
        return self._chunks

    @torch.no_grad()
    def losses(self, trainer: Trainer, names: set[str]) -> dict[str, float]:
        """``val_lm`` (mean over every LM target) and ``val_itc`` (symmetric InfoNCE over all
        held-out pairs at the model's temperature; a caption's positives are the pairs of its image)."""
        out: dict[str, float] = {}
        if "val_lm" in names:
            total, count = 0.0, 0
            for batch, masks in self._lm_chunks(trainer):
                n = int((masks.labels != -100).sum())
                if n:
                    total += trainer.lm_loss(batch, masks) * n
                    count += n
            out["val_lm"] = total / count if count else 0.0
        if "val_itc" in names:
            img = trainer.embed_images(self.split, self.image_ids)
            txt = trainer.embed_texts(self.split, self.pairs)
            logits = text_image_similarity(txt, img).double() / float(trainer.model.temp.detach())
            target = torch.as_tensor(self.caption_image, dtype=torch.long).reshape(-1)
            t2i = torch.nn.functional.cross_entropy(logits, target)
            pos = torch.zeros(logits.shape[1], logits.shape[0], dtype=torch.float64)
            pos[target, torch.arange(target.numel())] = 1.0
            i2t = -(pos / pos.sum(dim=1, keepdim=True) * torch.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
            out["val_itc"] = float(0.5 * (t2i + i2t))
        return out


@dataclass
class BatchReward:
    """What one trained batch earned.

    :ivar components: option (or part) name -> before − after.
    :ivar own: (B,) each pair's own loss change under ``env.reward`` (NaN: no masked token), or None.
    """

    components: dict[str, float]
    own: np.ndarray | None = None


@dataclass
class RewardMeter:
    """The env's reward options beyond :func:`~falcon_rl.envs.rewards.train_with_reward`.

    :param cfg: the experiment (``env.reward``, ``env.reward_log``, ``env.reward_mlm_prob``,
        ``env.val_pairs``, ``env.reward_estimator``, ``env.reward_subbatch``).
    :param split: the training split.
    """

    cfg: ExperimentConfig
    split: PairSplit
    log: tuple[str, ...] = field(init=False)
    val_pairs: np.ndarray = field(init=False)
    pool: np.ndarray = field(init=False)
    probe: ValidationProbe | None = field(init=False)
    _val_before: dict[str, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.log = tuple(dict.fromkeys(self.cfg.env.reward_log))
        held = self.cfg.env.held_out_pairs
        self.val_pairs, self.pool = validation_split(self.split, held)
        self.probe = None
        if held:
            self.probe = ValidationProbe(self.split, self.val_pairs, self.cfg.train.batch_size,
                                         self.cfg.data.seed + _VAL_STREAM)

    def handles(self, compute: bool, own: bool) -> bool:
        """Whether a batch goes through :meth:`train` (else the plain ``train_with_reward``)."""
        return bool(self.log) or own or (compute and self.cfg.env.reward in NEW_REWARDS)

    def begin_step(self) -> None:
        """A new env step: the validation losses are measured afresh before its first batch."""
        self._val_before = None

    def _wanted(self, compute: bool) -> set[str]:
        """The quantities to measure (``lm`` for the LM loss, whatever its name)."""
        want = set(self.log)
        if compute:
            want.add(self.cfg.env.reward)
        parts: set[str] = set()
        for name in want:
            for part in COMBINED_REWARDS.get(name, (name,)):
                parts.update(LOSS_REWARDS.get(part, (part,)))
        return parts

    def _hi_masks(self, trainer: Trainer, batch: Batch) -> MLMMasks:
        """mlm_hi's masks (ALBEF's BERT masking): ``env.reward_mlm_prob``, seeded by (run seed, trainer step),
        and the rank under several processes (the N batches of one optimiser step share its trainer step)."""
        entropy = [trainer.cfg.train.seed, _HI_STREAM, trainer.step] + ([trainer.replica] if trainer.replica else [])
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        ids = trainer.model.special_ids
        m = trainer.cfg.model
        return mask_tokens(batch.input_ids, batch.attention_mask, [ids["cls"], ids["sep"], ids["pad"]], ids["mask"],
                           trainer.model.vocab_size, self.cfg.env.reward_mlm_prob, torch.Generator().manual_seed(seed),
                           m.mlm_mask_ratio, m.mlm_random_ratio)

    def train(self, trainer: Trainer, batch: Batch, itc_targets: torch.Tensor | None = None, *, compute: bool = True,
              own: bool = False, timing: Timings | None = None) -> tuple[StepOutput, BatchReward]:
        """One training step on ``batch`` with every wanted difference around it.

        :param compute: compute ``env.reward`` (the logged options are computed anyway).
        :param own: also each pair's own loss change under ``env.reward`` (an LM-family reward; ``itc``:
            the pair's two in-batch ITC rows, before − after; ``itc+val_itc``: that plus λ times the
            batch's held-out change, which its pairs share).
        :returns: the step's output and the batch's components, keyed by option (the LM loss's
            under its name, ``mlm`` / ``itg``; ``itc+itm`` as ``itc`` and ``itm``, and as itself when
            logged).
        """
        timing = timing if timing is not None else Timings()
        env = self.cfg.env
        reward = env.reward
        lm_name = trainer.lm_name
        need = self._wanted(compute)
        influence = own and env.member_reward == "val_influence"  # every pair's, whatever the reward
        own = own and reward in MEMBER_REWARDS and not influence
        dropout = trainer.cfg.model.dropout > 0
        tokens = "lm_sample" in need or (own and reward in (*LM_REWARDS, "lm_sample"))
        lm = "lm" in need or tokens
        rows = None
        if "lm" in need and reward in LM_REWARDS and env.reward_estimator == "subbatch":
            rows = subbatch_rows(len(batch), env.reward_subbatch)
        masks = trainer.make_lm_masks(batch)  # what train_step would draw: the same masks
        before: dict[str, Any] = {}
        own_values = None
        with timing("reward"):
            if influence:  # around the weights the step starts from (it draws no random numbers)
                own_values = member_influence(trainer, self.probe.pair_batch(), batch)["adam"]
            if dropout and tokens:  # the training forward's losses are not the eval-mode ones
                before["tokens"] = trainer.lm_loss(batch, masks, per_token=True)
            elif dropout and lm:
                before["lm"] = trainer.lm_loss(batch, masks, rows)
            if "mlm_hi" in need:
                hi = self._hi_masks(trainer, batch)
                before["mlm_hi"] = trainer.lm_loss(batch, hi, per_token=own and reward == "mlm_hi")
            own_itc = own and reward in ("itc", "itc+val_itc")
            for name in ("itc", "itm"):
                if name in need:
                    before[name] = (trainer.itc_loss(batch, per_sample=own_itc) if name == "itc"
                                    else trainer.itm_loss(batch))
            val = need & set(VAL_REWARDS)
            if val:
                if self._val_before is None or not val <= set(self._val_before):
                    self._val_before = self.probe.losses(trainer, val)
                before.update(self._val_before)
        with timing("train"):
            out = trainer.train_step(batch, masks, itc_targets=itc_targets,
                                     mlm_tokens=lm and not dropout and (tokens or rows is not None))
        comps: dict[str, float] = {}
        with timing("reward"):
            labels = masks.labels
            if tokens:
                tb = before["tokens"] if dropout else out.mlm_tokens
                ta = trainer.lm_loss(batch, masks, per_token=True)
                per_row = row_means(tb, labels) - row_means(ta, labels)
                if "lm" in need:
                    if rows is not None:
                        comps[lm_name] = _rows_mean(tb, labels, rows) - _rows_mean(ta, labels, rows)
                    else:
                        comps[lm_name] = float(tb.double().mean() - ta.double().mean()) if tb.numel() else 0.0
                if "lm_sample" in need:
                    comps["lm_sample"] = float(np.nanmean(per_row)) if np.isfinite(per_row).any() else 0.0
                if own and reward in (*LM_REWARDS, "lm_sample"):
                    own_values = per_row
            elif lm:
                if rows is not None:
                    b = before["lm"] if dropout else _rows_mean(out.mlm_tokens, labels, rows)
                else:
                    b = before["lm"] if dropout else out.lm
                comps[lm_name] = b - trainer.lm_loss(batch, masks, rows)
            if "mlm_hi" in need:
                if own and reward == "mlm_hi":
                    after = trainer.lm_loss(batch, hi, per_token=True)
                    own_values = row_means(before["mlm_hi"], hi.labels) - row_means(after, hi.labels)
                    comps["mlm_hi"] = (float(before["mlm_hi"].double().mean() - after.double().mean())
                                       if after.numel() else 0.0)
                else:
                    comps["mlm_hi"] = before["mlm_hi"] - trainer.lm_loss(batch, hi)
            for name in ("itc", "itm"):
                if name in need and name == "itc" and own_itc:  # each pair's own term: its two ITC rows
                    per_pair = before["itc"] - trainer.itc_loss(batch, per_sample=True)
                    comps["itc"] = float(per_pair.mean())
                    own_values = per_pair
                elif name in need:
                    after = trainer.itc_loss(batch) if name == "itc" else trainer.itm_loss(batch)
                    comps[name] = before[name] - after
            if val:
                after_val = self.probe.losses(trainer, val)
                comps.update({n: before[n] - after_val[n] for n in val})
                self._val_before = after_val  # no update until the next batch: its "before"
            if own_values is not None and not influence and reward == "itc+val_itc" and "val_itc" in comps:
                # the held-out part is the batch's, shared by its pairs
                own_values = own_values + env.reward_val_weight * comps["val_itc"]
        for name in self.log:  # a sum of parts (itc+itm, itc+val_itc) is logged as an option of its own
            if len(reward_parts(name, lm_name)) > 1:
                comps[name] = reward_value(comps, name, lm_name, env.reward_val_weight)
        return out, BatchReward(comps, own_values)


def member_batches(batches: list[np.ndarray], n_members: int, trained: int) -> np.ndarray:
    """(|M|,) the index of the batch each member was trained in; -1 for members of no trained
    batch (dropped by the chain, or after a terminated step's last batch)."""
    out = np.full(n_members, -1, dtype=np.int64)
    for b, local in enumerate(batches[:trained]):
        out[np.asarray(local, dtype=np.int64)] = b
    return out


def batch_stats(split: PairSplit, members: np.ndarray, chain: ChainResult,
                rewards: list[dict[str, float]]) -> dict[str, Any]:
    """The per-batch view of one env step: for each trained batch (in training order) its size,
    its in-batch false-negative pairs (``fn_pairs``; NaN without a match matrix), the mean q of
    its chain picks (``q_mean``), their mean rank quantile among the remaining candidates
    (``rank_quantile``: 0 the least, 1 the most similar) and its reward components (``rewards``)."""
    trained = len(rewards)
    out: dict[str, Any] = {"size": [], "fn_pairs": [], "q_mean": [], "rank_quantile": [],
                           "rewards": {name: [r.get(name, float("nan")) for r in rewards]
                                       for name in dict.fromkeys(k for r in rewards for k in r)}}
    start = 0
    for b, local in enumerate(chain.batches):
        n_picks = max(len(local) - 1, 0)
        sl = slice(start, start + n_picks)
        start += n_picks
        if b >= trained:
            break
        out["size"].append(int(len(local)))
        if split.match is not None:
            out["fn_pairs"].append(float(batch_false_negative_pairs(split, members, [local])[0]))
        else:
            out["fn_pairs"].append(float("nan"))
        q_used = chain.q_used[sl]
        out["q_mean"].append(float(q_used.mean()) if q_used.size else float("nan"))
        cand = chain.n_candidates[sl].astype(np.float64)
        ok = cand > 1
        quant = chain.ranks[sl][ok] / (cand[ok] - 1.0)
        out["rank_quantile"].append(float(quant.mean()) if quant.size else float("nan"))
    return out
