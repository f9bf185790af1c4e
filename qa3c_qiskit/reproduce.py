"""``python -m qa3c_qiskit.reproduce``: the paper's quantum-vs-classical experiments (Sec. VI).

For one environment (or ``--env all``: the paper's five) this trains the quantum agent and its
classical twin with the paper's settings (every :class:`~qa3c_qiskit.config.TrainConfig`
default) on several seeds, through :func:`qa3c_qiskit.train.train`; exports every run as a
*compact* run folder small enough to commit; and rebuilds every figure and table from the
compact folders alone. The paper's protocol is ``--learners 80 --workers 2 --episodes 100000``
(80 actor-learners on two processes); see ``results/README.md`` for the exact commands.

Two folders (by default the same one, ``results``)::

    OUT/ENV/runs/RUN/            training runs (config, metrics.csv, checkpoint, model, summary)
    OUT/ENV/runs/RUN.reproduce.json   the commands that trained RUN and its intended budget

    RESULTS/                     (commit this; --results, default: --out)
      summary.md                 one verdict line per env, links, the learner comparisons
      grid.png                   every env in one grid (mean over seeds, band per model)
      fig9_minigrid.png          the three SimpleCrossing envs side by side (paper Fig. 9)
      table1.md/.csv             parameter counts (paper Table I) next to the paper's numbers
      ENV/
        curves.png               like Figs. 7-9: avg-100 vs episodes, mean over seeds + band
        results.md/.csv          per model and per run: final/best avg-100, episodes to the
                                 reward threshold, area under the curve, wall time, env
                                 steps/s, budget reached; the verdict (Welch's t-test)
        learners.png/.md         (when the env has runs with several learner counts)
        RUN/                     compact run: config.json, summary.json, run.json (commands,
                                 intended budget, git commit), curve.csv (avg-100 every 100
                                 episodes + mean episode length, env steps, wall time)

RUN is ``MODEL__BACKEND__L<learners>__s<seed>`` (e.g. ``quantum__statevector__L80__s0``).

Modes: the default trains (a finished run of the same or a larger budget is reused, an
interrupted run or one of a smaller budget is continued from its checkpoint with
``train --resume``), exports each run as it ends (also after Ctrl-C) and redraws the report;
``--export`` exports the runs found under OUT (also runs still going: their compact summary is
then computed from metrics.csv) and redraws; ``--report-only`` redraws from the compact
folders in RESULTS alone (no metrics.csv needed).

Seed k uses base seed ``seed + 100 * k`` (or ``--seed-list``); actor-learner i of a run uses
``seed + i``, so runs of up to 100 learners never share a learner seed.

The statistics (Welch's t-test on the final average-100 over seeds, t quantiles of the 95% CI
band) are computed in :mod:`qa3c_qiskit.stats` with :mod:`math` alone (no scipy needed).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .envs import PAPER_ENVS
from .metrics import METRICS_FIELDS, summarize, write_json
from .plot import (
    BANDS,
    CURVE_EVERY,
    CURVE_FILE,
    PAPER_FIGURE,
    CompactRun,
    compact_curve,
    draw_groups,
    load_compact,
    style_axes,
    write_curve,
)
from .stats import welch_t_test

MODELS = ("quantum", "classical")
SEED_STRIDE = 100
#: The paper's protocol (Sec. VI, Appendix A), as reproduce options.
PAPER_PROTOCOL = "--learners 80 --workers 2 --episodes 100000"
#: The sidecar of a training run (OUT/ENV/runs/RUN.reproduce.json): commands, intended budget.
SIDECAR = ".reproduce.json"
SIGNIFICANCE = 0.05
#: Paper Table I (actor + critic): classical part, quantum, QA3C total, classical twin total.
PAPER_TABLE1 = {
    "Acrobot-v1": (148, 96, 244, 292),
    "CartPole-v1": (107, 96, 203, 251),
    "MiniGrid-SimpleCrossingS9N1-v0": (2431, 96, 2527, 2575),
    "MiniGrid-SimpleCrossingS9N2-v0": (2431, 96, 2527, 2575),
    "MiniGrid-SimpleCrossingS9N3-v0": (2431, 96, 2527, 2575),
}
RESULT_FIELDS = [
    "env",
    "model",
    "backend",
    "learners",
    "workers",
    "seed",
    "episodes",
    "intended_episodes",
    "complete",
    "status",
    "final_avg100",
    "best_avg100",
    "reward_threshold",
    "episodes_to_threshold",
    "auc_avg100",
    "wall_time_s",
    "env_steps",
    "env_steps_per_s",
]


# ------------------------------------------------------------------------------ options


def parse_envs(text: str) -> list[str]:
    """``all`` -> the paper's five envs; otherwise a comma-separated list, each checked."""
    if text == "all":
        return list(PAPER_ENVS)
    envs = [e.strip() for e in text.split(",") if e.strip()]
    for env in envs:
        if env not in PAPER_ENVS:
            raise ValueError(f"unknown --env {env!r}; choose all or one of {', '.join(PAPER_ENVS)}")
    return envs


