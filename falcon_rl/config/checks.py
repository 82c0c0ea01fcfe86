"""Cross-section checks of a config that mines negatives (``train-agent``, ``ablate``,
``pretrain --scheduler``, the env): caught when the config is read, before any data is loaded."""

from __future__ import annotations

from falcon_rl.config.loader import ConfigError
from falcon_rl.config.schema import ExperimentConfig

#: data sources whose train split has exactly ``data.n_train`` pairs
GENERATED_SOURCES = ("synthetic_scenes", "digits_scenes")


def check_mining(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """Raise :class:`ConfigError` naming the keys when search spaces cannot be formed.

    ``mining.search_space`` must hold at least one batch (``>= train.batch_size``) and, for
    the generated benchmarks, fit in the training split (``<= data.n_train``); the sub-batch
    reward estimator exists for the lm (mlm) reward only.
    """
    m, b = cfg.mining.search_space, cfg.train.batch_size
    if m < b:
        raise ConfigError(f"{source}: mining.search_space={m} is smaller than train.batch_size={b}: a search "
                          "space must hold at least one batch")
    if cfg.data.source in GENERATED_SOURCES and m > cfg.data.n_train:
        raise ConfigError(f"{source}: mining.search_space={m} exceeds data.n_train={cfg.data.n_train}: lower "
                          "mining.search_space or raise data.n_train")
    if cfg.env.reward_estimator == "subbatch" and cfg.env.reward not in ("lm", "mlm"):
        raise ConfigError(f"{source}: env.reward_estimator=subbatch estimates the lm (mlm) reward only (env.reward="
                          f"{cfg.env.reward!r}); use env.reward_estimator=exact")
