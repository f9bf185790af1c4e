"""Export a training run as a *compact* run folder (small enough to commit).

A training run (``OUT/ENV/runs/RUN``: ``config.json``, ``metrics.csv``, ``summary.json``, and
the sidecar ``RUN.reproduce.json`` written by :mod:`qa3c_qiskit.reproduce`) becomes
``RESULTS/ENV/RUN``: ``config.json``, ``summary.json``, ``run.json`` (commands, intended budget,
budget reached) and ``curve.csv`` (:func:`qa3c_qiskit.plot.compact_curve`). A run still going
is exported too: its summary is then computed from the rows of ``metrics.csv`` written so far.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from .metrics import METRICS_FIELDS, summarize, write_json
from .plot import CURVE_EVERY, CURVE_FILE, compact_curve, write_curve

#: The sidecar of a training run (OUT/ENV/runs/RUN.reproduce.json): commands, intended budget.
SIDECAR = ".reproduce.json"


def sidecar_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + SIDECAR)


def read_metrics_tolerant(run_dir: Path) -> dict[str, np.ndarray]:
    """metrics.csv as columns, skipping a half-written last row (a run still going)."""
    cols: dict[str, list[float]] = {}
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        keys = [k for k in METRICS_FIELDS if k in (reader.fieldnames or [])]
        cols = {k: [] for k in keys}
        for row in reader:
            try:
                values = [float(row[k]) for k in keys]
            except (TypeError, ValueError):
                continue
            for k, v in zip(keys, values):
                cols[k].append(v)
    out = {k: np.array(v, dtype=float) for k, v in cols.items()}
    for k in ("return", "length", "env_steps", "wall_time"):
        if k not in out:
            raise ValueError(f"{run_dir}/metrics.csv has no {k!r} column")
    return out


def _summary_for_export(run_dir: Path, m: dict, config: dict) -> dict:
    """The run's summary.json if it covers every metrics row, else one computed from them."""
    summary = {}
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    n = len(m["return"])
    if summary.get("episodes") == n:
        return summary
    threshold = summary.get("reward_threshold")
    if "reward_threshold" not in summary:
        from .envs import env_info

        threshold = env_info(config["env"]).reward_threshold
    wall = float(m["wall_time"].max()) if n else 0.0
    steps = int(m["env_steps"].max()) if n else 0
    stale = ("session_wall_time_s", "session_env_steps", "session_env_steps_per_s")
    return {
        **{k: v for k, v in summary.items() if k not in stale},
        **summarize(m["return"], threshold),
        "wall_time_s": wall,
        "env_steps": steps,
        "env_steps_per_s": steps / wall if wall else 0.0,
        "learners": summary.get("learners") or config.get("learners") or config.get("workers"),
        "workers": config.get("workers"),
        "status": "partial (computed from metrics.csv: the run was still going or was killed)",
    }


def export_run(run_dir, results_env: Path) -> Path:
    """Write the compact folder of ``run_dir`` into ``results_env``/RUN: config.json,
    summary.json, curve.csv and run.json (commands, intended budget, budget reached)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    m = read_metrics_tolerant(run_dir)
    summary = _summary_for_export(run_dir, m, config)
    side = sidecar_path(run_dir)
    info = json.loads(side.read_text()) if side.is_file() else {"commands": []}
    n = len(m["return"])
    intended = int(info.get("intended_episodes") or config.get("episodes") or n)
    info.update(
        {
            "run": run_dir.name,
            "source": str(run_dir),
            "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "episodes": n,
            "intended_episodes": intended,
            "complete": n >= intended and summary.get("status") == "complete",
            "curve": {"file": CURVE_FILE, "every": CURVE_EVERY, "window": 100},
        }
    )
    dest = Path(results_env) / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "config.json", config)
    write_json(dest / "summary.json", summary)
    write_json(dest / "run.json", info)
    write_curve(dest / CURVE_FILE, compact_curve(m))
    return dest


def _metrics_rows(run_dir: Path) -> bool:
    """metrics.csv holds at least one row (beyond its header)."""
    with open(Path(run_dir) / "metrics.csv") as fh:
        fh.readline()
        return bool(fh.readline().strip())


def training_runs(out: Path, env: str) -> list[Path]:
    """The run directories under OUT/ENV/runs (not those moved aside)."""
    folder = Path(out) / env / "runs"
    if not folder.is_dir():
        return []
    return [
        d
        for d in sorted(folder.iterdir())
        if d.is_dir() and ".old-" not in d.name and (d / "metrics.csv").is_file()
    ]