def seeds_of(args: argparse.Namespace) -> list[int]:
    """``--seed-list`` if given, else ``--seeds`` seeds ``seed + 100 * k``."""
    if args.seed_list:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise ValueError(
                f"--seed-list must be comma-separated integers, got {args.seed_list!r}"
            ) from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"--seed-list needs distinct seeds, got {args.seed_list!r}")
        return seeds
    return [args.seed + SEED_STRIDE * k for k in range(args.seeds)]


def run_name(model: str, backend: str, learners: int, seed: int) -> str:
    """``quantum__statevector__L80__s0`` (the backend's stem; ``classical`` for the twin)."""
    return f"{model}__{Path(backend).stem if model == 'quantum' else 'classical'}__L{learners}__s{seed}"


def configs_for(env: str, args: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per (seed, model) of ``env`` (both models of a seed one after the
    other); paper defaults except the given options."""
    cfgs = []
    learners = args.learners or args.workers
    for seed in args.seed_values:  # seed by seed, so a verdict needs the fewest finished runs
        for model in args.models:
            extra = {} if args.lr is None else {"lr": args.lr}
            cfgs.append(
                TrainConfig(
                    env=env,
                    model=model,
                    backend=args.backend,
                    workers=args.workers,
                    learners=args.learners,
                    episodes=args.episodes,
                    seed=seed,
                    out=str(Path(args.out) / env / "runs"),
                    run_name=run_name(model, args.backend, learners, seed),
                    runner=args.runner,
                    address=args.address,
                    quiet=args.quiet,
                    **extra,
                )
            )
    return cfgs


# ------------------------------------------------------------------------------ training


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def sidecar_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + SIDECAR)


def record_command(run_dir: Path, command: str, episodes: int, action: str) -> dict:
    """Append this invocation to the run's sidecar; ``start``/``resume`` set the intended
    budget (a reuse of a finished run leaves it)."""
    path = sidecar_path(run_dir)
    info = json.loads(path.read_text()) if path.is_file() else {"commands": []}
    info["commands"].append(
        {
            "command": command,
            "action": action,
            "episodes": episodes,
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "git_commit": _git_commit(),
            "host": f"{platform.node()} ({os.cpu_count()} cpus, {platform.machine()})",
        }
    )
    if action in ("start", "resume") or "intended_episodes" not in info:
        info["intended_episodes"] = episodes
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, info)
    return info


def _summary_episodes(run_dir: Path) -> int | None:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("episodes")


def _finished(run_dir: Path, episodes: int) -> bool:
    """The run finished at least ``episodes`` episodes (a larger budget is reused as is)."""
    done = _summary_episodes(run_dir)
    return done is not None and done >= episodes


def run_one(cfg: TrainConfig, command: str = "") -> Path:
    """Train ``cfg`` unless its run directory already holds a finished run of this budget or
    more; continue an interrupted run (or one of a smaller budget) from its checkpoint."""
    from .checkpoint import CHECKPOINT
    from .train import train

    run_dir = Path(cfg.out) / cfg.run_name
    if _finished(run_dir, cfg.episodes):
        record_command(run_dir, command, cfg.episodes, "reuse")
        print(f"reusing finished run {run_dir} ({_summary_episodes(run_dir)} episodes)")
        return run_dir
    if run_dir.exists():
        if (run_dir / CHECKPOINT).is_file():
            print(f"resuming {run_dir} up to {cfg.episodes} episodes")
            record_command(run_dir, command, cfg.episodes, "resume")
            # Other settings, a run in use, ...: stop with an error; never move a resumable run
            # aside.
            try:
                return train(replace(cfg, resume=str(run_dir)), show_table=False)
            except ValueError as exc:
                raise ValueError(
                    f"cannot continue {run_dir}: {exc} (move it away or choose another --out)"
                ) from None
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run_dir), aside)
        print(f"{run_dir} has no checkpoint; moved it to {aside}, starting afresh")
    record_command(run_dir, command, cfg.episodes, "start")
    return train(cfg, show_table=False)


# -------------------------------------------------------------------------------- export


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


# -------------------------------------------------------------------------------- report


def load_results(results: Path, envs: list[str] | None = None) -> dict[str, list[CompactRun]]:
    """Compact runs per env folder of ``results`` (only ``envs`` if given)."""
    out: dict[str, list[CompactRun]] = {}
    if not Path(results).is_dir():
        return out
    for env_dir in sorted(Path(results).iterdir()):
        if not env_dir.is_dir() or (envs is not None and env_dir.name not in envs):
            continue
        runs = [
            load_compact(d)
            for d in sorted(env_dir.iterdir())
            if d.is_dir() and (d / CURVE_FILE).is_file()
        ]
        runs = [r for r in runs if r.n]  # a run exported before its first episode: no data
        if runs:
            out[env_dir.name] = runs
    order = {e: i for i, e in enumerate(PAPER_ENVS)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def curve_auc(run: CompactRun, upto: int | None = None) -> float:
    """Area under the avg-100 curve per episode: the trapezoid integral over the exported
    points (up to episode ``upto``) divided by their episode span (= the mean avg-100 score
    over training)."""
    x, y = run.curve["episode"], run.curve["avg100"]
    if upto is not None:
        x, y = x[x <= upto], y[x <= upto]
    if len(x) == 0:
        return math.nan
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def avg100_at(run: CompactRun, episode: int) -> float:
    """The avg-100 of ``run`` at ``episode`` (an exported point; interpolated otherwise)."""
    x, y = run.curve["episode"], run.curve["avg100"]
    hit = np.nonzero(x == episode)[0]
    return float(y[hit[0]]) if len(hit) else float(np.interp(episode, x, y))


def common_scores(rows: list[dict]) -> tuple[list[float], list[float], int | None]:
    """Final avg-100 and AUC of ``rows`` compared at one episode: their final values when every
    run ended at the same episode, else the values at the last exported point every run
    reached (returned as the third item; None when the finals are used)."""
    ends = {r["episodes"] for r in rows}
    if len(ends) == 1 or any("_run" not in r for r in rows):
        return [r["final_avg100"] for r in rows], [r["auc_avg100"] for r in rows], None
    common = min(ends)
    at = (common // CURVE_EVERY) * CURVE_EVERY or common
    finals = [avg100_at(r["_run"], at) for r in rows]
    return finals, [curve_auc(r["_run"], at) for r in rows], at


def result_row(run: CompactRun) -> dict:
    s, info = run.summary, run.info
    episodes = int(s.get("episodes", run.episodes))
    intended = int(info.get("intended_episodes") or run.config.get("episodes") or episodes)
    return {
        "env": run.env,
        "model": run.model,
        "backend": run.backend,
        "learners": run.learners,
        "workers": run.config.get("workers"),
        "seed": run.seed,
        "episodes": episodes,
        "intended_episodes": intended,
        "complete": bool(episodes >= intended and s.get("status", "complete") == "complete"),
        "status": s.get("status", "?"),
        "final_avg100": _float(s.get("final_avg100")),
        "best_avg100": _float(s.get("best_avg100")),
        "reward_threshold": s.get("reward_threshold"),
        "episodes_to_threshold": s.get("episodes_to_threshold"),
        "auc_avg100": curve_auc(run),
        "wall_time_s": _float(s.get("wall_time_s")),
        "env_steps": s.get("env_steps"),
        "env_steps_per_s": _float(s.get("env_steps_per_s")),
    }


def _float(x) -> float:
    return math.nan if x is None else float(x)


def _mean_sd(values) -> tuple[float, float]:
    v = np.array([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def group_key(r: dict) -> tuple:
    return (r["env"], r["model"], r["backend"], r["learners"])


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (env, model, backend, learners): mean and sample std (n - 1) over seeds, solved
    count, and the budget the seeds reached."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    out = []
    for (env, model, backend, learners), rs in groups.items():
        solved = [r["episodes_to_threshold"] for r in rs if r["episodes_to_threshold"] is not None]
        reached = [r["episodes"] for r in rs]
        intended = max(r["intended_episodes"] for r in rs)
        out.append(
            {
                "env": env,
                "model": model,
                "backend": backend,
                "learners": learners,
                "seeds": len(rs),
                "episodes": min(reached),
                "episodes_max": max(reached),
                "intended_episodes": intended,
                "complete": all(r["complete"] for r in rs),
                "final_avg100": _mean_sd(r["final_avg100"] for r in rs),
                "best_avg100": _mean_sd(r["best_avg100"] for r in rs),
                "solved": f"{len(solved)}/{len(rs)}",
                "episodes_to_threshold": _mean_sd(solved) if solved else None,
                "auc_avg100": _mean_sd(r["auc_avg100"] for r in rs),
                "wall_time_s": _mean_sd(r["wall_time_s"] for r in rs),
                "env_steps_per_s": _mean_sd(r["env_steps_per_s"] for r in rs),
            }
        )
    order = {m: i for i, m in enumerate(MODELS)}
    out.sort(key=lambda a: (a["env"], -a["learners"], order.get(a["model"], 9), a["backend"]))
    return out


def budget_text(
    episodes: int, intended: int, complete: bool, episodes_max: int | None = None
) -> str:
    """``100,000`` or ``reached 37,400 of 100,000`` (a range over seeds when they differ)."""
    if complete:
        return f"{intended:,}"
    span = f"{episodes:,}" if episodes_max in (None, episodes) else f"{episodes:,}-{episodes_max:,}"
    return f"reached {span} of {intended:,}"


def _fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, tuple):
        mean, sd = x
        if not math.isfinite(mean):
            return "-"
        return (
            _fmt(mean, digits)
            if not math.isfinite(sd)
            else f"{mean:,.{digits}f} ± {sd:,.{digits}f}"
        )
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:,.{digits}f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def _p(p: float) -> str:
    """``p = 0.069``, ``p < 0.001`` or ``p n/a``."""
    if not math.isfinite(p):
        return "p n/a"
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def verdict(env: str, rows: list[dict], learners: int, backend: str = "statevector") -> dict | None:
    """Quantum (``backend``) vs classical at ``learners`` learners: Welch's t-test on the final
    average-100 over seeds, and a one-line verdict against the paper's claim (the quantum
    agent learns as well as or better than its classical twin). None without both models."""
    q = [
        r
        for r in rows
        if r["model"] == "quantum" and r["backend"] == backend and r["learners"] == learners
    ]
    c = [r for r in rows if r["model"] == "classical" and r["learners"] == learners]
    if not q or not c:
        return None
    both = q + c
    finals, aucs, at = common_scores(both)
    test = welch_t_test(finals[: len(q)], finals[len(q) :])
    auc = welch_t_test(aucs[: len(q)], aucs[len(q) :])
    score = "final avg-100" if at is None else f"avg-100 at episode {at:,} (reached by all)"
    intended = max(r["intended_episodes"] for r in both)
    reached = [r["episodes"] for r in both]
    complete = all(r["complete"] for r in both)
    budget = budget_text(min(reached), intended, complete, max(reached))
    if test["n1"] < 2 or test["n2"] < 2:
        outcome = "not testable (needs >= 2 seeds per model)"
        better = "quantum" if test["mean1"] >= test["mean2"] else "classical"
        outcome += f"; {better} higher on these seeds"
    elif test["p"] < SIGNIFICANCE and test["mean1"] > test["mean2"]:
        outcome = "supports the claim: quantum significantly better"
    elif test["p"] < SIGNIFICANCE:
        outcome = "contradicts the claim: classical significantly better"
    else:
        higher = "quantum" if test["mean1"] >= test["mean2"] else "classical"
        outcome = (
            "consistent with the claim (as well as): no significant difference at the 5% "
            f"level ({higher} mean higher)"
        )
    stat = (
        f"Welch t = {test['t']:.2f}, df = {test['df']:.1f}, {_p(test['p'])}"
        if math.isfinite(test["p"])
        else "Welch's t-test n/a"
    )
    line = (
        f"**{env}** ({learners} learners, {backend} vs classical, {test['n1']} vs "
        f"{test['n2']} seeds, episodes: {budget}): {score}: quantum "
        f"{_fmt((test['mean1'], test['sd1']), 2)} vs classical "
        f"{_fmt((test['mean2'], test['sd2']), 2)}; {stat}; AUC {_p(auc['p'])} "
        f"-> **{outcome}**" + ("" if complete else " (**budget not reached**)")
    )
    return {
        "env": env,
        "learners": learners,
        "backend": backend,
        "test": test,
        "auc_test": auc,
        "outcome": outcome,
        "complete": complete,
        "line": line,
    }


def env_verdicts(env: str, rows: list[dict]) -> list[dict]:
    """Verdicts per (learner count, quantum backend), the largest learner count first."""
    out = []
    for learners in sorted({r["learners"] for r in rows}, reverse=True):
        backends = sorted({r["backend"] for r in rows if r["model"] == "quantum"})
        for backend in sorted(backends, key=lambda b: b != "statevector"):
            v = verdict(env, rows, learners, backend)
            if v:
                out.append(v)
    return out


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


AGG_HEADER = [
    "model",
    "backend",
    "learners",
    "seeds",
    "episodes",
    "final avg100",
    "best avg100",
    "seeds solved",
    "episodes to threshold",
    "AUC (mean avg100)",
    "wall time (s)",
    "env steps/s",
]


def agg_cells(a: dict) -> list:
    return [
        a["model"],
        a["backend"],
        a["learners"],
        a["seeds"],
        budget_text(a["episodes"], a["intended_episodes"], a["complete"], a["episodes_max"]),
        _fmt(a["final_avg100"], 2),
        _fmt(a["best_avg100"], 2),
        a["solved"],
        _fmt(a["episodes_to_threshold"], 0),
        _fmt(a["auc_avg100"], 2),
        _fmt(a["wall_time_s"], 0),
        _fmt(a["env_steps_per_s"], 0),
    ]


NOTES = (
    "Score = average return of the last 100 episodes (avg100). ± = sample standard deviation "
    "over seeds. *Final* = at the last episode; *best* = the highest avg100 of the run; "
    "*episodes to threshold* = first episode whose avg100 reaches the reward threshold, mean "
    "over the seeds that reached it; *AUC* = area under the avg100 curve (exported every "
    f"{CURVE_EVERY} episodes) divided by its episode span, i.e. the mean avg100 over training "
    "(compare it between runs of the same budget only); wall time and env steps/s are "
    "cumulative over all sessions of a resumed run. *episodes*: the budget every seed "
    "reached, or `reached N of M` when a run stopped short of its intended budget M. "
    "Verdict: Welch's unequal-variances t-test (two-sided) on the final avg100 over seeds, "
    "5% level (when the runs compared ended at different episodes: on the avg100 at the last "
    f"exported point every run reached, a multiple of {CURVE_EVERY}, as the line says); "
    "'consistent with the claim' means no significant difference, which with a few seeds is "
    "weak evidence of equality. Curves: mean over seeds with a band (min-max or 95% CI); a "
    "group whose seeds reached different episodes is cut at its shortest seed."
)


def results_markdown(env: str, rows: list[dict], agg: list[dict], verdicts: list[dict]) -> str:
    threshold = rows[0]["reward_threshold"] if rows else None
    commands = list(dict.fromkeys(c for r in rows for c in r.get("_commands", [])))
    text = [
        f"# {env}: quantum vs classical (cf. paper {PAPER_FIGURE.get(env, '')})\n",
        *(
            [f"- {v['line']}\n" for v in verdicts]
            or [
                "No verdict: the quantum agent and its classical twin need runs at the same "
                "learner count.\n"
            ]
        ),
        "![curves](curves.png)\n",
        f"{NOTES} Reward threshold: {threshold}.\n",
        "## Per model (mean ± std over seeds)\n",
        markdown_table(AGG_HEADER, [agg_cells(a) for a in agg]),
        "## Per run\n",
        markdown_table(
            [
                "model",
                "backend",
                "learners",
                "workers",
                "seed",
                "episodes",
                "status",
                "final avg100",
                "best avg100",
                "episodes to threshold",
                "AUC",
                "wall time (s)",
                "env steps",
                "env steps/s",
            ],
            [
                [
                    r["model"],
                    r["backend"],
                    r["learners"],
                    _fmt(r["workers"]),
                    r["seed"],
                    budget_text(r["episodes"], r["intended_episodes"], r["complete"]),
                    r["status"],
                    _fmt(r["final_avg100"], 2),
                    _fmt(r["best_avg100"], 2),
                    _fmt(r["episodes_to_threshold"]),
                    _fmt(r["auc_avg100"], 2),
                    _fmt(r["wall_time_s"], 0),
                    _fmt(r["env_steps"]),
                    _fmt(r["env_steps_per_s"], 0),
                ]
                for r in rows
            ],
        ),
        "## Commands that produced these runs\n",
        "".join(f"    {c}\n" for c in commands) or "(not recorded)\n",
    ]
    return "\n".join(text)


def learners_comparison(env: str, rows: list[dict], agg: list[dict]) -> list[str]:
    """Per model: the largest vs the smallest learner count (Welch on the final avg100)."""
    lines = []
    counts = sorted({r["learners"] for r in rows})
    if len(counts) < 2:
        return lines
    lo, hi = counts[0], counts[-1]
    for model in MODELS:
        for backend in sorted({r["backend"] for r in rows if r["model"] == model}):
            a = [
                r for r in rows if (r["model"], r["backend"], r["learners"]) == (model, backend, hi)
            ]
            b = [
                r for r in rows if (r["model"], r["backend"], r["learners"]) == (model, backend, lo)
            ]
            if not a or not b:
                continue
            finals, _, at = common_scores(a + b)
            t = welch_t_test(finals[: len(a)], finals[len(a) :])
            score = "final avg-100" if at is None else f"avg-100 at episode {at:,}"
            speed = [_mean_sd(r["env_steps_per_s"] for r in x)[0] for x in (a, b)]
            wall = [_mean_sd(r["wall_time_s"] for r in x)[0] for x in (a, b)]
            budget = [
                budget_text(
                    min(r["episodes"] for r in x),
                    max(r["intended_episodes"] for r in x),
                    all(r["complete"] for r in x),
                    max(r["episodes"] for r in x),
                )
                for x in (a, b)
            ]
            lines.append(
                f"**{env}, {model}" + (f" ({backend})" if model == "quantum" else "") + f"**: "
                f"{hi} learners {_fmt((t['mean1'], t['sd1']), 2)} ({t['n1']} seeds, episodes "
                f"{budget[0]}) vs {lo} learners {_fmt((t['mean2'], t['sd2']), 2)} ({t['n2']} "
                f"seeds, episodes {budget[1]}) {score}; Welch {_p(t['p'])}; wall time "
                f"{_fmt(wall[0], 0)} s vs {_fmt(wall[1], 0)} s; env steps/s {_fmt(speed[0], 0)} "
                f"vs {_fmt(speed[1], 0)}"
            )
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main_learners(runs: list[CompactRun]) -> int:
    """The learner count an env's main figure and verdict use: the largest one present."""
    return max(r.learners for r in runs)


