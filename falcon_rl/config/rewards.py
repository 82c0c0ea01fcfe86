"""The reward registry: every ``env.reward`` option with what it measures, needs and costs, and
how the env computes it (docs/ALGORITHM.md §5 and §13; FALCON, arXiv 2505.11192, §2.4).

Pure data in the config layer, so that the config checks, the warm-start signature and the
``env.reward`` docs read it without importing upward; the computations live in ``envs/``
(:mod:`falcon_rl.envs.reward_components` measures the per-batch :class:`Measure` s around a
training step, :mod:`falcon_rl.envs.step_rewards` dispatches on :class:`Computation`). Reward
names are compared here and nowhere else: code asks a predicate (``spec(name).per_batch``,
:func:`needs_held_out`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: the frameworks every framework-neutral reward supports (``model.framework``)
ALL_FRAMEWORKS: tuple[str, ...] = ("albef", "blip2")


class Computation(Enum):
    """How the env computes a reward, what it dispatches on (the value: what it trains, for messages)."""

    #: before − after around each trained batch (its :class:`Measure` parts), mean over the step's batches
    BATCH = "per trained batch"
    #: the held-out multi-positive i2t R@1 after the step minus before it, once per env step
    RETRIEVAL = "per step"
    #: a function of q and caption specificity with a known optimum; no training at all
    TOY = "nothing"


class Measure(Enum):
    """A quantity measured before − after one batch's training step (a reward's *part*; its
    component in ``info["reward_components"]`` is named by :meth:`component`)."""

    LM = "lm"  #: the framework's LM loss (ALBEF's MLM, BLIP-2's ITG) on the batch, training masks
    ITC = "itc"  #: the in-batch ITC loss
    ITM = "itm"  #: the ITM loss with the hardest in-batch negatives
    MLM_HI = "mlm_hi"  #: ALBEF's MLM on masks of its own at experimental.reward_mlm_prob
    LM_SAMPLE = "lm_sample"  #: each pair's mean LM loss over its targets, mean over pairs
    VAL_ITC = "val_itc"  #: the ITC over the held-out validation pairs
    VAL_LM = "val_lm"  #: the LM loss (fixed masks) of the held-out validation pairs

    @property
    def held_out(self) -> bool:
        """Measured on the held-out validation pairs (``experimental.val_pairs``), not on the batch."""
        return self in (Measure.VAL_ITC, Measure.VAL_LM)

    @property
    def token_rows(self) -> bool:
        """Read from the per-token LM losses of the batch (per-pair values come with it)."""
        return self in (Measure.LM, Measure.LM_SAMPLE)

    def component(self, lm_name: str) -> str:
        """Its key in the reward components: the LM loss is named after the model's (``mlm`` / ``itg``)."""
        return lm_name if self is Measure.LM else self.value


@dataclass(frozen=True)
class RewardSpec:
    """One reward option.

    :ivar doc: what it measures, one line.
    :ivar computation: how the env computes it (:class:`Computation`).
    :ivar parts: the per-batch measures summed into it (``Computation.BATCH`` only).
    :ivar scaled: the parts weighted by ``experimental.reward_val_weight`` (λ) in the sum (others: 1).
    :ivar own: the part whose per-pair change is each member's own credit (``member_own_reward``,
        ``experimental.credit: member``), or None.
    :ivar member_credit: it has a value per member (``own``, or the toy reward's own term).
    :ivar member_values: its per-member values are measured whatever ``experimental.credit`` (the batch
        value is their mean), so the env reports them.
    :ivar specificity: needs caption specificities (the generated benchmarks').
    :ivar frameworks: the ``model.framework`` values it exists for; ``framework_reason`` says why
        (``{framework}``: the configured one).
    :ivar subbatch: ``experimental.reward_estimator: subbatch`` can estimate it.
    :ivar cost: its price in extra forwards (timed as ``reward``).
    """

    name: str
    doc: str
    computation: Computation
    cost: str
    parts: tuple[Measure, ...] = ()
    scaled: tuple[Measure, ...] = ()
    own: Measure | None = None
    member_credit: bool = False
    member_values: bool = False
    specificity: bool = False
    frameworks: tuple[str, ...] = ALL_FRAMEWORKS
    framework_reason: str = ""
    subbatch: bool = False

    @property
    def per_batch(self) -> bool:
        """Measured around each trained batch (loggable with ``experimental.reward_log``; per-batch credit)."""
        return self.computation is Computation.BATCH

    @property
    def trains(self) -> bool:
        """Whether the env trains the model under this reward (the toy diagnostic does not)."""
        return self.computation is not Computation.TOY

    @property
    def needs_held_out(self) -> bool:
        """Measured on held-out training pairs (``experimental.val_pairs`` are held out of training)."""
        return any(p.held_out for p in self.parts)

    @property
    def combined(self) -> bool:
        """A weighted sum of several parts (logged as an option of its own)."""
        return len(self.parts) > 1

    @property
    def shapes_warm_up(self) -> bool:
        """Whether it changes the warm-up or the state saved after it (``env.warm_start``): the toy
        reward trains nothing, retrieval scores the warm model; a per-batch reward is computed
        only after the warm-up."""
        return not self.per_batch

    @property
    def needs(self) -> tuple[str, ...]:
        """What it needs beyond a training split of image-caption pairs, in words (no reward needs
        ground-truth matches: they are label-free, the toy diagnostic aside)."""
        return tuple(what for what, on in (
            ("caption specificities", self.specificity), ("held-out training pairs", self.needs_held_out),
            ("the test split", self.computation is Computation.RETRIEVAL),
            (" or ".join(self.frameworks), self.frameworks != ALL_FRAMEWORKS)) if on)

    def weights(self, val_weight: float = 1.0) -> dict[Measure, float]:
        """Part -> its weight in the sum: 1, or ``val_weight`` (λ) for the scaled parts."""
        return {p: (float(val_weight) if p in self.scaled else 1.0) for p in self.parts}


