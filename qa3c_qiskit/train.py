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
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .a3c import A3CSettings
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
    save_atomic,
    save_checkpoint,
    set_rng_states,
)
from .config import TrainConfig, build_parser, config_from_args
from .envs import PAPER_ENVS, env_info
from .metrics import MetricsWriter, Progress, read_metrics, summarize, write_json
from .models import ActorCritic, ModelSpec, count_parameters, parameter_table
from .runners.base import Episode, Event, Failure, Restart, RunPlan


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
    if cfg.model == "quantum":
        from .backends import resolve

        try:  # the profile with this run's shots and qubit count, before any file is written
            profile = resolve(cfg.backend, shots=cfg.shots, n_qubits=cfg.n_qubits)
        except ValueError as exc:
            problems.append(str(exc))
        else:
            from .backends import needs_qpu_cap

            if needs_qpu_cap(profile) and cfg.max_qpu_seconds is None:
                problems.append(
                    f"backend {profile.name!r} runs on a real IBM QPU (billed): set "
                    f"--max-qpu-seconds (see python -m qa3c_qiskit.backends {cfg.backend} --report)"
                )
    if cfg.max_qpu_seconds is not None and not cfg.max_qpu_seconds > 0:
        problems.append(f"--max-qpu-seconds must be > 0, got {cfg.max_qpu_seconds}")
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
        from .backends.cost import format_report, report

        try:
            r = report(
                cfg.backend,
                episodes=cfg.episodes,
                learners=cfg.learners or cfg.workers,
                env=cfg.env,
                update_every=cfg.update_every,
                shots=cfg.shots,
                n_qubits=cfg.n_qubits,
                n_layers=cfg.n_layers,
                entangler=cfg.entangler,
            )
        except Exception as exc:  # noqa: BLE001 - the header must not stop a valid run
            print(f"cost report unavailable: {exc}")
        else:
            print(format_report(r))
            if cfg.max_qpu_seconds is not None and "qpu_seconds" in r:
                print(f"  QPU budget (--max-qpu-seconds): {cfg.max_qpu_seconds:g} s")


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


@dataclass
class PreparedRun:
    """A validated run, its folder (created and locked) and its state, ready to supervise."""

    cfg: TrainConfig
    spec: ModelSpec
    run_dir: Path
    state: RunState
    model: ActorCritic  # the global model's architecture (parameters come from ``state``)
    counts: dict
    fresh: bool
    lock: object
    events: EventLog


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


def run_plan(cfg: TrainConfig, spec: ModelSpec, resume_count: int) -> RunPlan:
    return RunPlan(
        spec=spec,
        env_id=cfg.env,
        settings=settings_of(cfg),
        workers=cfg.workers,
        learners=cfg.learners or cfg.workers,
        seed=cfg.seed,
        budget=cfg.episodes,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.adam_eps,
        max_restarts=cfg.max_restarts,
        resume_count=resume_count,
    )


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


