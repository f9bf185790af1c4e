"""Local runner: worker processes (torch.multiprocessing) around shared-memory parameters.

The global actor/critic is one flat float64 vector in shared memory, with the shared Adam's
moments and step beside it. A learner pushes its gradient and pulls the new parameters under
one lock (a short critical section: a handful of vector ops), so every update sees a
consistent Adam state.

Transport only: supervision (restarts, give-back, messages) is :class:`~.base.Runner`'s. Each
process reports over its own pipe (no lock shared with other processes, so a process killed
mid-message cannot block the rest), one message per env step with all episodes its learners
finished; the hub lock records its holder, so the supervisor can release it if a process dies
holding it; the episodes a dead process claimed but never reported are given back.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import wait

import torch
import torch.multiprocessing as mp

from ..a3c import NonFiniteError, run_learners
from ..checkpoint import RunState
from ..optim import SharedAdam
from .base import Episode, Runner, RunPlan, Slot

SUPERVISOR = -2  # lock holder id of the supervisor / in-process callers
FREE = -1
CLAIMED, ENV_STEPS, NONFINITE = 0, 1, 2


class LocalHub:
    """The processes' view of the global model (picklable; shared tensors and mp primitives).

    The counters are raw shared memory guarded by ``lock`` (not mp.Value/Event, whose hidden
    locks a killed process could leave held).
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
        self.lock = ctx.Lock()
        self.owner = ctx.RawValue("i", FREE)
        self.counters = ctx.RawArray("q", [done, env_steps, nonfinite])
        self.claims = ctx.RawArray("q", n_workers)  # claimed by the current process of a rank
        self.stop_flag = ctx.RawValue("b", 0)
        self.supervisor_pid = os.getpid()
        self.budget = budget
        self.rank = None
        self.conn = None

    def for_worker(self, rank: int, conn) -> LocalHub:
        hub = copy.copy(self)
        hub.rank, hub.conn = rank, conn
        return hub

    @contextmanager
    def locked(self):
        with self.lock:
            self.owner.value = SUPERVISOR if self.rank is None else self.rank
            try:
                yield
            finally:
                self.owner.value = FREE

    def claim_episode(self) -> bool:
        with self.locked():
            if self.counters[CLAIMED] >= self.budget:
                return False
            self.counters[CLAIMED] += 1
            if self.rank is not None:
                self.claims[self.rank] += 1
            return True

    def push_pull(self, grad: torch.Tensor, local_flat: torch.Tensor) -> None:
        with self.locked():
            self.adam.step(grad)
            local_flat.copy_(self.adam.params)

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


def _worker_main(rank, learners, env_id, spec, settings, hub):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _launch
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

    def _launch(self, slot: Slot, learners: list[tuple[int, int]]) -> int:
        recv, send = self.ctx.Pipe(duplex=False)
        plan = self.plan
        proc = self.ctx.Process(
            target=_worker_main,
            args=(
                slot.rank,
                learners,
                plan.env_id,
                plan.spec,
                plan.settings,
                self.hub.for_worker(slot.rank, send),
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
        with self.hub.locked():
            self.hub.claims[slot.rank] = 0
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
        with hub.locked() if hub.owner.value != slot.rank else _released(hub):
            # episodes this process claimed but never reported go back to the budget
            lost = hub.claims[slot.rank] - p.received
            if lost > 0:
                hub.counters[CLAIMED] -= lost
            hub.claims[slot.rank] = 0
        if code == 0 and p.error is None:
            return self._after_exit(slot, None, False, lost)
        if p.error is not None:
            tb = p.error["traceback"]
        else:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tb = f"worker {slot.rank} (pid {p.proc.pid}) died: {how}\n"
        fatal = bool(p.error and p.error.get("fatal"))
        return self._after_exit(slot, tb, fatal, lost)

    def sync(self) -> RunState:
        with self.hub.locked():
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
        # a process terminated inside the critical section leaves the lock held: every process
        # is gone now, so a lock still taken is stale
        if procs:
            if not self.hub.lock.acquire(timeout=1):
                self.hub.owner.value = FREE
            self.hub.lock.release()


@contextmanager
def _released(hub: LocalHub):
    """The hub lock is held by a dead process: take it over, then release it."""
    hub.owner.value = SUPERVISOR
    try:
        yield
    finally:
        hub.owner.value = FREE
        hub.lock.release()
