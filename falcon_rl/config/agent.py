"""``agent`` section: the negative-mining scheduler (DESIGN §2.5-2.6)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class AgentConfig:
    """Scheduler choice and its hyper-parameters."""

    name: str = param("falcon", "scheduler name (see falcon_rl.agents.available())")
    q: float = param(0.5, "fixed: the constant q", ge=0.0, le=1.0)
    hidden: int = param(64, "FALCON residual-MLP width", ge=4)
    blocks: int = param(4, "FALCON residual blocks", ge=1)
    lr: float = param(1e-3, "scheduler learning rate", gt=0.0)
    update_every: int = param(1, "REINFORCE update every N env steps", ge=1)
    baseline_momentum: float = param(0.9, "moving-average reward baseline momentum", ge=0.0, lt=1.0)
    entropy_coef: float = param(1e-3, "entropy bonus weight", ge=0.0)
    normalize_reward: bool = param(True, "divide advantages by a running reward std")
    min_concentration: float = param(1.0, "lower bound added to Beta alpha, beta", ge=0.0)
    sb3_total_steps: int = param(200, "SB3 agents: env steps of learning", ge=1)
    sb3_n_steps: int = param(8, "PPO/A2C rollout length", ge=1)
    sb3_kwargs: dict = param({}, "extra keyword arguments for the SB3 algorithm")
    load_path: str | None = param(None, "load a trained agent (frozen) from this file")