class _Supervisor:
    """The trainer's side of a run: messages in, metrics rows, checkpoints, events, display."""

    def __init__(
        self,
        run: PreparedRun,
        runner,
        writer: MetricsWriter,
        prog: Progress,
        tb=None,
        evaluator=None,
    ):
        self.run, self.runner, self.writer, self.prog = run, runner, writer, prog
        self.tb, self.evaluator = tb, evaluator  # --tensorboard, --eval-every (or None)
        self.t0 = time.time()
        self.wall0 = run.state.wall_time_s
        self.error: Failure | None = None
        # QPU seconds (IBM backends): latest cumulative value per worker process, and what
        # earlier incarnations of a restarted worker had used
        self.qpu_last: dict[int, float] = {}
        self.qpu_base: dict[int, float] = {}
        self.qpu_capped = False

    @property
    def qpu_seconds(self) -> float:
        return sum(self.qpu_last.values()) + sum(self.qpu_base.values())

    def _meter_qpu(self, rec: dict) -> None:
        """Sum the workers' QPU usage; stop the run cleanly at ``--max-qpu-seconds``."""
        w, used = rec["worker"], float(rec["qpu_s"])
        if used < self.qpu_last.get(w, 0.0):  # a restarted process counts from 0 again
            self.qpu_base[w] = self.qpu_base.get(w, 0.0) + self.qpu_last[w]
        self.qpu_last[w] = used
        cap = self.run.cfg.max_qpu_seconds
        if cap and not self.qpu_capped and self.qpu_seconds >= cap:
            self.qpu_capped = True
            text = f"QPU usage {self.qpu_seconds:.1f} s reached --max-qpu-seconds {cap:g}: stopping"
            self.run.events(text)
            self.prog.event(text)
            self.runner.stop()  # checkpoint and session close follow on the normal stop path

    def global_state_dict(self) -> dict:
        """A detached copy of the current global parameters as a model state dict."""
        model = self.run.model
        model.flat.copy_(self.runner.sync().flat)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save(self, final: bool = False) -> None:
        run = self.run
        self.writer.flush()  # rows first: metrics.csv always holds >= the checkpoint's episodes
        state = self.runner.sync()
        state.wall_time_s = self.wall0 + time.time() - self.t0
        ckpt = state.to_checkpoint(run.cfg.to_dict(), dict(run.spec.__dict__), final)
        save_checkpoint(run.run_dir / CHECKPOINT, ckpt)

    def handle(self, msg) -> None:
        run, cfg, events = self.run, self.run.cfg, self.run.events
        if isinstance(msg, Episode):
            run.state.episodes_done += 1
            done = run.state.episodes_done
            rec = msg.record
            if "qpu_s" in rec:
                self._meter_qpu(rec)
            self.writer.write(
                {**rec, "episode": done, "wall_time": round(self.wall0 + rec["time"] - self.t0, 4)}
            )
            self.prog.episode(rec["return"], rec["env_steps"])
            if self.tb is not None:
                self.tb.episode(done, rec)
            if done % cfg.checkpoint_every == 0 and done < cfg.episodes:
                self.save()
            if self.evaluator is not None:
                self.evaluator.maybe_start(
                    done, self.global_state_dict, self.wall0 + time.time() - self.t0
                )
        elif isinstance(msg, Restart):
            events(msg.text() + "\n" + msg.traceback.rstrip())
            self.prog.event(msg.text())
        elif isinstance(msg, Event):
            events(msg.text)
        elif isinstance(msg, Failure):
            self.error = msg
            events(f"{msg.who} failed:\n{msg.traceback}")
            self.prog.event(f"{msg.who} failed; stopping")
            self.runner.stop()
        else:  # pragma: no cover - a runner bug
            raise TypeError(f"unknown runner message {msg!r}")


