"""Local runner: N torch.multiprocessing worker processes around shared-memory parameters.

The global actor/critic is one flat float64 vector in shared memory, with the shared Adam's
moments and step beside it. A worker pushes its local gradient and pulls the new parameters
under one lock (a short critical section: a handful of vector ops), so every update sees a
consistent Adam state.

Fault tolerance: each worker reports over its own pipe (no lock shared with other workers, so
a worker killed mid-message cannot block the rest); the hub lock records its holder, so the
supervisor can release it if a worker dies holding it; the episodes a dead worker claimed but
never reported are given back to the budget, and the worker is restarted (fresh process and
seed, parameters pulled from the shared model) up to ``max_restarts`` times.
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

from ..a3c import A3CSettings, NonFiniteError, run_worker
from ..checkpoint import worker_seed
from ..models import ModelSpec
from ..optim import SharedAdam

SUPERVISOR = -2  # lock holder id of the supervisor / in-process callers
FREE = -1
CLAIMED, ENV_STEPS, NONFINITE = 0, 1, 2


class LocalHub:
    """The workers' view of the global model (picklable; shared tensors and mp primitives).

    The counters are raw shared memory guarded by ``lock`` (not mp.Value/Event, whose hidden
    locks a killed worker could leave held).
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

    def episode_done(self, record: dict) -> None:
        self.conn.send(("episode", record))

    def should_stop(self) -> bool:
        # also stop if the supervisor died (e.g. SIGKILL): we were re-parented
        return bool(self.stop_flag.value) or (
            self.rank is not None and os.getppid() != self.supervisor_pid
        )

    def nonfinite(self) -> None:
        with self.locked():
            self.counters[NONFINITE] += 1


def _worker_main(rank, seed, env_id, spec, settings, hub):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _spawn
    hub.conn.send(("ready", {"worker": rank}))  # imports done: from now on it polls the stop flag
    try:
        run_worker(rank, seed, env_id, spec, settings, hub)
    except BaseException as exc:
        fatal = isinstance(exc, NonFiniteError)  # --on-nonfinite raise: abort, do not restart
        hub.conn.send(
            ("error", {"worker": rank, "traceback": traceback.format_exc(), "fatal": fatal})
        )
        sys.exit(1)


class _Slot:
    """One worker rank: its current process, pipe and bookkeeping."""

    def __init__(self, rank: int):
        self.rank = rank
        self.proc = None
        self.conn = None
        self.received = 0  # episodes received from the current process
        self.restarts = 0
        self.error = None
        self.finished = False
        self.ready = False  # past start-up (imports); before that it touches nothing shared


