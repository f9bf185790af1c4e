"""``python -m qa3c_qiskit.train``: train a QA3C (or classical twin) agent with Algorithm 1.

Writes a run directory: ``config.json``, ``metrics.csv`` (one row per finished episode),
``model.pt`` (final actor/critic), ``summary.json``.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import os
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import torch

from .a3c import A3CSettings
from .checkpoint import (
    CHECKPOINT,
    EVENTS,
    ROLLED_BACK,
    CheckpointError,
    EventLog,
    count_metrics_rows,
    incompatible_fields,
    load_checkpoint,
    reconcile_metrics,
    rng_states,
    save_checkpoint,
    set_rng_states,
    worker_seed,
)
from .config import TrainConfig, build_parser, config_from_args
from .envs import PAPER_ENVS, env_info
from .metrics import MetricsWriter, Progress, read_metrics, summarize, write_json
from .models import ActorCritic, ModelSpec, count_parameters, parameter_table


def model_spec(cfg: TrainConfig) -> ModelSpec:
    info = env_info(cfg.env)
    return ModelSpec(
        obs_dim=info.obs_dim,
        n_actions=info.n_actions,
        model=cfg.model,
        n_qubits=cfg.n_qubits,
        n_layers=cfg.n_layers,
        entangler=cfg.entangler,
        backend=cfg.backend,
        shots=cfg.shots,
    )


def settings_of(cfg: TrainConfig) -> A3CSettings:
    return A3CSettings(
        gamma=cfg.gamma,
        update_every=cfg.update_every,
        entropy_coef=cfg.entropy_coef,
        loss_reduction=cfg.loss_reduction,
        on_nonfinite=cfg.on_nonfinite,
    )


def validate(cfg: TrainConfig) -> dict | None:
    """Raise ValueError listing every problem with ``cfg`` (before any worker starts).

    Returns the loaded checkpoint when ``cfg.resume`` names a run, else None.
    """
    problems = []
    if cfg.episodes <= 0:
        problems.append(f"--episodes must be > 0, got {cfg.episodes}")
    if cfg.workers <= 0:
        problems.append(f"--workers must be > 0, got {cfg.workers}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        problems.append(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if cfg.update_every <= 0:
        problems.append(f"--update-every must be > 0, got {cfg.update_every}")
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
    if cfg.model == "quantum":
        from .backends import check_backend

        try:
            check_backend(cfg.backend)
        except ValueError as exc:
            problems.append(str(exc))
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


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.resume:
        return Path(cfg.resume)
    backend = Path(cfg.backend).stem if cfg.model == "quantum" else "none"
    name = (
        cfg.run_name
        or f"{cfg.env}__{cfg.model}__{backend}__s{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(cfg.out) / name


#: After Ctrl-C/SIGTERM, workers get this long to finish their current env step; then the
#: supervisor terminates them (their unfinished episodes are simply re-run after resuming).
STOP_GRACE_S = 10.0


class TrainingInterrupted(Exception):
    """The run was stopped by SIGINT/SIGTERM (``signum``); ``forced`` if a second signal cut the
    graceful stop short (then the previous periodic checkpoint is the resume point)."""

    def __init__(self, signum: int, run_dir: Path, episodes: int, forced: bool = False):
        self.signum, self.run_dir, self.episodes, self.forced = signum, run_dir, episodes, forced
        how = "forced exit" if forced else f"checkpoint at episode {episodes}"
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} ({how}); continue with "
            f"python -m qa3c_qiskit.train --resume {run_dir}"
        )


class WorkerFailed(RuntimeError):
    """A worker failed for good (restarts used up, or a non-finite value with raise)."""


class _ForcedExit(BaseException):
    pass


def _lock_run(run_dir: Path):
    """Hold an exclusive lock on the run directory (one trainer per run); ValueError if taken."""
    fh = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ValueError(f"run {run_dir} is in use by another training process") from None
    return fh


def train(cfg: TrainConfig, show_table: bool = True) -> Path:
    """Run (or with ``cfg.resume``, continue) one training job; return its run directory.

    Raises ValueError on bad input (before any worker starts), TrainingInterrupted after
    SIGINT/SIGTERM (checkpoint written), WorkerFailed when a worker fails for good.
    """
    ckpt = validate(cfg)
    spec = model_spec(cfg)
    info = env_info(cfg.env)
    if show_table:
        print_parameter_table(cfg)
    run_dir = run_dir_for(cfg)
    if ckpt is None:
        run_dir.mkdir(parents=True, exist_ok=False)
    lock = _lock_run(run_dir)
    events = EventLog(run_dir / EVENTS)
    torch.manual_seed(cfg.seed)
    global_model = ActorCritic(spec)
    counts = count_parameters(global_model)
    if ckpt is None:
        done = env_steps = nonfinite = restarts = resume_count = 0
        wall0, adam_state, seed_log = 0.0, None, []
        write_json(
            run_dir / "config.json",
            {
                **cfg.to_dict(),
                "worker_seeds": {r: worker_seed(cfg.seed, r) for r in range(cfg.workers)},
                "parameters": counts,
            },
        )
        events(f"start: {cfg.episodes} episodes, {cfg.workers} workers, seed {cfg.seed}")
    else:
        done, env_steps = ckpt["episodes_done"], ckpt["env_steps"]
        nonfinite, restarts = ckpt["nonfinite_updates_skipped"], ckpt["restarts"]
        resume_count = ckpt["resume_count"] + 1
        wall0, adam_state, seed_log = ckpt["wall_time_s"], ckpt["adam"], ckpt["worker_seeds"]
        global_model.flat.copy_(ckpt["flat"])
        set_rng_states(ckpt["rng"])
        cut = reconcile_metrics(run_dir, done)
        events(
            f"resume #{resume_count} at episode {done} (budget {cfg.episodes}); "
            f"{cut} metrics rows after the checkpoint moved to {ROLLED_BACK}"
        )

    from .runners import make_runner

    runner = make_runner(
        cfg.runner,
        flat=global_model.flat,
        spec=spec,
        env_id=cfg.env,
        settings=settings_of(cfg),
        workers=cfg.workers,
        seed=cfg.seed,
        budget=cfg.episodes,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.adam_eps,
        done=done,
        env_steps=env_steps,
        adam_state=adam_state,
        nonfinite=nonfinite,
        max_restarts=cfg.max_restarts,
        resume_count=resume_count,
        **({"address": cfg.address} if cfg.runner == "ray" else {}),
    )
    writer = MetricsWriter(run_dir / "metrics.csv")
    t0 = time.time()
    error = None
    signalled: list[int] = []

    def on_signal(signum, frame):
        signalled.append(signum)
        if len(signalled) == 1:
            runner.stop()  # graceful: workers finish their current env step
        else:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)  # a third signal must not cut the clean-up
            raise _ForcedExit

    def save(final: bool = False) -> None:
        writer.flush()  # rows first: metrics.csv always holds >= the checkpoint's episodes
        flat, adam = runner.global_state()
        save_checkpoint(
            run_dir / CHECKPOINT,
            {
                "episodes_done": done,
                "env_steps": runner.env_steps,
                "nonfinite_updates_skipped": runner.nonfinite_count,
                "restarts": restarts + runner.restarts,
                "resume_count": resume_count,
                "wall_time_s": wall0 + time.time() - t0,
                "flat": flat,
                "adam": adam,
                "rng": rng_states(),
                "worker_seeds": seed_log + runner.seed_log,
                "config": cfg.to_dict(),
                "spec": dict(spec.__dict__),
                "final": final,
            },
        )

    title = f"{cfg.env} | {cfg.model} | {cfg.backend if cfg.model == 'quantum' else 'classical'} | {cfg.workers} workers"
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():  # signals need the main thread
        old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old_handlers:
            signal.signal(s, on_signal)
        with Progress(title, cfg.episodes, done=done, quiet=cfg.quiet) as prog:
            if ckpt is None:
                save()  # episode 0: even a run killed before its first checkpoint can resume
            runner.start()
            shown_stop = 0.0
            while True:
                msgs = runner.poll(0.2)
                for kind, payload in msgs:
                    if kind == "episode":
                        done += 1
                        row = {
                            **payload,
                            "episode": done,
                            "wall_time": round(wall0 + payload["time"] - t0, 4),
                        }
                        writer.write(row)
                        prog.episode(payload["return"], payload["env_steps"])
                        if done % cfg.checkpoint_every == 0 and done < cfg.episodes:
                            save()
                    elif kind == "restart":
                        text = (
                            f"worker {payload['worker']} crashed; restart "
                            f"{payload['restart']}/{payload['max_restarts']} (pid {payload['pid']}, "
                            f"seed {payload['seed']}, {payload['episodes_given_back']} claimed "
                            "episode(s) given back)"
                        )
                        events(text + "\n" + payload["traceback"].rstrip())
                        prog.event(text)
                    elif kind == "event":
                        events(payload["text"])
                    elif kind == "error":
                        error = payload
                        events(f"worker {payload['worker']} failed:\n{payload['traceback']}")
                        prog.event(f"worker {payload['worker']} failed; stopping")
                        runner.stop()
                if msgs:
                    writer.fh.flush()  # rows visible promptly (fsync'd at each checkpoint)
                if signalled and not shown_stop:
                    shown_stop = time.monotonic()
                    name = signal.Signals(signalled[0]).name
                    events(f"{name}: stopping workers")
                    prog.event(f"{name}: stopping workers (again to force exit)")
                if not msgs and not runner.alive():
                    break
                if shown_stop and time.monotonic() - shown_stop > STOP_GRACE_S:
                    events(f"workers still busy {STOP_GRACE_S:.0f} s after the stop: terminated")
                    break  # runner.close() below terminates them
                prog.refresh()
        runner.close()
        save(final=not signalled and error is None)
        events(f"checkpoint at episode {done}")
    except _ForcedExit:
        runner.close(timeout=0)
        writer.close()
        events(f"forced exit at episode {done} (last checkpoint kept)")
        raise TrainingInterrupted(signalled[0], run_dir, done, forced=True) from None
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        runner.close(timeout=2)
        writer.close()
        events.close()
        lock.close()
    flat, _ = runner.global_state()
    global_model.flat.copy_(flat)
    torch.save(
        {"model": global_model.state_dict(), "spec": spec.__dict__, "config": cfg.to_dict()},
        run_dir / "model.pt",
    )
    m = read_metrics(run_dir)
    elapsed = time.time() - t0
    steps = int(m["env_steps"].max()) if len(m["env_steps"]) else 0
    summary = {
        **summarize(m["return"], info.reward_threshold),
        "wall_time_s": wall0 + elapsed,
        "env_steps": steps,
        "env_steps_per_s": (runner.env_steps - env_steps) / elapsed if elapsed else 0.0,
        "parameters": counts,
        "nonfinite_updates_skipped": runner.nonfinite_count,
        "worker_restarts": restarts + runner.restarts,
        "resumes": resume_count,
        "status": "interrupted" if signalled else "failed" if error else "complete",
    }
    write_json(run_dir / "summary.json", summary)
    if signalled:
        raise TrainingInterrupted(signalled[0], run_dir, done)
    if error is not None:
        raise WorkerFailed(
            f"worker {error['worker']} failed (last checkpoint: episode {done} in {run_dir}):\n"
            f"{error['traceback']}"
        )
    print(f"run directory: {run_dir}")
    print(
        f"episodes {summary['episodes']}, final avg100 {summary['final_avg100']:.2f}, "
        f"best avg100 {summary['best_avg100']:.2f}, {summary['env_steps_per_s']:.0f} env steps/s, "
        f"{elapsed:.1f} s"
    )
    return run_dir


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
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the workers started: nothing to save yet
        print("interrupted before training started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
