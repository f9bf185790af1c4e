"""Execution builders: a profile + the VQC -> an :class:`Execution` (estimator, circuit,
observables, precision), built inside the worker process that runs the layer.

* ``aer``: Aer on the logical qubits, exact (Aer's ``EstimatorV2``) or sampled
  (:class:`~qa3c_qiskit.backends.estimators.AerShotEstimator`), optionally with a fake device's
  noise on the logical qubits (:mod:`qa3c_qiskit.backends.noise`);
* ``torch_density``: the same device noise on the in-package density-matrix engine
  (:mod:`qa3c_qiskit.backends.density`);
* ``aer_device``: the fake device's noise model *and* coupling map (transpiled and routed);
* ``ibm_runtime``: one IBM Runtime ``Session`` (or ``Batch``, or none in ``job`` mode) on the
  backend ``[runtime] backends[rank % n]`` (:func:`set_worker_rank`) of a worker process,
  shared by its actor and critic layers, closed when the last layer using it is closed, by
  :func:`close_all` (SIGTERM handlers) or at exit; where several workers are bound to one
  backend, the supervisor's (below). :func:`qpu_usage` meters the process's use.

Set ``$QA3C_SESSION_LOG`` to a file to get a JSON line per session opened or closed.

**Workers that share a backend share its one Session or Batch**, owned by the supervisor
(:mod:`~qa3c_qiskit.backends.broker`): such a worker gets a pipe to it (:func:`set_broker`) and
its layers submit through a :class:`~qa3c_qiskit.backends.remote.RemoteEstimator` instead of
opening a session; everything else (transpiling, seeds, metering) stays in the worker. What
each mode costs (``Session.usage`` in qiskit_ibm_runtime/session.py):

* ``session``: dedicated access while it is active, the iterative calls of an update loop run
  without re-queueing; billed for the session's wall time from its first job until it is closed
  or goes idle (idle gaps between jobs count); not available on every plan (not the Open plan).
  Choose it for training on a plan that has sessions; the workers bound to one QPU share it
  (their calls interleave, fewer idle gaps than one worker alone).
* ``batch``: the jobs are scheduled together, no exclusive access; billed for the QPU time of
  its jobs only; every plan (shared like a session). Choose it without sessions on the plan,
  or where the gaps between calls (CPU time of the workers) are long.
* ``job``: every primitive call is its own job in the fair-share queue; billed for QPU time
  only; the queue wait between calls can exceed the run time of the call. Choose it for
  ``evaluate`` and short checks, or where nothing else is allowed.
"""

from __future__ import annotations

import atexit
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from qiskit.circuit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2

from . import noise
from .estimators import AerShotEstimator
from .registry import SESSION_LOG_ENV, Profile, backend_for_rank, is_local
from .remote import BrokerClient, RemoteEstimator


@dataclass
class Execution:
    """What a backend builder returns: how to run the VQC (built inside the worker)."""

    estimator: BaseEstimatorV2
    circuit: QuantumCircuit  # the (possibly transpiled) circuit, parameters = the VQC's
    observables: list  # Z_i, following the transpiled layout
    precision: float  # passed to every estimator call: 0 = exact, 1/sqrt(shots) otherwise
    close: Callable[[], None] = field(default=lambda: None)
    #: the profile's gradient options (``Profile.gradient_options``); for SPSA ``spsa_seed`` is
    #: this layer's seed: [profile spsa_seed, worker seed, layer index in the process]
    gradient: dict = field(default_factory=dict)


class ExecutionBuilder:
    """Picklable ``vqc -> Execution`` for a profile; each call builds fresh Qiskit objects."""

    _count = 0  # layers built in this process (distinct simulator seeds for actor and critic)

    def __init__(self, profile: Profile):
        self.profile = profile

    def __call__(self, vqc) -> Execution:
        ExecutionBuilder._count += 1
        p = self.profile
        # per worker: run_worker seeds torch with the worker seed before building the model
        base = p.seed if p.seed is not None else 0
        seed = (base + torch.initial_seed() + 7919 * ExecutionBuilder._count) % 2**31
        build = {
            "aer": aer_execution,
            "torch_density": density_execution,
            "aer_device": aer_device_execution,
            "ibm_runtime": runtime_execution,
        }[p.kind]
        ex = build(p, vqc, seed)
        ex.gradient = p.gradient_options()
        if "spsa_seed" in ex.gradient:
            # distinct, reproducible draws per worker and per layer (actor, critic)
            ex.gradient["spsa_seed"] = [
                ex.gradient["spsa_seed"],
                torch.initial_seed(),
                ExecutionBuilder._count,
            ]
        return ex


