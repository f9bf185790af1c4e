"""The plot module: loading run directories, seed grouping, and the PNG it draws."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.metrics import MetricsWriter, moving_average
from qa3c_qiskit.plot import group_curves, load_run, main, plot_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(tmp_path, name, returns, model="quantum", seed=0, env="CartPole-v1"):
    """A run directory in train()'s format, with the given episode returns."""
    d = tmp_path / name
    d.mkdir()
    cfg = TrainConfig(env=env, model=model, seed=seed).to_dict()
    (d / "config.json").write_text(json.dumps(cfg))
    w = MetricsWriter(d / "metrics.csv")
    steps = 0
    for i, r in enumerate(returns):
        steps += int(abs(r)) + 1
        w.write(
            {
                "episode": i + 1,
                "worker": i % 2,
                "return": r,
                "length": int(abs(r)) + 1,
                "wall_time": 0.01 * i,
                "env_steps": steps,
            }
        )
    w.close()
    return d


def test_load_run_reads_config_and_returns(tmp_path):
    d = fake_run(tmp_path, "a", [1.0, 2.0, 3.0], model="classical", seed=7)
    run = load_run(d)
    assert run.model == "classical" and run.backend == "classical" and run.seed == 7
    np.testing.assert_allclose(run.returns, [1.0, 2.0, 3.0])
    assert run.label == "classical / seed 7"
    assert (
        load_run(fake_run(tmp_path, "b", [1.0], seed=3)).label == "quantum / statevector / seed 3"
    )


def test_group_curves_mean_band_and_truncation(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=250)
    b = rng.normal(size=300)  # longer: the group is cut to the shortest run (250)
    runs = [
        load_run(fake_run(tmp_path, "q0", a, seed=0)),
        load_run(fake_run(tmp_path, "q1", b, seed=100)),
        load_run(fake_run(tmp_path, "c0", b, model="classical")),
    ]
    groups = group_curves(runs)
    assert set(groups) == {
        ("CartPole-v1", "quantum", "statevector"),
        ("CartPole-v1", "classical", "classical"),
    }
    q = groups[("CartPole-v1", "quantum", "statevector")]
    assert q["n"] == 2 and len(q["episodes"]) == 250
    ca, cb = moving_average(a), moving_average(b)[:250]
    np.testing.assert_allclose(q["mean"], (ca + cb) / 2, atol=1e-4)  # CSV keeps ~6 digits
    np.testing.assert_allclose(q["lo"], np.minimum(ca, cb), atol=1e-4)
    np.testing.assert_allclose(q["hi"], np.maximum(ca, cb), atol=1e-4)
    c = groups[("CartPole-v1", "classical", "classical")]
    assert c["n"] == 1 and len(c["episodes"]) == 300


@pytest.mark.parametrize("group", [False, True])
def test_plot_runs_writes_png(tmp_path, group):
    dirs = [
        fake_run(tmp_path, "q", np.linspace(10, 200, 6000), seed=0),
        fake_run(tmp_path, "c", np.linspace(10, 100, 6000), model="classical"),
    ]
    out = plot_runs(dirs, tmp_path / "fig" / "curves.png", group=group, threshold=475)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


def test_cli_rejects_a_non_run_directory(tmp_path, capsys):
    assert main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(tmp_path) in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_plots_real_training_runs(tmp_path):
    """Two real (tiny) training runs, quantum and classical, plotted by the CLI."""
    from qa3c_qiskit.train import train

    runs = [
        train(
            TrainConfig(
                env="CartPole-v1",
                model=m,
                episodes=8,
                workers=1,
                out=str(tmp_path),
                run_name=m,
                quiet=True,
            ),
            show_table=False,
        )
        for m in ("quantum", "classical")
    ]
    out = tmp_path / "both.png"
    proc = subprocess.run(
        [sys.executable, "-m", "qa3c_qiskit.plot", *map(str, runs), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [load_run(r).model for r in runs] == ["quantum", "classical"]
