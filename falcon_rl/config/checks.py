"""Cross-section checks of a config that mines negatives (``train-agent``, ``ablate``,
``pretrain --scheduler``, the env): caught when the config is read, before any data is loaded."""

from __future__ import annotations

import json
import os

from falcon_rl.config import rewards
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
    if m.framework == "blip2" and cfg.experimental.itc_consistency:
        raise ConfigError(f"{source}: experimental.itc_consistency is GRIT-VLP's term on ALBEF's ITC; "
                          "model.framework=blip2 does not have it (set it to 0)")
    if m.framework == "blip2" and m.false_negatives == "mafa" and cfg.mafa.filter == "momentum":
        raise ConfigError(f"{source}: mafa.filter=momentum needs a momentum model, which BLIP-2 "
                          "(model.framework=blip2) does not have: use mafa.filter=pretrain, path or snapshot")


def check_devices(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """``train.device`` and ``mining.cache_device`` name a device (``auto``, ``cpu``, ``cuda``,
    ``cuda:K``, ...) this machine has: a GPU it lacks is a config error before any data is loaded.
    Checked by the commands that train (not by ``plan``, which may size a GPU run on any machine)."""
    import torch

    named = [("train.device", cfg.train.device), ("mining.cache_device", cfg.mining.cache_device)]
    if cfg.mining.space_kind == "neighbourhood":  # the only user of the neighbour search
        named.append(("mining.knn_device", cfg.mining.knn_device))
    for key, name in named:
        if name == "auto":
            continue
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"{source}: {key}={name!r} is not a device (auto, cpu, cuda or cuda:K)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{source}: {key}={name!r} but CUDA is not available on this machine")


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
    if cfg.experimental.reward_estimator == "subbatch" and not rewards.spec(cfg.env.reward).subbatch:
        raise ConfigError(f"{source}: experimental.reward_estimator=subbatch estimates the lm (mlm) reward only (env.reward="
                          f"{cfg.env.reward!r}); use experimental.reward_estimator=exact")
    if cfg.experimental.gt_loss == "mask":
        clash = [k for k, on in (("model.framework=blip2", cfg.model.framework == "blip2"),
                                 ("model.false_negatives=mafa", cfg.model.false_negatives == "mafa"),
                                 ("experimental.itc_consistency", bool(cfg.experimental.itc_consistency))) if on]
        if clash:
            raise ConfigError(f"{source}: experimental.gt_loss=mask leaves true matches out of ALBEF's ITC / ITM; it "
                              f"does not combine with {', '.join(clash)}")
    if cfg.experimental.reward_every > 1:
        reward = rewards.spec(cfg.env.reward)
        if not reward.per_batch:
            raise ConfigError(f"{source}: experimental.reward_every={cfg.experimental.reward_every} skips per-batch "
                              f"rewards; env.reward={cfg.env.reward!r} trains {reward.computation.value}: set "
                              "experimental.reward_every=1")
        # under N processes the env checks again with its ceil(batches / N) optimiser steps
        problem = reward_every_excess(cfg.experimental.reward_every, m // b, f"full batches of an env step "
                                      f"(mining.search_space={m}, train.batch_size={b})")
        if problem:
            raise ConfigError(f"{source}: {problem}")
    check_rewards(cfg, source)


def reward_every_excess(every: int, steps: int, what: str) -> str | None:
    """The error when ``experimental.reward_every`` exceeds an env step's ``steps`` (``what`` says which
    count): no reward would be measured in an env step; None when it fits. Checked on the config and
    again by the env, which knows the number of processes."""
    if every <= steps:
        return None
    return (f"experimental.reward_every={every} exceeds the {steps} {what}: an env step would measure no reward; "
            "lower experimental.reward_every")


#: per-batch reward options experimental.reward_log accepts (the registry's, :mod:`falcon_rl.config.rewards`)
LOGGABLE_REWARDS = rewards.PER_BATCH
#: rewards with a loss change per member (experimental.credit: member)
MEMBER_CREDIT_REWARDS = rewards.MEMBER_CREDIT


