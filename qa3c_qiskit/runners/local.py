"""Local runner: worker processes (torch.multiprocessing) around shared-memory parameters.

The global actor/critic is one flat float64 vector in shared memory, with the shared Adam's
moments and step beside it. A learner pushes its gradient and pulls the new parameters under
one lock (a short critical section: a handful of vector ops), so every update sees a
consistent Adam state.

Transport only: supervision (restarts, give-back, messages) is :class:`~.base.Runner`'s. Each
process reports over its own pipe (no lock shared with other processes, so a process killed
mid-message cannot block the rest), one message per env step with all episodes its learners
finished; the episodes a dead process claimed but never reported are given back.

Crash safety of the critical section: the hub lock is a kernel file lock (:class:`HubLock`), so
a process killed while holding it - at any point, also between taking it and recording itself as
holder - releases it as it dies, and nobody ever waits on a dead holder. The next holder (worker
or supervisor) sees what the dead one left: its pid still recorded as holder, or the shared
Adam's version counter odd (killed inside the step); it restores the Adam state from the copy
taken after the last completed step (:meth:`~qa3c_qiskit.optim.SharedAdam.recover`) before doing
anything else, and the supervisor logs it. Every shared counter is written with a single store
by its only writer, so none is ever half-updated.
"""

from __future__ import annotations

import copy
import fcntl
import os
import signal
import sys
import tempfile
import time
import traceback
import weakref
from contextlib import contextmanager
from multiprocessing.connection import wait

import torch
import torch.multiprocessing as mp

from ..a3c import Hub, NonFiniteError, run_learners
from ..checkpoint import RunState
from ..optim import SharedAdam
from .base import Episode, Event, Runner, RunPlan, Slot

FREE = 0  # no holder recorded (holders are recorded by pid)
BASE, ENV_STEPS, NONFINITE, RECOVERIES = 0, 1, 2, 3
#: a supervisor waiting longer than this for the hub lock fails loudly instead of hanging (the
#: critical sections are a handful of vector ops; only a stopped process could hold it so long)
SUPERVISOR_LOCK_TIMEOUT = 60.0


