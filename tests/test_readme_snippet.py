"""The README's "environment in Python" snippet, extracted from README.md and run as written.

Only the config path is swapped for a tinier config that extends ``configs/snippet.yaml``
(fewer pairs and steps), so the test takes seconds; a broken snippet — or one that no longer
uses ``configs/snippet.yaml`` — fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from falcon_rl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## The environment in Python"
CONFIG = 'config="configs/snippet.yaml"'


def readme_snippet() -> str:
    """The first fenced python block under :data:`HEADING` in README.md."""
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, f"README.md lost its {HEADING!r} section"
    section = text[text.index(HEADING):]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, f"no ```python block under {HEADING!r}"
    return match.group(1)


def test_snippet_config_is_small_and_single_threaded():
    cfg = load_config(ROOT / "configs" / "snippet.yaml")
    assert cfg.model.preset == "tiny" and cfg.train.threads >= 1 and cfg.train.device == "cpu"
    assert cfg.env.budget_steps <= 20 and cfg.data.n_train <= 2048


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch, capsys, one_thread):
    code = readme_snippet()
    assert code.startswith("import gymnasium as gym\n") and "env.step(q)" in code
    assert CONFIG in code, "the snippet should run on configs/snippet.yaml"
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        f"base: {ROOT / 'configs' / 'snippet.yaml'}\n"
        f"data: {{n_train: 160, n_test: 48, cache_dir: '{tmp_path / 'data'}'}}\n"
        "train: {batch_size: 16, threads: 1}\n"
        "mining: {search_space: 32}\n"
        "env: {budget_steps: 2, warmup_steps: 2}\n")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CI", "true")
    exec(compile(code.replace(CONFIG, f'config="{tiny}"'), "README.md (environment in Python)", "exec"),
         {"__name__": "__readme__"})
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["scheduler", "mean", "reward", "i2t", "R@1", "%", "FN", "picks"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[1:]}
    assert list(rows) == ["random", "grit", "falcon"]  # one labelled row per scheduler
    for name, (reward, r1, fn_rate) in rows.items():
        assert np.isfinite(reward) and 0.0 <= r1 <= 100.0 and 0.0 <= fn_rate <= 1.0, name
