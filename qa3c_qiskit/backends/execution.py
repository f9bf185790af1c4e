"""Execution builders: a profile + the VQC -> an :class:`Execution` (estimator, circuit,
observables, precision), built inside the worker process that runs the layer.

* ``aer``: Aer on the logical qubits, exact (Aer's ``EstimatorV2``) or sampled
  (:class:`~qa3c_qiskit.backends.estimators.AerShotEstimator`), optionally with a fake device's
  noise on the logical qubits (:mod:`qa3c_qiskit.backends.noise`);
* ``torch_density``: the same device noise on the in-package density-matrix engine
  (:mod:`qa3c_qiskit.backends.density`);
* ``aer_device``: the fake device's noise model *and* coupling map (transpiled and routed);
* ``ibm_runtime``: one IBM Runtime ``Session`` per worker process, shared by its actor and
  critic layers, closed when the last layer using it is closed (or at exit).

Set ``$QA3C_SESSION_LOG`` to a file to get a JSON line per session opened or closed.
"""

from __future__ import annotations

import atexit
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from qiskit.circuit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2

from . import noise
from .estimators import AerShotEstimator
from .registry import SESSION_LOG_ENV, Profile


@dataclass
class Execution:
    """What a backend builder returns: how to run the VQC (built inside the worker)."""

    estimator: BaseEstimatorV2
    circuit: QuantumCircuit  # the (possibly transpiled) circuit, parameters = the VQC's
    observables: list  # Z_i, following the transpiled layout
    precision: float  # passed to every estimator call: 0 = exact, 1/sqrt(shots) otherwise
    close: Callable[[], None] = field(default=lambda: None)


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
        return build(p, vqc, seed)


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
    # noisy trajectories (a 12+ qubit density matrix would not fit); one per shot
    method = "statevector" if p.method == "automatic" else p.method
    sim = AerSimulator.from_backend(device, method=method, max_parallel_threads=1)
    noise.freeze_noise_model(sim.options.noise_model)
    # measure every qubit, expectation from counts
    est = AerShotEstimator(sim, shots=p.shots, seed=seed, mode="counts")
    return Execution(est, circuit, observables, _precision(p))


# --------------------------------------------------------------------------------------------
# IBM Runtime: one Session per worker process, shared by its actor and critic layers
# --------------------------------------------------------------------------------------------
_SESSIONS: dict[str, list] = {}  # profile name -> [session, backend, refcount]


def _runtime_estimator(session):
    """The runtime's EstimatorV2 implementation: the client-side ``executor_estimator.Estimator``
    where it exists (qiskit-ibm-runtime >= 0.50 deprecates the legacy ``EstimatorV2``)."""
    try:
        from qiskit_ibm_runtime.executor_estimator import Estimator
    except ImportError:  # older qiskit-ibm-runtime
        from qiskit_ibm_runtime import EstimatorV2 as Estimator
    return Estimator(mode=session)


def runtime_execution(p: Profile, vqc, seed: int) -> Execution:
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import Session

    entry = _SESSIONS.get(p.name)
    if entry is None:
        rt = p.runtime
        if rt.get("fake_backend"):
            backend = noise.fake_backend(rt["fake_backend"])  # local testing mode
        else:
            from qiskit_ibm_runtime import QiskitRuntimeService

            kw = {k: rt[k] for k in ("channel", "instance") if rt.get(k)}
            backend = QiskitRuntimeService(**kw).backend(rt["backend"])
        session = Session(backend=backend)
        entry = _SESSIONS[p.name] = [session, backend, 0]
        _journal("open", p, session)
    session, backend, _ = entry
    entry[2] += 1
    pm = generate_preset_pass_manager(
        backend=backend, optimization_level=p.optimization_level, seed_transpiler=p.seed or 0
    )
    circuit = pm.run(vqc.circuit)
    observables = [o.apply_layout(circuit.layout) for o in vqc.observables]
    est = _runtime_estimator(session)
    est.options.default_shots = p.shots
    if p.runtime.get("fake_backend"):
        est.options.simulator.seed_simulator = seed
    return Execution(est, circuit, observables, _precision(p), lambda: _release(p))


def _release(p: Profile) -> None:
    entry = _SESSIONS.get(p.name)
    if entry is None:
        return
    entry[2] -= 1
    if entry[2] <= 0:
        _close_session(p)


def _close_session(p: Profile) -> None:
    entry = _SESSIONS.pop(p.name, None)
    if entry is not None:
        entry[0].close()
        _journal("close", p, entry[0])


@atexit.register
def _close_all_sessions() -> None:
    """Last resort (e.g. an exception outside run_worker's finally): close open sessions."""
    for name in list(_SESSIONS):
        _close_session(Profile(name=name, kind="ibm_runtime"))


def _journal(event: str, p: Profile, session) -> None:
    """Append a session event to ``$QA3C_SESSION_LOG`` (JSON lines), if set."""
    path = os.environ.get(SESSION_LOG_ENV)
    if not path:
        return
    record = {
        "event": event,
        "profile": p.name,
        "pid": os.getpid(),
        "session_id": session.session_id,
        "object": f"{os.getpid()}:{id(session):x}",  # local mode has no server-side id
        "backend": getattr(session, "_backend", None) and session._backend.name,
        "active": bool(getattr(session, "_active", True)),
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
