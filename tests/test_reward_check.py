"""``falcon-rl reward-check`` (falcon_rl/ablation/reward_check.py) and the per-batch regression
(falcon_rl/ablation/batch_regression.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from falcon_rl.ablation.batch_regression import batch_regression, centred_ols
from falcon_rl.ablation.learnability import learnability
from falcon_rl.ablation.reward_check import fixed_label, reward_check_config, spearman
from falcon_rl.config import ConfigError, load_config


def test_spearman_ranks_ties_and_degenerate_inputs():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.8)  # 1 - 6·4 / (5·24)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # tied ranks averaged
    assert np.isnan(spearman([1, 2], [1, 2])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert spearman([1, 2, np.nan, 3], [1, 2, 5, 3]) == pytest.approx(1.0)


def test_centred_regression_recovers_known_coefficients_despite_a_trend():
    """y = trend(step) + 0.002·fn − 0.05·hardness + noise, with fn and hardness drifting with the step
    like the trend: the fit without centring is biased, the centred one recovers the truth."""
    rng = np.random.default_rng(0)
    steps, per = 400, 8
    group = np.repeat(np.arange(steps), per)
    t = group / steps
    trend = 0.09 * np.exp(-4 * t)  # ΔL_MLM falls ~10x over a run
    fn = rng.poisson(20 + 30 * t)  # harder later: more false negatives
    hard = np.clip(0.3 + 0.5 * t + 0.1 * rng.standard_normal(t.size), 0, 1)
    y = trend + 0.002 * fn - 0.05 * hard + 0.004 * rng.standard_normal(t.size)
    X = np.stack([fn, hard], axis=1)
    fit = centred_ols(y, X, group)
    assert fit.n == steps * per and fit.groups == steps
    assert abs(fit.coef["fn_pairs"] - 0.002) < 3 * fit.se["fn_pairs"]
    assert abs(fit.coef["hardness"] + 0.05) < 3 * fit.se["hardness"]
    assert fit.se["fn_pairs"] == pytest.approx(0.004 / np.sqrt(np.var(fn - np.repeat(
        [fn[group == g].mean() for g in range(steps)], per)) * fit.n), rel=0.1)  # the OLS standard error
    assert fit.t["fn_pairs"] > 10 and fit.t["hardness"] < -5
    plain = np.linalg.lstsq(np.column_stack([np.ones_like(y), X]), y, rcond=None)[0]
    assert abs(plain[2] + 0.05) > 10 * fit.se["hardness"]  # the trend leaks into the uncentred slope


def test_regression_reads_the_runs_batch_stats():
    records = [{"status": "ok", "history": {"batch_stats": [
        {"fn_pairs": [1.0, 3.0, 2.0], "rank_quantile": [0.1, 0.5, 0.2], "q_mean": [0, 0, 0],
         "rewards": {"mlm": [0.10, 0.12, 0.13]}},
        {"fn_pairs": [0.0, 4.0, 1.0], "rank_quantile": [0.9, 0.3, 0.6], "q_mean": [0, 0, 0],
         "rewards": {"mlm": [0.05, 0.09, 0.04]}},
        {},
    ]}}] * 2
    fit = batch_regression(records, "mlm")
    assert fit.n == 12 and fit.groups == 4 and np.isfinite(fit.coef["fn_pairs"])
    assert np.isnan(batch_regression(records, "itc").coef["fn_pairs"])  # not logged: nothing to fit


def _runs(noise: np.ndarray, delta: float, steps: int) -> list[dict]:
    """random and good x 3 seeds; the reward per step is a falling trend + the seed's noise (the
    same for both policies: paired), good's shifted up by ``delta``; good retrieves better."""
    trend = 0.05 * np.exp(-np.arange(steps) / 300.0)  # a smooth fall, as over a bench run
    out = []
    for seed in range(3):
        for policy, shift, metric in (("random", 0.0, 30.0), ("good", delta, 38.0), ("poor", -delta, 25.0)):
            v = trend + shift + noise[seed]
            out.append({"status": "ok", "scheduler": policy, "seed": seed, "final": {"m": metric + seed},
                        "history": {"reward_components": [{"itc": float(x)} for x in v]}})
    return out


