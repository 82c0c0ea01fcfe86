"""``agent`` section: the negative-mining scheduler (docs/ALGORITHM.md §6-7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param


@dataclass
class Sb3Config:
    """``agent.sb3``: what a Stable-Baselines3 agent (ppo, a2c, sac, td3) learns with."""

    total_steps: int = param(200, "SB3 agents: env steps of learning", ge=1)
    n_steps: int = param(8, "PPO/A2C rollout length", ge=1)
    gamma: float = param(0.0, "SB3 discount; 0 treats every env step as a bandit, like FALCON's REINFORCE",
                         ge=0.0, le=1.0)
    hidden: list[int] = param([64, 64], "SB3 per-member MLP widths (shared over members)", each_ge=1)
    kwargs: dict = param({}, "extra keyword arguments for the SB3 algorithm")


@section_view("agent")
@dataclass
class AgentConfig:
    """Scheduler choice and its hyper-parameters."""

    name: str = param("falcon", "scheduler name (see falcon_rl.agents.available())")
    q: float = param(0.5, "fixed: the constant q", ge=0.0, le=1.0)
    lr: float = param(1e-3, "scheduler learning rate (FALCON / batch-level Adam; SB3 learning_rate)", gt=0.0)
    entropy_coef: float = param(1e-3, "entropy bonus weight", ge=0.0)
    grad_clip: float = param(1.0, "FALCON / batch-level: max gradient norm of an update (0 = off)", ge=0.0)
    seed: int | None = param(None, "scheduler sampling / init seed (null: train.seed)", ge=0)
    sb3: Sb3Config = field(default_factory=Sb3Config,
                           metadata={"doc": "Stable-Baselines3 agents (ppo, a2c, sac, td3): agent.sb3.*"})
    train_episodes: int = param(0, "learn for N episodes first (in <out_dir>/train, every episode restarting "
                                "pretraining from the warm start), then report a fresh pretraining run with that "
                                "agent frozen (0: the reported run is the learning run itself; ignored with "
                                "agent.load_path)", ge=0)
    load_path: str | None = param(None, "load a trained agent (frozen) from this file")
    checkpoint_every: int = param(10, "train-agent: write the resume checkpoint every N env steps (0: only on "
                                  "Ctrl-C); SB3 agents at the first update boundary after N steps", ge=0)
    trust_agent_file: bool = param(False, "let SB3 unpickle (run) the serialized entries of an agent.zip that "
                                   "falcon-rl cannot rebuild; only for files from a trusted source "
                                   "(CLI: --trust-agent-file)")