class HubLock:
    """An exclusive lock between processes that a dead holder cannot keep.

    ``flock`` on a lock file: the kernel drops a process's lock when the process ends, however
    it ends (SIGKILL included), so there is no window - between acquiring and recording an
    owner, or between clearing it and releasing - in which a killed holder leaves it taken; the
    next acquirer then repairs what the dead holder left half-written (:meth:`LocalHub.locked`).
    Acquires can be timed. Picklable (by path); each process opens the file once (one open file
    description per process: holders are processes, as in the protocol; not for threads).
    """

    def __init__(self):
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="qa3c-hub-", suffix=".lock", dir=folder)
        os.close(fd)
        self._fd, self._pid = None, None
        self._cleanup = weakref.finalize(self, _unlink, self.path)

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._fd, self._pid, self._cleanup = None, None, None

    def _handle(self) -> int:
        if self._pid != os.getpid():  # first use in this process
            self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CLOEXEC), os.getpid()
        return self._fd

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; False if it stayed taken for ``timeout`` s (None: wait as needed)."""
        fd = self._handle()
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        deadline, pause = time.monotonic() + timeout, 1e-4
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

    def release(self) -> None:
        fcntl.flock(self._handle(), fcntl.LOCK_UN)

    def remove(self) -> None:
        """Delete the lock file (the supervisor, once no other process will open it)."""
        self._handle()  # keep an open descriptor: this process can still lock
        if self._cleanup is not None:
            self._cleanup()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class LocalHub(Hub):
    """The processes' view of the global model (picklable; shared tensors and mp primitives).

    The counters are raw shared memory guarded by ``lock`` (a :class:`HubLock`; not
    mp.Value/Event, whose hidden locks a killed process could leave held). Every counter a
    process writes is written with one store, so a process killed anywhere leaves them
    consistent: the episodes claimed are ``counters[BASE]`` (claims of ended processes, fixed
    by the supervisor) plus ``claims[rank]`` (each current process's own claims).
    """

    def __init__(
        self,
        ctx,
        adam: SharedAdam,
        budget: int,
        done: int,
        env_steps: int,
        nonfinite: int = 0,
        n_workers: int = 1,
    ):
        self.adam = adam
        self.lock = HubLock()
        self.owner = ctx.RawValue("i", FREE)  # pid of the holder (diagnostics and recovery)
        self.counters = ctx.RawArray("q", [done, env_steps, nonfinite, 0])
        self.claims = ctx.RawArray("q", n_workers)  # claimed by the current process of a rank
        self.stop_flag = ctx.RawValue("b", 0)
        self.supervisor_pid = os.getpid()
        self.budget = budget
        self.rank = None
        self.conn = None
        self.recovered: list[str] = []  # what this process repaired (the supervisor logs it)

    def for_worker(self, rank: int, conn) -> LocalHub:
        hub = copy.copy(self)
        hub.rank, hub.conn = rank, conn
        hub.recovered = []
        return hub

    @contextmanager
    def locked(self, timeout: float | None = None):
        """Hold the hub lock; first repair what a holder killed inside it left behind."""
        if not self.lock.acquire(timeout):
            raise TimeoutError(
                f"the hub lock stayed taken for {timeout:g} s (holder pid {self.owner.value}, "
                "alive but not releasing it: stopped?)"
            )
        try:
            dead = self.owner.value  # still set: its holder died inside (the kernel released)
            self.owner.value = os.getpid()
            if dead != FREE or self.adam.in_progress():
                self._repair(dead)
            try:
                yield
            finally:
                self.owner.value = FREE
        finally:
            self.lock.release()
        if self.recovered and self.conn is not None:  # a worker: tell the supervisor (unlocked)
            for text in self.recovered:
                self.conn.send(("event", text))
            self.recovered.clear()

    def _repair(self, dead: int) -> None:
        what = self.adam.recover()
        self.counters[RECOVERIES] += 1
        holder = f"pid {dead}" if dead != FREE else "a process"
        self.recovered.append(
            f"hub lock: {holder} died holding it; " + (what or "the shared state was consistent")
        )

    def claimed(self) -> int:
        return self.counters[BASE] + sum(self.claims)

    def claim_episode(self) -> bool:
        with self.locked():
            if self.claimed() >= self.budget:
                return False
            if self.rank is None:
                self.counters[BASE] += 1
            else:
                self.claims[self.rank] += 1
            return True

    def push_pull(self, grad: torch.Tensor, local_flat: torch.Tensor) -> None:
        with self.locked():
            self.adam.step(grad)
            local_flat.copy_(self.adam.params)

    def push_pull_many(self, grads: torch.Tensor, thetas: torch.Tensor, slots) -> None:
        with self.locked():  # one acquisition: the steps K processes would take back to back
            self.adam.step_many(grads, thetas, slots)

    def pull(self, local_flat: torch.Tensor) -> None:
        with self.locked():
            local_flat.copy_(self.adam.params)

    def add_steps(self, n: int) -> int:
        with self.locked():
            self.counters[ENV_STEPS] += n
            return self.counters[ENV_STEPS]

    def episodes_done(self, records: list[dict]) -> None:
        self.conn.send(("episodes", records))

    def should_stop(self) -> bool:
        # also stop if the supervisor died (e.g. SIGKILL): we were re-parented
        return bool(self.stop_flag.value) or (
            self.rank is not None and os.getppid() != self.supervisor_pid
        )

    def nonfinite(self) -> None:
        with self.locked():
            self.counters[NONFINITE] += 1


def _worker_main(rank, learners, env_id, spec, settings, hub, broker_conn=None):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _launch
    if spec.model == "quantum" and spec.backend != "statevector":
        from ..backends import execution, resolve

        if resolve(spec.backend, spec.shots, spec.n_qubits).kind == "ibm_runtime":
            # SIGTERM: cancel in-flight jobs and close the Session/Batch before exiting
            execution.install_stop_handler([signal.SIGTERM])
            # a backend shared with other workers: submit through the supervisor's session
            execution.set_broker(broker_conn)
    hub.conn.send(("ready", None))  # imports done: from now on it polls the stop flag
    try:
        run_learners(rank, learners, env_id, spec, settings, hub)
    except BaseException as exc:
        fatal = isinstance(exc, NonFiniteError)  # --on-nonfinite raise: abort, do not restart
        hub.conn.send(("error", {"traceback": traceback.format_exc(), "fatal": fatal}))
        sys.exit(1)


class _Process:
    """Transport state of one rank's current process."""

    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn
        self.received = 0  # episodes received from this process
        self.error: dict | None = None
        self.ready = False  # past start-up (imports); before that it touches nothing shared


class LocalRunner(Runner):
    """Starts, supervises, restarts and stops the worker processes of one run."""

    def __init__(self, plan: RunPlan, state: RunState):
        super().__init__(plan, state)
        self.ctx = mp.get_context("spawn")
        adam = SharedAdam(state.flat.clone(), lr=plan.lr, betas=plan.betas, eps=plan.eps)
        if state.adam is not None:
            adam.load_state_dict(state.adam)
        adam.share_memory()
        self.hub = LocalHub(
            self.ctx,
            adam,
            plan.budget,
            state.episodes_done,
            state.env_steps,
            state.nonfinite,
            plan.workers,
        )
        self.procs: dict[int, _Process] = {}
        #: the supervisor's Session/Batch of each IBM backend several workers share (else None)
        self.broker = None
        if plan.spec.model == "quantum" and plan.spec.backend != "statevector":
            from ..backends.broker import broker_for

            self.broker = broker_for(plan.spec, plan.workers)

    def _launch(self, slot: Slot, learners: list[tuple[int, int]]) -> int:
        recv, send = self.ctx.Pipe(duplex=False)
        plan = self.plan
        broker_conn = self.broker.connect(slot.rank) if self.broker is not None else None
        proc = self.ctx.Process(
            target=_worker_main,
            args=(
                slot.rank,
                learners,
                plan.env_id,
                plan.spec,
                plan.settings,
                self.hub.for_worker(slot.rank, send),
                broker_conn,
            ),
            name=f"qa3c-worker-{slot.rank}",
            daemon=True,
        )
        # a Ctrl-C (sent to the whole process group) while the child imports torch would kill
        # it before _worker_main can ignore SIGINT: start it with SIGINT blocked (inherited);
        # a Ctrl-C meanwhile stays pending for the supervisor until the unblock below
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        send.close()  # only the worker holds the write end: EOF once it is gone
        if broker_conn is not None:
            broker_conn.close()  # likewise: the broker sees EOF once the worker is gone
        with self.hub.locked(SUPERVISOR_LOCK_TIMEOUT):
            self.hub.claims[slot.rank] = 0  # (already 0: reset when its predecessor ended)
        self.procs[slot.rank] = _Process(proc, recv)
        return proc.pid

    def pid(self, rank: int) -> int:
        """The OS process id of process ``rank``'s current incarnation."""
        return self.procs[rank].proc.pid

    def _drain(self, p: _Process, out: list) -> None:
        """Move every message waiting in ``p``'s pipe to ``out``."""
        while p.conn is not None:
            try:
                if not p.conn.poll():
                    return
                kind, payload = p.conn.recv()
            except Exception:
                # EOF, or a message cut short by a killed process (a truncated pickle raises
                # various errors): those episodes are given back
                p.conn.close()
                p.conn = None
                return
            if kind == "episodes":
                p.received += len(payload)
                out.extend(Episode(r) for r in payload)
            elif kind == "error":
                p.error = payload
            elif kind == "ready":
                p.ready = True
            elif kind == "event":
                out.append(Event(payload))

    def poll(self, timeout: float = 0.2) -> list:
        out, self._pending = self._pending, []
        if self.stopping:
            self.hub.stop_flag.value = 1
        live = [
            self.procs[s.rank]
            for s in self.slots.values()
            if not s.finished and s.rank in self.procs
        ]
        waitables = [p.conn for p in live if p.conn is not None] + [p.proc.sentinel for p in live]
        if waitables and not out:
            wait(waitables, timeout)
        for slot in self.slots.values():
            p = self.procs.get(slot.rank)
            if p is None:
                continue
            self._drain(p, out)
            if self.stopping and not p.ready and p.proc.is_alive():
                p.proc.terminate()  # still importing: nothing to finish or to lose
                p.proc.join(2)
            if not slot.finished and not p.proc.is_alive():
                p.proc.join()
                self._drain(p, out)
                out += self._handle_exit(slot, p)
        return out

    def _handle_exit(self, slot: Slot, p: _Process) -> list:
        code = p.proc.exitcode
        hub = self.hub
        with hub.locked(SUPERVISOR_LOCK_TIMEOUT):
            # its reported episodes join the base; those it claimed but never reported go back
            # to the budget (the process is gone: nothing else writes its claims any more)
            lost = hub.claims[slot.rank] - p.received
            hub.counters[BASE] += p.received
            hub.claims[slot.rank] = 0
        out = self._recovery_events()
        if code == 0 and p.error is None:
            return out + self._after_exit(slot, None, False, lost)
        if p.error is not None:
            tb = p.error["traceback"]
        else:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tb = f"worker {slot.rank} (pid {p.proc.pid}) died: {how}\n"
        fatal = bool(p.error and p.error.get("fatal"))
        return out + self._after_exit(slot, tb, fatal, lost)

    def _recovery_events(self) -> list:
        out = [Event(text) for text in self.hub.recovered]
        self.hub.recovered.clear()
        return out

    def sync(self) -> RunState:
        with self.hub.locked(SUPERVISOR_LOCK_TIMEOUT):
            self.state.flat = self.hub.adam.params.clone()
            self.state.adam = self.hub.adam.state_dict()
            self.state.env_steps = int(self.hub.counters[ENV_STEPS])
            self.state.nonfinite = int(self.hub.counters[NONFINITE])
        return self.state

    def stop(self) -> None:
        """Ask every process to stop after its current env step (safe in a signal handler)."""
        super().stop()
        self.hub.stop_flag.value = 1

    def close(self, timeout: float = 10.0) -> None:
        """Stop the processes: wait up to ``timeout`` s, then terminate, then kill."""
        self.stop()
        procs = [p.proc for p in self.procs.values()]
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(deadline - time.monotonic(), 0))
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        # a process terminated inside the critical section released the lock as it died (the
        # kernel's flock): repair what it left half-written now, before the final sync
        if procs:
            with self.hub.locked(SUPERVISOR_LOCK_TIMEOUT):
                pass
            self._pending += self._recovery_events()
        # no process will open the lock file again; this process keeps its open descriptor,
        # so a later sync() still locks
        self.hub.lock.remove()
        if self.broker is not None:  # the workers are gone: cancel what runs, close sessions
            self.broker.close()