def _precision(p: Profile) -> float:
    return 1 / math.sqrt(p.shots) if p.shots else 0.0


def _logical_device_circuit(p: Profile, vqc):
    """The VQC in the noise source's basis gates on the logical qubits (all-to-all, no routing:
    noise applies to the gates the device would run; ``aer_device`` is the routed version)."""
    from qiskit import transpile

    device = noise.fake_backend(p.noise_source)
    circuit = transpile(
        vqc.circuit,
        basis_gates=noise.device_basis(device),
        optimization_level=p.optimization_level,
        seed_transpiler=p.seed or 0,
    )
    return device, circuit


def aer_execution(p: Profile, vqc, seed: int) -> Execution:
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2

    circuit, noise_model, readout = vqc.circuit, None, None
    if p.noise_source:
        device, circuit = _logical_device_circuit(p, vqc)
        # compact: errors only on the (gate, qubits) the circuit uses (see logical_noise_model)
        noise_model, _, readout = noise.logical_noise_model(device, vqc.n_qubits, circuit=circuit)
    # fusing gates (and noise superoperators) pays off for 8-qubit density matrices (~2x)
    extra = {"fusion_threshold": 1} if p.method == "density_matrix" else {}
    sim = AerSimulator(method=p.method, noise_model=noise_model, max_parallel_threads=1, **extra)
    if p.shots:
        # exact outcome distribution (gate noise included) -> readout confusion -> multinomial
        est = AerShotEstimator(sim, shots=p.shots, seed=seed, readout=readout)
        return Execution(est, circuit, list(vqc.observables), _precision(p))
    return Execution(AerEstimatorV2.from_backend(sim), circuit, list(vqc.observables), 0.0)


def density_execution(p: Profile, vqc, seed: int) -> Execution:
    """The in-package noisy density-matrix engine: the device's gate errors and readout as in
    ``aer`` with ``noise_source``, parameter shift from 2 sweeps per sample instead of 1 + 2G
    circuits."""
    from .density import NoisyDensityEstimator

    circuit, errors, readout = vqc.circuit, {}, None
    if p.noise_source:
        device, circuit = _logical_device_circuit(p, vqc)
        errors = noise.logical_gate_errors(device, vqc.n_qubits, circuit)
        readout = noise.logical_readout(device, vqc.n_qubits)
    # sampled: single precision for forward values (2x faster, error << shot noise)
    run_dtype = torch.complex64 if p.shots else torch.complex128
    est = NoisyDensityEstimator(errors, readout, shots=p.shots, seed=seed, run_dtype=run_dtype)
    return Execution(est, circuit, list(vqc.observables), _precision(p))


def aer_device_execution(p: Profile, vqc, seed: int) -> Execution:
    from qiskit import transpile
    from qiskit_aer import AerSimulator

    device = noise.fake_backend(p.noise_source)
    circuit = transpile(
        vqc.circuit,
        backend=device,
        optimization_level=p.optimization_level,
        seed_transpiler=p.seed or 0,
    )
    observables = [o.apply_layout(circuit.layout) for o in vqc.observables]
    # "automatic": Aer picks per circuit after dropping the idle qubits (only the active ones
    # are measured): one density matrix while shots > 2^active (8 active qubits: 0.5 s per
    # circuit), else one noisy trajectory per shot (forcing trajectories: 3.7 s on 8 qubits)
    sim = AerSimulator.from_backend(device, method=p.method, max_parallel_threads=1)
    noise.freeze_noise_model(sim.options.noise_model)
    # measure every qubit, expectation from counts
    est = AerShotEstimator(sim, shots=p.shots, seed=seed, mode="counts")
    return Execution(est, circuit, observables, _precision(p))


