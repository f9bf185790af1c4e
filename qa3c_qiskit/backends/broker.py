"""Workers that share a QPU share its single Session or Batch, owned by the supervisor.

A profile may list several backends; worker ``r`` is bound to ``backends[r % n]``. Where two or
more workers are bound to one backend in ``session`` or ``batch`` mode, the supervisor process
(the local runner) opens that backend's one Session or Batch, lazily at the first call, and
closes it when the run ends; the workers send their primitive calls to it over a pipe
(:mod:`~qa3c_qiskit.backends.remote`), one thread per worker pipe here submits each with an
``EstimatorV2`` of that session (one estimator per worker layer, the profile's options, the
worker's simulator seed) and sends back the result and Runtime's reported usage. Workers with a
backend of their own, ``job`` mode and every other backend kind keep the in-process path.

Why not ``Session.from_id`` in each worker: attaching needs the service (online only), local
testing mode has no session ids, and ``close()`` ends the session for every attached process,
so only an owner that outlives the workers (and their restarts) may open and close it.

Stops: the runner's ``close`` ends the workers first (a SIGTERM makes a worker cancel its
in-flight call: the ``cancel`` message, or EOF when it dies), then :meth:`SessionBroker.close`
cancels whatever is still running and closes every session (also at interpreter exit).
``$QA3C_SESSION_LOG`` gets the open and close events (``shared`` true, the calls per worker).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import threading
import time
import traceback
from collections import Counter

from . import execution
from .registry import Profile, backend_for_rank, resolve

SHARED_MODES = ("session", "batch")


def shared_ranks(p: Profile, workers: int) -> dict[str, list[int]]:
    """``{backend name: worker ranks}`` of the backends two or more of ``workers`` share, for an
    ``ibm_runtime`` profile in session or batch mode (else ``{}``)."""
    if p.kind != "ibm_runtime" or p.runtime.get("mode", "session") not in SHARED_MODES:
        return {}
    ranks: dict[str, list[int]] = {}
    for rank in range(workers):
        ranks.setdefault(backend_for_rank(p, rank), []).append(rank)
    return {name: rs for name, rs in ranks.items() if len(rs) > 1}


def broker_for(spec, workers: int) -> SessionBroker | None:
    """The supervisor's broker for a run of ``spec`` (a ModelSpec) on ``workers`` processes, or
    None when no Runtime backend is shared (statevector and every simulator: nothing is
    imported)."""
    if spec.model != "quantum" or spec.backend == "statevector":
        return None
    p = resolve(spec.backend, spec.shots, spec.n_qubits)
    shared = shared_ranks(p, workers)
    return SessionBroker(p, shared, spec.n_qubits) if shared else None


class SessionBroker:
    """One Session/Batch per shared backend, opened on first use, served to worker pipes."""

    def __init__(self, profile: Profile, shared: dict[str, list[int]], n_qubits: int = 8):
        self.profile, self.shared, self.n_qubits = profile, shared, n_qubits
        self._rank_of = {r: name for name, ranks in shared.items() for r in ranks}
        self._sessions: dict[str, list] = {}  # name -> [mode object, backend]
        self._lock = threading.Lock()  # opening sessions, submitting jobs
        self._in_flight: set = set()
        self._threads: list[threading.Thread] = []
        self._conns: list = []
        self._closing = threading.Event()
        self._closed = False
        #: calls served per worker rank, sessions opened/closed, jobs cancelled
        self.calls: Counter = Counter()
        self.stats = {"opened": 0, "closed": 0, "cancelled": 0}
        self._cancelled: dict[int, object] = {}  # kept alive: ids stay unique
        atexit.register(self.close)

    def connect(self, rank: int):
        """The worker end of a new pipe for the process of ``rank`` (None: its backend is its
        own, it opens its session itself). Close it here once the process has started."""
        if rank not in self._rank_of or self._closing.is_set():
            return None
        mine, theirs = mp.Pipe(duplex=True)
        t = threading.Thread(
            target=self._serve, args=(mine, rank), name=f"qa3c-broker-{rank}", daemon=True
        )
        self._conns.append(mine)
        self._threads.append(t)
        t.start()
        return theirs

    # -- supervisor side of one worker pipe ------------------------------------------------------
    def _session(self, name: str):
        with self._lock:
            entry = self._sessions.get(name)
            if entry is None:
                if self._closing.is_set():
                    raise RuntimeError("the run is stopping: no new session")
                rank = self.shared[name][0]
                backend = execution.runtime_backend(self.profile, rank, self.n_qubits)
                mode = execution._open_mode(self.profile, backend)
                entry = self._sessions[name] = [mode, backend]
                self.stats["opened"] += 1
                execution._journal("open", self.profile, mode, backend, shared=True)
            return entry

    def _serve(self, conn, rank: int) -> None:
        circuits: dict[int, object] = {}
        estimators: dict[int, object] = {}
        try:
            while not self._closing.is_set():
                if not conn.poll(0.2):
                    continue
                msg = conn.recv()
                kind = msg[0]
                if kind == "circuit":
                    circuits[msg[1]] = msg[2]
                elif kind == "open":
                    _, layer, name = msg
                    try:
                        if self._rank_of.get(rank) != name:
                            raise ValueError(
                                f"worker {rank} is bound to {self._rank_of.get(rank)!r}, "
                                f"not {name!r}"
                            )
                        mode = self._session(name)[0]
                        opts = execution.runtime_options(self.profile)
                        estimators[layer] = execution._runtime_estimator(mode, opts)
                        conn.send(("ok", layer, None))
                    except Exception as exc:  # noqa: BLE001 - the worker raises it
                        conn.send(("error", layer, _one_line(exc)))
                elif kind == "run":
                    self._run(conn, rank, msg, circuits, estimators)
                elif kind == "close":
                    estimators.pop(msg[1], None)
                # "cancel" of a job that already finished: nothing to do
        except (EOFError, OSError):
            pass  # the worker is gone (exit, crash, kill): nothing of it is running
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _run(self, conn, rank, msg, circuits, estimators) -> None:
        from qiskit.primitives.containers.estimator_pub import EstimatorPub

        _, req, layer, wire, precision, seed = msg
        try:
            est = estimators[layer]
            pubs = [
                EstimatorPub(circuits[key], obs, values, prec, validate=False)
                for key, obs, values, prec in wire
            ]
            if seed is not None:
                est.options.simulator.seed_simulator = seed
            with self._lock:
                if self._closing.is_set():
                    raise RuntimeError("the run is stopping")
                job = est.run(pubs, precision=precision)
                self._in_flight.add(job)
            self.calls[rank] += 1
        except Exception as exc:  # noqa: BLE001 - the worker raises it
            conn.send(("error", req, _one_line(exc)))
            return
        try:
            outcome = self._wait(conn, job, req)
            if outcome == "done" and id(job) not in self._cancelled:
                reply = ("result", req, (job.result(), _usage(job)))
            else:
                reply = ("cancelled", req, None)
        except Exception as exc:  # noqa: BLE001 - the worker raises it
            cancelled = id(job) in self._cancelled
            reply = ("cancelled", req, None) if cancelled else ("error", req, _one_line(exc))
        finally:
            self._in_flight.discard(job)
        conn.send(reply)

    def _wait(self, conn, job, req) -> str:
        """Wait for ``job`` while watching the pipe: "done", or "cancel" (the worker asked, or
        is gone, or the run is closing; then the job is cancelled)."""
        pause = 0.001
        while not _done(job) and id(job) not in self._cancelled:
            if self._closing.is_set():
                self._cancel(job)
                return "cancel"
            if conn.poll(pause):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._cancel(job)
                    raise
                if msg[0] == "cancel" and msg[1] == req:
                    self._cancel(job)
                    return "cancel"
            pause = min(pause * 2, 0.05)
        return "done"

    def _cancel(self, job) -> None:
        if id(job) in self._cancelled:
            return
        self._cancelled[id(job)] = job
        self.stats["cancelled"] += 1
        try:
            job.cancel()
        except Exception:  # noqa: BLE001 - already finished, or not cancellable
            pass

    # -- shutdown ----------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> dict:
        """Cancel the jobs still running, close every session, stop the pipe threads.
        Idempotent, never raises; returns ``stats``."""
        if self._closed:
            return self.stats
        self._closed = True
        self._closing.set()
        with self._lock:
            for job in list(self._in_flight):
                self._cancel(job)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            for name in list(self._sessions):
                mode, backend = self._sessions.pop(name)
                try:
                    if mode is not None:
                        mode.close()
                    self.stats["closed"] += 1
                except Exception:  # noqa: BLE001 - best effort: the next one still closes
                    traceback.print_exc()
                execution._journal(
                    "close",
                    self.profile,
                    mode,
                    backend,
                    shared=True,
                    calls={str(r): n for r, n in sorted(self.calls.items())},
                )
        atexit.unregister(self.close)
        return self.stats


def _done(job) -> bool:
    try:
        return bool(job.done())
    except Exception:  # noqa: BLE001 - a job without done(): its result() will wait
        return True


def _usage(job) -> float | None:
    try:
        used = job.usage()  # Runtime's qpu_charge_time_seconds (real jobs only)
    except Exception:  # noqa: BLE001 - local jobs, metadata not ready: the worker estimates
        return None
    return float(used) if used else None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
