"""The plot module: loading run directories and compact run folders, seed grouping and bands,
the statistics over seeds, and the PNG it draws."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.metrics import MetricsWriter, moving_average
from qa3c_qiskit.plot import (
    CURVE_FILE,
    compact_curve,
    group_curves,
    load_compact,
    load_run,
    main,
    plot_runs,
    read_curve,
    write_curve,
)
from qa3c_qiskit.stats import betainc_reg, t_ppf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(tmp_path, name, returns, model="quantum", seed=0, env="CartPole-v1"):
    """A run directory in train()'s format, with the given episode returns."""
    d = tmp_path / name
    d.mkdir()
    cfg = TrainConfig(env=env, model=model, seed=seed, workers=1).to_dict()
    (d / "config.json").write_text(json.dumps(cfg))
    w = MetricsWriter(d / "metrics.csv")
    steps = 0
    for i, r in enumerate(returns):
        steps += int(abs(r)) + 1
        w.write(
            {
                "episode": i + 1,
                "worker": i % 2,
                "learner": i % 2,
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
        ("CartPole-v1", "quantum", "statevector", 1),
        ("CartPole-v1", "classical", "classical", 1),
    }
    q = groups[("CartPole-v1", "quantum", "statevector", 1)]
    assert q["n"] == 2 and len(q["episodes"]) == 250
    ca, cb = moving_average(a), moving_average(b)[:250]
    np.testing.assert_allclose(q["mean"], (ca + cb) / 2, atol=1e-4)  # CSV keeps ~6 digits
    np.testing.assert_allclose(q["lo"], np.minimum(ca, cb), atol=1e-4)
    np.testing.assert_allclose(q["hi"], np.maximum(ca, cb), atol=1e-4)
    assert q["cut"]  # seed 100 went further than the curve shows
    c = groups[("CartPole-v1", "classical", "classical", 1)]
    assert c["n"] == 1 and len(c["episodes"]) == 300 and not c["cut"]


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


def compact_run(tmp_path, name, returns, **kw):
    """A compact run folder (config.json, summary.json, curve.csv) of these returns."""
    d = fake_run(tmp_path, name + "_full", returns, **kw)
    run = load_run(d)
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps(run.config))
    (out / "summary.json").write_text(json.dumps({"episodes": len(returns)}))
    from qa3c_qiskit.metrics import read_metrics

    write_curve(out / CURVE_FILE, compact_curve(read_metrics(d)))
    return out


def test_compact_curve_points_and_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    returns = rng.normal(size=250)
    m = {
        "return": returns,
        "length": np.arange(250.0),
        "env_steps": np.cumsum(np.full(250, 3.0)),
        "wall_time": np.linspace(0, 10, 250),
    }
    c = compact_curve(m)
    assert list(c["episode"]) == [100, 200, 250]
    np.testing.assert_allclose(c["avg100"], moving_average(returns)[[99, 199, 249]])
    np.testing.assert_allclose(c["mean_length"], [49.5, 149.5, 199.5])
    assert list(c["env_steps"]) == [300, 600, 750] and c["wall_time_s"][-1] == 10.0
    back = read_curve(write_curve(tmp_path / CURVE_FILE, c))
    np.testing.assert_allclose(back["avg100"], c["avg100"], rtol=1e-5)
    short = compact_curve({k: v[:7] for k, v in m.items()})  # fewer than 100: the last one
    assert list(short["episode"]) == [7]


def test_compact_runs_group_and_plot_like_full_runs(tmp_path):
    a, b = np.linspace(0, 100, 1000), np.linspace(0, 50, 800)
    runs = [
        load_compact(compact_run(tmp_path, "qa", a)),
        load_compact(compact_run(tmp_path, "qb", b, seed=1)),
    ]
    assert runs[0].learners == 1 and runs[0].episodes == 1000
    g = group_curves(runs)[("CartPole-v1", "quantum", "statevector", 1)]
    assert list(g["x"]) == list(range(100, 801, 100)) and g["cut"]
    full = [load_run(tmp_path / "qa_full"), load_run(tmp_path / "qb_full")]
    gf = group_curves(full)[("CartPole-v1", "quantum", "statevector", 1)]
    np.testing.assert_allclose(g["mean"], gf["mean"][99::100], rtol=1e-5)
    # The 95% CI band: mean +- t(0.975, n-1) * sd / sqrt(n).
    ci = group_curves(runs, band="ci95")[("CartPole-v1", "quantum", "statevector", 1)]
    ys = np.stack([r.curve["avg100"][:8] for r in runs])
    half = t_ppf(0.975, 1) * ys.std(axis=0, ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(ci["hi"] - ci["mean"], half, rtol=1e-9)
    wall = group_curves(runs, x="wall_time_h")[("CartPole-v1", "quantum", "statevector", 1)]
    assert wall["x"][-1] == pytest.approx(runs[1].curve["wall_time_s"][-1] / 3600)
    for group in (False, True):
        out = plot_runs(
            [r.path for r in runs], tmp_path / f"c{group}.png", group=group, band="ci95"
        )
        assert out.read_bytes()[:8] == PNG_MAGIC


def test_t_distribution_helpers():
    assert t_ppf(0.975, 1) == pytest.approx(12.706204736174694, rel=1e-9)
    assert t_ppf(0.975, 4) == pytest.approx(2.7764451051977934, rel=1e-9)
    assert t_ppf(0.025, 10) == pytest.approx(-2.2281388519862753, rel=1e-9)
    assert betainc_reg(2.0, 3.0, 0.4) == pytest.approx(
        0.5248, rel=1e-12
    )  # sum_j=2..4 C(4,j) .4^j .6^(4-j)
    special = pytest.importorskip("scipy.special")
    for a, b, x in [(0.5, 0.5, 0.3), (1.2, 0.5, 0.99), (50.0, 0.5, 0.9), (0.7, 3.0, 0.01)]:
        assert betainc_reg(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_cli_plots_real_training_runs(tmp_path):
    """Two real (tiny) training runs of the classical twin, plotted by the CLI."""
    from qa3c_qiskit.train import train

    runs = [
        train(
            TrainConfig(
                env="CartPole-v1",
                model="classical",
                episodes=8,
                workers=1,
                learners=2,
                seed=seed,
                out=str(tmp_path),
                run_name=f"c{seed}",
                quiet=True,
            ),
            show_table=False,
        )
        for seed in (0, 100)
    ]
    out = tmp_path / "both.png"
    proc = subprocess.run(
        [sys.executable, "-m", "qa3c_qiskit.plot", *map(str, runs), "-o", str(out), "--group"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [load_run(r).learners for r in runs] == [2, 2]