class LocalRunner:
    """Starts, supervises, restarts and stops the worker processes of one run."""

    def __init__(
        self,
        flat: torch.Tensor,
        spec: ModelSpec,
        env_id: str,
        settings: A3CSettings,
        workers: int,
        seed: int,
        budget: int,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        done: int = 0,
        env_steps: int = 0,
        adam_state: dict | None = None,
        nonfinite: int = 0,
        max_restarts: int = 0,
        resume_count: int = 0,
    ):
        self.ctx = mp.get_context("spawn")
        adam = SharedAdam(flat.clone(), lr=lr, betas=betas, eps=eps)
        if adam_state is not None:
            adam.load_state_dict(adam_state)
        adam.share_memory()
        self.hub = LocalHub(self.ctx, adam, budget, done, env_steps, nonfinite, workers)
        self.spec, self.env_id, self.settings = spec, env_id, settings
        self.n_workers, self.seed = workers, seed
        self.max_restarts, self.resume_count = max_restarts, resume_count
        self.slots = {rank: _Slot(rank) for rank in range(workers)}
        self.seed_log: list[dict] = []  # every worker process started: rank, seed, pid, restart
        self._pending: list[tuple[str, dict]] = []

    def seeds(self) -> dict[int, int]:
        return {r: worker_seed(self.seed, r, self.resume_count) for r in range(self.n_workers)}

    @property
    def procs(self) -> dict[int, mp.Process]:
        return {r: s.proc for r, s in self.slots.items() if s.proc is not None}

    def _spawn(self, slot: _Slot) -> None:
        seed = worker_seed(self.seed, slot.rank, self.resume_count, slot.restarts)
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker_main,
            args=(
                slot.rank,
                seed,
                self.env_id,
                self.spec,
                self.settings,
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
        slot.proc, slot.conn, slot.received, slot.error = proc, recv, 0, None
        slot.ready = False
        with self.hub.locked():
            self.hub.claims[slot.rank] = 0
        entry = {"worker": slot.rank, "seed": seed, "pid": proc.pid, "restart": slot.restarts}
        entry["resume"] = self.resume_count
        self.seed_log.append(entry)
        self._pending.append(
            ("event", {"text": f"worker {slot.rank} started pid={proc.pid} seed={seed}"})
        )

    def start(self) -> None:
        for slot in self.slots.values():
            self._spawn(slot)

    def _drain(self, slot: _Slot, out: list) -> None:
        """Move every message waiting in ``slot``'s pipe to ``out``."""
        while slot.conn is not None:
            try:
                if not slot.conn.poll():
                    return
                kind, payload = slot.conn.recv()
            except Exception:
                # EOF, or a message cut short by a killed worker (a truncated pickle raises
                # various errors): that episode is given back
                slot.conn.close()
                slot.conn = None
                return
            if kind == "episode":
                slot.received += 1
                out.append((kind, payload))
            elif kind == "error":
                slot.error = payload
            elif kind == "ready":
                slot.ready = True
            else:
                out.append((kind, payload))

    def poll(self, timeout: float = 0.2) -> list[tuple[str, dict]]:
        """Messages: ("episode", record), ("restart", info), ("error", info), ("exit", info),
        ("event", {text})."""
        out, self._pending = self._pending, []
        live = [s for s in self.slots.values() if s.proc is not None and not s.finished]
        waitables = [s.conn for s in live if s.conn is not None] + [s.proc.sentinel for s in live]
        if waitables and not out:
            wait(waitables, timeout)
        for slot in self.slots.values():
            if slot.proc is None:
                continue
            self._drain(slot, out)
            if self.hub.should_stop() and not slot.ready and slot.proc.is_alive():
                slot.proc.terminate()  # still importing: nothing to finish or to lose
                slot.proc.join(2)
            if not slot.finished and not slot.proc.is_alive():
                slot.proc.join()
                self._drain(slot, out)
                self._handle_exit(slot, out)
        return out

    def _handle_exit(self, slot: _Slot, out: list) -> None:
        proc = slot.proc
        code = proc.exitcode
        with self.hub.locked() if self.hub.owner.value != slot.rank else _released(self.hub):
            # episodes this process claimed but never reported go back to the budget
            lost = self.hub.claims[slot.rank] - slot.received
            if lost > 0:
                self.hub.counters[CLAIMED] -= lost
            self.hub.claims[slot.rank] = 0
        if code == 0 and slot.error is None:
            slot.finished = True
            out.append(("exit", {"worker": slot.rank}))
            return
        if slot.error is not None:
            tb = slot.error["traceback"]
        else:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            tb = f"worker {slot.rank} (pid {proc.pid}) died: {how}\n"
        fatal = bool(slot.error and slot.error.get("fatal"))
        if self.hub.should_stop() or fatal or slot.restarts >= self.max_restarts:
            slot.finished = True
            if not self.hub.should_stop() or fatal:
                note = "" if fatal else f" (restarts used: {slot.restarts}/{self.max_restarts})"
                out.append(("error", {"worker": slot.rank, "traceback": tb + note}))
            out.append(("exit", {"worker": slot.rank}))
            return
        slot.restarts += 1
        self._spawn(slot)
        out.append(
            (
                "restart",
                {
                    "worker": slot.rank,
                    "restart": slot.restarts,
                    "max_restarts": self.max_restarts,
                    "seed": self.seed_log[-1]["seed"],
                    "pid": slot.proc.pid,
                    "episodes_given_back": max(lost, 0),
                    "traceback": tb,
                },
            )
        )

    def alive(self) -> bool:
        return any(s.proc is not None and not s.finished for s in self.slots.values())

    def global_state(self) -> tuple[torch.Tensor, dict]:
        """A consistent copy of the global parameters and the shared Adam state."""
        with self.hub.locked():
            return self.hub.adam.params.clone(), self.hub.adam.state_dict()

    @property
    def nonfinite_count(self) -> int:
        return int(self.hub.counters[NONFINITE])

    @property
    def env_steps(self) -> int:
        return int(self.hub.counters[ENV_STEPS])

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.slots.values())

    def stop(self) -> None:
        """Ask every worker to stop after its current env step (safe in a signal handler)."""
        self.hub.stop_flag.value = 1

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: wait up to ``timeout`` s, then terminate, then kill."""
        self.stop()
        procs = list(self.procs.values())
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
        # a worker terminated inside the critical section leaves the lock held: every worker is
        # gone now, so a lock still taken is stale
        if procs:
            if not self.hub.lock.acquire(timeout=1):
                self.hub.owner.value = FREE
            self.hub.lock.release()


@contextmanager
def _released(hub: LocalHub):
    """The hub lock is held by a dead worker: take it over, then release it."""
    hub.owner.value = SUPERVISOR
    try:
        yield
    finally:
        hub.owner.value = FREE
        hub.lock.release()