_LM_COST = "one extra LM forward per batch (two with dropout; one of experimental.reward_subbatch pairs when sub-batched)"
_VAL_COST = "one pass over the held-out pairs per batch, plus one per step"
_M = Measure
_SPECS = (
    RewardSpec("lm", "the drop of the framework's language-modelling loss on the batch, same masks (ALBEF's MLM: "
               "FALCON's ΔL_MLM; BLIP-2's ITG)", Computation.BATCH, _LM_COST, parts=(_M.LM,), own=_M.LM,
               member_credit=True, subbatch=True),
    RewardSpec("mlm", "lm under its name before BLIP-2", Computation.BATCH, _LM_COST, parts=(_M.LM,), own=_M.LM,
               member_credit=True, subbatch=True),
    RewardSpec("itc", "the drop of the in-batch ITC loss", Computation.BATCH, "two extra ITC forwards per batch",
               parts=(_M.ITC,), own=_M.ITC, member_credit=True),
    RewardSpec("itm", "the drop of the ITM loss with the hardest in-batch negatives", Computation.BATCH,
               "two extra ITM forwards per batch", parts=(_M.ITM,)),
    RewardSpec("itc+itm", "itc + itm", Computation.BATCH, "two extra ITC and two extra ITM forwards per batch",
               parts=(_M.ITC, _M.ITM)),
    RewardSpec("mlm_hi", "ΔL_MLM on masks of its own at experimental.reward_mlm_prob (GRIT's density)", Computation.BATCH,
               "two extra MLM forwards per batch", parts=(_M.MLM_HI,), own=_M.MLM_HI, member_credit=True,
               frameworks=("albef",),
               framework_reason="re-masks captions for ALBEF's MLM; model.framework={framework!r} has no MLM"),
    RewardSpec("lm_sample", "per-sample ΔL_LM: each pair's mean over its LM targets, mean over pairs",
               Computation.BATCH, "one extra per-token LM forward per batch (two with dropout)",
               parts=(_M.LM_SAMPLE,), own=_M.LM_SAMPLE, member_credit=True, member_values=True),
    RewardSpec("val_itc", "the drop of the ITC on experimental.val_pairs held-out training pairs (label-free)",
               Computation.BATCH, _VAL_COST, parts=(_M.VAL_ITC,)),
    RewardSpec("val_lm", "the drop of the LM loss (fixed masks) on experimental.val_pairs held-out training pairs "
               "(label-free)", Computation.BATCH, _VAL_COST, parts=(_M.VAL_LM,)),
    RewardSpec("itc+val_itc", "ΔL_ITC + experimental.reward_val_weight × Δval_ITC", Computation.BATCH,
               "two extra ITC forwards per batch and " + _VAL_COST, parts=(_M.ITC, _M.VAL_ITC),
               scaled=(_M.VAL_ITC,), own=_M.ITC, member_credit=True),
    RewardSpec("retrieval", "the gain of held-out multi-positive image→text R@1 (experimental.retrieval_pairs test pairs) "
               "over the env step", Computation.RETRIEVAL, "one embedding pass of the retrieval pairs per step"),
    RewardSpec("toy", "a diagnostic that trains nothing: −mean (q − experimental.toy_optimum[F − 1])², F the caption "
               "specificity", Computation.TOY, "none (nothing is trained)", member_credit=True, specificity=True),
)
#: reward name -> its spec, in the order the docs list them
REWARDS: dict[str, RewardSpec] = {s.name: s for s in _SPECS}
#: the per-batch options (what ``experimental.reward_log`` and ``reward_check.rewards`` accept)
PER_BATCH: tuple[str, ...] = tuple(n for n, s in REWARDS.items() if s.per_batch)
#: the rewards with a value per member (``experimental.credit: member`` with ``experimental.member_reward: own``)
MEMBER_CREDIT: tuple[str, ...] = tuple(n for n, s in REWARDS.items() if s.member_credit)


