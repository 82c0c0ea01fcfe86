"""The config system: YAML + overrides, errors that name key, value and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from falcon_rl.config import ConfigError, ExperimentConfig, load_config, parse_override
from falcon_rl.config.loader import dump_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_file_values(tmp_path):
    p = write(tmp_path, "model:\n  preset: small\n  mlm_prob: 0.5\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(p)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.preset == "small" and cfg.model.mlm_prob == 0.5
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.batch_size == ExperimentConfig().train.batch_size


def test_overrides_apply_and_are_typed(tmp_path):
    p = write(tmp_path, "train:\n  steps: 10\n")
    cfg = load_config(p, ["train.steps=20", "mining.search_space=480", "experimental.fact_probs=[0.5, 0.5]",
                          "train.lr=1e-4", "data.train_file=null"])
    assert cfg.train.steps == 20
    assert cfg.mining.search_space == 480
    assert cfg.experimental.fact_probs == [0.5, 0.5]
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.train_file is None


def test_int_widens_to_float_but_not_the_reverse(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match=r"train\.steps=1\.5 has the wrong type"):
        load_config(write(tmp_path, "train:\n  steps: 1.5\n"))


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "model:\n  presett: small\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "model.presett" in str(e.value) and str(p) in str(e.value)


def test_unknown_section_names_file(tmp_path):
    p = write(tmp_path, "modle:\n  preset: small\n")
    with pytest.raises(ConfigError, match="unknown key 'modle'") as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_wrong_type_names_key_value_file(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: sixty-four\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.batch_size" in msg and "sixty-four" in msg and str(p) in msg


def test_out_of_range_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.mlm_prob=1\.5 is out of range"):
        load_config(write(tmp_path, "model:\n  mlm_prob: 1.5\n"))
    with pytest.raises(ConfigError, match=r"model\.preset='huge' is not one of"):
        load_config(write(tmp_path, "model:\n  preset: huge\n"))
    with pytest.raises(ConfigError, match=r"experimental\.fact_probs\[1\]=-0\.1 is out of range"):
        load_config(write(tmp_path, "experimental:\n  fact_probs: [0.5, -0.1]\n"))


def test_bad_override_is_named(tmp_path):
    p = write(tmp_path, "train:\n  steps: 10\n")
    with pytest.raises(ConfigError, match=r"<override>: train\.steps=-3 is out of range"):
        load_config(p, ["train.steps=-3"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("train.steps")
    with pytest.raises(ConfigError, match=r"<override>: unknown key 'train\.stepz'"):
        load_config(p, ["train.stepz=3"])
    # among several overrides (checked together, then one by one to find the one at fault)
    with pytest.raises(ConfigError, match=r"<override>: train\.lr=-1\.0 is out of range"):
        load_config(p, ["train.batch_size=8", "train.lr=-1.0", "train.steps=-3"])
    cfg = load_config(p, ["train.batch_size=8", "train.steps=12", "env.budget_steps=3"])
    assert (cfg.train.batch_size, cfg.train.steps, cfg.env.budget_steps) == (8, 12, 3)


def test_base_inheritance_and_loops(tmp_path):
    write(tmp_path, "train:\n  steps: 7\n  lr: 0.01\n", "base.yaml")
    child = write(tmp_path, "base: base.yaml\ntrain:\n  steps: 9\n", "child.yaml")
    cfg = load_config(child)
    assert cfg.train.steps == 9 and cfg.train.lr == pytest.approx(0.01)
    a = write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["model.preset=small", "agent.name=grit"])
    dump_yaml(cfg, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_cli_config_error_exit_code(capsys):
    from falcon_rl.cli import main

    assert main(["config", "model.preset=huge"]) == 2
    assert "model.preset='huge'" in capsys.readouterr().err


def test_an_empty_ablation_is_refused_before_it_writes_anything(tmp_path, capsys):
    """``ablation.seeds=[]`` once ran nothing, overwrote the out_dir's results table with an empty
    one and exited 0."""
    from falcon_rl.cli import main

    with pytest.raises(ConfigError, match=r"ablation\.seeds=\[\] is empty"):
        load_config(write(tmp_path, "ablation:\n  seeds: []\n"))
    out = tmp_path / "abl"
    for key in ("ablation.seeds=[]", "ablation.schedulers=[]", "ablation.headline=[]"):
        assert main(["ablate", "--out", str(out), key]) == 2
        assert f"{key} is empty" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("headline, bad", [("[i2t_mapp]", "i2t_mapp"), ("[t2i_map, i2t_r50_mp]", "i2t_r50_mp")])
def test_a_misspelt_headline_metric_is_refused_before_any_run(tmp_path, capsys, headline, bad):
    """A headline name the evaluation never reports once gave an empty column after the whole
    ablation, and exit 0."""
    from falcon_rl.cli import main

    out = tmp_path / "abl"
    assert main(["ablate", "--out", str(out), f"data.cache_dir={tmp_path / 'data'}",
                 f"ablation.headline={headline}"]) == 2
    err = capsys.readouterr().err
    assert f"ablation.headline has [{bad!r}], not metrics the evaluation reports (eval.ks=[1, 5, 10])" in err
    assert "i2t_r5_mp" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "data").exists()
    assert main(["ablate", "--out", str(out), "eval.ks=[1, 50]", "ablation.headline=[i2t_r60_mp]"]) == 2
    assert "(eval.ks=[1, 50]); choose from ['i2t_r1', 'i2t_r50'," in capsys.readouterr().err


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path):
    """PyYAML keeps the last of two equal keys: a second ``train:`` section once dropped the first
    one's keys without a word."""
    with pytest.raises(ConfigError, match=r"duplicate key 'train' \(first given on line 1\)"):
        load_config(write(tmp_path, "train:\n  steps: 10\nenv:\n  budget_steps: 5\ntrain:\n  batch_size: 8\n"))
    with pytest.raises(ConfigError, match=r"duplicate key 'steps' \(first given on line 2\)"):
        load_config(write(tmp_path, "train:\n  steps: 10\n  steps: 20\n"))
    with pytest.raises(ConfigError, match=r"<override>: .*duplicate key 'a'"):
        load_config(None, ["ablation.overrides={a: {agent.q: 0.1}, a: {agent.q: 0.2}}"])
    # YAML merge keys may repeat what they merge (the bench's rows do)
    cfg = load_config(write(tmp_path, "ablation:\n  overrides:\n    x: &x {agent.q: 0.1, agent.name: fixed}\n"
                                      "    y: {<<: *x, agent.q: 0.2}\n"))
    assert cfg.ablation.overrides["y"] == {"agent.q": 0.2, "agent.name": "fixed"}
