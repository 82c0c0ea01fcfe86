"""Negative-mining schedulers (installed as falcon_rl.agents; docs/ALGORITHM.md §6-7).

Every scheduler satisfies one protocol (:mod:`falcon_rl.agents.base`) and is made by name:

>>> from falcon_rl.agents import available, make_scheduler
>>> sched = make_scheduler("grit", cfg, env)          # doctest: +SKIP
>>> action, _ = sched.predict(obs)                     # doctest: +SKIP
"""

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.agents.falcon import BatchLevelScheduler, BetaPolicy, FalconScheduler
from falcon_rl.agents.frozen import FrozenSchedulerSampler, frozen_batch_sampler
from falcon_rl.agents.heuristics import (ConstantScheduler, GritScheduler, OracleScheduler,
                                         ProgressiveScheduler, RandomScheduler, SofteningScheduler)
from falcon_rl.agents.registry import (ENTRY_POINT_GROUP, SchedulerNameError, available, canonical_name,
                                       check_protocol, is_sb3, load_scheduler, make_scheduler,
                                       needs_oracle, scheduler_class)
from falcon_rl.agents.sb3 import sb3_setup
from falcon_rl.agents.sb3_policies import (MemberActorCriticPolicy, MemberCritic, MemberFlatten,
                                           MemberSACActor, MemberSACPolicy, MemberTD3Actor, MemberTD3Policy)

__all__ = [
    "BatchLevelScheduler", "BetaPolicy", "ConstantScheduler", "FalconScheduler", "FrozenSchedulerSampler",
    "GritScheduler",
    "MemberActorCriticPolicy", "MemberCritic", "MemberFlatten", "MemberSACActor", "MemberSACPolicy",
    "MemberTD3Actor", "MemberTD3Policy", "OracleScheduler", "ProgressiveScheduler", "RandomScheduler",
    "Scheduler", "SchedulerSpec", "SofteningScheduler", "available", "canonical_name", "frozen_batch_sampler",
    "is_sb3", "load_scheduler", "make_scheduler", "needs_oracle",
    "ENTRY_POINT_GROUP", "sb3_setup", "SchedulerNameError", "check_protocol", "scheduler_class",
]