def env_title(env: str, learners: int | None = None) -> str:
    fig = PAPER_FIGURE.get(env)
    title = f"{env} (cf. paper {fig})" if fig else env
    return title + (f", {learners} learners" if learners else "")


def env_data(env: str, runs: list[CompactRun]) -> dict:
    """The numbers of one env's report: per-run rows, per-model aggregates, verdicts, the
    learner-count comparison and the learner count of the main figure."""
    rows = []
    for run in runs:
        row = result_row(run)
        row["_run"] = run
        row["_commands"] = [c["command"] for c in run.info.get("commands", []) if c.get("command")]
        rows.append(row)
    rows.sort(
        key=lambda r: (
            -r["learners"],
            MODELS.index(r["model"]) if r["model"] in MODELS else 9,
            r["backend"],
            r["seed"] if r["seed"] is not None else 0,
        )
    )
    agg = aggregate(rows)
    return {
        "rows": rows,
        "aggregate": agg,
        "verdicts": env_verdicts(env, rows),
        "learners": learners_comparison(env, rows, agg),
        "main_learners": main_learners(runs),
        "figure": None,
    }


def write_env_report(folder: Path, env: str, runs: list[CompactRun], band: str = "minmax") -> dict:
    """curves.png, results.md/.csv (and learners.png/.md with several learner counts) of one
    env, from its compact runs alone; returns :func:`env_data`."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    data = env_data(env, runs)
    rows, agg, top = data["rows"], data["aggregate"], data["main_learners"]
    with open(folder / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (folder / "results.md").write_text(results_markdown(env, rows, agg, data["verdicts"]))
    threshold = next(
        (r["reward_threshold"] for r in rows if r["reward_threshold"] is not None), None
    )
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    draw_groups(ax, [r for r in runs if r.learners == top], band=band)
    style_axes(ax, env_title(env, top), threshold)
    fig.tight_layout()
    fig.savefig(folder / "curves.png")
    plt.close(fig)
    data["figure"] = folder / "curves.png"
    if data["learners"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
        for ax, x, label in (
            (axes[0], "episode", "Episode #"),
            (axes[1], "wall_time_h", "Wall time (h)"),
        ):
            draw_groups(ax, runs, band=band, x=x, show_learners=True)
            style_axes(ax, f"{env}: learner counts", threshold, xlabel=label)
        fig.tight_layout()
        fig.savefig(folder / "learners.png")
        plt.close(fig)
        counts = " vs ".join(str(c) for c in sorted({r["learners"] for r in rows}))
        (folder / "learners.md").write_text(
            f"# {env}: {counts} actor-learners\n\n"
            + "".join(f"- {line}\n" for line in data["learners"])
            + "\n![learners](learners.png)\n\n"
            + markdown_table(AGG_HEADER, [agg_cells(a) for a in agg])
            + f"\n{NOTES}\n"
        )
    else:
        for name in ("learners.png", "learners.md"):
            (folder / name).unlink(missing_ok=True)
    return data


def table1_rows(envs: list[str], n_qubits: int = 8, n_layers: int = 2) -> list[dict]:
    """Our parameter counts (``models.parameter_table``) beside the paper's Table I."""
    from .envs import env_info
    from .models import parameter_table

    specs = {e: (env_info(e).obs_dim, env_info(e).n_actions) for e in envs}
    rows = parameter_table(specs, n_qubits=n_qubits, n_layers=n_layers)
    for r in rows:
        paper = PAPER_TABLE1.get(r["env"])
        r["paper"] = "/".join(map(str, paper)) if paper else "-"
        r["matches_paper"] = paper == (
            r["classical"],
            r["quantum"],
            r["qa3c_total"],
            r["classical_total"],
        )
    return rows


