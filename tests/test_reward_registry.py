"""The reward registry (falcon_rl/config/rewards.py): one table the config checks, the warm-start
signature, the env and the ``env.reward`` docs all read, and no reward name compared anywhere else."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from falcon_rl.config import ConfigError, check_mining, load_config, rewards
from falcon_rl.config.env import EnvConfig
from falcon_rl.config.rewards import Computation, Measure
from falcon_rl.training.warm_start import warm_signature
from falcon_rl.config.experimental import ExperimentalConfig, build_section

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_drives_the_env_reward_key():
    meta = {f.name: f.metadata for f in fields(EnvConfig) + fields(ExperimentalConfig)}  # reward_log moved
    assert list(meta["reward"]["choices"]) == rewards.names() == list(rewards.REWARDS)
    assert meta["reward"]["doc"] == rewards.doc() and all(f"{n} = " in rewards.doc() for n in rewards.names())
    assert all(n in meta["reward_log"]["doc"] for n in rewards.PER_BATCH)
    assert list(meta["member_reward"]["choices"]) == list(rewards.MEMBER_SIGNALS)
    for name, s in rewards.REWARDS.items():
        assert s.name == name and s.doc and s.cost and "\n" not in s.doc
        assert s.per_batch == (s.computation is Computation.BATCH) == rewards.loggable(name)


def test_what_each_reward_needs():
    spec = rewards.spec
    assert [n for n in rewards.names() if spec(n).needs_held_out] == ["val_itc", "val_lm", "itc+val_itc"]
    assert [n for n in rewards.names() if not spec(n).per_batch] == ["retrieval", "toy"]
    assert [n for n in rewards.names() if not spec(n).trains] == ["toy"] and spec("toy").specificity
    assert [n for n in rewards.names() if spec(n).subbatch] == ["lm", "mlm"]
    assert [n for n in rewards.names() if spec(n).frameworks != ("albef", "blip2")] == ["mlm_hi"]
    assert set(rewards.MEMBER_CREDIT) == {"lm", "mlm", "lm_sample", "mlm_hi", "itc", "itc+val_itc", "toy"}
    assert [n for n in rewards.names() if spec(n).member_values] == ["lm_sample"]
    assert spec("itc+val_itc").weights(3.0) == {Measure.ITC: 1.0, Measure.VAL_ITC: 3.0}
    assert spec("val_itc").weights(3.0) == {Measure.VAL_ITC: 1.0}  # λ weighs the held-out part of a sum only
    assert spec("lm").parts == spec("mlm").parts == (Measure.LM,) and Measure.LM.component("itg") == "itg"
    assert spec("lm").needs == () and spec("toy").needs == ("caption specificities",)
    assert spec("itc+val_itc").needs == ("held-out training pairs",) and spec("mlm_hi").needs == ("albef",)
    assert rewards.shapes_warm_up("toy") and rewards.shapes_warm_up("retrieval") and not rewards.shapes_warm_up("itc")
    assert not rewards.shapes_warm_up("per-batch loss difference")  # what older signatures recorded
    with pytest.raises(ValueError, match=r"unknown reward 'nope'; choose from \['lm'"):
        spec("nope")


def test_held_out_pairs_and_the_warm_signature_follow_the_registry():
    assert build_section(EnvConfig, reward="itc").held_out_pairs == 0
    assert build_section(EnvConfig, reward="itc+val_itc", val_pairs=7).held_out_pairs == 7
    assert build_section(EnvConfig, reward="itc", reward_log=["val_lm"], val_pairs=7).held_out_pairs == 7
    assert build_section(EnvConfig, reward="itc", member_reward="val_influence", val_pairs=7).held_out_pairs == 7
    signed = {n: warm_signature(load_config(None, [f"env.reward={n}"]), 0)["env"]["reward"] for n in rewards.names()}
    assert {n for n, v in signed.items() if v == n} == {"retrieval", "toy"}
    assert len({v for n, v in signed.items() if v != n}) == 1  # every per-batch reward shares one warm start


def test_config_checks_read_the_registry():
    tiny = ["model.preset=tiny", "data.n_train=256", "mining.search_space=64", "train.batch_size=32"]
    with pytest.raises(ConfigError, match="the mlm_hi reward re-masks captions for ALBEF's MLM; "
                                          "model.framework='blip2' has no MLM"):
        check_mining(load_config(None, tiny + ["model.framework=blip2", "model.preset=blip2-tiny",
                                               "experimental.reward_log=[mlm_hi]"]))
    with pytest.raises(ConfigError, match="env.reward='retrieval' trains per step"):
        check_mining(load_config(None, tiny + ["env.reward=retrieval", "experimental.reward_log=[itc]"]))
    with pytest.raises(ConfigError, match="env.reward='toy' trains nothing"):
        check_mining(load_config(None, tiny + ["env.reward=toy", "experimental.member_reward=val_influence", "experimental.val_pairs=32"]))
    with pytest.raises(ConfigError, match="estimates the lm \\(mlm\\) reward only"):
        check_mining(load_config(None, tiny + ["env.reward=itc", "experimental.reward_estimator=subbatch"]))
    check_mining(load_config(None, tiny + ["env.reward=lm", "experimental.reward_estimator=subbatch"]))


#: reward names no other code spells (``itc`` / ``itm`` / ``lm`` are also loss and head names), the
#: member-credit option and the ``val_`` prefix the held-out rewards were once recognised by
_LITERALS = {n for n in rewards.names() if n not in ("lm", "mlm", "itc", "itm")} | {"val_influence", "val_"}
#: what holds a reward name (compared with anything, it is a reward-name comparison)
_HOLDERS = {"reward", "reward_log", "member_reward"}


def _reward_comparison(node: ast.Compare) -> bool:
    """A comparison with a reward-name literal, or of a reward-holding key with strings."""
    sides = [node.left, *node.comparators]
    strings = []
    for side in sides:
        items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        strings += [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    names = {side.attr if isinstance(side, ast.Attribute) else side.id for side in sides
             if isinstance(side, (ast.Attribute, ast.Name))}
    return bool(_LITERALS.intersection(strings)) or bool(strings and names & _HOLDERS)


def test_no_reward_name_is_compared_outside_the_registry():
    """The acceptance check of issue #31: code asks the registry, it does not compare names."""
    hits = []
    for top in ("falcon_rl", "envs", "agents"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == ROOT / "falcon_rl" / "config" / "rewards.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            hits += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
                     if isinstance(node, ast.Compare) and _reward_comparison(node)]
    assert hits == []


def test_the_comparison_check_sees_the_old_spellings():
    old = ['cfg.env.reward == "toy"', 'reward not in ("lm", "mlm")', 'experimental.member_reward == "val_influence"',
           'any("val_" in str(n) for n in names)', 'name in ("toy", "retrieval")', 'self.cfg.env.reward != "toy"']
    assert all(any(_reward_comparison(n) for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Compare))
               for code in old)
    fine = ['kind == "itm"', 'rewards.spec(cfg.env.reward).subbatch', 'mode == "never"']
    assert not any(_reward_comparison(n) for code in fine for n in ast.walk(ast.parse(code))
                   if isinstance(n, ast.Compare))
