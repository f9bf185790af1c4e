"""Device noise on the VQC's logical qubits, from a ``qiskit_ibm_runtime`` fake backend.

* :func:`fake_backend`: an instance of ``qiskit_ibm_runtime.fake_provider.<name>``;
* :func:`logical_gate_errors` / :func:`logical_noise_model`: the device's calibrated gate and
  readout errors mapped onto logical qubits 0..n-1 (no routing), as Aer's
  ``basic_device_gate_errors`` builds them; used by ``aer`` profiles with ``noise_source`` and
  by the in-package density-matrix engine (``torch_density``);
* :func:`freeze_noise_model`: make Aer serialize a noise model once instead of on every run.

Everything Qiskit-Aer / Runtime is imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import numpy as np


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


def device_basis(device) -> list[str]:
    """The basis gates of ``device`` that the logical-qubit models use: rz, sx, x and its
    two-qubit gate (cx, ecr or cz)."""
    names = set(device.target.operation_names)
    two_q = next(g for g in ("cx", "ecr", "cz") if g in names)
    return sorted(names & {"rz", "sx", "x", two_q})


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
    from qiskit_aer.noise import NoiseModel, ReadoutError

    model = NoiseModel(basis_gates=device_basis(device))
    freeze_noise_model(model)
    for (name, qubits), error in logical_gate_errors(device, n_qubits, circuit).items():
        model.add_quantum_error(error, name, list(qubits))
    readout = logical_readout(device, n_qubits)
    for q, matrix in readout.items():
        model.add_readout_error(ReadoutError(matrix), [q])
    return model, device_basis(device), readout


def logical_readout(device, n_qubits: int) -> dict[int, np.ndarray]:
    """{logical qubit: confusion matrix M[true, measured]} of physical qubits 0..n-1."""
    from qiskit_aer.noise.device.models import basic_device_readout_errors

    return {
        qubits[0]: np.asarray(error.probabilities, dtype=float)
        for qubits, error in basic_device_readout_errors(target=device.target)
        if qubits[0] < n_qubits
    }


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


def fake_backend_window(name: str, n_qubits: int):
    """The fake backend ``name`` restricted to its first ``M`` physical qubits, the smallest
    ``M >= n_qubits`` whose coupling graph is connected (the whole device if it has at most
    ``n_qubits + 4`` qubits): same gates, calibrations, durations and noise on those qubits.

    For local testing mode: the Runtime executor simulates every qubit of the backend it is given
    (and rebuilds the device noise model for every job), which a 127-qubit device makes
    impossible. Every extra qubit doubles the cost: Aer simulates a noisy circuit as one density
    matrix only while ``shots > 2**M``, else shot by shot (one statevector trajectory each).
    Measured for the 8-qubit VQC on FakeBrisbane at 1,024 shots (~170 ECR after routing):
    ~200 s per circuit on a 16-qubit window, ~20 s on 10 qubits, ~1 s on 8. A window of the
    device keeps the device family, its noise and its timing.
    """
    full = fake_backend(name)
    if full.num_qubits <= n_qubits + 4:
        return full
    cm = full.coupling_map
    m = min(n_qubits, full.num_qubits)
    while m < full.num_qubits and not cm.reduce(list(range(m))).is_connected():
        m += 1
    return _window_class(type(full), m)()


def _window_class(cls, m: int):
    def keep(qubits) -> bool:
        return all(q < m for q in qubits)

    class Window(cls):
        window = m

        def _get_conf_dict_from_json(self):
            conf = super()._get_conf_dict_from_json()
            if conf is None:
                return conf
            conf["n_qubits"] = m
            conf["coupling_map"] = [e for e in conf.get("coupling_map", []) if keep(e)]
            for gate in conf.get("gates", []):
                if "coupling_map" in gate:
                    gate["coupling_map"] = [e for e in gate["coupling_map"] if keep(e)]
            if "meas_map" in conf:
                conf["meas_map"] = [
                    g for g in ([q for q in mm if q < m] for mm in conf["meas_map"]) if g
                ]
            for key in ("qubit_lo_range", "meas_lo_range"):
                if key in conf:
                    conf[key] = conf[key][:m]
            return conf

        def _set_props_dict_from_json(self):
            super()._set_props_dict_from_json()
            props = self._props_dict
            if props is not None:
                props["qubits"] = props["qubits"][:m]
                props["gates"] = [g for g in props["gates"] if keep(g["qubits"])]

    Window.__name__ = Window.__qualname__ = f"{cls.__name__}[:{m}]"
    return Window
