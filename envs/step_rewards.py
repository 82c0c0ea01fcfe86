"""What one env step trains and earns (docs/ALGORITHM.md §5, §14; FALCON, arXiv 2505.11192, §2.4-2.5).

The reward is ``env.reward`` × ``experimental.reward_scale``, computed as the reward registry
(:mod:`falcon_rl.config.rewards`) says — :class:`~falcon_rl.config.rewards.Computation`:

- ``BATCH``: the mean over the step's trained batches of a before − after difference around
  each batch's training step (:class:`~falcon_rl.envs.reward_components.RewardMeter`, the one
  code path for these; ``lm`` / ``mlm`` FALCON's ΔL_MLM — with BLIP-2 the drop of its ITG loss —,
  ``itc``, ``itm``, ``itc+itm``, ``mlm_hi``, ``lm_sample``, ``val_itc``, ``val_lm``, ``itc+val_itc``;
  with a held-out option ``experimental.val_pairs`` training pairs are held out of the warm-up and the
  search spaces);
- ``RETRIEVAL``: ``retrieval``, the held-out i2t R@1 gain of the step (:class:`RetrievalProbe`);
- ``TOY``: ``toy``, a diagnostic that trains nothing and peaks at ``q = experimental.toy_optimum[F − 1]``
  for a member of caption specificity F.

The reward's extra forwards run only when the env computes it (``compute_reward`` of the env,
default: unless ``experimental.compute_reward=never``; ``train-agent`` / ``ablate`` turn them off for
schedulers that do not learn from the reward); otherwise the reward is NaN and
``reward_components`` holds only the ``experimental.reward_log`` options (logged beside the reward, for
any scheduler). ``experimental.reward_estimator=subbatch`` estimates the lm (mlm) reward on a sub-batch.

Info entries of the reward: ``reward_components`` (mean over batches of each component; with
``retrieval`` also ``r1_before`` / ``r1_after``), ``member_reward`` (each member's batch's reward,
FALCON §2.5's credit; the step reward where there is no per-batch reward), ``member_batch`` (its
batch, -1: untrained), ``member_q_read`` (whether its q chose a pick among two or more candidates —
every q with ``toy``, which reads them itself —: the q's a learner may be credited for), ``member_own_reward`` (its own loss change, with ``experimental.credit: member``
or reward ``lm_sample``; with ``experimental.member_reward: val_influence`` its influence on the held-out
ITC), ``batch_stats`` (the per-batch view, with ``experimental.reward_log``) and, with ``model.false_negatives:
mafa``, ``mafa`` (the filter's precision / recall, :mod:`falcon_rl.mining.filter_quality`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from falcon_rl.config import ExperimentConfig, rewards
from falcon_rl.config.checks import reward_every_excess
from falcon_rl.config.rewards import Computation
from falcon_rl.data.base import PairSplit
from falcon_rl.distributed import world
from falcon_rl.envs.parallel import BatchResult, RankGroup, outcome
from falcon_rl.envs.pipeline import MiningPipeline
from falcon_rl.envs.reward_components import RewardMeter
from falcon_rl.envs.rewards import RetrievalProbe, reward_value, toy_member_values, toy_reward
from falcon_rl.envs.stats import fn_info, q_stats
from falcon_rl.mining import FalseNegativeStats, ground_truth_targets
from falcon_rl.mining.chain import ChainResult, batches_per_space
from falcon_rl.mining.false_negatives import batch_false_negative_pairs
from falcon_rl.mining.filter_quality import FilterCounts
from falcon_rl.timing import Timings
from falcon_rl.training import Trainer


class StepRewards:
    """The env's reward side: ``env.reward``'s registry spec, whether it is computed (decided when
    the env is built), the per-batch meter and the retrieval probe with the R@1 before the step."""

    def __init__(self, cfg: ExperimentConfig, compute: bool) -> None:
        self.cfg = cfg
        self.spec = rewards.spec(cfg.env.reward)
        self.computes = bool(compute)
        #: each member's own loss change in info["member_own_reward"] (experimental.credit=member, lm_sample)
        self.own_rewards = cfg.experimental.credit == "member" or self.spec.member_values
        self.meter: RewardMeter | None = None
        self.probe: RetrievalProbe | None = None
        self.r1 = 0.0

    @property
    def computes_own(self) -> bool:
        """Whether steps measure each member's own reward: it is part of the reward, so not while the
        reward is off (a frozen scheduler learns nothing from it)."""
        return self.own_rewards and self.computes

    def meter_for(self, split: PairSplit, members_per_space: int) -> RewardMeter:
        """The meter of ``split`` (built once): its held-out pairs must leave a search space to train on,
        and an env step must hold an optimiser step whose reward is measured (``experimental.reward_every``)."""
        if self.meter is None:
            every = self.cfg.experimental.reward_every
            steps = -(-batches_per_space(members_per_space, self.cfg.train.batch_size,
                                         self.cfg.experimental.remainder) // world().size)
            problem = reward_every_excess(every, steps, f"optimiser steps of an env step ({world().size} process(es))")
            if problem:
                raise ValueError(problem)
            meter = RewardMeter(self.cfg, split)
            if meter.pool.size < members_per_space:
                raise ValueError(f"experimental.val_pairs={self.cfg.env.held_out_pairs} held-out pairs (and the other pairs of "
                                 f"their images) leave {meter.pool.size} training pairs, fewer than "
                                 f"mining.search_space={members_per_space}: lower experimental.val_pairs")
            self.meter = meter
        return self.meter

    def start(self, test: PairSplit, r1: float = 0.0) -> None:
        """A new (or loaded) episode: the retrieval probe where the reward is per step."""
        self.probe = RetrievalProbe(test, self.cfg.experimental.retrieval_pairs) if self.spec.computation is Computation.RETRIEVAL \
            else None
        self.r1 = float(r1)

    def score_start(self, trainer: Trainer, timing: Timings) -> None:
        """The R@1 the episode's first step is measured from (when the reward is computed)."""
        if self.probe is not None and self.computes:
            with timing("reward"):
                self.r1 = self.probe.score(trainer)

    def train_batch(self, trainer: Trainer, loaded: tuple[np.ndarray, Any], *, split: PairSplit, gt_targets: bool,
                    timing: Timings) -> BatchResult:
        """One mined local batch trained with its reward (this rank's batch of the step)."""
        idx, batch = loaded
        targets = ground_truth_targets(split, idx) if gt_targets else None
        exclude = None
        if targets is not None and self.cfg.experimental.gt_loss == "mask":  # the control: out of the loss
            targets, exclude = None, targets > 0
        measure = self.measures(trainer.step)
        out, measured = self.meter.train(trainer, batch, targets, compute=measure, own=self.computes_own and measure,
                                         timing=timing, itc_exclude=exclude)
        mafa = split if self.cfg.model.false_negatives == "mafa" else None
        return outcome(out, measured.components, mafa, measured.own, measured=measure)

    def measures(self, trainer_step: int) -> bool:
        """Whether the reward is measured around optimiser step ``trainer_step``: when it is computed, on
        every ``experimental.reward_every``-th trainer step (all ranks' batches of a step alike; the trainer
        step is restored on resume, so a resumed run measures the same batches)."""
        return self.computes and trainer_step % self.cfg.experimental.reward_every == 0


