"""The experiment config: one dataclass per section, each in its own module."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from falcon_rl.config.ablation import AblationConfig
from falcon_rl.config.agent import AgentConfig
from falcon_rl.config.data import DataConfig
from falcon_rl.config.env import EnvConfig
from falcon_rl.config.eval import EvalConfig
from falcon_rl.config.experimental import ExperimentalConfig, bind
from falcon_rl.config.logging import LoggingConfig
from falcon_rl.config.mafa import MafaConfig
from falcon_rl.config.mining import MiningConfig
from falcon_rl.config.model import ModelConfig
from falcon_rl.config.reward_check import RewardCheckConfig
from falcon_rl.config.train import TrainConfig


@dataclass
class ExperimentConfig:
    """Everything one run needs; loaded from ``configs/*.yaml`` (see :func:`load_config`)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    mafa: MafaConfig = field(default_factory=MafaConfig)
    reward_check: RewardCheckConfig = field(default_factory=RewardCheckConfig)
    experimental: ExperimentalConfig = field(default_factory=ExperimentalConfig)

    def __post_init__(self) -> None:
        self._bind_sections()

    def _bind_sections(self) -> None:
        """Every section reads its moved keys from this config's ``experimental`` section."""
        for f in fields(self):
            if f.name != "experimental":
                object.__setattr__(self, f.name, bind(getattr(self, f.name), self.experimental))

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if "experimental" not in self.__dict__:  # still in __init__
            return
        if name == "experimental":
            self._bind_sections()
        elif name in {f.name for f in fields(self)}:
            object.__setattr__(self, name, bind(value, self.experimental))
