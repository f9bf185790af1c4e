"""The VQC as ``TorchConnector(EstimatorQNN)`` with batched primitive calls.

Every backend other than ``statevector`` runs the circuit through qiskit-machine-learning:
an :class:`~qiskit_machine_learning.neural_networks.EstimatorQNN` (observables ``Z_i``,
``input_gradients=True``) wrapped in a :class:`~qiskit_machine_learning.connectors.TorchConnector`.
What this module adds is the *round-trip discipline* (one primitive call per action, at most one
per network per update):

* :class:`BatchedParamShiftGradient`, passed as ``EstimatorQNN(gradient=...)``: the
  parameter-shift rule at gate level. Each parameterized rotation gate gets its own angle
  ``theta_k`` (an expression of the circuit parameters, e.g. ``arctan(x_i^2)``); all samples,
  all ``1 + 2 G`` shifted angle sets and all observables go into **one PUB** (parameter-value and
  observable broadcasting) of **one primitive call**; the chain rule ``d theta_k / d p_j`` is
  applied classically. qiskit-machine-learning's default gradient instead builds one circuit per
  shifted expression and sends ~10^4 PUBs per update.
* :class:`BatchedEstimatorQNN`: the forward pass sends one PUB (observables broadcast against the
  samples); when autograd will need the gradient (training), the forward pass evaluates values
  *and* gradient in that single call and the backward pass reuses it (no second call).
* :class:`AerShotEstimator`: an ``EstimatorV2`` that really samples shots on an
  :class:`~qiskit_aer.AerSimulator` (Aer's own ``EstimatorV2`` with ``precision > 0`` computes the
  exact value and adds Gaussian noise instead).
* :class:`CountingEstimator`: wraps any ``EstimatorV2`` and counts calls, PUBs and circuit
  executions (tests and benchmarks).
* :class:`QiskitLayer`: the torch module. It holds the VQC weights as an ordinary parameter and
  builds its Qiskit objects lazily on the first forward pass, i.e. inside the worker process that
  uses it; nothing Qiskit is pickled or crosses a process boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
from qiskit.circuit import ClassicalRegister, Parameter, ParameterExpression, QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, PrimitiveJob, PrimitiveResult
from qiskit.primitives.containers import DataBin, EstimatorPubLike, PubResult
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.observables_array import ObservablesArray
from qiskit.providers import Options
from qiskit_machine_learning.connectors import TorchConnector
from qiskit_machine_learning.gradients import BaseEstimatorGradient, EstimatorGradientResult
from qiskit_machine_learning.neural_networks import EstimatorQNN
from torch import nn

from .backends import init_vqc_weights
from .circuit import build_vqc

# Gates exp(-i theta/2 P) (P a Pauli string, eigenvalues +-1): d<O>/dtheta = (f(+pi/2) - f(-pi/2))/2.
# ``p``/``u1`` equal ``rz`` up to a global phase, which expectation values do not see.
SHIFTABLE_GATES = {"rx", "ry", "rz", "p", "u1", "rxx", "ryy", "rzz", "rzx"}


# --------------------------------------------------------------------------------------------
# Gate-level parameter shift
# --------------------------------------------------------------------------------------------
class GateShiftPlan:
    """``circuit`` rewritten with one free angle per parameterized gate, plus the chain rule.

    ``gate_circuit`` has parameters ``theta[0..G)``; ``angles(values[N, P]) -> [N, G]`` gives the
    angles for circuit-parameter values (ordered as ``circuit.parameters``);
    ``jacobian(values) -> [N, G, P]`` gives ``d theta_k / d p_j``.
    """

    def __init__(self, circuit: QuantumCircuit):
        self.params = list(circuit.parameters)
        index = {p: j for j, p in enumerate(self.params)}
        gate_circuit = circuit.copy_empty_like()
        gate_circuit.global_phase = 0.0  # a global phase does not change expectation values
        self.thetas: list[Parameter] = []
        self._angle_fns: list[tuple[list[int], Callable]] = []
        self._jac_fns: list[list[tuple[int, Callable]]] = []
        for inst in circuit.data:
            op = inst.operation
            exprs = [p for p in op.params if isinstance(p, ParameterExpression)]
            if not exprs:
                gate_circuit.append(inst)
                continue
            if op.name not in SHIFTABLE_GATES or len(op.params) != 1:
                raise ValueError(
                    f"gate {op.name!r} has parameters but no two-term shift rule; use one of "
                    f"{', '.join(sorted(SHIFTABLE_GATES))} (e.g. RZ RY RZ instead of U)"
                )
            expr = op.params[0]
            theta = Parameter(f"_theta{len(self.thetas)}")
            self.thetas.append(theta)
            new_op = op.copy()
            new_op.params = [theta]
            gate_circuit.append(new_op, inst.qubits, inst.clbits)
            self._add_expression(expr, index)
        self.gate_circuit = gate_circuit
        # theta_i sort as strings: remember the column order the primitives will use
        order = {t: k for k, t in enumerate(self.thetas)}
        self.column_order = [order[t] for t in gate_circuit.parameters]

    def _add_expression(self, expr: ParameterExpression, index: dict) -> None:
        used = sorted(expr.parameters, key=lambda p: index[p])
        cols = [index[p] for p in used]
        if isinstance(expr, Parameter):
            self._angle_fns.append((cols, None))
            self._jac_fns.append([(cols[0], None)])
            return
        syms = [sympy.Symbol(p.name) for p in used]
        sexpr = expr.sympify()
        self._angle_fns.append((cols, sympy.lambdify(syms, sexpr, "numpy")))
        self._jac_fns.append(
            [(c, sympy.lambdify(syms, sympy.diff(sexpr, s), "numpy")) for c, s in zip(cols, syms)]
        )

    @property
    def num_gates(self) -> int:
        return len(self.thetas)

    def angles(self, values: np.ndarray) -> np.ndarray:
        """Gate angles [N, G] for circuit-parameter values [N, P]."""
        out = np.empty((values.shape[0], self.num_gates))
        for k, (cols, fn) in enumerate(self._angle_fns):
            args = [values[:, c] for c in cols]
            out[:, k] = args[0] if fn is None else np.broadcast_to(fn(*args), out[:, k].shape)
        return out

    def jacobian(self, values: np.ndarray) -> np.ndarray:
        """d theta_k / d p_j, [N, G, P]."""
        jac = np.zeros((values.shape[0], self.num_gates, len(self.params)))
        for k, ((cols, _), derivs) in enumerate(zip(self._angle_fns, self._jac_fns)):
            args = [values[:, c] for c in cols]
            for c, fn in derivs:
                jac[:, k, c] += 1.0 if fn is None else fn(*args)
        return jac


class BatchedParamShiftGradient(BaseEstimatorGradient):
    """Parameter-shift gradients of ``<O>`` with one primitive call and one PUB per circuit.

    ``evaluate(circuit, observables, values)`` returns the values and the gradients of all
    observables at all parameter sets from a single call; ``run`` (the qiskit-machine-learning
    gradient API) groups its inputs by circuit and uses the same path.
    """

    def __init__(self, estimator: BaseEstimatorV2, precision: float = 0.0):
        super().__init__(estimator)
        self.precision = precision
        self._plans: dict[int, tuple[QuantumCircuit, GateShiftPlan]] = {}

    def plan(self, circuit: QuantumCircuit) -> GateShiftPlan:
        hit = self._plans.get(id(circuit))
        if hit is None or hit[0] is not circuit:
            hit = (circuit, GateShiftPlan(circuit))
            self._plans[id(circuit)] = hit
        return hit[1]

    def evaluate(
        self, circuit: QuantumCircuit, observables, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(values [n_obs, N], gradients [n_obs, N, P]) at parameter values [N, P]; one call."""
        plan = self.plan(circuit)
        values = np.asarray(values, dtype=float).reshape(-1, len(plan.params))
        g = plan.num_gates
        theta = plan.angles(values)  # [N, G]
        shift = 0.5 * np.pi * np.eye(g)
        sets = np.concatenate(
            [theta[:, None, :], theta[:, None, :] + shift, theta[:, None, :] - shift], axis=1
        )  # [N, 1 + 2G, G]
        shift_values = getattr(self._estimator, "shift_values", None)
        if shift_values is not None:
            # the estimator computes the same [n_obs, N, 1 + 2G] values without running each
            # shifted circuit (qa3c_qiskit.density: forward + backward sweep)
            evs = shift_values(plan.gate_circuit, plan.thetas, observables, theta, self.precision)
        else:
            obs = ObservablesArray(list(observables)).reshape(-1, 1, 1)
            pub = (plan.gate_circuit, obs, sets[..., plan.column_order])
            job = self._estimator.run([pub], precision=self.precision)
            evs = np.asarray(job.result()[0].data.evs)
        dtheta = 0.5 * (evs[..., 1 : 1 + g] - evs[..., 1 + g :])  # [n_obs, N, G]
        grads = np.einsum("onk,nkp->onp", dtheta, plan.jacobian(values))
        return evs[..., 0], grads

    def _run(self, circuits, observables, parameter_values, parameters, **options):
        parameter_values = np.asarray(parameter_values, dtype=float)
        gradients: list = [None] * len(circuits)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(circuits):
            groups.setdefault(id(c), []).append(i)
        for idx in groups.values():
            circuit = circuits[idx[0]]
            rows, row_of = np.unique(parameter_values[idx], axis=0, return_inverse=True)
            obs_list, obs_of = [], []
            for i in idx:
                for j, o in enumerate(obs_list):
                    if o is observables[i] or o == observables[i]:
                        obs_of.append(j)
                        break
                else:
                    obs_of.append(len(obs_list))
                    obs_list.append(observables[i])
            _, grads = self.evaluate(circuit, obs_list, rows)
            cols = [list(circuit.parameters).index(p) for p in parameters[idx[0]]]
            for i, r, o in zip(idx, np.ravel(row_of), obs_of):
                gradients[i] = grads[o, r, cols]
        return EstimatorGradientResult(
            gradients=gradients, metadata=[{}] * len(circuits), options=Options(**options)
        )