# --------------------------------------------------------------------------------------------
# IBM Runtime: one Session (or Batch) per (process, backend), shared by its layers
# --------------------------------------------------------------------------------------------
#: (profile name, backend name) -> [mode object (Session | Batch | None for job mode), backend,
#: refcount]
_SESSIONS: dict[tuple[str, str], list] = {}
#: jobs submitted and not yet finished (cancelled by :func:`close_all`)
_IN_FLIGHT: set = set()
#: this process's QPU usage: seconds measured by Runtime, estimated (where Runtime reported
#: none), jobs and circuits
_USAGE = {"measured_s": 0.0, "estimated_s": 0.0, "jobs": 0, "circuits": 0, "shots": 0}
RANK_ENV = "QA3C_WORKER_RANK"
_RANK: list[int | None] = [None]
#: this worker's pipe to the supervisor's shared session (None: open sessions in-process)
_BROKER: list[BrokerClient | None] = [None]


def set_broker(conn) -> None:
    """In a worker whose backend other workers share: submit through the supervisor's session
    over ``conn`` (:meth:`~qa3c_qiskit.backends.broker.SessionBroker.connect`); None: in-process."""
    _BROKER[0] = BrokerClient(conn) if conn is not None else None


def set_worker_rank(rank: int) -> None:
    """Tell the backends which worker process this is (``[runtime] backends`` picks
    ``backends[rank % len]``). Call once in each worker before its model is built; the
    ``$QA3C_WORKER_RANK`` environment variable is the fallback, else rank 0."""
    _RANK[0] = int(rank)


def worker_rank() -> int:
    if _RANK[0] is not None:
        return _RANK[0]
    return int(os.environ.get(RANK_ENV, "0") or 0)


def runtime_backend(p: Profile, rank: int | None = None, n_qubits: int = 8):
    """The backend object of worker ``rank`` (in local testing mode the fake backend, a window of
    it on a large device: :func:`~qa3c_qiskit.backends.noise.fake_backend_window`; otherwise
    ``QiskitRuntimeService(...).backend(name)``: network)."""
    name = backend_for_rank(p, worker_rank() if rank is None else rank)
    if is_local(p):
        return noise.fake_backend_window(name, n_qubits)
    from qiskit_ibm_runtime import QiskitRuntimeService

    kw = {k: p.runtime[k] for k in ("channel", "instance") if p.runtime.get(k)}
    return QiskitRuntimeService(**kw).backend(name)


def device_circuit(p: Profile, backend, circuit: QuantumCircuit) -> QuantumCircuit:
    """``circuit`` transpiled (laid out and routed) for ``backend`` as the Runtime path runs it;
    ``circuit.metadata["layout"]``: the physical qubit of every logical one."""
    from qiskit.transpiler import generate_preset_pass_manager

    pm = generate_preset_pass_manager(
        backend=backend, optimization_level=p.optimization_level, seed_transpiler=p.seed or 0
    )
    out = pm.run(circuit)
    layout = list(out.layout.final_index_layout())
    out.metadata = {**(out.metadata or {}), "layout": layout, "device": backend.name}
    return out


def runtime_options(p: Profile) -> dict:
    """The profile's Runtime options as an ``EstimatorOptions`` dict (recorded in config.json
    through the profile; passed to the estimator)."""
    rt = p.runtime
    opts: dict = {}
    if p.shots:
        opts["default_shots"] = p.shots
    if rt.get("precision"):
        opts["default_precision"] = float(rt["precision"])
    if "resilience_level" in rt:
        opts["resilience_level"] = rt["resilience_level"]
    if "max_execution_time" in rt:
        opts["max_execution_time"] = rt["max_execution_time"]
    if rt.get("dynamical_decoupling") or rt.get("dd_sequence"):
        opts["dynamical_decoupling"] = {
            "enable": True,
            "sequence_type": rt.get("dd_sequence", "XX"),
        }
    twirl = {k: rt[f"twirling_{k}"] for k in ("gates", "measure") if f"twirling_{k}" in rt}
    if twirl:
        opts["twirling"] = {f"enable_{k}": v for k, v in twirl.items()}
    return opts


