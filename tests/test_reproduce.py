"""``python -m qa3c_qiskit.reproduce``: runs, compact export, reports from the compact data alone,
verdicts (Welch's t-test), budgets not reached, learner-count comparison, Table I.

Real training runs here are tiny classical ones (the classical twin does not touch the quantum
engine); everything else runs on fake run directories in train()'s format.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.envs import PAPER_ENVS
from qa3c_qiskit.export import export_run
from qa3c_qiskit.metrics import MetricsWriter, moving_average, summarize
from qa3c_qiskit.models import PAPER_TABLE1
from qa3c_qiskit.plot import CURVE_FILE, group_curves, load_compact
from qa3c_qiskit.report import table1_rows
from qa3c_qiskit.reproduce import PAPER_PROTOCOL, build_parser, main, run_name
from qa3c_qiskit.results import aggregate
from qa3c_qiskit.stats import welch_t_test

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMPACT_FILES = {"config.json", "summary.json", "run.json", CURVE_FILE}
THRESHOLD = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0}


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fake_run(out, env, model, seed, returns, *, learners=2, intended=None, finished=True):
    """A training run directory in train()'s format under OUT/ENV/runs, with these returns.

    ``intended``: the run's budget (default: the number of returns); ``finished=False``: no
    summary.json (a run still going or killed)."""
    returns = np.asarray(returns, dtype=float)
    d = out / env / "runs" / run_name(model, "statevector", learners, seed)
    d.mkdir(parents=True)
    budget = intended or len(returns)
    cfg = TrainConfig(
        env=env, model=model, seed=seed, workers=2, learners=learners, episodes=budget
    )
    (d / "config.json").write_text(json.dumps({**cfg.to_dict(), "learners": learners}))
    w = MetricsWriter(d / "metrics.csv")
    steps = 0
    for i, r in enumerate(returns):
        length = int(abs(r)) + 1
        steps += length
        w.write(
            {
                "episode": i + 1,
                "worker": i % 2,
                "learner": i % learners,
                "return": r,
                "length": length,
                "wall_time": 0.5 * (i + 1),
                "env_steps": steps,
            }
        )
    w.close()
    if finished:
        wall = 0.5 * len(returns) + 1.0
        summary = {
            **summarize(returns, THRESHOLD.get(env, 0.9)),
            "wall_time_s": wall,
            "env_steps": steps,
            "env_steps_per_s": steps / wall,
            "learners": learners,
            "workers": 2,
            "status": "complete" if len(returns) >= budget else "interrupted",
        }
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_table1_matches_the_paper_for_all_five_envs():
    rows = table1_rows(list(PAPER_ENVS))
    assert [r["env"] for r in rows] == list(PAPER_ENVS)
    for r in rows:
        ours = (r["classical"], r["quantum"], r["qa3c_total"], r["classical_total"])
        assert ours == PAPER_TABLE1[r["env"]] and r["matches_paper"]


def test_aggregate_means_sample_std_solved_counts_and_budget():
    base = {"env": "E", "backend": "b", "learners": 80, "reward_threshold": 1.0}
    rows = [
        {**base, "model": "quantum", "seed": 0, "episodes": 10, "intended_episodes": 10,
         "complete": True, "final_avg100": 1.0, "best_avg100": 2.0, "episodes_to_threshold": 40,
         "auc_avg100": 0.5, "wall_time_s": 10.0, "env_steps_per_s": 100.0},
        {**base, "model": "quantum", "seed": 100, "episodes": 7, "intended_episodes": 10,
         "complete": False, "final_avg100": 3.0, "best_avg100": 4.0,
         "episodes_to_threshold": None, "auc_avg100": 1.5, "wall_time_s": 20.0,
         "env_steps_per_s": 300.0},
    ]  # fmt: skip
    (agg,) = aggregate(rows)
    assert agg["seeds"] == 2 and agg["solved"] == "1/2" and agg["learners"] == 80
    assert agg["final_avg100"] == (2.0, pytest.approx(math.sqrt(2.0)))  # sample std (n - 1)
    assert agg["episodes_to_threshold"][0] == 40.0
    assert agg["env_steps_per_s"][0] == 200.0
    assert (agg["episodes"], agg["episodes_max"], agg["complete"]) == (7, 10, False)


def test_welch_t_test_against_a_hand_computed_case_and_scipy():
    # Hand-computed: means 2.5 and 6, variances 5/3 and 10; t = -3.5 / sqrt(5/12 + 2),
    # df = (29/12)^2 / ((5/12)^2 / 3 + 2^2 / 4), p from Student's t with that df.
    a, b = [1, 2, 3, 4], [2, 4, 6, 8, 10]
    w = welch_t_test(a, b)
    assert w["t"] == pytest.approx(-3.5 / math.sqrt(5 / 12 + 2), rel=1e-12)
    assert w["df"] == pytest.approx((29 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 1), rel=1e-12)
    assert w["p"] == pytest.approx(0.06913359319239, rel=1e-9)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for _ in range(50):
        x = rng.normal(0.0, rng.uniform(0.1, 3.0), rng.integers(2, 7))
        y = rng.normal(rng.normal(), rng.uniform(0.1, 3.0), rng.integers(2, 7))
        ref = stats.ttest_ind(x, y, equal_var=False)
        got = welch_t_test(x, y)
        assert got["t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert got["p"] == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)
    # Fewer than two seeds: no test; zero variance on both sides: p is 0 or 1.
    assert math.isnan(welch_t_test([1.0], [2.0, 3.0])["p"])
    assert welch_t_test([1, 1], [1, 1])["p"] == 1.0 and welch_t_test([1, 1], [2, 2])["p"] == 0.0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--env", "Pong-v5"], "'Pong-v5'"),
        (["--env", "CartPole-v1", "--models", "quantum,rnn"], "'rnn'"),
        (["--env", "CartPole-v1", "--seeds", "0"], "--seeds"),
        (["--env", "CartPole-v1", "--backend", "nope"], "'nope'"),
        (["--env", "CartPole-v1", "--workers", "2", "--learners", "1"], "--learners"),
        (["--env", "CartPole-v1", "--seed-list", "0,x"], "--seed-list"),
        (["--env", "CartPole-v1", "--seed-list", "3,3"], "--seed-list"),
        (["--episodes", "10"], "--env"),
        (["--report-only"], "no compact runs"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, needle):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing trained


def test_help_documents_the_paper_protocol(capsys):
    text = build_parser().format_help()
    assert PAPER_PROTOCOL in " ".join(text.split())
    for option in ("--learners", "--workers", "--seed-list", "--export", "--report-only"):
        assert option in text


def test_export_is_compact_and_matches_the_metrics(tmp_path):
    """100,000 episodes export to a few tens of KB; the curve is the avg-100 every 100."""
    rng = np.random.default_rng(0)
    returns = np.round(rng.normal(200, 50, 100_000), 1)
    run = fake_run(tmp_path / "runs", "CartPole-v1", "quantum", 0, returns, learners=80)
    dest = export_run(run, tmp_path / "results" / "CartPole-v1")
    assert dest.name == "quantum__statevector__L80__s0"
    assert {p.name for p in dest.iterdir()} == COMPACT_FILES
    size = sum(p.stat().st_size for p in dest.iterdir())
    assert size < 60_000, size
    compact = load_compact(dest)
    assert compact.learners == 80 and compact.episodes == 100_000
    np.testing.assert_array_equal(compact.curve["episode"], np.arange(100, 100_001, 100))
    avg = moving_average(returns)[99::100]
    np.testing.assert_allclose(compact.curve["avg100"], avg, rtol=1e-5)
    assert compact.curve["env_steps"][-1] == (np.abs(returns).astype(int) + 1).sum()
    assert compact.curve["wall_time_s"][-1] == 50_000.0
    info = json.loads((dest / "run.json").read_text())
    assert info["complete"] and info["intended_episodes"] == 100_000


def test_export_of_a_run_still_going_computes_its_summary(tmp_path):
    returns = np.arange(250, dtype=float)
    run = fake_run(tmp_path, "CartPole-v1", "classical", 0, returns, intended=1000, finished=False)
    with open(run / "metrics.csv", "a") as fh:
        fh.write("251,0,1,3.0,")  # a half-written last row
    dest = export_run(run, tmp_path / "res")
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["episodes"] == 250 and summary["status"].startswith("partial")
    assert summary["final_avg100"] == pytest.approx(returns[-100:].mean())
    assert summary["wall_time_s"] == 125.0 and summary["learners"] == 2
    compact = load_compact(dest)
    assert list(compact.curve["episode"]) == [100, 200, 250]
    info = json.loads((dest / "run.json").read_text())
    assert (info["episodes"], info["intended_episodes"], info["complete"]) == (250, 1000, False)


def curve(start, end, n, rng, noise=1.0):
    return np.linspace(start, end, n) + rng.normal(0, noise, n)


def test_report_from_compact_data_verdicts_budgets_and_learners(tmp_path):
    """Fake runs of two envs (one with 2 and 80 learners, one quantum seed short of its budget)
    exported, the training runs deleted, then every figure and table rebuilt."""
    rng = np.random.default_rng(1)
    out, res = tmp_path / "runs", tmp_path / "results"
    for seed in (0, 100, 200):
        # CartPole, 80 learners: quantum clearly better; 2 learners: both the same.
        fake_run(out, "CartPole-v1", "quantum", seed, curve(20, 480, 600, rng), learners=80)
        fake_run(out, "CartPole-v1", "classical", seed, curve(20, 300, 600, rng), learners=80)
        fake_run(out, "CartPole-v1", "quantum", seed, curve(20, 200, 600, rng), learners=2)
        fake_run(out, "CartPole-v1", "classical", seed, curve(20, 200, 600, rng), learners=2)
        # Acrobot: the same curves; seed 200 of the quantum agent stopped at 300 of 600.
        n = 300 if seed == 200 else 600
        fake_run(out, "Acrobot-v1", "quantum", seed, curve(-500, -90, 600, rng)[:n], intended=600)
        fake_run(out, "Acrobot-v1", "classical", seed, curve(-500, -90, 600, rng))
    fake_run(out, "Acrobot-v1", "classical", 300, [], finished=False)  # just started: skipped
    assert main(["--export", "--out", str(out), "--results", str(res)]) == 0
    assert not (res / "Acrobot-v1" / "classical__classical__L2__s300").exists()
    shutil.rmtree(out)  # the report needs the compact folders only
    for f in res.rglob("*"):
        if f.is_file() and f.name not in COMPACT_FILES:
            f.unlink()
    assert main(["--report-only", "--results", str(res), "--band", "ci95"]) == 0

    for name in ("summary.md", "grid.png"):  # (table1.md needs the quantum model code)
        assert (res / name).is_file()
    assert (res / "grid.png").read_bytes()[:8] == PNG_MAGIC
    assert not (res / "fig9_minigrid.png").exists()  # no MiniGrid runs
    summary = (res / "summary.md").read_text()
    cart = (res / "CartPole-v1" / "results.md").read_text()
    acro = (res / "Acrobot-v1" / "results.md").read_text()
    assert (res / "CartPole-v1" / "curves.png").read_bytes()[:8] == PNG_MAGIC

    # Verdicts: the main one (80 learners) supports the claim; at 2 learners no difference.
    v80 = next(line for line in cart.splitlines() if "(80 learners" in line)
    v2 = next(line for line in cart.splitlines() if "(2 learners" in line)
    assert "supports the claim" in v80 and "3 vs 3 seeds" in v80 and "p < 0.001" in v80
    assert "consistent with the claim" in v2
    assert "supports the claim" in summary and "At other learner counts" in summary

    # The learner-count comparison: figure and table, per model.
    assert (res / "CartPole-v1" / "learners.png").read_bytes()[:8] == PNG_MAGIC
    learners_md = (res / "CartPole-v1" / "learners.md").read_text()
    assert "80 learners" in learners_md and "2 learners" in learners_md
    assert "**CartPole-v1, quantum (statevector)**" in learners_md
    assert not (res / "Acrobot-v1" / "learners.md").exists()

    # A run short of its budget is labelled in both tables and in the verdict.
    rows = {(r["model"], r["seed"]): r for r in read_csv(res / "Acrobot-v1" / "results.csv")}
    short = rows[("quantum", "200")]
    assert (short["episodes"], short["intended_episodes"], short["complete"]) == (
        "300",
        "600",
        "False",
    )
    assert "| reached 300 of 600 |" in acro  # per run
    assert "| reached 300-600 of 600 |" in acro  # per model
    assert "budget not reached" in acro and "budget not reached" in summary
    # ... and the verdict compares every run at the last point all of them reached.
    verdict = next(line for line in acro.splitlines() if "(2 learners" in line)
    assert "avg-100 at episode 300 (reached by all)" in verdict
    assert "| classical | classical | 2 | 3 | 600 |" in acro  # the complete model: its budget

    # The numbers come from the compact data: last avg100 = the summary's (completion order,
    # drain included); final avg100 = the curve's point at least 80 episodes (the learners)
    # before the end, here 500 of 600, free of the length-biased drain.
    cart_rows = read_csv(res / "CartPole-v1" / "results.csv")
    assert len(cart_rows) == 12 and {r["learners"] for r in cart_rows} == {"2", "80"}
    compact = load_compact(res / "CartPole-v1" / "quantum__statevector__L80__s0")
    row = next(r for r in cart_rows if r["seed"] == "0" and r["learners"] == "80"
               and r["model"] == "quantum")  # fmt: skip
    assert float(row["last_avg100"]) == pytest.approx(compact.summary["final_avg100"])
    at500 = compact.curve["avg100"][compact.curve["episode"] == 500][0]
    assert float(row["final_avg100"]) == pytest.approx(at500)
    assert float(row["final_avg100"]) != pytest.approx(float(row["last_avg100"]))
    # The figures' curves stop at that point too; the drain stays readable on request.
    assert compact.drain_free_end == 500
    assert compact.points()[0][-1] == 500 and compact.points(drain=True)[0][-1] == 600
    groups = group_curves([compact])
    assert [g["x"][-1] for g in groups.values()] == [500]


def test_minigrid_panels_and_grid(tmp_path):
    rng = np.random.default_rng(2)
    out = tmp_path
    envs = [e for e in PAPER_ENVS if e.startswith("MiniGrid-")]
    for env in envs:
        for model in ("quantum", "classical"):
            fake_run(out, env, model, 0, np.clip(curve(0, 0.9, 300, rng, 0.05), 0, 1))
    assert main(["--export", "--out", str(out)]) == 0  # --results defaults to --out
    assert (out / "fig9_minigrid.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "grid.png").read_bytes()[:8] == PNG_MAGIC
    summary = (out / "summary.md").read_text()
    assert summary.count("not testable (needs >= 2 seeds per model)") == 3


def test_reproduce_classical_runs_export_then_report_from_compact_data_alone(tmp_path):
    """Tiny real runs (classical, 2 seeds, 2 learners on 1 worker): exported as they end;
    the report is rebuilt in a folder that holds only the compact files; a larger budget
    continues a run from its checkpoint."""
    out, res = tmp_path / "runs", tmp_path / "results"
    argv = ["--env", "CartPole-v1", "--models", "classical", "--episodes", "12", "--seeds", "2"]
    argv += ["--workers", "1", "--learners", "2", "--quiet", "--out", str(out)]
    assert main([*argv, "--results", str(res)]) == 0
    folder = res / "CartPole-v1"
    names = ["classical__classical__L2__s0", "classical__classical__L2__s100"]
    assert sorted(p.name for p in (out / "CartPole-v1" / "runs").iterdir() if p.is_dir()) == names
    for name in names:
        assert {p.name for p in (folder / name).iterdir()} == COMPACT_FILES
        info = json.loads((folder / name / "run.json").read_text())
        (entry,) = info["commands"]
        assert entry["action"] == "start" and "--learners 2" in entry["command"]
        assert info["intended_episodes"] == 12 and info["complete"]
        cfg = json.loads((folder / name / "config.json").read_text())
        assert cfg["lr"] == 1e-4 and cfg["gamma"] == 0.9 and cfg["update_every"] == 5
        assert cfg["learners"] == 2 and cfg["workers"] == 1
        summary = json.loads((folder / name / "summary.json").read_text())
        assert summary["episodes"] == 12 and summary["env_steps_per_s"] > 0
    rows = read_csv(folder / "results.csv")
    assert len(rows) == 2 and {r["episodes"] for r in rows} == {"12"}
    assert "--seeds 2 --workers 1 --learners 2" in (folder / "results.md").read_text()

    # Only the compact files, in a fresh folder: every figure and table comes back the same.
    alone = tmp_path / "alone"
    for name in names:
        (alone / "CartPole-v1" / name).mkdir(parents=True)
        for f in COMPACT_FILES:
            shutil.copy(folder / name / f, alone / "CartPole-v1" / name / f)
    assert main(["--report-only", "--results", str(alone)]) == 0
    assert (alone / "CartPole-v1" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert (alone / "summary.md").is_file() and (alone / "grid.png").is_file()
    assert read_csv(alone / "CartPole-v1" / "results.csv") == rows

    # The same command reuses the finished runs; a larger budget continues one.
    metrics = out / "CartPole-v1" / "runs" / names[0] / "metrics.csv"
    before = metrics.read_bytes()
    assert main([*argv, "--results", str(res)]) == 0
    assert metrics.read_bytes() == before
    longer = [*argv, "--episodes", "16", "--seed-list", "0"]
    assert main([*longer, "--results", str(res)]) == 0
    assert metrics.read_bytes().startswith(before) and len(read_csv(metrics)) == 16
    info = json.loads((folder / names[0] / "run.json").read_text())
    assert [c["action"] for c in info["commands"]] == ["start", "reuse", "resume"]
    assert info["intended_episodes"] == 16 and info["episodes"] == 16
    assert len(read_csv(folder / "results.csv")) == 2  # both seeds, each at its own budget
