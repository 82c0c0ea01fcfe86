"""The ``experimental`` section (issue #31 item 5): keys for experiments moved there, old places refused."""

from __future__ import annotations

import dataclasses

import pytest

from falcon_rl.cli import main
from falcon_rl.config import ConfigError, ExperimentConfig, load_config, to_dict
from falcon_rl.config.agent import AgentConfig
from falcon_rl.config.experimental import MOVED_FROM, MOVED_TO, build_section, old_layout, section_dict


@pytest.mark.parametrize("old, new", [("mining.positive_margin", "experimental.positive_margin"),
                                      ("agent.step_noise", "experimental.step_noise"),
                                      ("data.grid", "experimental.grid"),
                                      ("model.heads", "experimental.heads")])
def test_an_override_of_a_moved_key_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=rf"<override>: {old} moved to {new}$"):
        load_config(overrides=[f"{old}=1"])


def test_a_config_file_with_a_moved_key_names_its_new_place(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("agent:\n  name: falcon\n  step_noise: 4.0\n")
    with pytest.raises(ConfigError, match=rf"{path}: agent.step_noise moved to experimental.step_noise"):
        load_config(path)
    path.write_text("agent:\n  name: falcon\nexperimental:\n  step_noise: 4.0\n")
    assert load_config(path).experimental.step_noise == 4.0


def test_a_moved_key_in_ablation_overrides_is_refused_before_any_run(tmp_path, capsys):
    path = tmp_path / "abl.yaml"
    path.write_text(f"ablation:\n  out_dir: {tmp_path / 'out'}\n  schedulers: [grit-pm]\n  seeds: [0]\n"
                    "  overrides:\n    grit-pm: {agent.name: grit, mining.positive_margin: 0.0}\n")
    assert main(["ablate", "--config", str(path)]) != 0
    assert "mining.positive_margin moved to experimental.positive_margin" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was run


def test_the_cli_refuses_a_moved_key_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-agent", "--out", str(out), "agent.step_noise=1"]) != 0
    assert "agent.step_noise moved to experimental.step_noise" in capsys.readouterr().err
    assert not out.exists()


def test_every_moved_key_reads_the_same_through_its_old_section_and_the_old_layout_is_the_old_dict():
    cfg = load_config(overrides=["experimental.grid=3", "experimental.step_noise=2.5",
                                 "experimental.positive_margin=0.1"])
    assert (cfg.data.grid, cfg.agent.step_noise, cfg.mining.positive_margin) == (3, 2.5, 0.1)
    old = old_layout(to_dict(cfg))
    assert "experimental" not in old and old["data"]["grid"] == 3 and old["agent"]["step_noise"] == 2.5
    for new, (section, key) in MOVED_FROM.items():
        assert old[section][key] == getattr(cfg.experimental, new) == getattr(getattr(cfg, section), key)
        assert MOVED_TO[f"{section}.{key}"] == new
    assert old_layout(old) is old  # a mapping written before the section is taken as it is


def test_a_replaced_section_reads_its_own_config_and_leaves_the_original_alone():
    cfg = load_config(overrides=["experimental.step_noise=1.0"])
    other = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, name="grit"),
                                experimental=dataclasses.replace(cfg.experimental, step_noise=3.0))
    assert other.agent.step_noise == 3.0 and other.data.grid == cfg.data.grid
    assert cfg.agent.step_noise == 1.0  # the original's sections still read the original's section
    same = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, name="grit"))
    assert same.agent.step_noise == 1.0


def test_a_section_built_alone_takes_its_moved_keys_and_keeps_them_in_its_dict():
    agent = build_section(AgentConfig, hidden=16, blocks=1, lr=3e-3)
    assert (agent.hidden, agent.blocks, agent.lr) == (16, 1, 3e-3)
    d = section_dict(agent)
    assert d["hidden"] == 16 and d["lr"] == 3e-3
    assert ExperimentConfig().agent.hidden == 64
    with pytest.raises(TypeError):
        build_section(AgentConfig, grid=2)


def test_sb3_settings_are_grouped_under_agent_sb3_and_the_old_keys_name_the_new_ones():
    cfg = load_config(overrides=["agent.sb3.n_steps=3", "agent.sb3.hidden=[16]"])
    assert (cfg.agent.sb3.n_steps, cfg.agent.sb3.hidden, cfg.agent.sb3.total_steps) == (3, [16], 200)
    with pytest.raises(ConfigError, match=r"<override>: agent.sb3_n_steps moved to agent.sb3.n_steps$"):
        load_config(overrides=["agent.sb3_n_steps=3"])
    old = old_layout(to_dict(cfg))  # resume checkpoints written before compare with the keys they hold
    assert old["agent"]["sb3_n_steps"] == 3 and old["agent"]["sb3_hidden"] == [16] and "sb3" not in old["agent"]