def _open_mode(p: Profile, backend):
    """The execution mode object: a Session, a Batch, or None (job mode: the backend itself)."""
    mode = p.runtime.get("mode", "session")
    if mode == "job":
        return None
    from qiskit_ibm_runtime import Batch, Session

    kw = {"max_time": p.runtime["session_max_time"]} if "session_max_time" in p.runtime else {}
    return (Session if mode == "session" else Batch)(backend=backend, **kw)


def _runtime_estimator(mode, options: dict):
    """The runtime's EstimatorV2 implementation: the client-side ``executor_estimator.Estimator``
    where it exists (qiskit-ibm-runtime >= 0.50 deprecates the legacy ``EstimatorV2``)."""
    try:
        from qiskit_ibm_runtime.executor_estimator import Estimator
    except ImportError:  # older qiskit-ibm-runtime
        from qiskit_ibm_runtime import EstimatorV2 as Estimator
    return Estimator(mode=mode, options=options)


class RuntimeEstimator(BaseEstimatorV2):
    """The Runtime estimator of one layer, plus what a long run on a QPU needs: jobs tracked
    while in flight (cancelled by :func:`close_all`), usage metered per process
    (:func:`qpu_usage`: Runtime's reported QPU seconds where it has them, else the estimate from
    :mod:`~qa3c_qiskit.backends.timing`), and in local testing mode a fresh simulator seed per
    call (drawn from the layer's seed: shot noise differs between calls and workers)."""

    def __init__(self, inner, backend, circuit: QuantumCircuit, shots: int, seed: int, local):
        from . import timing

        self.inner = inner
        self.local = local
        self._rng = np.random.default_rng(seed)
        self.seconds_per_shot = timing.rep_delay(backend) + timing.circuit_duration(
            circuit, backend
        )
        self.shots = shots

    @property
    def options(self):
        return self.inner.options

    def run(self, pubs, *, precision=None):
        from qiskit.primitives.containers.estimator_pub import EstimatorPub

        pubs = list(pubs)
        if self.local:
            self.inner.options.simulator.seed_simulator = int(self._rng.integers(2**31))
        job = self.inner.run(pubs, precision=precision)
        _IN_FLIGHT.add(job)
        shots = self.shots if not precision else math.ceil(1 / precision**2)
        circuits = sum(int(EstimatorPub.coerce(pub).parameter_values.size or 1) for pub in pubs)
        try:
            job.result()  # the caller waits for it anyway; cancellable meanwhile
        finally:
            _IN_FLIGHT.discard(job)
        _meter(job, circuits, shots, circuits * shots * self.seconds_per_shot)
        return job


def _meter(job, circuits: int, shots: int, estimate_s: float) -> None:
    measured = None
    if hasattr(job, "usage") and not isinstance(job, type):
        try:
            measured = job.usage()  # Runtime's qpu_charge_time_seconds (real jobs only)
        except Exception:  # noqa: BLE001 - local jobs, or metadata not ready: estimate
            measured = None
    if measured:
        _USAGE["measured_s"] += float(measured)
    else:
        _USAGE["estimated_s"] += estimate_s
    _USAGE["jobs"] += 1
    _USAGE["circuits"] += circuits
    _USAGE["shots"] += circuits * shots


def qpu_usage() -> dict:
    """This process's QPU usage so far: ``{"qpu_seconds", "measured_s", "estimated_s", "jobs",
    "circuits", "shots"}`` (``qpu_seconds`` = measured + estimated; Runtime's reported usage
    where it has it, the timing estimate for every job it reported none for)."""
    return {"qpu_seconds": _USAGE["measured_s"] + _USAGE["estimated_s"], **_USAGE}


def reset_qpu_usage() -> None:
    for k in _USAGE:
        _USAGE[k] = 0 if k in ("jobs", "circuits", "shots") else 0.0


