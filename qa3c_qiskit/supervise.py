"""Supervise a prepared run: the trainer's side of Algorithm 1 while the workers play.

:func:`supervise` starts the runner (:mod:`qa3c_qiskit.runners`) for a :class:`PreparedRun`
(validated, its folder created and locked by :func:`qa3c_qiskit.train.prepare_run`), turns its
messages into ``metrics.csv`` rows, periodic checkpoints, events and the live display, stops
cleanly on SIGINT/SIGTERM or at ``--max-qpu-seconds``, and writes the final checkpoint,
``model.pt`` and ``summary.json``.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .a3c import A3CSettings
from .checkpoint import CHECKPOINT, EventLog, RunState, save_atomic, save_checkpoint
from .config import TrainConfig
from .envs import env_info
from .metrics import MetricsWriter, Progress, read_metrics, summarize, write_json
from .models import ActorCritic, ModelSpec
from .runners.base import Episode, Event, Failure, Restart, RunPlan

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


class CheckpointWriteFailed(RuntimeError):
    """The final checkpoint could not be written (e.g. disk full); the last one written is
    kept, and so are ``metrics.csv``'s rows: the run continues with ``--resume``."""

    def __init__(self, run_dir: Path, episodes: int, saved: int, exc: OSError):
        super().__init__(
            f"could not write the checkpoint at episode {episodes} ({exc.strerror or exc}); "
            f"the one at episode {saved} is kept: free the space and continue with "
            f"python -m qa3c_qiskit.train --resume {run_dir}"
        )


class _ForcedExit(BaseException):
    pass


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


def settings_of(cfg: TrainConfig) -> A3CSettings:
    return A3CSettings(**cfg.options_for(A3CSettings))


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
        self.saved_at = run.state.episodes_done  # the episode of the last checkpoint written
        self.failed_saves = 0
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
        self.saved_at = state.episodes_done

    def save_periodic(self) -> None:
        """A periodic checkpoint; a failed write (disk full, ...) keeps the previous one and
        the run goes on (retried at the next checkpoint), logged and shown."""
        try:
            self.save()
        except OSError as exc:
            self.failed_saves += 1
            text = (
                f"checkpoint at episode {self.run.state.episodes_done} not written "
                f"({exc.strerror or exc}); the one at episode {self.saved_at} is kept, "
                "retrying at the next checkpoint"
            )
            self.run.events(text)
            self.prog.event(text)

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
                self.save_periodic()
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
        try:
            sup.save(final=not signalled and sup.error is None)
        except OSError as exc:
            events(f"final checkpoint at episode {state.episodes_done} not written: {exc}")
            raise CheckpointWriteFailed(
                run.run_dir, state.episodes_done, sup.saved_at, exc
            ) from exc
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
