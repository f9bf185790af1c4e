"""``python -m qa3c_qiskit.reproduce``: the paper's quantum-vs-classical experiments (Sec. VI).

For one environment (or ``--env all``: the paper's five) this trains the quantum agent and its
classical twin with the paper's settings (every :class:`~qa3c_qiskit.config.TrainConfig`
default) on K seeds each, through :func:`qa3c_qiskit.train.train`, and writes one results
folder per environment::

    OUT/ENV/
      curves.png       avg of last 100 vs episodes, mean over seeds with a min-max band
      results.md/.csv  per run and per model: final/best avg-100 score, episodes to the
                       reward threshold, wall time, env steps/s
      table1.md/.csv   parameter counts (paper Table I) next to the paper's numbers
      reproduce.json   the command and settings
      runs/MODEL__BACKEND__sSEED/   the training runs (config, metrics, model, summary)

A finished run (``summary.json`` present, same budget) is reused and an interrupted one (or one
with a smaller budget) is continued from its checkpoint (``train --resume``), so a reproduction
can be stopped and restarted, or extended with a larger ``--episodes``; ``--report-only``
redraws from existing runs.
Seed k uses base seed ``seed + 100 * k`` so that worker seeds (``seed + rank``) of different
runs never coincide.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .envs import PAPER_ENVS, env_info
from .metrics import write_json
from .models import parameter_table
from .plot import PAPER_FIGURE, Run, load_run, plot_runs

MODELS = ("quantum", "classical")
SEED_STRIDE = 100
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
    "seed",
    "episodes",
    "final_avg100",
    "best_avg100",
    "reward_threshold",
    "episodes_to_threshold",
    "wall_time_s",
    "env_steps",
    "env_steps_per_s",
]


def parse_envs(text: str) -> list[str]:
    """``all`` -> the paper's five envs; otherwise a comma-separated list, each checked."""
    if text == "all":
        return list(PAPER_ENVS)
    envs = [e.strip() for e in text.split(",") if e.strip()]
    for env in envs:
        if env not in PAPER_ENVS:
            raise ValueError(f"unknown --env {env!r}; choose all or one of {', '.join(PAPER_ENVS)}")
    return envs


def run_name(model: str, backend: str, seed: int) -> str:
    return f"{model}__{Path(backend).stem if model == 'quantum' else 'classical'}__s{seed}"


def _finished(run_dir: Path, episodes: int) -> bool:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    return json.loads(summary.read_text()).get("episodes") == episodes


def run_one(cfg: TrainConfig) -> Path:
    """Train ``cfg`` unless its run directory already holds a finished run of the same budget."""
    run_dir = Path(cfg.out) / cfg.run_name
    if _finished(run_dir, cfg.episodes):
        print(f"reusing finished run {run_dir}")
        return run_dir
    from .train import train

    if run_dir.exists():
        # An interrupted run (or a smaller budget): continue it from its checkpoint.
        try:
            print(f"resuming {run_dir} up to {cfg.episodes} episodes")
            return train(replace(cfg, resume=str(run_dir)), show_table=False)
        except ValueError as exc:  # not resumable (no checkpoint, other settings, ...)
            aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(str(run_dir), aside)
            print(f"cannot resume {run_dir} ({exc}); moved it to {aside}, starting afresh")
    return train(cfg, show_table=False)


