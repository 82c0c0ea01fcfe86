"""``env`` section: the Gymnasium environment (docs/ALGORITHM.md §5; docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config import rewards
from falcon_rl.config.fields import param


@dataclass
class EnvConfig:
    """Episode, reward and action-space settings."""

    reward: str = param("mlm", rewards.doc(), choices=rewards.names())
    reward_log: list[str] = param([], rewards.log_doc())
    reward_val_weight: float = param(3.0, "itc+val_itc reward: λ in ΔL_ITC(batch) + λ·ΔL_ITC(held-out pairs); "
                                     "λ ≈ 1 stops paying for false negatives, λ ≈ 3 penalises them (reward-check)",
                                     ge=0.0)
    member_reward: str = param("own", rewards.member_doc(), choices=list(rewards.MEMBER_SIGNALS))
    reward_mlm_prob: float = param(0.5, "mlm_hi reward: masking probability of its own masks (GRIT's 0.5)",
                                   gt=0.0, lt=1.0)
    val_pairs: int = param(256, "val_itc / val_lm rewards: evenly spaced training pairs held out (with every pair "
                           "of their images) from the search spaces and the warm-up, on which the loss drop is "
                           "measured; only held out when such a reward is computed or logged", ge=1)
    reward_scale: float = param(1.0, "reward multiplier", gt=0.0)
    budget_steps: int = param(20, "env steps (search spaces) per episode; the end is 'truncated'", ge=1)
    action: str = param("box", "continuous q per member or K discrete levels",
                        choices=["box", "discrete"])
    levels: int = param(5, "discrete variant: K hardness levels", ge=2)
    retrieval_pairs: int = param(500, "held-out pairs for the retrieval reward", ge=10)
    toy_optimum: list[float] = param([0.2, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.0],
                                     "toy reward: optimal q per specificity 1..8 (tests)",
                                     each_ge=0.0, each_le=1.0)
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
    info_timing: bool = param(False, "put the wall-clock step_time and its split (time: train, reward, chain, "
                                     "state) in info (off by default, so info is exactly reproducible and "
                                     "Gymnasium's checker passes; train-agent logs time/* anyway)")
    compute_reward: str = param("auto", "compute the reward's extra forwards: auto = only when the scheduler learns "
                                "from the reward (train-agent / ablate decide; a bare env computes it), always "
                                "(e.g. to log it for heuristics), never (reward NaN)",
                                choices=["auto", "always", "never"])
    reward_estimator: str = param("exact", "lm (mlm) reward: exact (L_LM before - after on the whole batch) or "
                                  "subbatch "
                                  "(the same difference on env.reward_subbatch evenly spaced pairs of the batch, "
                                  "same masks: one smaller extra forward)", choices=["exact", "subbatch"])
    reward_subbatch: int = param(32, "env.reward_estimator=subbatch: pairs of each batch the after-loss is "
                                 "computed on (>= train.batch_size: the whole batch, equal to exact)", ge=1)

    @property
    def held_out_pairs(self) -> int:
        """Training pairs held out for the validation rewards: ``val_pairs`` when a ``val_*`` reward
        is computed or logged (or ``member_reward: val_influence``), else 0 (nothing is held out)."""
        held = (rewards.needs_held_out(self.reward, *self.reward_log)
                or rewards.member_signal(self.member_reward).needs_held_out)
        return self.val_pairs if held else 0
