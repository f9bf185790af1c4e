"""Quantum backends: the profile registry, noise models, execution builders, estimators, the
parameter-shift gradient and the torch layers.

Modules, by concept (imports flow downwards only; no cycles):

====================  ======================================================================
``registry``          profiles (TOML): find, load, validate, list
``cli``               ``python -m qa3c_qiskit.backends``: the table of backends, ``--report``
``noise``             fake-device noise on the logical qubits (gate errors, readout)
``estimators``        EstimatorV2s (Aer shots, counting wrapper), observable diagonals,
                      readout, the :class:`ShiftValuesEstimator` protocol
``gradient``          gate-level parameter shift, the batched ``EstimatorQNN``
``density``           the in-package noisy density-matrix estimator (``torch_density``)
``timing``            QPU seconds of a circuit from the device's timing data (rep delay,
                      gate and measurement durations)
``execution``         Aer / device / IBM Runtime builders (a Session, Batch or job mode per
                      worker and backend), ``close_all`` (safe stops), ``qpu_usage`` (meter)
``cost``              the cost report (``python -m qa3c_qiskit.backends NAME --report``)
``layers``            the torch layers (statevector, Qiskit) and ``quantum_layer_factory``
====================  ======================================================================

Adding a backend *kind*: a builder in ``execution`` (and its key in ``ExecutionBuilder``),
the kind in ``registry.KINDS`` (with its checks in ``profile_problems``); adding a backend:
a TOML profile, no code.
"""

from .cli import main, table_rows
from .layers import QiskitLayer, StatevectorLayer, quantum_layer_factory
from .noise import device_basis, fake_backend, logical_gate_errors, logical_noise_model
from .registry import (
    BACKENDS_ENV,
    BUILTIN_DIR,
    KINDS,
    SESSION_LOG_ENV,
    Profile,
    backend_dirs,
    check_backend,
    known_backends,
    load_profile,
    needs_qpu_cap,
    profile_problems,
    resolve,
)

__all__ = [
    "BACKENDS_ENV",
    "BUILTIN_DIR",
    "KINDS",
    "SESSION_LOG_ENV",
    "Profile",
    "QiskitLayer",
    "StatevectorLayer",
    "backend_dirs",
    "check_backend",
    "device_basis",
    "fake_backend",
    "known_backends",
    "load_profile",
    "logical_gate_errors",
    "logical_noise_model",
    "main",
    "needs_qpu_cap",
    "profile_problems",
    "quantum_layer_factory",
    "resolve",
    "table_rows",
]
