"""Learning curves like the paper's Figs. 7-9: average score of the last 100 episodes vs episodes.

``python -m qa3c_qiskit.plot RUN [RUN ...] [-o curves.png]`` draws one curve per run directory
(legend: model / backend / seed). ``--group`` draws one curve per (env, model, backend) instead:
the mean over seeds with a min-max band, as :mod:`qa3c_qiskit.reproduce` does.

Everything here reads the run directory files written by :func:`qa3c_qiskit.train.train`
(``config.json``, ``metrics.csv``, ``summary.json``); the plotting uses matplotlib's Agg
backend, so it works without a display.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import WINDOW, moving_average, read_metrics

#: Paper figure numbers per environment (Sec. VI.C).
PAPER_FIGURE = {
    "Acrobot-v1": "Fig. 7",
    "CartPole-v1": "Fig. 8",
    "MiniGrid-SimpleCrossingS9N1-v0": "Fig. 9",
    "MiniGrid-SimpleCrossingS9N2-v0": "Fig. 9",
    "MiniGrid-SimpleCrossingS9N3-v0": "Fig. 9",
}
#: Colours as in the paper's figures (quantum blue, classical orange).
MODEL_COLOURS = {"quantum": "tab:blue", "classical": "tab:orange"}
#: More points than this per curve are thinned (evenly) before drawing; the moving average
#: is computed on every episode first, so thinning only drops pixels, not data.
MAX_POINTS = 4000


@dataclass
class Run:
    """One training run loaded from its directory."""

    path: Path
    config: dict
    returns: np.ndarray  # episode returns in completion order
    summary: dict = field(default_factory=dict)  # empty if the run did not finish

    @property
    def env(self) -> str:
        return self.config.get("env", "?")

    @property
    def model(self) -> str:
        return self.config.get("model", "?")

    @property
    def backend(self) -> str:
        """The backend name, or ``classical`` for the classical twin."""
        if self.model == "classical":
            return "classical"
        return Path(str(self.config.get("backend", "?"))).stem

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def label(self) -> str:
        """Legend text: ``quantum / statevector / seed 0``."""
        parts = [self.model]
        if self.model != "classical":
            parts.append(self.backend)
        parts.append(f"seed {self.seed}")
        return " / ".join(parts)

    def curve(self, window: int = WINDOW) -> np.ndarray:
        """Average of the last ``window`` returns after every episode (fewer at the start)."""
        return moving_average(self.returns, window)


def load_run(path) -> Run:
    """Load a run directory; raise ValueError naming the path if it is not one."""
    path = Path(path)
    if not (path / "metrics.csv").is_file():
        raise ValueError(f"{str(path)!r} is not a run directory (no metrics.csv)")
    config = {}
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    summary = {}
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
    return Run(path, config, read_metrics(path)["return"], summary)


def _thin(x: np.ndarray, y: np.ndarray, *more: np.ndarray):
    if len(x) <= MAX_POINTS:
        return (x, y, *more)
    idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int))
    return (x[idx], y[idx], *(m[idx] for m in more))


def group_curves(runs: list[Run], window: int = WINDOW) -> dict[tuple[str, str, str], dict]:
    """Mean/min/max over seeds of the avg-100 curve per (env, model, backend).

    Curves are cut to the shortest run of the group. Returns
    ``{(env, model, backend): {"episodes", "mean", "lo", "hi", "n"}}`` (episodes 1-based).
    """
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.env, run.model, run.backend), []).append(run)
    out = {}
    for key, members in groups.items():
        n = min(len(r.returns) for r in members)
        if n == 0:
            continue
        curves = np.stack([r.curve(window)[:n] for r in members])
        out[key] = {
            "episodes": np.arange(1, n + 1),
            "mean": curves.mean(axis=0),
            "lo": curves.min(axis=0),
            "hi": curves.max(axis=0),
            "n": len(members),
        }
    return out


def draw_runs(ax, runs: list[Run], window: int = WINDOW) -> None:
    """One avg-``window`` curve per run on ``ax``."""
    for run in runs:
        y = run.curve(window)
        x, y = _thin(np.arange(1, len(y) + 1), y)
        ax.plot(x, y, lw=1.2, label=run.label)


def draw_groups(ax, runs: list[Run], window: int = WINDOW) -> None:
    """Mean over seeds per (env, model, backend) with a min-max band, on ``ax``."""
    for (_, model, backend), g in group_curves(runs, window).items():
        x, mean, lo, hi = _thin(g["episodes"], g["mean"], g["lo"], g["hi"])
        name = "Quantum" if model == "quantum" else "Classical"
        if model == "quantum" and backend != "statevector":
            name += f" ({backend})"
        label = f"{name} (mean of {g['n']} seeds)" if g["n"] > 1 else name
        colour = MODEL_COLOURS.get(model) if backend in ("statevector", "classical") else None
        (line,) = ax.plot(x, mean, lw=1.4, label=label, color=colour)
        if g["n"] > 1:
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def style_axes(ax, title: str | None = None, threshold: float | None = None) -> None:
    """Paper-like axes: ``Episode #`` / ``Average Score``, legend, optional threshold line."""
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax.set_xlabel("Episode #")
    ax.set_ylabel(f"Average Score (last {WINDOW})")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def default_title(runs: list[Run]) -> str:
    envs = list(dict.fromkeys(r.env for r in runs))
    title = ", ".join(envs)
    if len(envs) == 1 and envs[0] in PAPER_FIGURE:
        title = f"{envs[0]} (cf. paper {PAPER_FIGURE[envs[0]]})"
    return title


def plot_runs(
    run_dirs,
    out="curves.png",
    *,
    group: bool = False,
    title: str | None = None,
    window: int = WINDOW,
    threshold: float | None = None,
) -> Path:
    """Draw the avg-``window`` score of several runs in one PNG; return its path.

    ``group=True`` draws the mean over seeds with a min-max band per (env, model, backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
    if not runs:
        raise ValueError("no runs to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    (draw_groups if group else draw_runs)(ax, runs, window)
    style_axes(ax, title or default_title(runs), threshold)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.plot",
        description="Plot the average score of the last 100 episodes against episodes "
        "for one or more run directories (like the paper's Figs. 7-9).",
    )
    parser.add_argument("runs", nargs="+", help="run directories (each holds metrics.csv)")
    parser.add_argument("-o", "--out", default="curves.png", help="output PNG")
    parser.add_argument("--title", default=None, help="figure title (default: the env ids)")
    parser.add_argument("--window", type=int, default=WINDOW, help="moving-average window")
    parser.add_argument(
        "--group",
        action="store_true",
        help="one curve per (env, model, backend): mean over seeds with a min-max band",
    )
    parser.add_argument("--threshold", type=float, default=None, help="draw a dashed line here")
    args = parser.parse_args(argv)
    if args.window <= 0:
        print(f"error: --window must be > 0, got {args.window}", file=sys.stderr)
        return 2
    try:
        out = plot_runs(
            args.runs,
            args.out,
            group=args.group,
            title=args.title,
            window=args.window,
            threshold=args.threshold,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