class StepTally:
    """What the trained batches of one env step earned, in chain order (the step's reward and info)."""

    def __init__(self, side: StepRewards, n_members: int, lm_name: str) -> None:
        self.side = side
        self.losses: dict[str, list[float]] = {"itc": [], "itm": [], lm_name: []}
        self.components: dict[str, list[float]] = {}
        self.values: list[float] = []  # each trained batch's reward (NaN: not measured, experimental.reward_every)
        self.per_batch: list[dict[str, float]] = []  # every trained batch's components (info batch_stats)
        self.own = np.full(n_members, np.nan) if side.computes_own else None
        self.mafa = FilterCounts() if side.cfg.model.false_negatives == "mafa" else None
        self.lm_name = lm_name
        self.reason: str | None = None

    def toy(self, q: np.ndarray, specificity: np.ndarray, timing: Timings) -> None:
        """The toy reward of the step (nothing is trained)."""
        optimum = self.side.cfg.experimental.toy_optimum
        with timing("reward"):
            self.values.append(toy_reward(q, specificity, optimum))
        self.components[self.side.spec.name] = [self.values[-1]]
        if self.own is not None:  # each member's own term of the toy reward
            self.own = toy_member_values(q, specificity, optimum)

    def add(self, chosen: np.ndarray, res: BatchResult, position: int, trainer: Trainer) -> bool:
        """One trained batch's outcome (``chosen``: its members); False when it ends the episode."""
        step = trainer.step
        if res.error is not None:  # e.g. sampling from NaN similarities of diverged weights
            if not res.runtime or all(bool(p.isfinite().all()) for p in trainer.model.parameters()):
                res.raise_error(position)
            self.reason = f"non-finite weights at trainer step {step}: {res.exc or res.error}"
            return False
        comp = res.components
        if not all(math.isfinite(v) for v in list(res.losses.values()) + list(comp.values())):
            self.reason = (f"non-finite loss at trainer step {step}: "
                           + ", ".join(f"{k}={v}" for k, v in {**res.losses, **comp}.items()))
            return False
        if res.stats.get("skipped"):
            self.reason = (f"update skipped at trainer step {step}: non-finite gradients "
                           f"(grad_norm={res.stats['grad_norm']}); the model did not train "
                           "(lower train.lr or set train.grad_clip > 0)")
            return False
        for k in self.losses:
            self.losses[k].append(res.losses[k])
        for k, v in comp.items():
            self.components.setdefault(k, []).append(v)
        env = self.side.cfg.env
        self.values.append(reward_value(comp, env.reward, self.lm_name, env.reward_val_weight)
                           if res.measured else float("nan"))
        self.per_batch.append(comp)
        if self.own is not None and res.measured:  # a pair without a masked token gets its batch's reward
            self.own[chosen] = self.values[-1] if res.own is None else np.where(
                np.isfinite(res.own), res.own, self.values[-1])
        if self.mafa is not None and res.filter_counts is not None:
            self.mafa += FilterCounts.from_dict(res.filter_counts)
        return True

    def retrieval(self, trainer: Trainer, timing: Timings) -> None:
        """A per-step reward after the batches: the held-out R@1 gain of the step."""
        side = self.side
        if self.reason is None and side.probe is not None and side.computes:
            with timing("reward"):
                r1 = side.probe.score(trainer)
            self.components.update({side.spec.name: [r1 - side.r1], "r1_before": [side.r1], "r1_after": [r1]})
            self.values = [r1 - side.r1]
            side.r1 = r1

    def info(self, split: PairSplit, members: np.ndarray, chain: ChainResult, q: np.ndarray,
             specificity: np.ndarray | None, fn_stats: FalseNegativeStats, trainer_step: int
             ) -> tuple[float, dict[str, Any]]:
        """The step's reward and info (the step-level keys; the env adds ``terminated_reason``)."""
        side, env = self.side, self.side.cfg.env
        empty = 0.0 if side.computes else float("nan")  # a step that terminated before its first measured batch
        mean = self._mean_value()
        reward = mean * env.reward_scale if mean is not None else empty
        n = len(members)
        info: dict[str, Any] = {
            "losses": {k: float(np.mean(v)) for k, v in self.losses.items() if v},
            "reward_components": {k: float(np.mean(v)) for k, v in self.components.items()},
            **q_stats(q, specificity),
            **(fn_info(fn_stats.add(split, members, chain)) if split.match is not None else {}),
            "q": q.astype(np.float32),
            "n_batches": len(chain.batches),
            "n_forced": int(chain.forced.sum()),
            "trainer_step": int(trainer_step),
            "batches": [members[b] for b in chain.batches],
            "member_reward": self._member_reward(chain.batches, reward, n),
            "member_batch": member_batches(chain.batches, n,
                                           len(chain.batches) if not side.spec.trains else len(self.per_batch)),
            # the toy reward reads every member's q itself; the others see a q only through the chain
            "member_q_read": np.ones(n, dtype=np.bool_) if side.spec.computation is Computation.TOY else chain.q_read(n),
        }
        skipped = [b for b, v in zip(chain.batches, self.values) if math.isnan(v)] if side.computes else []
        if skipped:  # experimental.reward_every: no credit for the q's of unmeasured batches
            info["member_q_read"][np.concatenate(skipped).astype(np.int64)] = False
        influence = rewards.member_signal(env.member_reward).influence
        if self.own is not None and (side.spec.member_credit or influence):
            # untrained members: the step's mean (of the influences, which are on a scale of their own)
            if influence:
                fill = float(np.nanmean(self.own)) if np.isfinite(self.own).any() else 0.0
            else:
                fill = self._mean_value() or 0.0
            info["member_own_reward"] = (np.where(np.isfinite(self.own), self.own, fill) * env.reward_scale
                                         ).astype(np.float32)
        if env.reward_log:
            info["batch_stats"] = batch_stats(split, members, chain, self.per_batch)
        if self.mafa is not None:
            info["mafa"] = {**self.mafa.rates(), "counts": self.mafa.to_dict()}
        if specificity is not None:
            info["specificity"] = specificity.copy()
        return reward, info

    def _mean_value(self) -> float | None:
        """The mean reward of the step's measured batches (None: none measured)."""
        measured = [v for v in self.values if not math.isnan(v)]
        return float(np.mean(measured)) if measured else None

    def _member_reward(self, batches: list[np.ndarray], reward: float, n: int) -> np.ndarray:
        """Each member's credit: the reward of the batch it was trained in (FALCON §2.5 gives a
        batch's reward to the sum of its anchors' log-probabilities); the step reward where
        there is no per-batch reward (toy, retrieval, a terminated step, or a batch whose reward
        ``experimental.reward_every`` did not measure)."""
        out = np.full(n, reward, dtype=np.float32)
        if len(self.values) == len(batches) and self.side.spec.per_batch:
            for local, r in zip(batches, self.values):
                if not math.isnan(r):
                    out[local] = r * self.side.cfg.experimental.reward_scale
        return out