TABLE1_KEYS = [
    "env",
    "classical",
    "quantum",
    "qa3c_total",
    "classical_total",
    "paper",
    "matches_paper",
]
TABLE1_HEADER = [
    "env",
    "QA3C classical",
    "QA3C quantum",
    "QA3C total",
    "classical twin total",
    "paper (same order)",
    "matches",
]


def write_table1(folder: Path, envs: list[str]) -> list[dict]:
    rows = table1_rows(envs)
    with open(folder / "table1.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TABLE1_KEYS)
        w.writeheader()
        w.writerows(rows)
    md = markdown_table(TABLE1_HEADER, [[r[k] for k in TABLE1_KEYS] for r in rows])
    (folder / "table1.md").write_text("# Table I: number of parameters (actor + critic)\n\n" + md)
    return rows


def plot_grid(out: Path, results: dict[str, list[CompactRun]], band: str = "minmax") -> Path | None:
    """Every env's main comparison in one grid (up to 3 panels a row)."""
    if not results:
        return None
    plt = _pyplot()
    n = len(results)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), dpi=110, squeeze=False)
    for ax, (env, runs) in zip(axes.flat, results.items()):
        top = main_learners(runs)
        draw_groups(ax, [r for r in runs if r.learners == top], band=band)
        threshold = next((r.summary.get("reward_threshold") for r in runs), None)
        style_axes(ax, env_title(env, top), threshold)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_minigrid_panels(
    out: Path, results: dict[str, list[CompactRun]], band: str = "minmax"
) -> Path | None:
    """Fig. 9 layout: the SimpleCrossing envs side by side (those that have runs)."""
    panels = {e: r for e, r in results.items() if e.startswith("MiniGrid-")}
    if not panels:
        Path(out).unlink(missing_ok=True)
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (env, runs) in zip(axes[0], panels.items()):
        top = main_learners(runs)
        draw_groups(ax, [r for r in runs if r.learners == top], band=band)
        threshold = next((r.summary.get("reward_threshold") for r in runs), None)
        style_axes(ax, f"{env.removeprefix('MiniGrid-')}, {top} learners", threshold)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def report(
    results_dir: Path, band: str = "minmax", envs: list[str] | None = None
) -> dict[str, dict]:
    """Rebuild every figure and table in ``results_dir`` from its compact run folders alone.

    ``envs``: the env folders to redraw (default all); the overview (summary.md, grid.png,
    fig9_minigrid.png, table1) always covers every env folder. Returns the reports by env.
    """
    results_dir = Path(results_dir)
    everything = load_results(results_dir)
    reports = {}
    for env, runs in everything.items():
        if envs is not None and env not in envs:
            continue
        reports[env] = write_env_report(results_dir / env, env, runs, band)
        print(f"wrote {results_dir / env}/curves.png, results.md, results.csv")
    if not everything:
        return reports
    all_reports = {env: reports.get(env) or env_data(env, runs) for env, runs in everything.items()}
    plot_grid(results_dir / "grid.png", everything, band)
    plot_minigrid_panels(results_dir / "fig9_minigrid.png", everything, band)
    table1 = ""
    try:
        write_table1(results_dir, list(everything))
        table1 = "Parameter counts: [table1.md](table1.md).\n"
    except Exception as exc:  # the model code is not needed for the results themselves
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"note: Table I not written ({type(exc).__name__}: {first})", file=sys.stderr)
    lines = [
        "# Results: quantum vs classical (paper Figs. 7-9)\n",
        "Rebuilt from the compact run folders alone by\n\n"
        f"    python -m qa3c_qiskit.reproduce --report-only --results {results_dir}\n",
        "## Verdicts against the paper's claim (quantum learns as well as or better than "
        "its classical twin)\n",
    ]
    for env, rep in all_reports.items():
        main = [v for v in rep["verdicts"] if v["learners"] == rep["main_learners"]]
        shown = main or rep["verdicts"]
        for v in shown:
            lines.append(f"- {v['line']} ([details]({env}/results.md))")
        if not shown:
            lines.append(
                f"- **{env}**: no verdict (both models at one learner count needed) "
                f"([details]({env}/results.md))"
            )
    others = [
        v
        for rep in all_reports.values()
        for v in rep["verdicts"]
        if v["learners"] != rep["main_learners"]
    ]
    if others:
        lines.append("\nAt other learner counts:\n")
        lines += [f"- {v['line']}" for v in others]
    comparisons = [(env, rep["learners"]) for env, rep in all_reports.items() if rep["learners"]]
    if comparisons:
        lines.append("\n## Learner counts\n")
        for env, comp in comparisons:
            lines += [f"- {c} ([details]({env}/learners.md))" for c in comp]
    lines.append("\n![all environments](grid.png)\n")
    if (results_dir / "fig9_minigrid.png").is_file():
        lines.append("![SimpleCrossing (Fig. 9)](fig9_minigrid.png)\n")
    lines.append(table1)
    lines.append(NOTES + "\n")
    (results_dir / "summary.md").write_text("\n".join(lines))
    print(f"wrote {results_dir}/summary.md, grid.png")
    return reports