def _check_table() -> None:
    for s in _SPECS:
        assert s.per_batch == bool(s.parts), s.name
        assert (s.own is not None) == (s.member_credit and s.per_batch), s.name
        assert set(s.scaled) <= set(s.parts) and (s.own is None or s.own in s.parts), s.name


_check_table()


@dataclass(frozen=True)
class MemberSignal:
    """One ``experimental.member_reward`` option: what each member's own credit is (``experimental.credit: member``).

    :ivar influence: the member's first-order influence on the held-out ITC, measured around each
        trained batch whatever the reward (needs a per-batch reward and the held-out pairs); else
        its own change of ``env.reward`` (the reward's ``own`` part: a reward with ``member_credit``).
    """

    name: str
    doc: str
    influence: bool = False

    @property
    def needs_held_out(self) -> bool:
        """Measured on the held-out training pairs (``experimental.val_pairs``)."""
        return self.influence


#: ``experimental.member_reward`` options (:mod:`falcon_rl.envs.member_influence` computes the influence)
MEMBER_SIGNALS: dict[str, MemberSignal] = {s.name: s for s in (
    MemberSignal("own", "each member's own change of env.reward"),
    MemberSignal("val_influence", "its first-order influence on the held-out ITC, ∇L_val · Adam-preconditioned "
                 "∇ℓ_pair (label-free; holds out experimental.val_pairs like val_itc)", influence=True),
)}


def member_signal(name: str) -> MemberSignal:
    """The ``experimental.member_reward`` option ``name``; a :class:`ValueError` listing the choices for an unknown one."""
    try:
        return MEMBER_SIGNALS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown experimental.member_reward {name!r}; choose from {list(MEMBER_SIGNALS)}") from None


def names() -> list[str]:
    """Every reward name (the choices of ``env.reward``)."""
    return list(REWARDS)


def spec(name: str) -> RewardSpec:
    """The spec of reward ``name``; a :class:`ValueError` listing the choices for an unknown one."""
    try:
        return REWARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reward {name!r}; choose from {names()}") from None


def known(name: object) -> bool:
    """Whether ``name`` is a reward name."""
    return isinstance(name, str) and name in REWARDS


def loggable(name: object) -> bool:
    """Whether ``name`` is a per-batch option (``experimental.reward_log``, ``reward_check.rewards``)."""
    return known(name) and REWARDS[name].per_batch  # type: ignore[index]


def loggable(name: object) -> bool:
    """Whether ``name`` is a per-batch option (``experimental.reward_log``, ``reward_check.rewards``)."""
    return known(name) and REWARDS[name].per_batch  # type: ignore[index]


def needs_held_out(*names_: object) -> bool:
    """Whether any of the (known) rewards ``names_`` is measured on held-out training pairs."""
    return any(known(n) and REWARDS[n].needs_held_out for n in names_)  # type: ignore[index]


def shapes_warm_up(name: object) -> bool:
    """Whether reward ``name`` changes the warm-up or its saved state (an unknown name: no)."""
    return known(name) and REWARDS[name].shapes_warm_up  # type: ignore[index]


def measures(*names_: str) -> set[Measure]:
    """Every part of the rewards ``names_``."""
    return {p for n in names_ for p in spec(n).parts}


def doc() -> str:
    """The one-line doc of ``env.reward`` (``falcon-rl config --docs``, ``--help``)."""
    return "proxy reward (what the scheduler learns from): " + "; ".join(
        f"{s.name} = {s.doc}" + ("" if s.frameworks == ALL_FRAMEWORKS else f" ({', '.join(s.frameworks)} only)")
        for s in _SPECS) + " (what each needs and costs: falcon_rl/config/rewards.py)"


def member_doc() -> str:
    """The one-line doc of ``experimental.member_reward``."""
    return "experimental.credit=member: " + "; ".join(f"{s.name} = {s.doc}" for s in MEMBER_SIGNALS.values())


def log_doc() -> str:
    """The one-line doc of ``experimental.reward_log``."""
    return ("extra per-batch reward options computed for logging only, on the same steps (info reward_components / "
            "batch_stats, the run history; falcon-rl reward-check), also for heuristics: any of "
            + ", ".join(PER_BATCH))