def configs_for(env: str, args: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per (model, seed) of ``env``; paper defaults except the given options."""
    cfgs = []
    for model in args.models:
        for k in range(args.seeds):
            seed = args.seed + SEED_STRIDE * k
            extra = {} if args.lr is None else {"lr": args.lr}
            cfgs.append(
                TrainConfig(
                    env=env,
                    model=model,
                    backend=args.backend,
                    workers=args.workers,
                    episodes=args.episodes,
                    seed=seed,
                    out=str(Path(args.out) / env / "runs"),
                    run_name=run_name(model, args.backend, seed),
                    runner=args.runner,
                    address=args.address,
                    quiet=args.quiet,
                    **extra,
                )
            )
    return cfgs


def result_row(run: Run) -> dict:
    s = run.summary
    return {
        "env": run.env,
        "model": run.model,
        "backend": run.backend,
        "seed": run.seed,
        "episodes": s.get("episodes", len(run.returns)),
        "final_avg100": s.get("final_avg100", math.nan),
        "best_avg100": s.get("best_avg100", math.nan),
        "reward_threshold": s.get("reward_threshold"),
        "episodes_to_threshold": s.get("episodes_to_threshold"),
        "wall_time_s": s.get("wall_time_s", math.nan),
        "env_steps": s.get("env_steps"),
        "env_steps_per_s": s.get("env_steps_per_s", math.nan),
    }


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (env, model, backend): mean and std over seeds of each number, solved count."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["env"], r["model"], r["backend"]), []).append(r)
    out = []
    for (env, model, backend), rs in groups.items():

        def stat(key, rs=rs):
            v = np.array([float(r[key]) for r in rs], dtype=float)
            return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan, float(np.std(v))

        solved = [r["episodes_to_threshold"] for r in rs if r["episodes_to_threshold"] is not None]
        out.append(
            {
                "env": env,
                "model": model,
                "backend": backend,
                "seeds": len(rs),
                "episodes": rs[0]["episodes"],
                "final_avg100": stat("final_avg100"),
                "best_avg100": stat("best_avg100"),
                "solved": f"{len(solved)}/{len(rs)}",
                "episodes_to_threshold": (
                    float(np.mean(solved)) if solved else None
                ),  # mean over solved seeds only
                "wall_time_s": stat("wall_time_s"),
                "env_steps_per_s": stat("env_steps_per_s"),
            }
        )
    return out


def _fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, tuple):
        mean, std = x
        return (
            _fmt(mean, digits)
            if not std or not math.isfinite(std)
            else (f"{mean:.{digits}f} ± {std:.{digits}f}")
        )
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_markdown(env: str, rows: list[dict], agg: list[dict], settings: dict) -> str:
    threshold = rows[0]["reward_threshold"] if rows else None
    text = [
        f"# {env}: quantum vs classical (cf. paper {PAPER_FIGURE.get(env, '')})\n",
        "Commands:\n\n" + "".join(f"    {c}\n" for c in settings["commands"]),
        f"Episodes per run {settings['episodes']}, {settings['workers']} workers, "
        f"backend {settings['backend']}, runner {settings['runner']}, "
        f"lr {settings['lr']}; other settings: the paper's (TrainConfig defaults). "
        f"Score = average return of the last 100 episodes; reward threshold {threshold}.\n",
        "## Per model (mean ± std over seeds)\n",
        markdown_table(
            [
                "model",
                "backend",
                "seeds",
                "episodes",
                "final avg100",
                "best avg100",
                "seeds solved",
                "episodes to threshold",
                "wall time (s)",
                "env steps/s",
            ],
            [
                [
                    a["model"],
                    a["backend"],
                    a["seeds"],
                    a["episodes"],
                    _fmt(a["final_avg100"], 2),
                    _fmt(a["best_avg100"], 2),
                    a["solved"],
                    _fmt(a["episodes_to_threshold"], 0),
                    _fmt(a["wall_time_s"], 0),
                    _fmt(a["env_steps_per_s"], 0),
                ]
                for a in agg
            ],
        ),
        "## Per run\n",
        markdown_table(
            [
                "model",
                "backend",
                "seed",
                "episodes",
                "final avg100",
                "best avg100",
                "episodes to threshold",
                "wall time (s)",
                "env steps",
                "env steps/s",
            ],
            [
                [
                    r["model"],
                    r["backend"],
                    r["seed"],
                    r["episodes"],
                    _fmt(r["final_avg100"], 2),
                    _fmt(r["best_avg100"], 2),
                    _fmt(r["episodes_to_threshold"]),
                    _fmt(r["wall_time_s"], 0),
                    _fmt(r["env_steps"]),
                    _fmt(r["env_steps_per_s"], 0),
                ]
                for r in rows
            ],
        ),
    ]
    return "\n".join(text)


def table1_rows(envs: list[str], n_qubits: int = 8, n_layers: int = 2) -> list[dict]:
    """Our parameter counts (``models.parameter_table``) beside the paper's Table I."""
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


def write_table1(folder: Path, envs: list[str]) -> list[dict]:
    rows = table1_rows(envs)
    keys = [
        "env",
        "classical",
        "quantum",
        "qa3c_total",
        "classical_total",
        "paper",
        "matches_paper",
    ]
    with open(folder / "table1.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    md = markdown_table(
        [
            "env",
            "QA3C classical",
            "QA3C quantum",
            "QA3C total",
            "classical twin total",
            "paper (same order)",
            "matches",
        ],
        [[r[k] for k in keys] for r in rows],
    )
    (folder / "table1.md").write_text("# Table I: number of parameters (actor + critic)\n\n" + md)
    return rows


def write_report(folder: Path, env: str, run_dirs: list[Path], settings: dict) -> dict:
    """Draw ``curves.png`` and write the results and Table I files of one env folder.

    Returns {"rows": per-run rows, "aggregate": per-model rows, "figure": png path}.
    """
    runs = [load_run(d) for d in run_dirs]
    rows = [result_row(r) for r in runs]
    agg = aggregate(rows)
    with open(folder / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (folder / "results.md").write_text(results_markdown(env, rows, agg, settings))
    write_table1(folder, [env])
    threshold = env_info(env).reward_threshold
    fig = plot_runs(
        runs,
        folder / "curves.png",
        group=True,
        title=f"{env}: quantum vs classical (cf. paper {PAPER_FIGURE.get(env, '')})",
        threshold=threshold,
    )
    write_json(folder / "reproduce.json", settings)
    return {"rows": rows, "aggregate": agg, "figure": fig}


def plot_minigrid_panels(out: Path, env_folders: dict[str, Path]) -> Path | None:
    """Fig. 9 layout: the three SimpleCrossing envs side by side (those that have runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import draw_groups, style_axes

    panels = {e: f for e, f in env_folders.items() if e.startswith("MiniGrid-")}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (env, folder) in zip(axes[0], panels.items()):
        runs = [load_run(d) for d in sorted((folder / "runs").glob("*__s*")) if _is_run(d)]
        draw_groups(ax, runs)
        style_axes(ax, env.removeprefix("MiniGrid-"), env_info(env).reward_threshold)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _is_run(d: Path) -> bool:
    return d.is_dir() and ".old-" not in d.name and (d / "summary.json").is_file()


def reproduce(args: argparse.Namespace) -> dict[str, dict]:
    """Run (or, with ``--report-only``, just report) every env; return its reports by env."""
    reports, folders = {}, {}
    for env in args.envs:
        folder = Path(args.out) / env
        folder.mkdir(parents=True, exist_ok=True)
        cfgs = configs_for(env, args)
        finished = [d for d in sorted((folder / "runs").glob("*__s*")) if _is_run(d)]
        if args.report_only:
            run_dirs = finished
        else:
            run_dirs = []
            for cfg in cfgs:
                print(f"== {env} | {cfg.model} | seed {cfg.seed} | {cfg.episodes} episodes ==")
                run_dirs.append(run_one(cfg))
            # The report covers every finished run of this budget in the folder, so the
            # models or seeds can be run by separate invocations (e.g. classical first).
            run_dirs += [d for d in finished if d not in run_dirs and _finished(d, args.episodes)]
        if not run_dirs:
            print(f"no finished runs in {folder / 'runs'}; nothing to report for {env}")
            continue
        previous = folder / "reproduce.json"
        old = json.loads(previous.read_text()) if previous.is_file() else {}
        if args.report_only and old:
            # Keep the commands and settings that produced the runs; note the redraw.
            settings = {**old, "report_command": args.command}
        else:
            commands = old.get("commands", []) if old.get("episodes") == args.episodes else []
            settings = {
                "commands": [*commands, args.command],
                "env": env,
                "episodes": args.episodes,
                "seeds": sorted({c.seed for c in cfgs}),
                "workers": args.workers,
                "backend": args.backend,
                "runner": args.runner,
                "lr": args.lr if args.lr is not None else TrainConfig().lr,
                "models": sorted({load_run(d).model for d in run_dirs}),
                "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
        reports[env] = write_report(folder, env, run_dirs, settings)
        folders[env] = folder
        print(f"wrote {folder}/curves.png, results.md, results.csv, table1.md")
    if len(args.envs) > 1:
        write_table1(Path(args.out), args.envs)
        fig9 = plot_minigrid_panels(Path(args.out) / "fig9_minigrid.png", folders)
        if fig9:
            print(f"wrote {fig9}")
    return reports


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.reproduce",
        description="Reproduce the paper's quantum-vs-classical curves (Figs. 7-9) and Table I.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--env", required=True, help=f"all, or one of {', '.join(PAPER_ENVS)}")
    p.add_argument("--episodes", type=int, default=100_000, help="episodes per run (paper)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per model")
    p.add_argument("--seed", type=int, default=0, help="base seed; seed k uses seed + 100 * k")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers per run")
    p.add_argument("--backend", default="statevector", help="quantum backend of the quantum runs")
    p.add_argument("--runner", default="local", choices=("local", "ray"), help="worker host")
    p.add_argument("--address", default=None, help="Ray cluster address for --runner ray")
    p.add_argument(
        "--models",
        default="quantum,classical",
        help="comma-separated models to run (quantum, classical)",
    )
    p.add_argument("--lr", type=float, default=None, help="override the paper's lr 1e-4")
    p.add_argument("--out", default="results", help="results folder")
    p.add_argument("--report-only", action="store_true", help="only redraw from finished runs")
    p.add_argument("--quiet", action="store_true", help="progress lines instead of live display")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = "python -m qa3c_qiskit.reproduce " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        args.envs = parse_envs(args.env)
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        for m in args.models:
            if m not in MODELS:
                raise ValueError(f"unknown model {m!r} in --models; choose from quantum, classical")
        for name in ("episodes", "seeds", "workers"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
        if not args.report_only and "quantum" in args.models:
            from .backends import check_backend

            check_backend(args.backend)
        reproduce(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
