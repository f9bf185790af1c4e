"""QPU time of circuits from a backend's own timing data (no network).

A circuit of ``shots`` shots occupies the QPU for about ``shots * (rep_delay + duration)``:
``rep_delay`` is the backend's default repetition delay (``configuration().default_rep_delay``,
250 us on Eagle devices) and ``duration`` the circuit's length scheduled as soon as possible
with the gate and measurement durations of ``backend.target`` (the calibrated durations of the
fake device snapshot, or of the real backend once fetched). Runtime's per-job overhead
(loading, compilation; a few seconds per job) and the extra circuits of error mitigation
(resilience level >= 1: readout calibration; 2: ZNE's noise factors, ~3x) are not included:
the estimate is a lower bound for the billed "quantum seconds" of the circuits themselves.
"""

from __future__ import annotations

import math

from qiskit.circuit import QuantumCircuit

#: Eagle r3 defaults, used where a backend gives no value
DEFAULT_REP_DELAY_S = 250e-6
DEFAULT_MEASURE_S = 1.3e-6


def rep_delay(backend) -> float:
    """The backend's default repetition delay in seconds (between two shots)."""
    try:
        value = backend.configuration().default_rep_delay
    except Exception:  # noqa: BLE001 - a backend without a configuration (e.g. a pure BackendV2)
        value = None
    if value is None:
        return DEFAULT_REP_DELAY_S
    value = float(value)
    return value * 1e-6 if value > 1e-2 else value  # some snapshots store microseconds


def _duration(target, name: str, qubits: tuple[int, ...]) -> float:
    try:
        props = target[name].get(qubits) if name in target else None
    except Exception:  # noqa: BLE001
        props = None
    if props is not None and props.duration is not None:
        return float(props.duration)
    if name == "measure":
        return DEFAULT_MEASURE_S
    return 0.0


def circuit_duration(circuit: QuantumCircuit, backend, measure: bool = True) -> float:
    """Seconds from the first gate to the end of the last measurement, gates scheduled ASAP with
    ``backend.target``'s durations (``circuit`` already transpiled for ``backend``); ``measure``
    adds a final measurement of every active qubit (what an estimator appends)."""
    target = backend.target
    t: dict[int, float] = {}
    for inst in circuit.data:
        name = inst.operation.name
        if name == "barrier":
            continue
        qubits = tuple(circuit.find_bit(q).index for q in inst.qubits)
        start = max((t.get(q, 0.0) for q in qubits), default=0.0)
        end = start + _duration(target, name, qubits)
        for q in qubits:
            t[q] = end
    if measure:
        for q in list(t):
            t[q] += _duration(target, "measure", (q,))
    return max(t.values(), default=0.0)


def shots_for(shots: int | None, precision: float | None) -> int:
    """Shots per circuit: ``shots``, else the number that reaches standard error ``precision``
    for an observable of unit variance (``ceil(1 / precision^2)``)."""
    if shots:
        return int(shots)
    if precision:
        return math.ceil(1 / precision**2)
    return 0


def seconds_per_circuit(circuit: QuantumCircuit, backend, shots: int) -> float:
    """QPU seconds of one circuit executed with ``shots`` shots."""
    return shots * (rep_delay(backend) + circuit_duration(circuit, backend))