def check_rewards(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """``experimental.reward_log`` names, the frameworks of the rewards, the validation hold-out and per-member
    credit (FALCON learners), as the reward registry (:mod:`falcon_rl.config.rewards`) says."""
    env = cfg.env
    bad = [n for n in env.reward_log if not rewards.loggable(n)]
    if bad:
        raise ConfigError(f"{source}: experimental.reward_log has {bad}, not per-batch reward options; choose from "
                          f"{list(LOGGABLE_REWARDS)}")
    for name in dict.fromkeys((env.reward, *env.reward_log)):
        option = rewards.spec(name)
        if cfg.model.framework not in option.frameworks:
            raise ConfigError(f"{source}: the {name} reward "
                              + option.framework_reason.format(framework=cfg.model.framework)
                              + f" (drop {name} from env.reward / experimental.reward_log)")
    reward = rewards.spec(env.reward)
    if env.reward_log and not reward.per_batch:
        raise ConfigError(f"{source}: experimental.reward_log needs a reward measured per trained batch; env.reward="
                          f"{env.reward!r} trains {reward.computation.value}")
    held = env.held_out_pairs
    if held and cfg.data.source in GENERATED_SOURCES and cfg.data.n_train - held < cfg.mining.search_space:
        raise ConfigError(f"{source}: experimental.val_pairs={held} held-out pairs leave {cfg.data.n_train - held} of "
                          f"data.n_train={cfg.data.n_train} for training, fewer than mining.search_space="
                          f"{cfg.mining.search_space}: lower experimental.val_pairs or raise data.n_train")
    signal = rewards.member_signal(env.member_reward)
    if signal.influence and not reward.per_batch:
        raise ConfigError(f"{source}: experimental.member_reward={signal.name} is measured per trained batch; env.reward="
                          f"{env.reward!r} trains {reward.computation.value}")
    if cfg.agent.name in ("falcon", "batch-level") and cfg.experimental.credit == "member":
        if not signal.influence and not reward.member_credit:  # the influence: any per-batch reward
            raise ConfigError(f"{source}: experimental.credit=member needs a loss change per member: env.reward in "
                              f"{list(MEMBER_CREDIT_REWARDS)}, not {env.reward!r}")
        if env.reward_estimator != "exact":
            raise ConfigError(f"{source}: experimental.credit=member needs every member's loss change: "
                              "experimental.reward_estimator=exact, not subbatch")


def train_ground_truth(cfg: ExperimentConfig, source: str = "<config>") -> bool:
    """Whether the training split will carry a caption x image match matrix: the generated
    benchmarks always; ``albef_json`` with ``data.match_from: image_id`` (pairs sharing an image),
    or ``auto`` when every entry of ``data.train_file`` has an ``image_id`` (the file is read)."""
    data = cfg.data
    if data.source in GENERATED_SOURCES:
        return True
    if data.source != "albef_json" or data.match_from == "none":
        return False
    if data.match_from == "image_id":
        return True
    return _all_entries_have_image_id(data.train_file, source)


def _all_entries_have_image_id(path: str | None, source: str) -> bool:
    """Whether every entry of an ALBEF JSON file has ``image_id`` (``data.match_from: auto``)."""
    if not path:
        return False  # loading the data names the missing data.train_file
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{source}: data.train_file={path}: cannot read it as JSON ({e})") from e
    return isinstance(entries, list) and bool(entries) and all(
        isinstance(e, dict) and "image_id" in e for e in entries)


def check_labels(cfg: ExperimentConfig, source: str = "<config>", scheduler_needs: bool = False,
                 scheduler: str | None = None) -> None:
    """Refuse, before any data is loaded, settings that read the training split's true matches
    when the data have none: ``env.oracle``, ``env.gt_targets``, ``experimental.state_specificity`` and
    schedulers that need them (``scheduler_needs``, e.g. ``oracle``)."""
    wanted = [key for key, on in (("env.oracle", cfg.env.oracle), ("env.gt_targets", cfg.env.gt_targets),
                                  ("experimental.state_specificity", cfg.experimental.state_specificity)) if on]
    if scheduler_needs:
        wanted.insert(0, f"scheduler {scheduler!r}")
    if cfg.experimental.state_specificity and cfg.data.source not in GENERATED_SOURCES:
        raise ConfigError(f"{source}: experimental.state_specificity reads how many facts each caption states, which only "
                          "the generated benchmarks know; drop it")
    if not wanted or train_ground_truth(cfg, source):
        return
    hint = ("set data.match_from=image_id (pairs that share an image match) or give every train entry an image_id"
            if cfg.data.source == "albef_json" else "use a generated benchmark")
    raise ConfigError(f"{source}: {', '.join(wanted)} needs ground-truth matches of the training pairs, which "
                      f"data.source={cfg.data.source} does not have here; drop it or {hint}")