def test_learnability_measures_the_preference_against_the_rewards_noise():
    rng = np.random.default_rng(0)
    steps, sigma, delta = 600, 0.01, 0.001
    white = sigma * rng.standard_normal((3, steps))
    row = learnability(_runs(white, delta, steps), ["itc"], "m", horizons=[1, 10])[0]
    assert row["best"] == "good" and row["pairs"] == 3 and row["delta"] == pytest.approx(delta)
    assert row["sigma_1"] == pytest.approx(sigma, rel=0.05)
    assert row["sigma_10"] == pytest.approx(sigma * np.sqrt(10), rel=0.15)  # independent noise adds up
    assert row["snr_1"] == pytest.approx(0.1, rel=0.05)
    assert row["steps_1"] == pytest.approx(16 * row["sigma_1"] ** 2 / delta ** 2)  # about 1 600 steps
    assert row["steps_10"] == pytest.approx(row["steps_1"], rel=0.3)  # summing does not help white noise

    # the change of a fluctuating level (a validation loss): the noise of a k-step sum telescopes
    level = sigma / np.sqrt(2) * rng.standard_normal((3, steps + 1))
    telescoping = np.diff(level, axis=1)
    row = learnability(_runs(telescoping, delta, steps), ["itc"], "m", horizons=[1, 10])[0]
    assert row["sigma_1"] == pytest.approx(sigma, rel=0.05)
    assert row["sigma_10"] == pytest.approx(sigma, rel=0.15)
    assert row["steps_10"] < 0.15 * row["steps_1"]


def test_learnability_without_a_reference_or_the_option_is_nan():
    runs = _runs(np.zeros((3, 50)), 0.001, 50)
    assert np.isnan(learnability(runs, ["val_itc"], "m")[0]["steps_1"])  # not logged
    no_ref = [r for r in runs if r["scheduler"] != "random"]
    row = learnability(no_ref, ["itc"], "m")[0]
    assert row["best"] is None and np.isnan(row["delta"]) and np.isnan(row["steps_1"])


def test_reward_check_config_expands_fixed_labels_and_logs_every_option():
    cfg = load_config(None, ["reward_check.policies=[fixed-0, fixed-0.75, random]", "reward_check.out_dir=/tmp/x",
                             "reward_check.rewards=[mlm, val_itc]"])
    abl = reward_check_config(cfg)
    assert abl.ablation.schedulers == ["fixed-0", "fixed-0.75", "random"] and abl.ablation.out_dir == "/tmp/x"
    assert abl.ablation.overrides["fixed-0.75"] == {"agent.name": "fixed", "agent.q": 0.75}
    assert abl.experimental.reward_log == ["mlm", "val_itc"] and abl.experimental.compute_reward == "always"
    assert fixed_label("fixed-.5") == 0.5 and fixed_label("fixed") is None and fixed_label("grit") is None
    with pytest.raises(ConfigError, match=r"reward_check.rewards has \['toy'\]"):
        reward_check_config(load_config(None, ["reward_check.rewards=[toy]"]))
    with pytest.raises(ConfigError, match=r"'fixed-2' has q=2.0 outside"):
        reward_check_config(load_config(None, ["reward_check.policies=[fixed-2]"]))


def test_reward_check_refuses_misspelt_or_empty_lists_before_any_run(tmp_path, capsys):
    """A misspelt policy was named as an ablation row, an empty reward list crashed with a division by
    zero after the warm start, an empty metric list and a misspelt reference ran and exited 0."""
    from falcon_rl.cli import main

    with pytest.raises(ConfigError, match=r"reward_check.policies: unknown scheduler 'gritt'"):
        reward_check_config(load_config(None, ["reward_check.policies=[fixed-0, gritt]"]))
    with pytest.raises(ConfigError, match=r"experimental.reference='rnd' is no policy of reward_check.policies"):
        reward_check_config(load_config(None, ["experimental.reference=rnd"]))
    # a known scheduler the check does not run: the learnability table stays empty, as before
    assert reward_check_config(load_config(None, ["reward_check.policies=[fixed-0, grit]"])).ablation.schedulers == [
        "fixed-0", "grit"]
    for key in ("reward_check.rewards", "reward_check.metrics", "reward_check.policies"):
        with pytest.raises(ConfigError, match=rf"{key}=\[\] is empty"):
            load_config(None, [f"{key}=[]"])
    out = tmp_path / "rc"
    assert main(["reward-check", "--out", str(out), "reward_check.policies=[random, gritt]"]) == 2
    assert "config error: <defaults>: reward_check.policies: unknown scheduler 'gritt'" in capsys.readouterr().err
    assert not out.exists()


