"""``python -m qa3c_qiskit.reproduce`` at tiny sizes: runs, result files, resume, Table I."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from qa3c_qiskit.envs import PAPER_ENVS
from qa3c_qiskit.reproduce import PAPER_TABLE1, aggregate, main, table1_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_table1_matches_the_paper_for_all_five_envs():
    rows = table1_rows(list(PAPER_ENVS))
    assert [r["env"] for r in rows] == list(PAPER_ENVS)
    for r in rows:
        ours = (r["classical"], r["quantum"], r["qa3c_total"], r["classical_total"])
        assert ours == PAPER_TABLE1[r["env"]] and r["matches_paper"]


def test_aggregate_means_and_solved_counts():
    base = {"env": "E", "backend": "b", "episodes": 10, "reward_threshold": 1.0}
    rows = [
        {**base, "model": "quantum", "seed": 0, "final_avg100": 1.0, "best_avg100": 2.0,
         "episodes_to_threshold": 40, "wall_time_s": 10.0, "env_steps_per_s": 100.0},
        {**base, "model": "quantum", "seed": 100, "final_avg100": 3.0, "best_avg100": 4.0,
         "episodes_to_threshold": None, "wall_time_s": 20.0, "env_steps_per_s": 300.0},
    ]  # fmt: skip
    (agg,) = aggregate(rows)
    assert agg["seeds"] == 2 and agg["solved"] == "1/2"
    assert agg["final_avg100"] == (2.0, 1.0)
    assert agg["episodes_to_threshold"] == 40.0
    assert agg["env_steps_per_s"] == (200.0, 100.0)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--env", "Pong-v5"], "'Pong-v5'"),
        (["--env", "CartPole-v1", "--models", "quantum,rnn"], "'rnn'"),
        (["--env", "CartPole-v1", "--seeds", "0"], "--seeds"),
        (["--env", "CartPole-v1", "--backend", "nope"], "'nope'"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, needle):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing trained


def test_reproduce_cartpole_two_seeds_then_report_only(tmp_path):
    argv = ["--env", "CartPole-v1", "--episodes", "12", "--seeds", "2", "--workers", "2"]
    argv += ["--quiet", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "qa3c_qiskit.reproduce", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "CartPole-v1"
    runs = sorted(p.name for p in (folder / "runs").iterdir())
    assert runs == [
        "classical__classical__s0",
        "classical__classical__s100",
        "quantum__statevector__s0",
        "quantum__statevector__s100",
    ]
    assert (folder / "curves.png").read_bytes()[:8] == PNG_MAGIC
    rows = read_csv(folder / "results.csv")
    assert len(rows) == 4 and {r["model"] for r in rows} == {"quantum", "classical"}
    for r in rows:
        assert int(r["episodes"]) == 12
        assert float(r["env_steps_per_s"]) > 0 and float(r["wall_time_s"]) > 0
        assert float(r["reward_threshold"]) == 475.0
        cfg = json.loads((folder / "runs" / run_dir_name(r) / "config.json").read_text())
        assert cfg["lr"] == 1e-4 and cfg["gamma"] == 0.9 and cfg["update_every"] == 5
    md = (folder / "results.md").read_text()
    assert "| quantum | statevector | 2 | 12 |" in md and "--seeds 2 --workers 2" in md
    t1 = read_csv(folder / "table1.csv")
    assert t1[0]["env"] == "CartPole-v1" and t1[0]["qa3c_total"] == "203"
    assert t1[0]["classical_total"] == "251"

    # A second invocation reuses the finished runs; --report-only redraws from them.
    before = (folder / "runs" / "quantum__statevector__s0" / "metrics.csv").read_bytes()
    (folder / "curves.png").unlink()
    assert main([*argv, "--report-only"]) == 0
    assert (folder / "curves.png").is_file()
    assert (folder / "runs" / "quantum__statevector__s0" / "metrics.csv").read_bytes() == before
    settings = json.loads((folder / "reproduce.json").read_text())
    assert len(settings["commands"]) == 1 and "--report-only" not in settings["commands"][0]
    assert "--report-only" in settings["report_command"]

    # Running another model alone keeps the earlier runs in the report (budget unchanged).
    assert main([*argv, "--models", "classical"]) == 0
    assert len(read_csv(folder / "results.csv")) == 4
    assert len(json.loads((folder / "reproduce.json").read_text())["commands"]) == 2

    # A larger budget continues the finished run from its checkpoint (episodes 1-12 kept).
    longer = ["--env", "CartPole-v1", "--episodes", "16", "--models", "quantum", "--workers", "2"]
    assert main([*longer, "--quiet", "--out", str(tmp_path)]) == 0
    metrics = folder / "runs" / "quantum__statevector__s0" / "metrics.csv"
    assert metrics.read_bytes().startswith(before) and len(read_csv(metrics)) == 16
    (row,) = read_csv(folder / "results.csv")  # only runs of the 16-episode budget
    assert row["seed"] == "0" and row["episodes"] == "16"


def run_dir_name(row):
    return f"{row['model']}__{row['backend']}__s{row['seed']}"


def test_reproduce_all_envs_tiny(tmp_path):
    """--env all: every paper env trains the quantum agent and gets its report.

    (The classical twin runs through the same code path; the CartPole test covers it.)
    """
    argv = ["--env", "all", "--episodes", "1", "--workers", "1", "--models", "quantum"]
    assert main([*argv, "--quiet", "--out", str(tmp_path)]) == 0
    for env in PAPER_ENVS:
        rows = read_csv(tmp_path / env / "results.csv")
        assert [r["model"] for r in rows] == ["quantum"] and rows[0]["episodes"] == "1"
        assert (tmp_path / env / "curves.png").is_file()
    assert len(read_csv(tmp_path / "table1.csv")) == 5
    assert (tmp_path / "fig9_minigrid.png").read_bytes()[:8] == PNG_MAGIC
