"""``python -m qa3c_qiskit.train``: train a QA3C (or classical twin) agent with Algorithm 1.

Writes a run directory: ``config.json``, ``metrics.csv`` (one row per finished episode),
``model.pt`` (final actor/critic), ``summary.json``.

This module validates a config (every problem at once, before any file is written), prepares
the run (creates or reopens and locks its folder, builds or resumes its state) and holds the
CLI; :mod:`qa3c_qiskit.supervise` runs the prepared run.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from .checkpoint import (
    CHECKPOINT,
    EVENTS,
    ROLLED_BACK,
    CheckpointError,
    EventLog,
    RunState,
    count_metrics_rows,
    incompatible_fields,
    learner_seed,
    load_checkpoint,
    reconcile_metrics,
    set_rng_states,
)
from .config import TrainConfig, build_parser, config_from_args, qpu_cap_problems
from .envs import PAPER_ENVS, env_info
from .metrics import write_json
from .models import ActorCritic, ModelSpec, count_parameters, parameter_table
from .supervise import (
    CheckpointWriteFailed,
    PreparedRun,
    TrainingInterrupted,
    WorkerFailed,
    supervise,
)


def model_spec(cfg: TrainConfig) -> ModelSpec:
    info = env_info(cfg.env)
    return ModelSpec(info.obs_dim, info.n_actions, **cfg.options_for(ModelSpec))


def validate(cfg: TrainConfig) -> dict | None:
    """Raise ValueError listing every problem with ``cfg`` (before any worker starts).

    Returns the loaded checkpoint when ``cfg.resume`` names a run, else None.
    """
    problems = []
    if cfg.episodes <= 0:
        problems.append(f"--episodes must be > 0, got {cfg.episodes}")
    if cfg.workers <= 0:
        problems.append(f"--workers must be > 0, got {cfg.workers}")
    elif cfg.learners is not None and cfg.learners < cfg.workers:
        problems.append(
            f"--learners must be >= --workers ({cfg.workers}: every worker process hosts at "
            f"least one learner), got {cfg.learners}"
        )
    if cfg.lr <= 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        problems.append(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if cfg.update_every <= 0:
        problems.append(f"--update-every must be > 0, got {cfg.update_every}")
    from .periodic_eval import config_problems

    problems.extend(config_problems(cfg))  # --eval-every/--eval-episodes, --tensorboard extra
    if cfg.shots is not None and cfg.shots <= 0:
        problems.append(f"--shots must be > 0, got {cfg.shots}")
    if cfg.checkpoint_every <= 0:
        problems.append(f"--checkpoint-every must be > 0, got {cfg.checkpoint_every}")
    if cfg.max_restarts < 0:
        problems.append(f"--max-restarts must be >= 0, got {cfg.max_restarts}")
    if cfg.on_nonfinite not in ("skip", "raise"):
        problems.append(f"unknown --on-nonfinite {cfg.on_nonfinite!r}; choose skip or raise")
    if cfg.model not in ("quantum", "classical"):
        problems.append(f"unknown --model {cfg.model!r}; choose quantum or classical")
    try:
        env_info(cfg.env)
    except ValueError as exc:
        problems.append(str(exc))
    profile = None
    if cfg.model == "quantum":
        from .backends import resolve

        try:  # the profile with this run's shots and qubit count, before any file is written
            profile = resolve(cfg.backend, shots=cfg.shots, n_qubits=cfg.n_qubits)
        except ValueError as exc:
            problems.append(str(exc))
    problems.extend(qpu_cap_problems(profile, cfg.backend, cfg.max_qpu_seconds))
    ckpt = None
    if cfg.resume:
        ckpt = _resume_problems(cfg, problems)
    else:
        problems.extend(_output_problems(run_dir_for(cfg)))
    if problems:
        raise ValueError("; ".join(problems))
    return ckpt


def _output_problems(run_dir: Path) -> list[str]:
    """Why ``run_dir`` cannot be created as a new run directory (never reuse one)."""
    if run_dir.exists():
        return [f"run directory {run_dir} already exists; choose another --run-name or --resume it"]
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [
            f"output folder {run_dir.parent} cannot be written ({parent} is not a writable folder)"
        ]
    return []


def _resume_problems(cfg: TrainConfig, problems: list[str]) -> dict | None:
    """Check that ``cfg.resume`` is a run this config can continue; return its checkpoint."""
    run = Path(cfg.resume)
    if not (run / "metrics.csv").is_file():
        problems.append(f"--resume {run}: not a run directory (no metrics.csv)")
        return None
    try:
        ckpt = load_checkpoint(run / CHECKPOINT)
    except CheckpointError as exc:
        problems.append(str(exc))
        return None
    bad = incompatible_fields(ckpt["config"], cfg)
    if bad:
        problems.append(f"--resume {run}: incompatible config ({'; '.join(bad)})")
    done = ckpt["episodes_done"]
    if cfg.episodes <= done:
        problems.append(
            f"--resume {run}: the run already has {done} episodes; pass --episodes > {done}"
        )
    try:
        rows = count_metrics_rows(run / "metrics.csv")
    except OSError as exc:
        rows = -1
        problems.append(f"cannot read {run / 'metrics.csv'}: {exc.strerror}")
    if 0 <= rows < done:
        problems.append(
            f"{run / 'metrics.csv'} has {rows} episode rows, fewer than the checkpoint's {done}"
        )
    return ckpt


def print_parameter_table(cfg: TrainConfig) -> None:
    """Print Table I (parameter counts) for this run's env and the paper's envs."""
    from rich.console import Console
    from rich.table import Table

    envs = dict.fromkeys([cfg.env, *PAPER_ENVS])
    specs = {e: (env_info(e).obs_dim, env_info(e).n_actions) for e in envs}
    rows = parameter_table(
        specs, n_qubits=cfg.n_qubits, n_layers=cfg.n_layers, entangler=cfg.entangler
    )
    table = Table(title="Parameters (paper Table I: actor + critic)")
    for col in ("env", "classical part", "quantum", "QA3C total", "classical twin total"):
        table.add_column(col, justify="left" if col == "env" else "right", no_wrap=True)
    for r in rows:
        style = "bold" if r["env"] == cfg.env else None
        table.add_row(
            r["env"],
            str(r["classical"]),
            str(r["quantum"]),
            str(r["qa3c_total"]),
            str(r["classical_total"]),
            style=style,
        )
    Console(width=max(Console().width, 110)).print(table)
    if cfg.model == "quantum":  # what executes and what it costs (QPU time for ibm_runtime*)
        from .backends.cost import print_header

        print_header(
            model_spec(cfg),
            cfg.env,
            cfg.episodes,
            cfg.max_qpu_seconds,
            learners=cfg.learners or cfg.workers,
            update_every=cfg.update_every,
        )


def backend_record(cfg: TrainConfig) -> dict | None:
    """The backend profile as ``config.json`` records it (gradient, SPSA perturbation and seed,
    Runtime options, shots after ``--shots``); None for the classical twin."""
    if cfg.model != "quantum":
        return None
    from .backends.registry import load_profile

    p = load_profile(cfg.backend)
    return (p if cfg.shots is None else replace(p, shots=cfg.shots)).record()


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.resume:
        return Path(cfg.resume)
    backend = Path(cfg.backend).stem if cfg.model == "quantum" else "none"
    name = (
        cfg.run_name
        or f"{cfg.env}__{cfg.model}__{backend}__s{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(cfg.out) / name


def _lock_run(run_dir: Path):
    """Hold an exclusive lock on the run directory (one trainer per run); ValueError if taken."""
    fh = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ValueError(f"run {run_dir} is in use by another training process") from None
    return fh


def prepare_run(cfg: TrainConfig, show_table: bool = True) -> PreparedRun:
    """Validate ``cfg`` completely (ValueError listing every problem, before any file is
    touched), then create (or, resuming, reopen) and lock the run folder and build the state."""
    ckpt = validate(cfg)
    spec = model_spec(cfg)
    if show_table:
        print_parameter_table(cfg)
    run_dir = run_dir_for(cfg)
    if ckpt is None:
        run_dir.mkdir(parents=True, exist_ok=False)
    lock = _lock_run(run_dir)
    events = EventLog(run_dir / EVENTS)
    torch.manual_seed(cfg.seed)
    model = ActorCritic(spec)
    counts = count_parameters(model)
    learners = cfg.learners or cfg.workers
    if ckpt is None:
        state = RunState(flat=model.flat.detach().clone())
        write_json(
            run_dir / "config.json",
            {
                **cfg.to_dict(),
                "learners": learners,
                "learner_seeds": {lid: learner_seed(cfg.seed, lid) for lid in range(learners)},
                "learners_per_worker": {
                    r: list(range(r, learners, cfg.workers)) for r in range(cfg.workers)
                },
                "parameters": counts,
                "backend_profile": backend_record(cfg),
            },
        )
        events(
            f"start: {cfg.episodes} episodes, {learners} learners on {cfg.workers} workers, "
            f"seed {cfg.seed}"
        )
    else:
        state = RunState.resumed(ckpt)
        set_rng_states(ckpt["rng"])
        cut = reconcile_metrics(run_dir, state.episodes_done)
        events(
            f"resume #{state.resume_count} at episode {state.episodes_done} (budget "
            f"{cfg.episodes}, {learners} learners on {cfg.workers} workers); {cut} metrics rows "
            f"after the checkpoint moved to {ROLLED_BACK}"
        )
    return PreparedRun(cfg, spec, run_dir, state, model, counts, ckpt is None, lock, events)


def train(cfg: TrainConfig, show_table: bool = True) -> Path:
    """Run (or with ``cfg.resume``, continue) one training job; return its run directory.

    Raises ValueError on bad input (before any file is written), TrainingInterrupted after
    SIGINT/SIGTERM (checkpoint written), WorkerFailed when a worker fails for good.
    """
    run = prepare_run(cfg, show_table)
    try:
        summary = supervise(run)
    finally:
        run.events.close()
        run.lock.close()
    print(f"run directory: {run.run_dir}")
    print(
        f"episodes {summary['episodes']}, final avg100 {summary['final_avg100']:.2f}, "
        f"best avg100 {summary['best_avg100']:.2f}, {summary['env_steps_per_s']:.0f} env steps/s, "
        f"{summary['session_wall_time_s']:.1f} s"
    )
    return run.run_dir


def _explicit_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The config fields given on the command line (not left at their defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resume_config(run: str, overrides: dict) -> TrainConfig:
    """The config of the run in ``run`` (from its checkpoint) with ``overrides`` applied."""
    saved = load_checkpoint(Path(run) / CHECKPOINT)["config"]
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, **overrides})


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 worker failure, 2 bad input,
    130/143 interrupted by SIGINT/SIGTERM)."""
    parser = build_parser("python -m qa3c_qiskit.train", "Train a QA3C agent (paper Algorithm 1).")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        if cfg.resume:
            # --resume RUN alone continues RUN as configured; other options given on the
            # command line override it (and must be compatible, checked by validate)
            explicit = _explicit_options(parser, argv)
            try:
                cfg = resume_config(cfg.resume, {k: getattr(cfg, k) for k in explicit})
            except CheckpointError:
                pass  # validate() reports it together with any other problem
        train(cfg)
    except ValueError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except (WorkerFailed, CheckpointWriteFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the workers started: nothing to save yet
        print("interrupted before training started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
