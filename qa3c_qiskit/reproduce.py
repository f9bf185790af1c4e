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

This module holds the options, the training runs and the CLI; the export of a run is in
:mod:`qa3c_qiskit.export`, the numbers of the report (rows, aggregates, verdicts) in
:mod:`qa3c_qiskit.results`, the report files (figures, tables, summary.md) in
:mod:`qa3c_qiskit.report`. The statistics (Welch's t-test on the final average-100 over seeds,
t quantiles of the 95% CI band) are computed in :mod:`qa3c_qiskit.stats` with :mod:`math`
alone (no scipy needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from .config import TrainConfig
from .envs import PAPER_ENVS
from .export import _metrics_rows, export_run, sidecar_path, training_runs
from .metrics import write_json
from .plot import BANDS, CURVE_FILE
from .report import markdown_table, report, table1_rows  # noqa: F401 (re-exported: notebooks)
from .results import MODELS, load_results

SEED_STRIDE = 100
#: The paper's protocol (Sec. VI, Appendix A), as reproduce options.
PAPER_PROTOCOL = "--learners 80 --workers 2 --episodes 100000"


# ------------------------------------------------------------------------------- options


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
