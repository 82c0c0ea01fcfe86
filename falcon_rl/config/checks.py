"""Cross-section checks of a config that mines negatives (``train-agent``, ``ablate``,
``pretrain --scheduler``, the env): caught when the config is read, before any data is loaded."""

from __future__ import annotations

from falcon_rl.config.loader import ConfigError
from falcon_rl.config.schema import ExperimentConfig

#: data sources whose train split has exactly ``data.n_train`` pairs
GENERATED_SOURCES = ("synthetic_scenes", "digits_scenes")


def check_model(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """Raise :class:`ConfigError` for model keys that contradict each other across keys: a
    ``blip2-*`` preset needs ``model.framework: blip2``, and BLIP-2 has no momentum model for
    ``mafa.filter: momentum``."""
    m = cfg.model
    if m.preset.startswith("blip2-") and m.framework != "blip2":
        raise ConfigError(f"{source}: model.preset={m.preset} is a BLIP-2 preset: set model.framework=blip2 (or "
                          "pick an ALBEF preset)")
    if m.framework == "blip2" and m.false_negatives == "mafa" and cfg.mafa.filter == "momentum":
        raise ConfigError(f"{source}: mafa.filter=momentum needs a momentum model, which BLIP-2 "
                          "(model.framework=blip2) does not have: use mafa.filter=pretrain, path or snapshot")


def check_mining(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """Raise :class:`ConfigError` naming the keys when search spaces cannot be formed (and the
    :func:`check_model` errors).

    ``mining.search_space`` must hold at least one batch (``>= train.batch_size``) and, for
    the generated benchmarks, fit in the training split (``<= data.n_train``); the sub-batch
    reward estimator exists for the lm (mlm) reward only.
    """
    check_model(cfg, source)
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