def train_chain(batches: Any, members: np.ndarray, tally: StepTally, *, replicas: RankGroup, trainer: Trainer,
                split: PairSplit, pipeline: MiningPipeline, train: Callable[[Any, Any], BatchResult],
                timing: Timings) -> None:
    """Train the chain's batches one optimiser step (one local batch per rank) at a time, in chain
    order, until they are done or one ends the episode (``tally.reason``); each batch's outcome goes
    to ``tally`` and its embeddings to the pipeline's cache and history (what the next states read)."""
    batches = iter(batches)
    group = replicas.size

    def pull() -> list[np.ndarray]:
        return [b for b in (next(batches, None) for _ in range(group)) if b is not None]

    def load_then_prefetch(idx: np.ndarray, ahead: np.ndarray | None) -> tuple[np.ndarray, Any]:
        with timing("chain"):  # collating the batch is part of building it; first: its augmentation seeds
            loaded = idx, split.batch(idx)  # are drawn as without prefetch
        if ahead is not None:  # images on disk: this rank's next batch decodes while this one trains
            with timing("chain"):
                split.prefetch(ahead)
        return loaded

    upcoming = None  # the next group, pulled one step ahead (the chain is fixed by q and rng)
    while tally.reason is None:
        with timing("chain"):  # includes the wait for the prefetch thread
            local = pull() if upcoming is None else upcoming
            upcoming = pull() if local else []
        if not local:
            break
        ahead = members[upcoming[world().rank]] if len(upcoming) == group else None
        results = replicas.run(trainer, [members[b] for b in local], functools.partial(load_then_prefetch, ahead=ahead),
                               train)
        for position, (chosen, res) in enumerate(zip(local, results)):  # in chain order, as one process
            if not tally.add(chosen, res, position, trainer):
                break
            with timing("state"):
                pipeline.record(res.index, res.image_embed, res.text_embed, res.itc_per_sample, trainer.step)


