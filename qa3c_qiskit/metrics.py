"""Run directory files (config, metrics CSV, summary) and the live progress display."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

METRICS_FIELDS = ["episode", "worker", "learner", "return", "length", "wall_time", "env_steps"]
WINDOW = 100


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class MetricsWriter:
    """Appends CSV rows of the columns ``fields`` to ``path`` (header once): ``metrics.csv``,
    one row per finished episode, and ``eval.csv`` (:mod:`qa3c_qiskit.periodic_eval`)."""

    def __init__(self, path: Path, fields: list[str] = METRICS_FIELDS):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        header = fields
        if not new:  # a run started before a column was added keeps its header
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh))
        self.fields = [k for k in header if k in fields]
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=header)
        if new:
            self.writer.writeheader()
            self.fh.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: row.get(k, "") for k in self.fields})

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if not self.fh.closed:
            self.flush()
            self.fh.close()


def read_metrics(run_dir) -> dict[str, np.ndarray]:
    """The metrics CSV of a run as column arrays (episode order)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {
        k: np.array([float(r[k]) for r in rows]) for k in METRICS_FIELDS if not rows or k in rows[0]
    }
    if "learner" not in out:  # runs from before many learners per process: learner = worker
        out["learner"] = out["worker"]
    return out


def moving_average(x: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Average of the last ``window`` values at every index (fewer at the start)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def summarize(returns: np.ndarray, threshold: float | None, window: int = WINDOW) -> dict:
    """Final and best average-of-last-100 score and the episodes needed to reach ``threshold``."""
    avg = moving_average(returns, window)
    solved = None
    if threshold is not None and len(avg) >= window:
        hit = np.nonzero(avg[window - 1 :] >= threshold)[0]
        solved = int(hit[0] + window) if len(hit) else None
    return {
        "episodes": int(len(returns)),
        "final_avg100": float(avg[-1]) if len(avg) else math.nan,
        "best_avg100": float(avg[window - 1 :].max()) if len(avg) >= window else math.nan,
        "reward_threshold": threshold,
        "episodes_to_threshold": solved,
    }


class Progress:
    """Live rich display (or plain log lines when not a terminal) of a training run."""

    def __init__(self, title: str, total: int, done: int = 0, quiet: bool = False):
        self.title, self.total, self.start_done = title, total, done
        self.done = done
        self.returns: deque[float] = deque(maxlen=WINDOW)
        self.best = -math.inf
        self.env_steps = 0
        self.start_steps = None
        self.t0 = time.time()
        self.events: deque[str] = deque(maxlen=5)
        self.live = None
        self.last_line = 0.0
        self.quiet = quiet or not sys.stdout.isatty()

    def __enter__(self):
        if not self.quiet:
            from rich.live import Live

            self.live = Live(self._render(), refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)
        else:
            print(self.line(), flush=True)

    def episode(self, ret: float, env_steps: int) -> None:
        self.done += 1
        self.returns.append(ret)
        if self.start_steps is None:
            self.start_steps = env_steps
        self.env_steps = max(self.env_steps, env_steps)
        if len(self.returns) == WINDOW:
            self.best = max(self.best, self.avg)

    def event(self, text: str) -> None:
        self.events.append(text)
        if self.live is None:
            print(text, flush=True)

    @property
    def avg(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan

    def stats(self) -> dict:
        elapsed = time.time() - self.t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        steps = self.env_steps - (self.start_steps or 0)
        remaining = (self.total - self.done) / rate if rate > 0 else math.nan
        return {
            "elapsed": elapsed,
            "steps_per_s": steps / elapsed if elapsed > 0 else 0.0,
            "remaining": remaining,
        }

    def line(self) -> str:
        s = self.stats()
        return (
            f"[{self.title}] episodes {self.done}/{self.total}  avg100 {self.avg:.2f}  "
            f"env steps/s {s['steps_per_s']:.0f}  elapsed {_hms(s['elapsed'])}  "
            f"remaining {_hms(s['remaining'])}"
        )

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
        elif time.time() - self.last_line > 5:
            self.last_line = time.time()
            print(self.line(), flush=True)

    def _render(self):
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        s = self.stats()
        table = Table.grid(padding=(0, 2))
        table.add_row("episodes", f"{self.done:,} / {self.total:,}")
        table.add_row("", ProgressBar(total=self.total, completed=self.done, width=40))
        table.add_row("avg score (last 100)", f"{self.avg:.2f}  (best {self.best:.2f})")
        table.add_row("env steps", f"{self.env_steps:,}  ({s['steps_per_s']:,.0f} /s)")
        table.add_row("elapsed / remaining", f"{_hms(s['elapsed'])} / {_hms(s['remaining'])}")
        for e in self.events:
            table.add_row("event", e)
        return Panel(table, title=self.title)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
