"""Backend registry: a backend name (or a profile TOML path) -> a builder of the VQC torch layer.

Profiles are TOML files in the top-level ``backends/`` folder (plus any folder listed in the
``QA3C_BACKENDS_DIR`` environment variable, searched first); ``--backend NAME`` finds
``NAME.toml`` there and ``--backend path/to/profile.toml`` loads that file. A user adds a backend
by adding a file. Fields (all optional except ``kind``):

* ``kind``: ``statevector`` (the in-package exact torch engine, autograd), ``aer`` (Aer on the
  logical qubits; exact when ``shots`` is absent, sampled otherwise; with ``noise_source`` the
  circuit is decomposed into the device's basis gates and gets that device's noise),
  ``aer_device`` (the fake device's noise model *and* coupling map: transpiled and routed,
  observables follow the layout), ``ibm_runtime`` (one IBM Runtime ``Session`` per worker);
* ``description``, ``shots`` (int > 0), ``seed`` (simulator/transpiler seed, int),
  ``noise_source`` (a ``qiskit_ibm_runtime.fake_provider`` backend, e.g. ``FakeGuadalupeV2``),
  ``method`` (Aer simulation method, or ``torch_density_matrix``: the in-package noisy
  density-matrix engine of :mod:`qa3c_qiskit.density`, same noise, fast parameter shift),
  ``optimization_level`` (0-3);
* ``[runtime]`` (``ibm_runtime`` only): ``channel``, ``instance``, ``backend`` (an IBM backend
  name), ``fake_backend`` (a fake backend: local testing mode, no network or account needed).

Run ``python -m qa3c_qiskit.backends`` for the table of known backends.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .circuit import build_vqc
from .engine import CircuitEngine

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


# --------------------------------------------------------------------------------------------
# The exact torch statevector layer (the default backend)
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _engine(n_qubits: int, n_layers: int, entangler: str) -> CircuitEngine:
    vqc = build_vqc(n_qubits, n_layers, entangler)
    return CircuitEngine(vqc.circuit, vqc.inputs, vqc.weights, vqc.observables)


def init_vqc_weights(n: int) -> torch.Tensor:
    """VQC weights 0.01 * N(0, 1), as in the closest public QA3C code."""
    return 0.01 * torch.randn(n, dtype=torch.float64)


class StatevectorLayer(nn.Module):
    """The VQC on the exact torch engine: [B, n_qubits] inputs -> [B, n_qubits] <Z_i>."""

    def __init__(self, n_qubits: int = 8, n_layers: int = 2, entangler: str = "double_ring"):
        super().__init__()
        self._vqc_args = (n_qubits, n_layers, entangler)
        self.engine = _engine(n_qubits, n_layers, entangler)
        self.weight = nn.Parameter(init_vqc_weights(self.engine.num_weights))
        self.weight.is_quantum = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x, self.weight)

    def functional(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[B, n_qubits] inputs, per-sample weights ``w`` [B, n_weights] -> [B, n_qubits];
        differentiable w.r.t. ``x`` and ``w`` (``w``'s gradient per sample)."""
        return self.engine(x, w)


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
KINDS = ("statevector", "aer", "aer_device", "ibm_runtime")
AER_METHODS = ("automatic", "statevector", "density_matrix", "matrix_product_state")
#: not an Aer method: the in-package noisy density-matrix engine (qa3c_qiskit.density), kind aer
DM_ENGINE = "torch_density_matrix"
RUNTIME_KEYS = ("channel", "instance", "backend", "fake_backend")
BACKENDS_ENV = "QA3C_BACKENDS_DIR"
SESSION_LOG_ENV = "QA3C_SESSION_LOG"


@dataclass(frozen=True)
class Profile:
    """One backend profile (a TOML file in ``backends/``)."""

    name: str
    kind: str
    description: str = ""
    shots: int | None = None
    seed: int | None = None
    noise_source: str | None = None
    method: str = "automatic"
    optimization_level: int = 1
    runtime: dict = field(default_factory=dict)
    path: str | None = None

    def needs(self) -> str:
        """A short human description of what the backend needs to run."""
        if self.kind == "statevector":
            return "nothing (torch)"
        if self.kind in ("aer", "aer_device"):
            return "qiskit-aer" + (
                " + qiskit-ibm-runtime (fake backend)" if self.noise_source else ""
            )
        if self.runtime.get("fake_backend"):
            return "qiskit-ibm-runtime (local testing mode)"
        return "qiskit-ibm-runtime + saved IBM Quantum account (network)"