def member_batches(batches: list[np.ndarray], n_members: int, trained: int) -> np.ndarray:
    """(|M|,) the index of the batch each member was trained in; -1 for members of no trained
    batch (dropped by the chain, or after a terminated step's last batch)."""
    out = np.full(n_members, -1, dtype=np.int64)
    for b, local in enumerate(batches[:trained]):
        out[np.asarray(local, dtype=np.int64)] = b
    return out


def batch_stats(split: PairSplit, members: np.ndarray, chain: ChainResult,
                values: list[dict[str, float]]) -> dict[str, Any]:
    """The per-batch view of one env step: for each trained batch (in training order) its size,
    its in-batch false-negative pairs (``fn_pairs``; NaN without a match matrix), the mean q of
    its chain picks (``q_mean``), their mean rank quantile among the remaining candidates
    (``rank_quantile``: 0 the least, 1 the most similar) and its reward components (``rewards``)."""
    trained = len(values)
    out: dict[str, Any] = {"size": [], "fn_pairs": [], "q_mean": [], "rank_quantile": [],
                           "rewards": {name: [r.get(name, float("nan")) for r in values]
                                       for name in dict.fromkeys(k for r in values for k in r)}}
    # each pick belongs to its anchor's batch (batches may train in another order than built, and
    # a space's chain links one batch to the next: that pick is its anchor's, the last member's)
    n = int(sum(len(local) for local in chain.batches)) + int(chain.dropped.size)
    anchor_batch = member_batches(chain.batches, n, len(chain.batches))[chain.picks[:, 0]]
    for b, local in enumerate(chain.batches):
        if b >= trained:
            break
        sl = anchor_batch == b
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
