"""``env`` section: the Gymnasium environment (docs/ALGORITHM.md §5; docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config import rewards
from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param


@section_view("env")
@dataclass
class EnvConfig:
    """Episode, reward and action-space settings."""

    reward: str = param("mlm", rewards.doc(), choices=rewards.names())
    budget_steps: int = param(20, "env steps (search spaces) per episode; the end is 'truncated'", ge=1)
    checkpoint: str | None = param(None, "start each episode from this trainer checkpoint")
    warm_start: str | None = param(None, "file of the env state after the first episode's warm-up: written by the "
                                   "first run, loaded (config and seed checked) by every later run instead of "
                                   "repeating the warm-up (ablation.shared_warmup sets it per seed)")
    warm_start_episodes: str = param("first", "which episodes start from env.warm_start: the first only (later "
                                     "ones train a new model), or every one (the same warm model each episode, "
                                     "fresh search spaces, chain and mask randomness: train-agent --episodes N)",
                                     choices=["first", "every"])
    oracle: bool = param(False, "exclude true matches from the chain (oracle; needs a match matrix)")
    gt_targets: bool = param(False, "train the mined batches' ITC/ITM on ground-truth multi-positive targets: truly "
                             "matching in-batch pairs are ITC positives and never ITM negatives (the loss-side "
                             "bound, scheduler oracle-targets; needs a match matrix)")
    warmup_steps: int = param(0, "random-batch train steps at reset before mining; with "
                                 "mining.refresh_at_start false at least one epoch (fills the cache)", ge=0)
    eval_every: int = param(0, "train-agent: evaluate retrieval every N env steps (0: at episode ends only)",
                            ge=0)
    eval_at_end: bool = param(True, "train-agent: evaluate retrieval at the end of every episode")

    @property
    def held_out_pairs(self) -> int:
        """Training pairs held out for the validation rewards: ``val_pairs`` when a ``val_*`` reward
        is computed or logged (or ``member_reward: val_influence``), else 0 (nothing is held out)."""
        held = (rewards.needs_held_out(self.reward, *self.reward_log)
                or rewards.member_signal(self.member_reward).needs_held_out)
        return self.val_pairs if held else 0