def supervise(run: PreparedRun) -> dict:
    """Start the runner, handle its messages until the budget is used up (or a stop), write the
    final checkpoint, ``model.pt`` and ``summary.json``; return the summary.

    Raises TrainingInterrupted after SIGINT/SIGTERM, WorkerFailed when a worker fails for good.
    """
    from .periodic_eval import PeriodicEvaluator, config_problems
    from .runners import make_runner

    cfg, state = run.cfg, run.state
    problems = config_problems(cfg)  # (normally caught by validate() already)
    if problems:
        raise ValueError("; ".join(problems))
    runner = make_runner(
        cfg.runner, run_plan(cfg, run.spec, state.resume_count), state, address=cfg.address
    )
    steps0 = state.env_steps
    signalled: list[int] = []

    def on_signal(signum, frame):
        signalled.append(signum)
        if len(signalled) == 1:
            runner.stop()  # graceful: workers finish their current env step
        else:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)  # a third signal must not cut the clean-up
            raise _ForcedExit

    backend = cfg.backend if cfg.model == "quantum" else "classical"
    learners = cfg.learners or cfg.workers
    title = f"{cfg.env} | {cfg.model} | {backend} | {learners} learners / {cfg.workers} workers"
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():  # signals need the main thread
        old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    writer = MetricsWriter(run.run_dir / "metrics.csv")
    events = run.events
    tb = evaluator = None
    if cfg.tensorboard:
        from .tensorboard import TensorBoardLogger

        # resuming: hide the previous session's events of the episodes re-run after the checkpoint
        tb = TensorBoardLogger(run.run_dir, None if run.fresh else state.episodes_done + 1)
    if cfg.eval_every > 0:
        evaluator = PeriodicEvaluator(
            run.run_dir,
            run.spec,
            cfg,
            {"spec": run.spec.__dict__, "config": cfg.to_dict()},
            tb=tb,
            events=events,
        )
    try:
        for s in old_handlers:
            signal.signal(s, on_signal)
        with Progress(title, cfg.episodes, done=state.episodes_done, quiet=cfg.quiet) as prog:
            sup = _Supervisor(run, runner, writer, prog, tb=tb, evaluator=evaluator)
            if run.fresh:
                sup.save()  # episode 0: even a run killed before its first checkpoint can resume
            runner.start()
            shown_stop = 0.0
            while True:
                msgs = runner.poll(0.2)
                for msg in msgs:
                    sup.handle(msg)
                if msgs:
                    writer.fh.flush()  # rows visible promptly (fsync'd at each checkpoint)
                if evaluator is not None:  # finished evaluations: eval.csv, TensorBoard, best model
                    for res in evaluator.poll():
                        prog.event(
                            f"eval @ episode {res['episode']}: greedy {res['greedy_mean']:.2f} "
                            f"± {res['greedy_std']:.2f}, sampled {res['sampled_mean']:.2f} "
                            f"± {res['sampled_std']:.2f} (best greedy {evaluator.best:.2f})"
                        )
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
        sup.save(final=not signalled and sup.error is None)
        events(f"checkpoint at episode {state.episodes_done}")
        if evaluator is not None:  # the last evaluation's result belongs to this run (unless
            evaluator.finish(wait=not signalled)  # stopping by signal: then do not wait for it)
    except _ForcedExit:
        runner.close(timeout=0)
        writer.close()
        if evaluator is not None:
            evaluator.finish(wait=False)
        events(f"forced exit at episode {state.episodes_done} (last checkpoint kept)")
        raise TrainingInterrupted(
            signalled[0], run.run_dir, state.episodes_done, forced=True
        ) from None
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        runner.close(timeout=2)
        writer.close()
        if evaluator is not None:
            evaluator.finish(wait=False)
        if tb is not None:
            tb.close()
    run.model.flat.copy_(state.flat)
    save_atomic(
        {"model": run.model.state_dict(), "spec": run.spec.__dict__, "config": cfg.to_dict()},
        run.run_dir / "model.pt",
    )
    summary = _summary(run, sup, steps0, signalled)
    write_json(run.run_dir / "summary.json", summary)
    if signalled:
        raise TrainingInterrupted(signalled[0], run.run_dir, state.episodes_done)
    if sup.error is not None:
        raise WorkerFailed(
            f"{sup.error.who} failed (last checkpoint: episode "
            f"{state.episodes_done} in {run.run_dir}):\n{sup.error.traceback}"
        )
    return summary


def _summary(run: PreparedRun, sup: _Supervisor, steps0: int, signalled) -> dict:
    """summary.json: scores, and rates that say what they cover (cumulative over every session
    of a resumed run, plus this session's own)."""
    state = run.state
    m = read_metrics(run.run_dir)
    session = time.time() - sup.t0
    total = state.wall_time_s
    steps = state.env_steps
    return {
        **summarize(m["return"], env_info(run.cfg.env).reward_threshold),
        "wall_time_s": total,
        "env_steps": steps,
        "env_steps_per_s": steps / total if total else 0.0,
        "session_wall_time_s": session,
        "session_env_steps": steps - steps0,
        "session_env_steps_per_s": (steps - steps0) / session if session else 0.0,
        "learners": run.cfg.learners or run.cfg.workers,
        "workers": run.cfg.workers,
        "parameters": run.counts,
        "nonfinite_updates_skipped": state.nonfinite,
        "worker_restarts": state.restarts,
        "resumes": state.resume_count,
        "status": "interrupted"
        if signalled
        else "failed"
        if sup.error
        else "stopped at --max-qpu-seconds"
        if sup.qpu_capped
        else "complete",
        **({"qpu_seconds_used": sup.qpu_seconds} if sup.qpu_last else {}),
        **(sup.evaluator.summary() if sup.evaluator is not None else {}),
    }


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