def runtime_execution(p: Profile, vqc, seed: int) -> Execution:
    from . import timing

    backend, client = None, _BROKER[0]
    try:
        backend = runtime_backend(p, n_qubits=vqc.n_qubits)
        if client is None:  # this process opens (or reuses) the backend's session
            key = (p.name, backend.name)
            entry = _SESSIONS.get(key)
            if entry is None:
                entry = _SESSIONS[key] = [_open_mode(p, backend), backend, 0]
                _journal("open", p, entry[0], backend)
            mode_obj, backend, _ = entry
            entry[2] += 1
        circuit = device_circuit(p, backend, vqc.circuit)
        observables = [o.apply_layout(circuit.layout) for o in vqc.observables]
        if client is None:
            inner = _runtime_estimator(mode_obj or backend, runtime_options(p))
            close = lambda: _release(p, backend.name)  # noqa: E731
        else:  # the supervisor's shared session; options built here, the same as there
            options = _runtime_estimator(backend, runtime_options(p)).options
            inner = RemoteEstimator(client, backend_for_rank(p, worker_rank()), options)
            close = inner.close
        precision = float(p.runtime["precision"]) if p.runtime.get("precision") else _precision(p)
        shots = timing.shots_for(p.shots, precision)
        est = RuntimeEstimator(inner, backend, circuit, shots, seed, is_local(p))
    except BaseException:
        if backend is not None and client is None:
            _release(p, backend.name)  # a failed build (e.g. transpiling) leaves nothing open
        raise
    return Execution(est, circuit, observables, precision, close)


def _release(p: Profile, backend_name: str) -> None:
    entry = _SESSIONS.get((p.name, backend_name))
    if entry is None:
        return
    entry[2] -= 1
    if entry[2] <= 0:
        _close_session((p.name, backend_name))


def _close_session(key: tuple[str, str]) -> None:
    entry = _SESSIONS.pop(key, None)
    if entry is not None and entry[0] is not None:
        try:
            entry[0].close()
        finally:
            _journal("close", Profile(name=key[0], kind="ibm_runtime"), entry[0], entry[1])


def close_all(cancel: bool = True) -> dict:
    """Cancel this process's in-flight Runtime jobs (``cancel``) and close every open Session or
    Batch. Idempotent, never raises, safe to call from a signal handler or ``finally``; returns
    ``{"cancelled": n, "closed": m}``. Call it in each worker's SIGTERM handler and ``finally``."""
    cancelled = closed = 0
    if cancel:
        for job in list(_IN_FLIGHT):
            try:
                job.cancel()
                cancelled += 1
            except Exception:  # noqa: BLE001 - already finished, or not cancellable: move on
                pass
            _IN_FLIGHT.discard(job)
    for key in list(_SESSIONS):
        try:
            _close_session(key)
            closed += 1
        except Exception:  # noqa: BLE001 - best effort: the next session still gets closed
            pass
    return {"cancelled": cancelled, "closed": closed}


def install_stop_handler(signals=None) -> None:
    """In a worker process: on SIGTERM (and SIGINT), cancel in-flight jobs, close every session
    (:func:`close_all`), then raise ``SystemExit(128 + signum)`` so ``finally`` blocks run (the
    model's close, env close). Call once at the start of the worker, in its main thread."""
    import signal

    def handler(signum, frame):
        close_all(cancel=True)
        raise SystemExit(128 + signum)

    for sig in signals or (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def usage_counters() -> dict:
    """:func:`qpu_usage` as flat per-process record fields (like ``a3c.quantum_counters``):
    ``{"qpu_s", "qpu_measured_s", "qpu_estimated_s", "qpu_jobs"}``, cumulative in this process."""
    u = qpu_usage()
    return {
        "qpu_s": u["qpu_seconds"],
        "qpu_measured_s": u["measured_s"],
        "qpu_estimated_s": u["estimated_s"],
        "qpu_jobs": u["jobs"],
    }


@atexit.register
def _close_all_sessions() -> None:
    """Last resort (e.g. an exception outside run_worker's finally): close open sessions."""
    close_all(cancel=True)


def _journal(event: str, p: Profile, session, backend=None, **extra) -> None:
    """Append a session event to ``$QA3C_SESSION_LOG`` (JSON lines), if set."""
    path = os.environ.get(SESSION_LOG_ENV)
    if not path:
        return
    record = {
        "event": event,
        "profile": p.name,
        "pid": os.getpid(),
        "mode": type(session).__name__.lower() if session is not None else "job",
        "session_id": getattr(session, "session_id", None),
        "object": f"{os.getpid()}:{id(session if session is not None else backend):x}",
        "backend": backend.name if backend is not None else None,
        "active": bool(getattr(session, "_active", True))
        if session is not None
        else event == "open",
        **extra,
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