def backend_dirs() -> list[Path]:
    """Folders searched for ``NAME.toml``: ``$QA3C_BACKENDS_DIR`` entries, then ``backends/``."""
    dirs = [Path(p) for p in os.environ.get(BACKENDS_ENV, "").split(os.pathsep) if p]
    return [*dirs, Path(__file__).resolve().parents[1] / "backends"]


def known_backends() -> dict[str, Path]:
    """{name: profile path} of every profile found (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in backend_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    found.setdefault("statevector", Path("<built-in>"))
    return found


def _is_path(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name or "/" in name


def load_profile(name: str) -> Profile:
    """The profile called ``name`` or stored at path ``name``; ValueError if unknown or malformed."""
    if _is_path(name):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"backend profile file {name!r} not found")
    else:
        known = known_backends()
        if name not in known:
            raise ValueError(
                f"unknown backend {name!r}; known backends: {', '.join(sorted(known))}"
            )
        path = known[name]
        if str(path) == "<built-in>":
            return Profile(name="statevector", kind="statevector", description=_SV_DESCRIPTION)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"backend profile {str(path)!r} is not valid TOML: {exc}") from None
    allowed = {f.name for f in fields(Profile)} - {"path"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(
            f"backend profile {str(path)!r}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(sorted(allowed))}"
        )
    data.setdefault("name", path.stem)
    if "kind" not in data:
        raise ValueError(
            f"backend profile {str(path)!r} has no 'kind'; choose one of {', '.join(KINDS)}"
        )
    return Profile(**data, path=str(path))


_SV_DESCRIPTION = "exact torch statevector engine (default), exact adjoint gradients"


def _fake_backend_names() -> list[str]:
    from qiskit_ibm_runtime import fake_provider

    return sorted(n for n in dir(fake_provider) if n.startswith("Fake") and "Provider" not in n)


def fake_backend(name: str):
    """An instance of ``qiskit_ibm_runtime.fake_provider.<name>``; ValueError if there is none."""
    try:
        from qiskit_ibm_runtime import fake_provider
    except ImportError:
        raise ValueError(
            f"noise source {name!r} needs qiskit-ibm-runtime (pip install 'qa3c-qiskit[ibm]')"
        ) from None
    cls = getattr(fake_provider, name, None) if name.startswith("Fake") else None
    if cls is None:
        raise ValueError(
            f"unknown fake backend {name!r}; choose one of qiskit_ibm_runtime.fake_provider's "
            f"(e.g. FakeGuadalupeV2, FakeTorontoV2, FakeManilaV2)"
        )
    return cls()


def profile_problems(p: Profile, n_qubits: int | None = None) -> list[str]:
    """Everything wrong with profile ``p`` (checked before any worker starts)."""
    where = f"backend {p.name!r}"
    out = []
    if p.kind not in KINDS:
        return [f"{where}: unknown kind {p.kind!r}; choose one of {', '.join(KINDS)}"]
    if p.shots is not None and (not isinstance(p.shots, int) or p.shots <= 0):
        out.append(f"{where}: shots must be a positive integer, got {p.shots!r}")
    if p.method not in (*AER_METHODS, DM_ENGINE):
        out.append(
            f"{where}: unknown method {p.method!r}; choose one of {', '.join(AER_METHODS)}, "
            f"{DM_ENGINE}"
        )
    elif p.method == DM_ENGINE and p.kind != "aer":
        out.append(f"{where}: method {DM_ENGINE!r} is for kind 'aer' only, not {p.kind!r}")
    if p.optimization_level not in (0, 1, 2, 3):
        out.append(f"{where}: optimization_level must be 0-3, got {p.optimization_level!r}")
    if p.kind == "statevector" and p.shots is not None:
        out.append(f"{where}: the statevector engine is exact; use an aer profile for shots")
    if p.kind in ("aer_device", "ibm_runtime") and p.shots is None:
        out.append(f"{where}: kind {p.kind!r} samples; set shots")
    if p.kind == "aer_device" and not p.noise_source:
        out.append(f"{where}: kind 'aer_device' needs noise_source (a fake backend name)")
    devices = []
    if p.noise_source:
        devices.append(p.noise_source)
    if p.kind == "ibm_runtime":
        bad = set(p.runtime) - set(RUNTIME_KEYS)
        if bad:
            out.append(
                f"{where}: unknown [runtime] key(s) {', '.join(sorted(bad))}; "
                f"accepted: {', '.join(RUNTIME_KEYS)}"
            )
        if p.runtime.get("fake_backend"):
            devices.append(p.runtime["fake_backend"])
        else:
            out.extend(_credential_problems(p))
    for dev in devices:
        try:
            backend = fake_backend(dev)
        except ValueError as exc:
            out.append(f"{where}: {exc}")
            continue
        if n_qubits is not None and backend.num_qubits < n_qubits:
            out.append(f"{where}: {dev} has {backend.num_qubits} qubits, the VQC needs {n_qubits}")
    return out


def _credential_problems(p: Profile) -> list[str]:
    where = f"backend {p.name!r}"
    try:
        from qiskit_ibm_runtime import QiskitRuntimeService
    except ImportError:
        return [f"{where} needs qiskit-ibm-runtime (pip install 'qa3c-qiskit[ibm]')"]
    if not p.runtime.get("backend"):
        return [f"{where}: set [runtime] backend (an IBM backend name) or fake_backend"]
    try:
        accounts = QiskitRuntimeService.saved_accounts()
    except Exception:  # noqa: BLE001 - an unreadable account file is the same as none
        accounts = {}
    if not accounts and not os.environ.get("QISKIT_IBM_TOKEN"):
        return [
            f"{where}: no saved IBM Quantum credentials (run QiskitRuntimeService.save_account(...) "
            f"or set [runtime] fake_backend for local testing mode)"
        ]
    return []


def resolve(name: str, shots: int | None = None, n_qubits: int | None = None) -> Profile:
    """Load and check the profile ``name`` (``shots`` overrides its shot count)."""
    p = load_profile(name)
    if shots is not None:
        p = replace(p, shots=shots)
    problems = profile_problems(p, n_qubits)
    if problems:
        raise ValueError("; ".join(problems))
    return p


def check_backend(name: str) -> None:
    """Raise a one-line ValueError if ``name`` is not a usable backend (unknown or bad profile)."""
    resolve(name)


# --------------------------------------------------------------------------------------------
# Building the layer (Qiskit objects are created in the worker, on first use)
# --------------------------------------------------------------------------------------------
def quantum_layer_factory(spec):
    """A zero-argument callable building one VQC layer for ``spec`` (a ModelSpec).

    The profile is loaded and checked now (errors surface before any worker starts); the Qiskit
    simulator or session is built lazily by the layer in the process that runs it.
    """
    profile = resolve(spec.backend, getattr(spec, "shots", None), spec.n_qubits)
    if profile.kind == "statevector":
        return lambda: StatevectorLayer(spec.n_qubits, spec.n_layers, spec.entangler)
    from .qiskit_layer import QiskitLayer

    def make():
        return QiskitLayer(_ExecutionBuilder(profile), spec.n_qubits, spec.n_layers, spec.entangler)

    return make


class _ExecutionBuilder:
    """Picklable ``vqc -> Execution`` for a profile; each call builds fresh Qiskit objects."""

    _count = 0  # layers built in this process (distinct simulator seeds for actor and critic)

    def __init__(self, profile: Profile):
        self.profile = profile

    def __call__(self, vqc):
        _ExecutionBuilder._count += 1
        p = self.profile
        # per worker: run_worker seeds torch with the worker seed before building the model
        base = p.seed if p.seed is not None else 0
        seed = (base + torch.initial_seed() + 7919 * _ExecutionBuilder._count) % 2**31
        if p.kind == "aer":
            return _aer_execution(p, vqc, seed)
        if p.kind == "aer_device":
            return _aer_device_execution(p, vqc, seed)
        return _runtime_execution(p, vqc, seed)


def _aer_execution(p: Profile, vqc, seed: int):
    from qiskit import transpile
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import EstimatorV2 as AerEstimatorV2

    from .qiskit_layer import AerShotEstimator, Execution

    circuit, noise, readout = vqc.circuit, None, None
    if p.noise_source:
        device = fake_backend(p.noise_source)
        # the device's gate set on the logical qubits, all-to-all (no routing): noise applies
        # to the gates the device would run; see aer_device for the routed version
        circuit = transpile(
            circuit,
            basis_gates=device_basis(device),
            optimization_level=p.optimization_level,
            seed_transpiler=p.seed or 0,
        )
        # compact: errors only on the (gate, qubits) the circuit uses (see logical_noise_model)
        noise, _, readout = logical_noise_model(device, vqc.n_qubits, circuit=circuit)
    if p.method == DM_ENGINE:
        # the same gate errors and readout, on the in-package density-matrix engine, whose
        # parameter-shift gradient needs 2 sweeps per sample instead of 1 + 2G circuits
        from .density import NoisyDensityEstimator

        errors = (
            logical_gate_errors(fake_backend(p.noise_source), vqc.n_qubits, circuit)
            if p.noise_source
            else {}
        )
        # sampled: single precision for forward values (2x faster, error << shot noise)
        run_dtype = torch.complex64 if p.shots else torch.complex128
        est = NoisyDensityEstimator(errors, readout, shots=p.shots, seed=seed, run_dtype=run_dtype)
        precision = 1 / math.sqrt(p.shots) if p.shots else 0.0
        return Execution(est, circuit, list(vqc.observables), precision)
    # fusing gates (and noise superoperators) pays off for 8-qubit density matrices (~2x)
    extra = {"fusion_threshold": 1} if p.method == "density_matrix" else {}
    sim = AerSimulator(method=p.method, noise_model=noise, max_parallel_threads=1, **extra)
    if p.shots:
        # exact outcome distribution (gate noise included) -> readout confusion -> multinomial
        est = AerShotEstimator(sim, shots=p.shots, seed=seed, readout=readout)
        return Execution(est, circuit, list(vqc.observables), 1 / math.sqrt(p.shots))
    est = AerEstimatorV2.from_backend(sim)
    return Execution(est, circuit, list(vqc.observables), 0.0)


def _aer_device_execution(p: Profile, vqc, seed: int):
    from qiskit import transpile
    from qiskit_aer import AerSimulator

    from .qiskit_layer import AerShotEstimator, Execution

    device = fake_backend(p.noise_source)
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
    freeze_noise_model(sim.options.noise_model)
    # noisy trajectories on the routed device: measure every qubit, expectation from counts
    est = AerShotEstimator(sim, shots=p.shots, seed=seed, mode="counts")
    return Execution(est, circuit, observables, 1 / math.sqrt(p.shots))


def freeze_noise_model(model):
    """Make ``model`` serialize once: Aer converts the noise model to a dict of Kraus matrices on
    *every* ``run`` (~0.3-0.5 s here, far more than simulating 8 qubits); the model must not be
    changed after its first use."""
    from qiskit_aer.noise import NoiseModel

    class _FrozenNoiseModel(NoiseModel):
        def to_dict(self, serializable=False):
            if not serializable:
                return super().to_dict(serializable)
            if getattr(self, "_frozen_dict", None) is None:
                self._frozen_dict = super().to_dict(True)
            return self._frozen_dict

    model.__class__ = _FrozenNoiseModel
    return model


def device_basis(device) -> list[str]:
    """The basis gates of ``device`` that the logical-qubit models use: rz, sx, x and its
    two-qubit gate (cx, ecr or cz)."""
    names = set(device.target.operation_names)
    two_q = next(g for g in ("cx", "ecr", "cz") if g in names)
    return sorted(names & {"rz", "sx", "x", two_q})


def logical_noise_model(device, n_qubits: int, circuit=None):
    """``device``'s noise on logical qubits 0..n-1 (physical qubit i -> logical i).

    Returns ``(noise_model, basis_gates, readout)``, ``readout`` = {qubit: 2x2 confusion matrix
    M[true, measured]}.

    Every noisy gate gets the device's calibrated error for that gate and qubit(s), as built by
    Aer's ``basic_device_gate_errors``: a depolarizing error matching the calibrated gate error,
    composed with thermal relaxation (T1, T2) over the gate duration; readout errors are those of
    physical qubits 0..n-1. ``rz`` is virtual on IBM devices (zero duration, no error). A
    two-qubit gate between logical qubits that are coupled on the device gets that pair's error;
    any other pair gets the error of the device's median pair (on hardware it would need SWAPs:
    ``aer_device`` models that).

    With ``circuit`` (already in ``basis_gates``), the model is *compact*: it holds errors only
    for the (gate, qubits) the circuit contains, e.g. 16 CX pairs instead of all n(n-1) = 56,
    and no ``reset``/``id``/``delay`` errors. The simulation is the same (absent entries never
    fire), but Aer converts every error of the model to a superoperator on every ``run``, which
    cost ~50-100 ms per call here; compact, that setup is ~5x smaller.
    """
    from qiskit_aer.noise import NoiseModel
    from qiskit_aer.noise.device.models import basic_device_readout_errors

    model = NoiseModel(basis_gates=device_basis(device))
    freeze_noise_model(model)
    for (name, qubits), error in logical_gate_errors(device, n_qubits, circuit).items():
        model.add_quantum_error(error, name, list(qubits))
    readout = {}
    for qubits, error in basic_device_readout_errors(target=device.target):
        if qubits[0] < n_qubits:
            model.add_readout_error(error, list(qubits))
            readout[qubits[0]] = np.asarray(error.probabilities, dtype=float)
    return model, device_basis(device), readout


def logical_gate_errors(device, n_qubits: int, circuit=None) -> dict:
    """{(gate, logical qubits): QuantumError} of :func:`logical_noise_model` (only the
    (gate, qubits) in ``circuit`` if given)."""
    from qiskit_aer.noise.device.models import basic_device_gate_errors

    target = device.target
    basis = device_basis(device)
    two_q = next(g for g in ("cx", "ecr", "cz") if g in basis)
    used = None
    if circuit is not None:
        used = {
            (inst.operation.name, tuple(circuit.find_bit(q).index for q in inst.qubits))
            for inst in circuit.data
        }
    errors, pair_errors = {}, {}
    for name, qubits, error in basic_device_gate_errors(target=target):
        qubits = tuple(qubits)
        if len(qubits) == 1 and qubits[0] < n_qubits and name in basis:
            if used is None or (name, qubits) in used:
                errors[(name, qubits)] = error
        elif len(qubits) == 2 and name == two_q:
            pair_errors[qubits] = error
    rates = {q: (target[two_q][q].error or 0.0) for q in pair_errors}
    median = sorted(rates, key=rates.get)[len(rates) // 2]
    for a in range(n_qubits):
        for b in range(n_qubits):
            if a != b and (used is None or (two_q, (a, b)) in used):
                errors[(two_q, (a, b))] = pair_errors.get((a, b), pair_errors[median])
    return errors


# --------------------------------------------------------------------------------------------
# IBM Runtime: one Session per worker process, shared by its actor and critic layers
# --------------------------------------------------------------------------------------------
_SESSIONS: dict[str, list] = {}  # profile name -> [session, backend, refcount]


def _runtime_execution(p: Profile, vqc, seed: int):
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import EstimatorV2, Session

    from .qiskit_layer import Execution

    entry = _SESSIONS.get(p.name)
    if entry is None:
        rt = p.runtime
        if rt.get("fake_backend"):
            backend = fake_backend(rt["fake_backend"])  # local testing mode
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
    est = EstimatorV2(mode=session)
    est.options.default_shots = p.shots
    if p.runtime.get("fake_backend"):
        est.options.simulator.seed_simulator = seed
    return Execution(est, circuit, observables, 1 / math.sqrt(p.shots), lambda: _release(p))


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
        entry = _SESSIONS.pop(name)
        entry[0].close()
        _journal("close", Profile(name=name, kind="ibm_runtime"), entry[0])


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


# --------------------------------------------------------------------------------------------
# CLI: the table of known backends
# --------------------------------------------------------------------------------------------
def table_rows() -> list[dict]:
    """One row per known backend: name, kind, shots, noise, needs, status, description."""
    rows = []
    for name, path in sorted(known_backends().items()):
        try:
            p = load_profile(name if str(path) == "<built-in>" else str(path))
            problems = profile_problems(p)
            status = "ok" if not problems else problems[0]
        except ValueError as exc:
            p, status = Profile(name=name, kind="?"), str(exc)
        noise = p.noise_source or p.runtime.get("fake_backend") or p.runtime.get("backend") or "-"
        rows.append(
            {
                "name": name,
                "kind": p.kind,
                "shots": "exact" if p.shots is None else str(p.shots),
                "device": noise,
                "needs": p.needs(),
                "status": status,
                "description": p.description,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.backends",
        description="List the known quantum backends (profiles in backends/ and $QA3C_BACKENDS_DIR).",
    )
    parser.parse_args(argv)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Backends (profiles in {', '.join(map(str, backend_dirs()))})")
    for col in ("name", "kind", "shots", "device", "needs", "status", "description"):
        table.add_column(col, overflow="fold")
    for r in table_rows():
        table.add_row(
            *(
                escape(r[c])
                for c in ("name", "kind", "shots", "device", "needs", "status", "description")
            )
        )
    Console(width=max(Console().width, 160)).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
