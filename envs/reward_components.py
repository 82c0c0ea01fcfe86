"""Per-batch rewards, one code path: a training step and every before − after difference around
it — the reward's parts, the ``experimental.reward_log`` options, per-member loss changes — and the
validation probe (docs/ALGORITHM.md §5, §13; issue #10: which proxy reward tracks retrieval).

:class:`RewardMeter` measures what the reward registry (:mod:`falcon_rl.config.rewards`) says a
reward is made of (its :class:`~falcon_rl.config.rewards.Measure` parts), through
:class:`falcon_rl.models.protocol.VLPModel` (ALBEF or BLIP-2). To compare reward options they must
be measured on the *same* runs, so the env can also compute extra components for logging only
(``experimental.reward_log``; they land in ``info["reward_components"]``, the run history and
``info["batch_stats"]``; the returned reward stays ``env.reward``). Besides the LM loss
(``lm`` / ``mlm``: its component named after the loss, ``mlm`` or ``itg``), ``itc``, ``itm``:

- ``mlm_hi`` (ALBEF): ΔL_MLM on masks of its own, drawn at ``experimental.reward_mlm_prob`` (GRIT's 0.5)
  from a generator seeded by (run seed, trainer step), so drawing them changes nothing in
  training; two extra MLM forwards;
- ``lm_sample``: per-sample ΔL_LM: each pair's mean over its LM targets before − after (the
  training forward's per-token losses, and one per-token forward after); the batch value is the
  mean over its pairs (``lm`` weights every target token equally). Each member's own value is
  also the per-member credit of ``experimental.credit: member`` (with ``lm`` and ``mlm_hi`` too; with
  ``itc`` each pair's own term of the in-batch ITC, its image→text and text→image rows averaged,
  before − after; with ``itc+val_itc`` that plus λ·Δ(held-out ITC) of its batch);
- ``val_itc``, ``val_lm``: label-free: the drop of the in-batch ITC / the LM loss (fixed masks)
  on a fixed validation subset of ``experimental.val_pairs`` *training* pairs (evenly spaced; every pair
  of their images is held out of the search spaces and the warm-up; never the test split, no
  match matrix), before − after each trained batch. "After" of one batch is "before" of the next
  (no update in between), so a step costs one validation pass per batch plus one.

The LM masks are drawn before the step exactly as the step would draw them, and every extra
forward runs in eval mode, so measuring changes nothing in training. Costs are timed as
``reward``; nothing runs beyond the step unless the env asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from falcon_rl.config import ExperimentConfig, rewards
from falcon_rl.config.rewards import Measure
from falcon_rl.data.base import Batch, PairSplit
from falcon_rl.envs.member_influence import member_influence
from falcon_rl.envs.rewards import reward_value, row_means, rows_mean, subbatch_rows
from falcon_rl.mining.similarity import text_image_similarity
from falcon_rl.models import MLMMasks, mask_tokens
from falcon_rl.timing import Timings
from falcon_rl.training import StepOutput, Trainer

__all__ = ["BatchReward", "RewardMeter", "ValidationProbe", "row_means", "train_with_reward", "validation_split"]
#: seed offset of the mlm_hi masks' generator (a stream of its own, not a hyper-parameter)
_HI_STREAM = 0x68692D6D
#: seed offset of the validation masks' generator
_VAL_STREAM = 0x76616C


def validation_split(split: PairSplit, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(validation pairs, training pool)``: ``k`` evenly spaced pairs (deterministic, no RNG),
    and every pair whose image is none of theirs (what search spaces and the warm-up may use)."""
    n = split.n_pairs
    k = min(int(k), n)
    val = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)) if k > 0 else np.zeros(0, np.int64)
    held_images = np.isin(split.pair_image, split.pair_image[val])
    return val, np.flatnonzero(~held_images).astype(np.int64)


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
        ``experimental.member_reward: val_influence`` differentiates."""
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
    def losses(self, trainer: Trainer, names: set[Measure]) -> dict[Measure, float]:
        """``val_lm`` (mean over every LM target) and ``val_itc`` (symmetric InfoNCE over all
        held-out pairs at the model's temperature; a caption's positives are the pairs of its image)."""
        out: dict[Measure, float] = {}
        if Measure.VAL_LM in names:
            total, count = 0.0, 0
            for batch, masks in self._lm_chunks(trainer):
                n = int((masks.labels != -100).sum())
                if n:
                    total += trainer.lm_loss(batch, masks) * n
                    count += n
            out[Measure.VAL_LM] = total / count if count else 0.0
        if Measure.VAL_ITC in names:
            img = trainer.embed_images(self.split, self.image_ids)
            txt = trainer.embed_texts(self.split, self.pairs)
            logits = text_image_similarity(txt, img).double() / float(trainer.model.temp.detach())
            target = torch.as_tensor(self.caption_image, dtype=torch.long).reshape(-1)
            t2i = torch.nn.functional.cross_entropy(logits, target)
            pos = torch.zeros(logits.shape[1], logits.shape[0], dtype=torch.float64)
            pos[target, torch.arange(target.numel())] = 1.0
            i2t = -(pos / pos.sum(dim=1, keepdim=True) * torch.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
            out[Measure.VAL_ITC] = float(0.5 * (t2i + i2t))
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
    """The env's per-batch rewards: one training step with every wanted difference around it.

    :param cfg: the experiment (``env.reward``, ``experimental.reward_log``, ``experimental.reward_mlm_prob``,
        ``experimental.val_pairs``, ``experimental.reward_estimator``, ``experimental.reward_subbatch``, ``experimental.member_reward``).
    :param split: the training split (None: no held-out pairs; a reward measured on them is refused).
    """

    cfg: ExperimentConfig
    split: PairSplit | None
    reward: rewards.RewardSpec = field(init=False)
    log: tuple[str, ...] = field(init=False)
    val_pairs: np.ndarray = field(init=False)
    pool: np.ndarray | None = field(init=False)
    probe: ValidationProbe | None = field(init=False)
    _val_before: dict[Measure, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.reward = rewards.spec(self.cfg.env.reward)
        self.log = tuple(dict.fromkeys(self.cfg.experimental.reward_log))
        held = self.cfg.env.held_out_pairs
        self.probe, self.pool, self.val_pairs = None, None, np.zeros(0, np.int64)
        if self.split is not None:
            self.val_pairs, self.pool = validation_split(self.split, held)
        elif held:
            raise ValueError("the held-out validation rewards need the training split")
        if held:
            self.probe = ValidationProbe(self.split, self.val_pairs, self.cfg.train.batch_size,
                                         self.cfg.data.seed + _VAL_STREAM)

    def begin_step(self) -> None:
        """A new env step: the validation losses are measured afresh before its first batch."""
        self._val_before = None

    def _wanted(self, compute: bool) -> set[Measure]:
        """The quantities to measure: the logged options' parts, and the reward's when it is computed."""
        return rewards.measures(*self.log, *((self.reward.name,) if compute else ()))

    def _hi_masks(self, trainer: Trainer, batch: Batch) -> MLMMasks:
        """mlm_hi's masks (ALBEF's BERT masking): ``experimental.reward_mlm_prob``, seeded by (run seed, trainer step),
        and the rank under several processes (the N batches of one optimiser step share its trainer step)."""
        entropy = [trainer.cfg.train.seed, _HI_STREAM, trainer.step] + ([trainer.replica] if trainer.replica else [])
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        ids = trainer.model.special_ids
        m = trainer.cfg.model
        return mask_tokens(batch.input_ids, batch.attention_mask, [ids["cls"], ids["sep"], ids["pad"]], ids["mask"],
                           trainer.model.vocab_size, self.cfg.experimental.reward_mlm_prob, torch.Generator().manual_seed(seed),
                           m.mlm_mask_ratio, m.mlm_random_ratio)

    def train(self, trainer: Trainer, batch: Batch, itc_targets: torch.Tensor | None = None, *, compute: bool = True,
              own: bool = False, timing: Timings | None = None,
              itc_exclude: torch.Tensor | None = None) -> tuple[StepOutput, BatchReward]:
        """One training step on ``batch`` with every wanted difference around it.

        :param compute: compute ``env.reward`` (the logged options are computed anyway).
        :param itc_exclude: (B, B) bool pairs left out of the training loss (``experimental.gt_loss: mask``).
        :param own: also each pair's own loss change under ``env.reward`` (its registry ``own`` part:
            an LM-family reward's per-pair LM change; ``itc``: the pair's two in-batch ITC rows, before
            − after; ``itc+val_itc``: that plus λ times the batch's held-out change, which its pairs
            share), or with ``experimental.member_reward: val_influence`` each pair's influence.
        :returns: the step's output and the batch's components, keyed by option (the LM loss's
            under its name, ``mlm`` / ``itg``; ``itc+itm`` as ``itc`` and ``itm``, and as itself when
            logged).
        """
        timing = timing if timing is not None else Timings()
        env, spec = self.cfg.env, self.reward
        lm_name = trainer.lm_name
        need = self._wanted(compute)
        influence = own and rewards.member_signal(env.member_reward).influence  # every pair's, whatever the reward
        own_part = spec.own if own and not influence else None
        dropout = trainer.cfg.model.dropout > 0
        tokens = Measure.LM_SAMPLE in need or (own_part is not None and own_part.token_rows)
        lm = Measure.LM in need or tokens
        rows = None
        if Measure.LM in need and spec.subbatch and env.reward_estimator == "subbatch":
            rows = subbatch_rows(len(batch), env.reward_subbatch)
        masks = trainer.make_lm_masks(batch)  # what train_step would draw: the same masks
        before: dict[Any, Any] = {}
        own_values = None
        own_itc = own_part is Measure.ITC
        # nothing measured (the reward off, nothing logged): no reward time either
        reward_time = functools.partial(timing, "reward") if need or influence else contextlib.nullcontext
        with reward_time():
            if influence:  # around the weights the step starts from (it draws no random numbers)
                own_values = member_influence(trainer, self.probe.pair_batch(), batch)["adam"]
            if dropout and tokens:  # the training forward's losses are not the eval-mode ones
                before["tokens"] = trainer.lm_loss(batch, masks, per_token=True)
            elif dropout and lm:
                before[Measure.LM] = trainer.lm_loss(batch, masks, rows)
            if Measure.MLM_HI in need:
                hi = self._hi_masks(trainer, batch)
                before[Measure.MLM_HI] = trainer.lm_loss(batch, hi, per_token=own_part is Measure.MLM_HI)
            if Measure.ITC in need:
                before[Measure.ITC] = trainer.itc_loss(batch, per_sample=own_itc)
            if Measure.ITM in need:
                before[Measure.ITM] = trainer.itm_loss(batch)
            val = {m for m in need if m.held_out}
            if val:
                if self._val_before is None or not val <= set(self._val_before):
                    self._val_before = self.probe.losses(trainer, val)
                before.update(self._val_before)
        if not val:  # nothing held-out measured around this step: the next measured one starts afresh
            self._val_before = None
        with timing("train"):
            out = trainer.train_step(batch, masks, itc_targets=itc_targets, itc_exclude=itc_exclude,
                                     mlm_tokens=lm and not dropout and (tokens or rows is not None))
        comps: dict[str, float] = {}
        with reward_time():
            labels = masks.labels
            if tokens:
                tb = before["tokens"] if dropout else out.mlm_tokens
                ta = trainer.lm_loss(batch, masks, per_token=True)
                per_row = row_means(tb, labels) - row_means(ta, labels)
                if Measure.LM in need:
                    if rows is not None:
                        comps[lm_name] = rows_mean(tb, labels, rows) - rows_mean(ta, labels, rows)
                    else:
                        comps[lm_name] = float(tb.double().mean() - ta.double().mean()) if tb.numel() else 0.0
                if Measure.LM_SAMPLE in need:
                    comps[Measure.LM_SAMPLE.value] = float(np.nanmean(per_row)) if np.isfinite(per_row).any() else 0.0
                if own_part is not None and own_part.token_rows:
                    own_values = per_row
            elif lm:
                if rows is not None:
                    b = before[Measure.LM] if dropout else rows_mean(out.mlm_tokens, labels, rows)
                else:
                    b = before[Measure.LM] if dropout else out.lm
                comps[lm_name] = b - trainer.lm_loss(batch, masks, rows)
            if Measure.MLM_HI in need:
                hi_before = before[Measure.MLM_HI]
                if own_part is Measure.MLM_HI:
                    after = trainer.lm_loss(batch, hi, per_token=True)
                    own_values = row_means(hi_before, hi.labels) - row_means(after, hi.labels)
                    comps[Measure.MLM_HI.value] = (float(hi_before.double().mean() - after.double().mean())
                                                   if after.numel() else 0.0)
                else:
                    comps[Measure.MLM_HI.value] = hi_before - trainer.lm_loss(batch, hi)
            if Measure.ITC in need and own_itc:  # each pair's own term: its two ITC rows
                per_pair = before[Measure.ITC] - trainer.itc_loss(batch, per_sample=True)
                comps[Measure.ITC.value] = float(per_pair.mean())
                own_values = per_pair
            elif Measure.ITC in need:
                comps[Measure.ITC.value] = before[Measure.ITC] - trainer.itc_loss(batch)
            if Measure.ITM in need:
                comps[Measure.ITM.value] = before[Measure.ITM] - trainer.itm_loss(batch)
            if val:
                after_val = self.probe.losses(trainer, val)
                comps.update({m.value: before[m] - after_val[m] for m in val})
                self._val_before = after_val  # no update until the next batch: its "before"
            if own_part is not None and own_values is not None:  # a held-out part is the batch's, shared by its pairs
                for part, weight in spec.weights(env.reward_val_weight).items():
                    if part.held_out and part.value in comps:
                        own_values = own_values + weight * comps[part.value]
        for name in self.log:  # a sum of parts (itc+itm, itc+val_itc) is logged as an option of its own
            if rewards.spec(name).combined:
                comps[name] = reward_value(comps, name, lm_name, env.reward_val_weight)
        return out, BatchReward(comps, own_values)


def train_with_reward(trainer: Trainer, batch: Batch, reward: str, itc_targets: torch.Tensor | None = None,
                      *, compute: bool = True, estimator: str = "exact", subbatch: int = 32,
                      timing: Timings | None = None) -> tuple[StepOutput, dict[str, float]]:
    """One training step on ``batch`` and the components of reward ``reward`` (a per-batch option not
    measured on held-out pairs; the LM component named after the model's LM loss, ``mlm`` / ``itg``),
    through :class:`RewardMeter` (the env's one code path).

    :param itc_targets: (B, B) multi-positive ITC targets of the step (``env.gt_targets``), or None.
    :param compute: run the reward's extra forwards; False trains only and returns no components.
    :param estimator: ``exact`` or ``subbatch`` (lm / mlm only: the difference on ``subbatch`` evenly
        spaced pairs of the batch, :func:`~falcon_rl.envs.rewards.subbatch_rows`; "before" comes from
        the training forward's per-token losses, so it costs one forward of ``subbatch`` pairs).
    :param timing: accumulates ``train`` (the step) and ``reward`` (the extra forwards).
    """
    env = dataclasses.replace(trainer.cfg.env, reward=reward)
    experimental = dataclasses.replace(trainer.cfg.experimental, reward_log=[], reward_estimator=estimator,
                                       reward_subbatch=int(subbatch), member_reward="own")
    meter = RewardMeter(dataclasses.replace(trainer.cfg, env=env, experimental=experimental), None)
    out, measured = meter.train(trainer, batch, itc_targets, compute=compute, timing=timing)
    return out, measured.components