def test_reward_check_cli_writes_a_correlation_per_reward_option(tmp_path, capsys, monkeypatch):
    from falcon_rl.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    root = tmp_path / "rc"
    options = ["lm", "itc", "mlm_hi", "lm_sample", "val_itc", "val_lm"]
    args = ["reward-check", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(root),
            f"data.cache_dir={tmp_path / 'data'}", "data.n_train=160", "data.n_test=48", "mining.search_space=32",
            "train.batch_size=16", "train.device=cpu", "train.threads=1", "train.warmup_steps=2",
            "env.budget_steps=2", "env.warmup_steps=3", "env.eval_every=0", "logging.progress=false",
            "logging.tensorboard=false", "experimental.val_pairs=16", "reward_check.policies=[fixed-0.25, grit, fixed-0.75]",
            "experimental.reference=fixed-0.25",
            f"reward_check.rewards=[{', '.join(options)}]", "ablation.seeds=[0, 1]", "ablation.workers=1",
            "ablation.shared_warmup=true"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| reward | runs | ρ i2t_r1_mp | ρ t2i_map | ρ i2t_map |" in printed
    rows = list(csv.DictReader((root / "reward_check.csv").open()))
    assert [r["reward"] for r in rows] == options
    for r in rows:
        assert r["runs"] == "6" and -1.0 <= float(r["rho_i2t_r1_mp"]) <= 1.0, r
        assert int(r["batches"]) == 6 * 2 * 2 and r["fn_pairs_coef"] != "" and r["hardness_t"] != ""
    runs = list(csv.DictReader((root / "reward_check_runs.csv").open()))
    assert sorted((r["policy"], r["seed"]) for r in runs) == [("fixed-0.25", "0"), ("fixed-0.25", "1"),
                                                               ("fixed-0.75", "0"), ("fixed-0.75", "1"),
                                                               ("grit", "0"), ("grit", "1")]
    assert all(float(r[f"reward_{n}"]) == float(r[f"reward_{n}"]) for r in runs for n in options)  # no NaN
    assert (root / "reward_check.png").stat().st_size > 5000 and (root / "reward_check.md").is_file()
    assert "## Learnability: env steps an online learner needs" in (root / "reward_check.md").read_text()
    learn = list(csv.DictReader((root / "reward_check_learnability.csv").open()))
    assert [r["reward"] for r in learn] == options  # 2 env steps: too few for a noise, a delta all the same
    assert all(r["best"] in ("grit", "fixed-0.75") and r["reference"] == "fixed-0.25" and r["delta"] != ""
               for r in learn), learn
    rec = json.loads((root / "fixed-0.25" / "seed0" / "results.json").read_text())
    assert rec["history"]["reward_components"][0].keys() >= {"mlm", *options[1:]}  # lm: under the loss's name
    # the policies ran from one shared warm-up per seed, and a rerun skips every finished run
    assert len(list((root / "warmup").glob("*.pt"))) == 2
    assert main(args) == 0
    assert capsys.readouterr().out.count("[skip]") == 6

    # the best policy is the candidate with the best mean final i2t R@1 (on 48 test pairs after 2 env steps
    # the three policies tie): give the two candidates known, different finals in the finished runs' records
    # and rerun the analysis (every run is skipped; no figures, to keep it quick), then swap them
    import falcon_rl.ablation.reward_check as rc_module
    import falcon_rl.ablation.runner as runner_module

    monkeypatch.setattr(runner_module, "plot_all", lambda *a, **k: [])
    monkeypatch.setattr(rc_module, "plot", lambda *a, **k: None)

    def rerun_with(finals: dict[str, float]) -> tuple[list[dict], dict]:
        for policy, value in finals.items():
            for seed in (0, 1):
                path = root / policy / f"seed{seed}" / "results.json"
                rec = json.loads(path.read_text())
                rec["final"]["i2t_r1_mp"] = value + seed
                path.write_text(json.dumps(rec))
        assert main(args) == 0
        assert capsys.readouterr().out.count("[skip]") == 6
        table = {(r["policy"], r["seed"]): r for r in csv.DictReader((root / "reward_check_runs.csv").open())}
        return list(csv.DictReader((root / "reward_check_learnability.csv").open())), table

    for finals, best, other in (({"grit": 40.0, "fixed-0.75": 30.0}, "grit", "fixed-0.75"),
                                ({"grit": 30.0, "fixed-0.75": 40.0}, "fixed-0.75", "grit")):
        learn, table = rerun_with(finals)
        assert float(table[(best, "1")]["i2t_r1_mp"]) == 41.0 and float(table[(other, "1")]["i2t_r1_mp"]) == 31.0
        assert [r["best"] for r in learn] == [best] * len(options), (finals, learn)
        for r in learn:  # the best's mean reward per step minus the reference's, paired by seed
            n = r["reward"]
            expected = np.mean([float(table[(best, k)][f"reward_{n}"]) - float(table[("fixed-0.25", k)][f"reward_{n}"])
                                for k in ("0", "1")])
            assert float(r["delta"]) == pytest.approx(expected, rel=1e-9, abs=1e-12), (n, r["delta"], expected)