class BatchedEstimatorQNN(EstimatorQNN):
    """EstimatorQNN whose forward pass is one PUB and, in training, also yields the gradient.

    Set ``fuse = True`` before a forward pass whose backward pass will follow (the torch layer
    does this when autograd is recording): that pass runs :meth:`BatchedParamShiftGradient.evaluate`
    (values and gradients, one call) and the backward pass of the same inputs uses the cached
    gradients instead of calling the primitive again.
    """

    def __init__(self, *, gradient: BatchedParamShiftGradient, precision: float, **kw):
        super().__init__(gradient=gradient, default_precision=precision, **kw)
        self.fuse = False
        self._cache: tuple[bytes, np.ndarray] | None = None

    def values(self, values: np.ndarray) -> np.ndarray:
        """<O> [N, n_obs] at circuit-parameter values [N, n_in + n_w] (inputs then weights, any
        weights per row): one primitive call, one PUB."""
        values = np.asarray(values, dtype=float).reshape(-1, self._circuit.num_parameters)
        obs = ObservablesArray(list(self._observables)).reshape(-1, 1)
        job = self.estimator.run([(self._circuit, obs, values)], precision=self._default_precision)
        return np.asarray(job.result()[0].data.evs).reshape(-1, values.shape[0]).T

    def values_and_gradients(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(<O> [N, n_obs], d<O>/d(inputs, weights) [N, n_obs, n_in + n_w]) at values
        [N, n_in + n_w], gradients per row (never summed): one primitive call, one PUB."""
        values = np.asarray(values, dtype=float).reshape(-1, self._circuit.num_parameters)
        evs, grads = self.gradient.evaluate(self._circuit, self._observables, values)
        return evs.T, np.transpose(grads, (1, 0, 2))

    def _forward(self, input_data, weights):
        values, _ = self._preprocess_forward(input_data, weights)
        if self.fuse:
            evs, grads = self.gradient.evaluate(self._circuit, self._observables, values)
            self._cache = (np.ascontiguousarray(values).tobytes(), grads)
            return evs.T
        return self.values(values)

    def _backward(self, input_data, weights):
        values, _ = self._preprocess_forward(input_data, weights)
        key = np.ascontiguousarray(values).tobytes()
        if self._cache is not None and self._cache[0] == key:
            grads = self._cache[1]
        else:
            _, grads = self.gradient.evaluate(self._circuit, self._observables, values)
        grads = np.transpose(grads, (1, 0, 2))  # [N, n_obs, P]
        n_in = self._num_inputs
        input_grad = grads[..., :n_in] if self._input_gradients else None
        return input_grad, grads[..., n_in:]


class PerSampleQNNFunction(torch.autograd.Function):
    """``qnn`` at inputs ``x`` [B, n_in] with per-sample weights ``w`` [B, n_w] -> [B, n_obs].

    With ``need_grad`` the forward pass computes values and parameter-shift gradients of every
    sample in one primitive call (one PUB) and the backward pass only contracts them with the
    incoming gradient: ``x`` and ``w`` get per-sample gradients [B, n_in] and [B, n_w]. Without
    it, the forward pass is one call of B parameter sets.
    """

    @staticmethod
    def forward(ctx, x, w, qnn: BatchedEstimatorQNN, need_grad: bool):
        values = np.concatenate(
            [x.detach().to(torch.float64).numpy(), w.detach().to(torch.float64).numpy()], axis=1
        )
        ctx.n_in, ctx.dtypes = x.shape[1], (x.dtype, w.dtype)
        if not need_grad:
            ctx.grads = None
            return torch.from_numpy(qnn.values(values)).to(x.dtype)
        evs, grads = qnn.values_and_gradients(values)
        ctx.grads = torch.from_numpy(grads)  # [B, n_obs, n_in + n_w]
        return torch.from_numpy(evs).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("per-sample QNN: forward ran without gradients (no_grad)")
        full = torch.einsum("bo,bop->bp", grad_out.to(torch.float64), ctx.grads)
        gx = full[:, : ctx.n_in].to(ctx.dtypes[0])
        gw = full[:, ctx.n_in :].to(ctx.dtypes[1])
        return gx, gw, None, None


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------
class AerShotEstimator(BaseEstimatorV2):
    """An EstimatorV2 for diagonal observables that really samples ``shots`` measurements on Aer.

    All parameter sets of all PUBs run in one ``AerSimulator.run`` (Aer binds the parameters
    natively). ``<O>`` is the sample mean of the observable's eigenvalue over ``shots`` outcomes,
    so it carries genuine shot noise (Aer's own ``EstimatorV2`` with ``precision > 0`` instead
    adds Gaussian noise to the exact value). Two ways to draw the outcomes:

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
        self._prepared: dict[int, tuple[QuantumCircuit, QuantumCircuit]] = {}
        self._active: dict[int, list[int]] = {}

    def run(self, pubs: list[EstimatorPubLike], *, precision: float | None = None):
        coerced = [EstimatorPub.coerce(pub, precision) for pub in pubs]
        job = PrimitiveJob(self._run, coerced)
        job._submit()
        return job

    def _prepare(self, circuit: QuantumCircuit) -> QuantumCircuit:
        hit = self._prepared.get(id(circuit))
        if hit is None or hit[0] is not circuit:
            prepared = circuit.copy()
            if self.mode == "counts":
                # measure only the qubits the circuit touches: Aer then drops the idle ones
                # (12 of a 16-qubit device's qubits for the routed VQC)
                active = _active_qubits(circuit)
                prepared.add_register(ClassicalRegister(len(active), "meas"))
                prepared.measure(active, range(len(active)))
                self._active[id(circuit)] = active
            else:
                prepared.save_probabilities(label="probs")
            hit = (circuit, prepared)
            self._prepared[id(circuit)] = hit
        return hit[1]

    def _shots_of(self, pub: EstimatorPub) -> int:
        if pub.precision is None or pub.precision == 0:
            return self.shots
        return math.ceil(1.0 / pub.precision**2)

    def _run(self, pubs: list[EstimatorPub]) -> PrimitiveResult:
        shots = {self._shots_of(p) for p in pubs}
        if len(shots) != 1:
            raise ValueError(f"all PUBs of one call must have the same precision, got {shots}")
        shots = shots.pop()
        circuits, binds = [], []
        for pub in pubs:
            prepared = self._prepare(pub.circuit)
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
            shape = pub.parameter_values.shape
            size = int(np.prod(shape))
            masks, coeffs = _diagonal_terms(pub.observables)
            if self.mode == "counts":
                masks = _remap_masks(masks, self._active[id(pub.circuit)])
                terms = np.empty((size, len(masks)))
                for i in range(size):
                    counts = result.data(k + i)["counts"]
                    keys = np.fromiter((int(h, 16) for h in counts), np.int64, len(counts))
                    freq = np.fromiter(counts.values(), float, len(counts)) / shots
                    terms[i] = (1.0 - 2.0 * _parity(keys[None, :] & masks[:, None])) @ freq
            else:
                probs = np.stack([result.data(k + i)["probs"] for i in range(size)])
                probs = self._apply_readout(probs, pub.circuit.num_qubits)
                freq = self._rng.multinomial(shots, probs) / shots  # [size, 2^n] sampled
                outcomes = np.arange(probs.shape[1], dtype=np.int64)
                signs = 1.0 - 2.0 * _parity(outcomes[None, :] & masks[:, None])  # [T, 2^n]
                terms = freq @ signs.T
            k += size
            obs = pub.observables
            bshape = np.broadcast_shapes(shape, obs.shape)
            pidx = np.broadcast_to(np.arange(size).reshape(shape), bshape)
            oidx = np.broadcast_to(np.arange(obs.size).reshape(obs.shape), bshape)
            evs = np.einsum("...t,...t->...", terms[pidx], coeffs[oidx])
            stds = np.sqrt(np.maximum(0.0, 1.0 - evs**2) / shots)
            out.append(
                PubResult(
                    DataBin(evs=evs, stds=stds, shape=evs.shape),
                    metadata={"shots": shots, "target_precision": 1 / math.sqrt(shots)},
                )
            )
        return PrimitiveResult(out, metadata={"version": 2})

    def _apply_readout(self, probs: np.ndarray, n: int) -> np.ndarray:
        """Apply per-qubit confusion matrices M[true, measured] to outcome distributions [S, 2^n]."""
        probs = np.clip(probs, 0.0, None)
        if self.readout:
            t = probs.reshape((probs.shape[0],) + (2,) * n)
            for q, m in self.readout.items():
                axis = n - q  # outcome bit q is axis n - q (axis 0 is the sample index)
                t = np.moveaxis(np.tensordot(t, m, axes=([axis], [0])), -1, axis)
            probs = t.reshape(probs.shape[0], -1)
        return probs / probs.sum(axis=1, keepdims=True)


def _diagonal_terms(observables: ObservablesArray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct Z masks of all terms, and per observable the coefficient of each: (masks, [n_obs, T])."""
    flat = observables.ravel()
    labels: dict[str, int] = {}
    rows = []
    for obs in flat:
        row = {}
        for label, coeff in obs.items():
            if set(label) - {"I", "Z"}:
                raise ValueError(f"shot estimator needs diagonal (I/Z) observables, got {label!r}")
            row[labels.setdefault(label, len(labels))] = float(np.real(coeff))
        rows.append(row)
    masks = np.array(
        [sum(1 << q for q, ch in enumerate(reversed(label)) if ch == "Z") for label in labels],
        dtype=np.int64,
    )
    coeffs = np.zeros((len(rows), len(labels)))
    for i, row in enumerate(rows):
        for j, c in row.items():
            coeffs[i, j] = c
    return masks, coeffs


def _active_qubits(circuit: QuantumCircuit) -> list[int]:
    """Indices of the qubits some non-barrier instruction acts on."""
    used = set()
    for inst in circuit.data:
        if inst.operation.name not in ("barrier", "delay"):
            used.update(circuit.find_bit(q).index for q in inst.qubits)
    return sorted(used)


def _remap_masks(masks: np.ndarray, active: list[int]) -> np.ndarray:
    """Qubit bit masks -> measured-clbit masks; Z on an idle qubit (in |0>) contributes +1."""
    out = np.zeros_like(masks)
    for j, q in enumerate(active):
        out |= ((masks >> q) & 1) << j
    return out


def _parity(a: np.ndarray) -> np.ndarray:
    """Parity (0/1) of the number of set bits of each entry."""
    p = np.zeros(a.shape, dtype=np.int64)
    while np.any(a):
        p ^= a & 1
        a = a >> 1
    return p


class CountingEstimator(BaseEstimatorV2):
    """Wraps an EstimatorV2 and counts ``calls``, ``pubs`` and ``circuits`` (parameter sets run)."""

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

    @property
    def shift_values(self):
        """The inner estimator's fast parameter-shift path (counted as one call of
        N * (1 + 2G) circuits), or None if it has none."""
        inner = getattr(self.inner, "shift_values", None)
        if inner is None:
            return None

        def counted(circuit, params, observables, theta, precision=None):
            self.calls += 1
            self.pubs += 1
            self.circuits += int(np.shape(theta)[0]) * (1 + 2 * len(params))
            return inner(circuit, params, observables, theta, precision)

        return counted

    def reset(self) -> None:
        self.calls = self.pubs = self.circuits = 0


# --------------------------------------------------------------------------------------------
# The torch layer
# --------------------------------------------------------------------------------------------
@dataclass
class Execution:
    """What a backend builder returns: how to run the VQC (built inside the worker)."""

    estimator: BaseEstimatorV2
    circuit: QuantumCircuit  # the (possibly transpiled) circuit, parameters = the VQC's
    observables: list  # Z_i, following the transpiled layout
    precision: float  # passed to every estimator call: 0 = exact, 1/sqrt(shots) otherwise
    close: Callable[[], None] = field(default=lambda: None)


@dataclass
class _Built:
    qnn: BatchedEstimatorQNN
    connector: TorchConnector
    execution: Execution


def build_qnn(vqc, execution: Execution, weight: nn.Parameter | None = None) -> _Built:
    """``TorchConnector(BatchedEstimatorQNN)`` for ``vqc`` on ``execution``."""
    estimator = CountingEstimator(execution.estimator)
    gradient = BatchedParamShiftGradient(estimator, precision=execution.precision)
    qnn = BatchedEstimatorQNN(
        circuit=execution.circuit,
        estimator=estimator,
        observables=execution.observables,
        input_params=list(vqc.inputs),
        weight_params=list(vqc.weights),
        gradient=gradient,
        input_gradients=True,
        precision=execution.precision,
    )
    connector = TorchConnector(qnn)
    if weight is not None:
        connector._weights = weight  # share the layer's (flat-buffer) parameter
    return _Built(qnn, connector, execution)


class QiskitLayer(nn.Module):
    """The VQC through ``TorchConnector(EstimatorQNN)``: [B, n_qubits] -> [B, n_qubits] <Z_i>.

    ``make_execution(vqc) -> Execution`` is called on the first forward pass (in the process
    that runs the layer). The state dict holds only ``weight``, as for the statevector layer, so
    a model trained on one backend loads on any other.
    """

    def __init__(
        self,
        make_execution: Callable,
        n_qubits: int = 8,
        n_layers: int = 2,
        entangler: str = "double_ring",
    ):
        super().__init__()
        self._vqc_args = (n_qubits, n_layers, entangler)
        self._make_execution = make_execution
        n_weights = n_layers * n_qubits * 3
        self.weight = nn.Parameter(init_vqc_weights(n_weights))
        self.weight.is_quantum = True
        self._built: _Built | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_built"] = None  # Qiskit objects never leave their process
        return state

    @property
    def built(self) -> _Built:
        if self._built is None:
            vqc = build_vqc(*self._vqc_args)
            self._built = build_qnn(vqc, self._make_execution(vqc), self.weight)
        return self._built

    @property
    def counter(self) -> CountingEstimator:
        """The counting wrapper around this layer's estimator (calls, pubs, circuits)."""
        return self.built.qnn.estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n_qubits] -> [B, n_qubits] with the layer's own ``weight`` (TorchConnector)."""
        built = self.built
        built.qnn.fuse = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        # TorchConnector returns float32; the rest of the model is float64
        return built.connector(x).to(x.dtype)

    def functional(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[B, n_qubits] inputs, per-sample weights ``w`` [B, n_weights] -> [B, n_qubits].

        Differentiable w.r.t. ``x`` and ``w``; ``w``'s gradient is per sample ([B, n_weights]).
        One primitive call (one PUB) for the forward pass, values and gradients together when
        autograd records; the backward pass makes no further call.
        """
        if x.dim() == 1:
            x = x[None]
        if w.dim() == 1:
            w = w.expand(x.shape[0], -1)
        if w.shape != (x.shape[0], self.weight.numel()) or x.shape[1] != self._vqc_args[0]:
            raise ValueError(
                f"expected inputs [B, {self._vqc_args[0]}] and weights [B, {self.weight.numel()}], "
                f"got {tuple(x.shape)} and {tuple(w.shape)}"
            )
        need_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
        return PerSampleQNNFunction.apply(x, w, self.built.qnn, need_grad)

    def close(self) -> None:
        """Release the backend (closes an IBM Runtime session); safe to call twice."""
        if self._built is not None:
            built, self._built = self._built, None
            built.execution.close()
