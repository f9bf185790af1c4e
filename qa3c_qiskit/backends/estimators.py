"""EstimatorV2 primitives of the package and the helpers they share.

* :class:`AerShotEstimator`: an ``EstimatorV2`` that really samples shots on an
  :class:`~qiskit_aer.AerSimulator` (Aer's own ``EstimatorV2`` with ``precision > 0`` computes the
  exact value and adds Gaussian noise instead);
* :class:`CountingEstimator`: wraps any ``EstimatorV2`` and counts calls, PUBs and circuit
  executions (tests and benchmarks);
* :class:`ShiftValuesEstimator`: the protocol of an estimator with a fast parameter-shift path
  (:class:`~qa3c_qiskit.backends.density.NoisyDensityEstimator`), which
  :class:`~qa3c_qiskit.backends.gradient.BatchedParamShiftGradient` uses instead of running the
  ``1 + 2G`` shifted circuits;
* the helpers they share: observables as diagonals (:func:`diagonals`, on
  :func:`qa3c_qiskit.circuit.observable_diagonals`, the one I/Z -> diagonal conversion of the
  package), readout confusion applied to outcome distributions (:func:`apply_readout`), and
  :class:`CircuitCache` (values computed once per circuit object).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from qiskit.circuit import ClassicalRegister, QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, PrimitiveJob, PrimitiveResult
from qiskit.primitives.containers import DataBin, EstimatorPubLike, PubResult
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.quantum_info import SparsePauliOp

from ..circuit import observable_diagonals


@runtime_checkable
class ShiftValuesEstimator(Protocol):
    """An estimator that computes all parameter-shift values without running each circuit."""

    def shift_values(
        self, circuit, params, observables, theta, precision=None, n_grad=None
    ) -> np.ndarray:
        """<O> of ``circuit`` (a QuantumCircuit whose gate angles are the Parameters
        ``params``) at angles ``theta`` [N, G] and at every ``theta +- pi/2 e_k``:
        [n_obs, N, 1 + 2G] (unshifted, then the G plus shifts, then the G minus shifts);
        ``precision`` as in ``EstimatorV2.run`` (None: the estimator's default, 0: exact).
        Only the first ``n_grad`` rows (None: all) need the shifts; the others are
        forward-only (column 0)."""
        ...


class CircuitCache:
    """Values computed once per circuit *object* (keyed by identity, plus an optional key).

    The circuit is kept alive with its value, so a recycled ``id`` never returns a stale entry.
    """

    def __init__(self):
        self._hits: dict = {}

    def get(self, circuit: QuantumCircuit, build: Callable[[], object], key=()):
        k = (id(circuit), key)
        hit = self._hits.get(k)
        if hit is None or hit[0] is not circuit:
            hit = (circuit, build())
            self._hits[k] = hit
        return hit[1]


# --------------------------------------------------------------------------------------------
# Observables and readout
# --------------------------------------------------------------------------------------------
def as_pauli_ops(observables) -> list[SparsePauliOp]:
    """A sequence of SparsePauliOps, or an ObservablesArray (flattened), as SparsePauliOps."""
    flat = observables.ravel() if hasattr(observables, "ravel") else list(observables)
    return [SparsePauliOp.from_list(list(o.items())) if isinstance(o, dict) else o for o in flat]


def diagonals(observables, n: int, readout: dict | None = None) -> np.ndarray:
    """Diagonals [n_obs, 2^n] of I/Z observables (:func:`qa3c_qiskit.circuit.observable_diagonals`,
    readout confusion folded in if given)."""
    return observable_diagonals(as_pauli_ops(observables), n, readout)


def restrict(observables: list[SparsePauliOp], qubits: list[int]) -> list[SparsePauliOp]:
    """I/Z observables on the listed qubits only (qubit ``qubits[j]`` -> ``j``); a Z on any
    other qubit (idle, in |0>) has eigenvalue +1 and is dropped."""
    out = []
    for obs in observables:
        terms = []
        for label, coeff in obs.to_list():
            if set(label) - {"I", "Z"}:
                raise ValueError(f"diagonal (I/Z) observables only, got {label!r}")
            rev = label[::-1]
            terms.append(("".join(rev[q] for q in reversed(qubits)), coeff))
        out.append(SparsePauliOp.from_list(terms))
    return out


def apply_readout(probs: np.ndarray, n: int, readout: dict[int, np.ndarray]) -> np.ndarray:
    """Per-qubit readout confusion matrices ``M[true, measured]`` applied to outcome
    distributions [S, 2^n] (``p'[m] = sum_t p[t] M[t, m]``)."""
    if not readout:
        return probs
    t = probs.reshape((probs.shape[0],) + (2,) * n)
    for q, m in readout.items():
        axis = n - q  # outcome bit q is axis n - q (axis 0 is the row index)
        t = np.moveaxis(np.tensordot(t, np.asarray(m), axes=([axis], [0])), -1, axis)
    return t.reshape(probs.shape[0], -1)


def broadcast_evs(terms: np.ndarray, pub: EstimatorPub) -> np.ndarray:
    """Per-PUB expectation values from ``terms`` [n_sets, n_obs_flat] (parameter set x flat
    observable), broadcast to the PUB's shape."""
    shape, obs = pub.parameter_values.shape, pub.observables
    bshape = np.broadcast_shapes(shape, obs.shape)
    pidx = np.broadcast_to(np.arange(int(np.prod(shape))).reshape(shape), bshape)
    oidx = np.broadcast_to(np.arange(obs.size).reshape(obs.shape), bshape)
    return terms[pidx, oidx]


def pub_result(evs: np.ndarray, shots: int | None, precision) -> PubResult:
    """A PubResult with shot-noise standard errors (zero when exact)."""
    if shots:
        stds = np.sqrt(np.maximum(0.0, 1.0 - evs**2) / shots)
    else:
        stds = np.zeros_like(evs)
    return PubResult(
        DataBin(evs=evs, stds=stds, shape=evs.shape),
        metadata={"shots": shots or 0, "target_precision": precision},
    )


def shots_for(precision: float | None, default: int | None) -> int | None:
    """The EstimatorV2 convention: ``precision`` -> ``ceil(1 / precision^2)`` shots;
    None -> ``default``; 0 -> exact (None)."""
    if precision is None:
        return default
    if precision == 0:
        return None
    return math.ceil(1.0 / precision**2)


def submit(run: Callable, pubs: Sequence[EstimatorPubLike], precision) -> PrimitiveJob:
    """Coerce ``pubs`` and run ``run(coerced)`` as a (synchronous) primitive job."""
    coerced = [EstimatorPub.coerce(pub, precision) for pub in pubs]
    job = PrimitiveJob(run, coerced)
    job._submit()
    return job


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------
class AerShotEstimator(BaseEstimatorV2):
    """An EstimatorV2 for diagonal observables that really samples ``shots`` measurements on Aer.

    All parameter sets of all PUBs run in one ``AerSimulator.run`` (Aer binds the parameters
    natively). ``<O>`` is the sample mean of the observable's eigenvalue over ``shots`` outcomes,
    so it carries genuine shot noise. Two ways to draw the outcomes:

    * ``"probabilities"`` (default; exact or density-matrix simulators): Aer saves the exact
      outcome distribution of each parameter set, the per-qubit readout confusion matrices
      (``readout``, if any) are applied to it, and the shots are drawn from it with a multinomial
      -- statistically the same as measuring, ~6x faster than Aer's per-shot bitstrings;
    * ``"counts"`` (trajectory simulators, e.g. a noisy device): every qubit is measured and
      ``<O>`` is computed from Aer's counts.

    ``precision`` maps to ``ceil(1 / precision^2)`` shots (the ``EstimatorV2`` convention);
    ``None``/0 uses ``shots``. Shot noise is drawn from a generator seeded once with ``seed``, so
    repeated calls are independent.
    """

    def __init__(
        self,
        simulator,
        shots: int = 1024,
        seed: int | None = None,
        readout: dict[int, np.ndarray] | None = None,
        mode: str = "probabilities",
    ):
        if mode not in ("probabilities", "counts"):
            raise ValueError(f"unknown sampling mode {mode!r}; choose probabilities or counts")
        self.simulator = simulator
        self.shots = shots
        self.readout = readout or {}
        self.mode = mode
        self._rng = np.random.default_rng(seed)
        self._prepared = CircuitCache()

    def run(self, pubs: list[EstimatorPubLike], *, precision: float | None = None):
        return submit(self._run, pubs, precision)

    def _prepare(self, circuit: QuantumCircuit) -> tuple[QuantumCircuit, list[int] | None]:
        def build():
            prepared = circuit.copy()
            if self.mode == "probabilities":
                prepared.save_probabilities(label="probs")
                return prepared, None
            # measure only the qubits the circuit touches: Aer then drops the idle ones
            # (12 of a 16-qubit device's qubits for the routed VQC)
            active = _active_qubits(circuit)
            prepared.add_register(ClassicalRegister(len(active), "meas"))
            prepared.measure(active, range(len(active)))
            return prepared, active

        return self._prepared.get(circuit, build)

    def _run(self, pubs: list[EstimatorPub]) -> PrimitiveResult:
        shots = {shots_for(p.precision or None, self.shots) for p in pubs}
        if len(shots) != 1:
            raise ValueError(f"all PUBs of one call must have the same precision, got {shots}")
        shots = shots.pop()
        circuits, binds = [], []
        for pub in pubs:
            prepared, _ = self._prepare(pub.circuit)
            arr = pub.parameter_values.as_array(prepared.parameters)
            circuits.append(prepared)
            binds.append({p: arr[..., i].ravel() for i, p in enumerate(prepared.parameters)})
        kw = {"parameter_binds": binds} if any(binds) else {}
        run_shots = shots if self.mode == "counts" else 1
        result = self.simulator.run(
            circuits, shots=run_shots, seed_simulator=int(self._rng.integers(2**31)), **kw
        ).result()
        out, k = [], 0
        for pub in pubs:
            size = int(np.prod(pub.parameter_values.shape))
            observables = as_pauli_ops(pub.observables)
            if self.mode == "counts":
                active = self._prepare(pub.circuit)[1]
                diags = diagonals(restrict(observables, active), len(active))  # [O, 2^active]
                freq = np.zeros((size, diags.shape[1]))
                for i in range(size):
                    counts = result.data(k + i)["counts"]
                    keys = np.fromiter((int(h, 16) for h in counts), np.int64, len(counts))
                    np.add.at(freq[i], keys, np.fromiter(counts.values(), float, len(counts)))
                freq /= shots
            else:
                probs = np.stack([result.data(k + i)["probs"] for i in range(size)])
                n = pub.circuit.num_qubits
                probs = apply_readout(np.clip(probs, 0.0, None), n, self.readout)
                probs = probs / probs.sum(axis=1, keepdims=True)
                freq = self._rng.multinomial(shots, probs) / shots  # [size, 2^n] sampled
                diags = diagonals(observables, n)
            k += size
            evs = broadcast_evs(freq @ diags.T, pub)
            out.append(pub_result(evs, shots, 1 / math.sqrt(shots)))
        return PrimitiveResult(out, metadata={"version": 2})


def _active_qubits(circuit: QuantumCircuit) -> list[int]:
    """Indices of the qubits some non-barrier instruction acts on."""
    used = set()
    for inst in circuit.data:
        if inst.operation.name not in ("barrier", "delay"):
            used.update(circuit.find_bit(q).index for q in inst.qubits)
    return sorted(used)


class CountingEstimator(BaseEstimatorV2):
    """Wraps an EstimatorV2 and counts ``calls``, ``pubs`` and ``circuits`` (parameter sets run).

    Build it with :func:`counting`, which also counts a :class:`ShiftValuesEstimator`'s fast
    parameter-shift path.
    """

    def __init__(self, inner: BaseEstimatorV2):
        self.inner = inner
        self.calls = 0
        self.pubs = 0
        self.circuits = 0

    def run(self, pubs, *, precision=None):
        pubs = list(pubs)
        self.calls += 1
        self.pubs += len(pubs)
        for pub in pubs:
            self.circuits += int(EstimatorPub.coerce(pub).parameter_values.size or 1)
        return self.inner.run(pubs, precision=precision)

    def reset(self) -> None:
        self.calls = self.pubs = self.circuits = 0


class CountingShiftEstimator(CountingEstimator):
    """A :class:`CountingEstimator` around a :class:`ShiftValuesEstimator`: a ``shift_values``
    call counts as one call of one PUB with ``n_grad * (1 + 2G) + (N - n_grad)`` circuits (as
    if they had run; ``n_grad`` = N unless given)."""

    def shift_values(self, circuit, params, observables, theta, precision=None, n_grad=None):
        n = int(np.shape(theta)[0])
        n_grad = n if n_grad is None else int(n_grad)
        self.calls += 1
        self.pubs += 1
        self.circuits += n_grad * (1 + 2 * len(params)) + (n - n_grad)
        return self.inner.shift_values(circuit, params, observables, theta, precision, n_grad)


def counting(inner: BaseEstimatorV2) -> CountingEstimator:
    """``inner`` wrapped in the counting estimator that matches its capabilities."""
    if isinstance(inner, ShiftValuesEstimator):
        return CountingShiftEstimator(inner)
    return CountingEstimator(inner)