# ---------------------------------------------------------------------------------- main


def reproduce(args: argparse.Namespace) -> dict[str, dict]:
    """Train (default), export (``--export``) or only report (``--report-only``)."""
    from .train import TrainingInterrupted, WorkerFailed

    results = Path(args.results)
    if args.report_only:
        return report(results, args.band, args.envs)
    envs = args.envs
    if args.export:
        for env in envs or sorted(p.name for p in Path(args.out).iterdir() if p.is_dir()):
            for run_dir in training_runs(Path(args.out), env):
                if (run_dir / "summary.json").is_file() or _metrics_rows(run_dir):
                    print(f"exported {export_run(run_dir, results / env)}")
                else:
                    print(f"skipped {run_dir}: no finished episode yet")
        return report(results, args.band, envs)
    for env in envs:
        for cfg in configs_for(env, args):
            learners = cfg.learners or cfg.workers
            print(
                f"== {env} | {cfg.model} | seed {cfg.seed} | {learners} learners on "
                f"{cfg.workers} workers | {cfg.episodes} episodes =="
            )
            try:
                run_dir = run_one(cfg, args.command)
            except (TrainingInterrupted, WorkerFailed):
                run_dir = Path(cfg.out) / cfg.run_name
                if (run_dir / "metrics.csv").is_file():
                    export_run(run_dir, results / env)
                    report(results, args.band, [env])
                raise
            print(f"exported {export_run(run_dir, results / env)}")
            report(results, args.band, [env])
    return report(results, args.band, None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.reproduce",
        description=(
            "Reproduce the paper's quantum-vs-classical curves (Figs. 7-9) and Table I: train "
            "both models on several seeds, export each run as a compact folder (config.json, "
            "summary.json, run.json, curve.csv) and rebuild every figure and table from them. "
            f"The paper's protocol is {PAPER_PROTOCOL} (80 actor-learners on 2 processes), "
            "e.g. python -m qa3c_qiskit.reproduce --env CartPole-v1 --seeds 3 "
            f"{PAPER_PROTOCOL} --out runs/paper --results results; see results/README.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--env",
        default=None,
        help="all, or a comma-separated list of "
        + ", ".join(PAPER_ENVS)
        + " (required to train; --export/--report-only default to every env found)",
    )
    p.add_argument("--episodes", type=int, default=100_000, help="episodes per run (paper)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per model (seed + 100 * k)")
    p.add_argument("--seed", type=int, default=0, help="base seed; seed k uses seed + 100 * k")
    p.add_argument(
        "--seed-list", default=None, help="explicit comma-separated seeds (instead of --seeds)"
    )
    p.add_argument(
        "--learners",
        type=int,
        default=None,
        help="actor-learners per run, spread over the --workers processes (paper: 80, "
        "with --workers 2); None: one per worker",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes per run (paper protocol: 2, hosting 80 learners)",
    )
    p.add_argument("--backend", default="statevector", help="quantum backend of the quantum runs")
    p.add_argument("--runner", default="local", choices=("local", "ray"), help="worker host")
    p.add_argument("--address", default=None, help="Ray cluster address for --runner ray")
    p.add_argument(
        "--models",
        default="quantum,classical",
        help="comma-separated models to run (quantum, classical)",
    )
    p.add_argument("--lr", type=float, default=None, help="override the paper's lr 1e-4")
    p.add_argument(
        "--out", default="results", help="folder of the training runs (OUT/ENV/runs/RUN)"
    )
    p.add_argument(
        "--results",
        default=None,
        help="folder of the compact runs, figures and tables (RESULTS/ENV/...); default: --out",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--export",
        action="store_true",
        help="no training: export the runs under --out (also runs still going) into "
        "--results, then redraw",
    )
    mode.add_argument(
        "--report-only",
        action="store_true",
        help="no training: rebuild every figure and table from the compact folders in "
        "--results alone",
    )
    p.add_argument("--band", default="minmax", choices=BANDS, help="band over seeds in figures")
    p.add_argument("--quiet", action="store_true", help="progress lines instead of live display")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = "python -m qa3c_qiskit.reproduce " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    args.results = args.results or args.out
    try:
        if args.env is None and not (args.report_only or args.export):
            raise ValueError("--env is required to train (all, or one or more env ids)")
        args.envs = parse_envs(args.env) if args.env else None
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        for m in args.models:
            if m not in MODELS:
                raise ValueError(f"unknown model {m!r} in --models; choose from quantum, classical")
        for name in ("episodes", "seeds", "workers"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
        if args.learners is not None and args.learners < args.workers:
            raise ValueError(
                f"--learners must be >= --workers ({args.workers}), got {args.learners}"
            )
        args.seed_values = seeds_of(args)
        if (args.learners or args.workers) > SEED_STRIDE and len(args.seed_values) > 1:
            print(
                f"note: {args.learners} learners > the seed stride {SEED_STRIDE}: runs of "
                "different seeds share learner seeds (choose --seed-list further apart)",
                file=sys.stderr,
            )
        if args.report_only:
            if not load_results(Path(args.results), args.envs):
                raise ValueError(f"no compact runs (*/RUN/{CURVE_FILE}) in {args.results}")
        elif args.export:
            if not Path(args.out).is_dir():
                raise ValueError(f"no training runs folder {args.out}")
        elif "quantum" in args.models:
            from .backends import check_backend

            check_backend(args.backend)
        reproduce(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .train import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(
                f"{exc} (exported so far into {args.results}); rerun the same command to continue",
                file=sys.stderr,
            )
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
