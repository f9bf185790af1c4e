"""Learning curves like the paper's Figs. 7-9: average score of the last 100 episodes vs episodes.

``python -m qa3c_qiskit.plot RUN [RUN ...] [-o curves.png]`` draws one curve per run directory
(legend: model / backend / seed). ``--group`` draws one curve per (env, model, backend,
learners) instead: the mean over seeds with a min-max band (``--band ci95``: a 95% confidence
interval of the mean), as :mod:`qa3c_qiskit.reproduce` does.

A RUN is either a training run directory written by :func:`qa3c_qiskit.train.train`
(``config.json``, ``metrics.csv``, ``summary.json``) or a *compact* run folder exported by
``reproduce`` (``config.json``, ``summary.json``, ``curve.csv``: the average of the last 100
returns every 100 episodes, with the mean episode length, env steps and wall time at those
points; a few tens of KB for 100,000 episodes, small enough to commit).

The statistics over seeds (Welch's t-test, Student's t quantiles of the ci95 band) are in
:mod:`qa3c_qiskit.stats`, with :mod:`math` alone, so neither plotting nor
``reproduce --report-only`` needs scipy. The plotting uses matplotlib's Agg backend, so it
works without a display.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import WINDOW, moving_average, read_metrics
from .stats import t_ppf

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
#: Line styles of different learner counts in one panel (largest count first).
LEARNER_STYLES = ("-", "--", ":", "-.")
#: More points than this per curve are thinned (evenly) before drawing; the moving average
#: is computed on every episode first, so thinning only drops pixels, not data.
MAX_POINTS = 4000
#: Compact curve: one point every CURVE_EVERY episodes (and at the last episode).
CURVE_EVERY = 100
CURVE_FILE = "curve.csv"
CURVE_FIELDS = ["episode", "avg100", "mean_length", "env_steps", "wall_time_s"]
#: x axes a compact curve can be drawn against: column, axis label, scale.
X_AXES = {
    "episode": ("episode", "Episode #", 1.0),
    "wall_time_h": ("wall_time_s", "Wall time (h)", 1 / 3600),
    "env_steps": ("env_steps", "Env steps", 1.0),
}
BANDS = ("minmax", "ci95")


class _RunInfo:
    """What a run is (env, model, backend, learners, seed), from its config and summary."""

    config: dict
    summary: dict

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
    def learners(self) -> int:
        """Actor-learners of the run (config ``learners``; older runs: one per worker)."""
        n = self.config.get("learners") or self.summary.get("learners")
        return int(n or self.config.get("workers") or 1)

    @property
    def label(self) -> str:
        """Legend text: ``quantum / statevector / seed 0``."""
        parts = [self.model]
        if self.model != "classical":
            parts.append(self.backend)
        parts.append(f"seed {self.seed}")
        return " / ".join(parts)


@dataclass
class Run(_RunInfo):
    """One training run loaded from its directory (every episode's return)."""

    path: Path
    config: dict
    returns: np.ndarray  # episode returns in completion order
    summary: dict = field(default_factory=dict)  # empty if the run did not finish

    def curve(self, window: int = WINDOW) -> np.ndarray:
        """Average of the last ``window`` returns after every episode (fewer at the start)."""
        return moving_average(self.returns, window)

    def points(self, window: int = WINDOW, x: str = "episode") -> tuple[np.ndarray, np.ndarray]:
        """(x, avg-``window``) at every episode; only ``x="episode"``."""
        if x != "episode":
            raise ValueError(f"a full run is drawn against episodes only, not {x!r}")
        y = self.curve(window)
        return np.arange(1, len(y) + 1), y


@dataclass
class CompactRun(_RunInfo):
    """A compact run folder exported by ``reproduce``: the avg-100 every 100 episodes."""

    path: Path
    config: dict
    summary: dict
    curve: dict  # CURVE_FIELDS -> arrays
    info: dict = field(default_factory=dict)  # run.json: commands, intended budget, ...

    @property
    def episodes(self) -> int:
        return int(self.summary.get("episodes", self.curve["episode"][-1] if self.n else 0))

    @property
    def n(self) -> int:
        return len(self.curve["episode"])

    @property
    def intended_episodes(self) -> int:
        """The budget the run was started with (run.json, else the config's episodes)."""
        return int(
            self.info.get("intended_episodes") or self.config.get("episodes") or self.episodes
        )

    @property
    def complete(self) -> bool:
        """Finished its intended budget (not interrupted, partial or short of it)."""
        done = self.summary.get("status", "complete") == "complete"
        return done and self.episodes >= self.intended_episodes

    @property
    def drain_free_end(self) -> int | None:
        """The last exported episode before the end-of-budget drain (:func:`before_drain`) of a
        complete run; None for a run without a drain (not :attr:`complete`) or too short to
        have a point before it."""
        return before_drain(self.episodes, self.learners) if self.complete else None

    def points(
        self, window: int = WINDOW, x: str = "episode", *, drain: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x, avg-100) at the exported points; ``x`` one of :data:`X_AXES`. A complete run's
        curve stops at :attr:`drain_free_end` unless ``drain``: the points after it average the
        length-biased last episodes to finish."""
        if window != WINDOW:
            raise ValueError(f"a compact run holds the avg-{WINDOW} curve only, not {window}")
        col, _, scale = X_AXES[x]
        keep = slice(None)
        end = None if drain else self.drain_free_end
        if end is not None:
            keep = self.curve["episode"] <= end
        return self.curve[col][keep] * scale, self.curve["avg100"][keep]


def before_drain(episodes: int, learners: int) -> int | None:
    """The last exported episode free of the end-of-budget drain, or None if there is none.

    Once the last episode of the budget is claimed no episode starts, and the last ``learners``
    episodes to finish are the ones then in flight: a length-biased sample (the longer an
    episode, the likelier it is in flight at any moment), on MiniGrid and Acrobot the failed,
    timed-out ones. The avg-100 at the last exported point at least ``learners`` episodes
    before the end holds none of them."""
    at = ((episodes - max(learners, 1)) // CURVE_EVERY) * CURVE_EVERY
    return at if at >= CURVE_EVERY else None


# --------------------------------------------------------------------------- compact curves


def compact_curve(metrics: dict, every: int = CURVE_EVERY, window: int = WINDOW) -> dict:
    """The compact curve of a run's metrics columns (``read_metrics``): at every ``every``-th
    episode and the last one, the average of the last ``window`` returns and episode lengths,
    the env steps (global counter, running max) and the cumulative wall time (s)."""
    n = len(metrics["return"])
    ends = list(range(every, n + 1, every))
    if n and (not ends or ends[-1] != n):
        ends.append(n)
    idx = np.array(ends, dtype=int) - 1
    if n == 0:
        return {k: np.zeros(0) for k in CURVE_FIELDS}
    return {
        "episode": idx + 1.0,
        "avg100": moving_average(metrics["return"], window)[idx],
        "mean_length": moving_average(metrics["length"], window)[idx],
        "env_steps": np.maximum.accumulate(metrics["env_steps"])[idx],
        "wall_time_s": np.maximum.accumulate(metrics["wall_time"])[idx],
    }


def write_curve(path, curve: dict) -> Path:
    """Write a compact curve as CSV (6 significant digits; ~35 bytes per point)."""
    path = Path(path)
    lines = [",".join(CURVE_FIELDS)]
    for ep, avg, length, steps, wall in zip(*(curve[k] for k in CURVE_FIELDS)):
        lines.append(f"{int(ep)},{avg:.6g},{length:.5g},{int(steps)},{wall:.1f}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def read_curve(path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows], dtype=float) for k in CURVE_FIELDS}


def load_compact(path) -> CompactRun:
    """Load a compact run folder; raise ValueError naming the path if it is not one."""
    path = Path(path)
    if not (path / CURVE_FILE).is_file():
        raise ValueError(f"{str(path)!r} is not a compact run folder (no {CURVE_FILE})")
    config, summary, info = ({}, {}, {})
    for name, target in (("config.json", config), ("summary.json", summary), ("run.json", info)):
        if (path / name).is_file():
            target.update(json.loads((path / name).read_text()))
    return CompactRun(path, config, summary, read_curve(path / CURVE_FILE), info)


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


def load_any(path) -> Run | CompactRun:
    """A training run directory (metrics.csv) or else a compact run folder (curve.csv)."""
    path = Path(path)
    if (path / "metrics.csv").is_file():
        return load_run(path)
    if (path / CURVE_FILE).is_file():
        return load_compact(path)
    raise ValueError(f"{str(path)!r} is not a run directory (no metrics.csv or {CURVE_FILE})")


# ------------------------------------------------------------------------------ drawing


def _thin(x: np.ndarray, y: np.ndarray, *more: np.ndarray):
    if len(x) <= MAX_POINTS:
        return (x, y, *more)
    idx = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int))
    return (x[idx], y[idx], *(m[idx] for m in more))


def group_curves(
    runs, window: int = WINDOW, *, band: str = "minmax", x: str = "episode"
) -> dict[tuple[str, str, str, int], dict]:
    """Mean and band over seeds of the avg-100 curve per (env, model, backend, learners).

    Curves are cut to the run of the group that reaches the least far (the others are read
    at its x values, interpolated linearly where their points differ). ``band``: ``minmax``
    (min and max over seeds) or ``ci95`` (mean ± t(0.975, n-1) * sd / sqrt(n)). Returns
    ``{key: {"x", "episodes" (= x), "mean", "lo", "hi", "n", "cut"}}`` (``cut``: some seeds
    went further than the curve shows).
    """
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; choose {' or '.join(BANDS)}")
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault((run.env, run.model, run.backend, run.learners), []).append(run)
    out = {}
    for key, members in groups.items():
        pts = [p for p in (r.points(window, x) for r in members) if len(p[0])]
        if not pts:
            continue
        base = min(pts, key=lambda p: (p[0][-1], len(p[0])))[0]
        ys = np.stack(
            [py if np.array_equal(px, base) else np.interp(base, px, py) for px, py in pts]
        )
        mean = ys.mean(axis=0)
        if band == "minmax" or len(pts) < 2:
            lo, hi = ys.min(axis=0), ys.max(axis=0)
        else:
            half = t_ppf(0.975, len(pts) - 1) * ys.std(axis=0, ddof=1) / math.sqrt(len(pts))
            lo, hi = mean - half, mean + half
        cut = any(px[-1] > base[-1] for px, _ in pts)
        out[key] = {
            "x": base,
            "episodes": base,
            "mean": mean,
            "lo": lo,
            "hi": hi,
            "n": len(pts),
            "cut": cut,  # some seeds went further: the curve stops where the shortest did
        }
    return out


def draw_runs(ax, runs, window: int = WINDOW) -> None:
    """One avg-``window`` curve per run on ``ax``."""
    for run in runs:
        x, y = _thin(*run.points(window))
        ax.plot(x, y, lw=1.2, label=run.label)


def draw_groups(
    ax,
    runs,
    window: int = WINDOW,
    *,
    band: str = "minmax",
    x: str = "episode",
    show_learners: bool | None = None,
) -> dict:
    """Mean over seeds per (env, model, backend, learners) with a band, on ``ax``.

    ``show_learners`` (default: when the runs have several learner counts) names the learner
    count in the legend and draws each count with its own line style. Returns the groups.
    """
    groups = group_curves(runs, window, band=band, x=x)
    counts = sorted({k[3] for k in groups}, reverse=True)
    if show_learners is None:
        show_learners = len(counts) > 1
    band_name = "min-max" if band == "minmax" else "95% CI"
    for (_, model, backend, learners), g in groups.items():
        xs, mean, lo, hi = _thin(g["x"], g["mean"], g["lo"], g["hi"])
        name = "Quantum" if model == "quantum" else "Classical"
        if model == "quantum" and backend != "statevector":
            name += f" ({backend})"
        if show_learners:
            name += f", {learners} learners"
        label = f"{name} (mean of {g['n']} seeds, {band_name})" if g["n"] > 1 else name
        if g["cut"]:
            label += ", cut at the shortest seed"
        colour = MODEL_COLOURS.get(model) if backend in ("statevector", "classical") else None
        style = LEARNER_STYLES[counts.index(learners) % len(LEARNER_STYLES)]
        (line,) = ax.plot(xs, mean, lw=1.4, label=label, color=colour, ls=style)
        if g["n"] > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    return groups


def style_axes(
    ax, title: str | None = None, threshold: float | None = None, xlabel: str = "Episode #"
) -> None:
    """Paper-like axes: ``Episode #`` / ``Average Score``, legend, optional threshold line."""
    if threshold is not None:
        ax.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Average Score (last {WINDOW})")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def default_title(runs) -> str:
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
    band: str = "minmax",
) -> Path:
    """Draw the avg-``window`` score of several runs in one PNG; return its path.

    ``run_dirs``: run directories, compact run folders or loaded runs. ``group=True`` draws
    the mean over seeds with a band (``minmax`` or ``ci95``) per (env, model, backend,
    learners).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r if isinstance(r, (Run, CompactRun)) else load_any(r) for r in run_dirs]
    if not runs:
        raise ValueError("no runs to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if group:
        draw_groups(ax, runs, window, band=band)
    else:
        draw_runs(ax, runs, window)
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
        "for one or more runs (like the paper's Figs. 7-9). A run is a training run "
        "directory (metrics.csv) or a compact run folder exported by reproduce (curve.csv).",
    )
    parser.add_argument(
        "run_dirs", metavar="runs", nargs="+", help="run directories or compact run folders"
    )
    parser.add_argument("-o", "--out", default="curves.png", help="output PNG")
    parser.add_argument("--title", default=None, help="figure title (default: the env ids)")
    parser.add_argument("--window", type=int, default=WINDOW, help="moving-average window")
    parser.add_argument(
        "--group",
        action="store_true",
        help="one curve per (env, model, backend, learners): mean over seeds with a band",
    )
    parser.add_argument(
        "--band",
        default="minmax",
        choices=BANDS,
        help="band of --group: min-max over seeds, or 95%% CI of the mean",
    )
    parser.add_argument("--threshold", type=float, default=None, help="draw a dashed line here")
    args = parser.parse_args(argv)
    if args.window <= 0:
        print(f"error: --window must be > 0, got {args.window}", file=sys.stderr)
        return 2
    try:
        out = plot_runs(**vars(args))  # every option is a parameter of plot_runs
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
