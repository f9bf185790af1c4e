"""Gate-level parameter-shift gradients and the batched ``EstimatorQNN``.

Every backend other than ``statevector`` runs the circuit through qiskit-machine-learning:
an :class:`~qiskit_machine_learning.neural_networks.EstimatorQNN` (observables ``Z_i``,
``input_gradients=True``) wrapped in a :class:`~qiskit_machine_learning.connectors.TorchConnector`
(:class:`~qa3c_qiskit.backends.layers.QiskitLayer`). What this module adds is the *round-trip
discipline* (one primitive call per action, at most one per network per update):

* :class:`BatchedParamShiftGradient`, passed as ``EstimatorQNN(gradient=...)``: the
  parameter-shift rule at gate level. Each parameterized rotation gate gets its own angle
  ``theta_k`` (an expression of the circuit parameters, e.g. ``arctan(x_i^2)``); all samples,
  all ``1 + 2 G`` shifted angle sets and all observables go into **one PUB** (parameter-value and
  observable broadcasting) of **one primitive call**; the chain rule ``d theta_k / d p_j`` is
  applied classically. qiskit-machine-learning's default gradient instead builds one circuit per
  shifted expression and sends ~10^4 PUBs per update. An estimator implementing
  :class:`~qa3c_qiskit.backends.estimators.ShiftValuesEstimator` computes the shifted values
  itself (the density-matrix engine: two sweeps instead of ``1 + 2G`` circuits).
* :class:`BatchedEstimatorQNN`: the forward pass sends one PUB (observables broadcast against the
  samples); when autograd will need the gradient (training), the forward pass evaluates values
  *and* gradient in that single call and the backward pass reuses it (no second call).
* :class:`PerSampleQNNFunction`: the same QNN with one weight vector per sample (many
  actor-learners in one call), per-sample weight gradients (never summed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sympy
import torch
from qiskit.circuit import Parameter, ParameterExpression, QuantumCircuit
from qiskit.primitives import BaseEstimatorV2
from qiskit.primitives.containers.observables_array import ObservablesArray
from qiskit.providers import Options
from qiskit_machine_learning.connectors import TorchConnector
from qiskit_machine_learning.gradients import BaseEstimatorGradient, EstimatorGradientResult
from qiskit_machine_learning.neural_networks import EstimatorQNN
from torch import nn

from .estimators import CircuitCache, CountingEstimator, ShiftValuesEstimator, counting

if TYPE_CHECKING:
    from .execution import Execution

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
        self._plans = CircuitCache()

    def plan(self, circuit: QuantumCircuit) -> GateShiftPlan:
        return self._plans.get(circuit, lambda: GateShiftPlan(circuit))

    def evaluate(
        self, circuit: QuantumCircuit, observables, values: np.ndarray, n_grad: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(values [n_obs, N], gradients [n_obs, n_grad, P]) at parameter values [N, P]; one
        call. Only the first ``n_grad`` rows (None: all N) are differentiated; the others are
        forward-only (one circuit each instead of ``1 + 2G``)."""
        plan = self.plan(circuit)
        values = np.asarray(values, dtype=float).reshape(-1, len(plan.params))
        n_grad = values.shape[0] if n_grad is None else int(n_grad)
        g = plan.num_gates
        theta = plan.angles(values)  # [N, G]
        if isinstance(self._estimator, ShiftValuesEstimator):
            # the estimator computes the same [n_obs, N, 1 + 2G] values without running each
            # shifted circuit (the density-matrix engine: forward + backward sweep)
            evs = self._estimator.shift_values(
                plan.gate_circuit, plan.thetas, observables, theta, self.precision, n_grad
            )
            value, evs = evs[..., 0], evs[:, :n_grad]
        else:
            th = theta[:n_grad, None, :]
            shift = 0.5 * np.pi * np.eye(g)
            sets = np.concatenate([th, th + shift, th - shift], axis=1)  # [n_grad, 1 + 2G, G]
            evs, rest = self._run_angle_sets(plan, observables, sets, theta[n_grad:])
            value = np.concatenate([evs[..., 0], rest], axis=1)
        dtheta = 0.5 * (evs[..., 1 : 1 + g] - evs[..., 1 + g :])  # [n_obs, n_grad, G]
        return value, self._chain_rule(plan, dtheta, values[:n_grad])

    def _run_angle_sets(
        self, plan: GateShiftPlan, observables, sets: np.ndarray, plain: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(<O> [n_obs, n, S] at gate-angle sets [n, S, G], <O> [n_obs, m] at the forward-only
        angles ``plain`` [m, G]) of ``plan.gate_circuit``: one primitive call, one PUB of
        ``n * S + m`` circuits (flat parameter sets, observables broadcast)."""
        n, s, g = sets.shape
        plain = np.empty((0, g)) if plain is None else plain
        flat = np.concatenate([sets.reshape(n * s, g), plain])
        obs = ObservablesArray(list(observables)).reshape(-1, 1)
        job = self._estimator.run(
            [(plan.gate_circuit, obs, flat[:, plan.column_order])], precision=self.precision
        )
        evs = np.asarray(job.result()[0].data.evs)  # [n_obs, n * S + m]
        return evs[:, : n * s].reshape(-1, n, s), evs[:, n * s :]

    @staticmethod
    def _chain_rule(plan: GateShiftPlan, dtheta: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Gate-angle gradients [n_obs, N, G] -> circuit-parameter (inputs, then weights)
        gradients [n_obs, N, P]: ``sum_k d<O>/d theta_k * d theta_k / d p_j`` (the encoding
        angles ``arctan(x)``, ``arctan(x^2)`` are gate angles like the weights)."""
        return np.einsum("onk,nkp->onp", dtheta, plan.jacobian(values))

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


class SPSAGradient(BatchedParamShiftGradient):
    """Simultaneous-perturbation (SPSA) gradients: 3 circuits per sample instead of ``1 + 2G``.

    Per sample (row of parameter values) and call, one Rademacher direction ``Delta`` in
    ``{-1, +1}^G`` over all ``G`` gate angles is drawn; the PUB holds, per sample, the circuit at
    ``theta`` (the value the forward pass returns), at ``theta + c Delta`` and at
    ``theta - c Delta``. The gate-angle gradient estimate of every observable is

        g_k = (f(theta + c Delta) - f(theta - c Delta)) / (2 c) * Delta_k

    (``1 / Delta_k = Delta_k`` for +-1 entries), mapped to input and weight gradients by the
    same chain rule as the parameter shift (:meth:`BatchedParamShiftGradient._chain_rule`), so
    the per-sample contraction with the upstream gradient is unchanged. ``E[g] = grad f + O(c^2)``
    (the bias is ``(c^2 / 6)`` times the third derivative along ``Delta``); its variance per angle
    is ``~|grad f|^2`` from the random direction plus ``~sigma^2 / (2 c^2)`` from shot noise
    (``sigma`` the standard error of one value). Draws come from ``np.random.default_rng(seed)``,
    a fresh ``Delta`` per sample and call. All samples and all 3 angle sets are one PUB of one
    call, on any estimator (also the density-matrix engine, whose fast parameter-shift path is
    not needed here).
    """

    def __init__(
        self,
        estimator: BaseEstimatorV2,
        precision: float = 0.0,
        perturbation: float = 0.1,
        seed=None,
    ):
        super().__init__(estimator, precision)
        if not perturbation > 0:
            raise ValueError(f"SPSA perturbation must be > 0, got {perturbation!r}")
        self.perturbation = float(perturbation)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def evaluate(
        self, circuit: QuantumCircuit, observables, values: np.ndarray, n_grad: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(values [n_obs, N], SPSA gradient estimates [n_obs, n_grad, P]) at parameter values
        [N, P]; one call of one PUB with ``3 n_grad + (N - n_grad)`` circuits (rows from
        ``n_grad`` on are forward-only; None: all rows differentiated)."""
        plan = self.plan(circuit)
        values = np.asarray(values, dtype=float).reshape(-1, len(plan.params))
        n_grad = values.shape[0] if n_grad is None else int(n_grad)
        theta = plan.angles(values)  # [N, G]
        th = theta[:n_grad]
        delta = 2.0 * self._rng.integers(0, 2, size=th.shape) - 1.0  # Rademacher +-1
        c = self.perturbation
        sets = np.stack([th, th + c * delta, th - c * delta], axis=1)  # [n_grad, 3, G]
        evs, rest = self._run_angle_sets(plan, observables, sets, theta[n_grad:])
        dtheta = ((evs[..., 1] - evs[..., 2]) / (2.0 * c))[..., None] * delta  # [n_obs, n, G]
        value = np.concatenate([evs[..., 0], rest], axis=1)
        return value, self._chain_rule(plan, dtheta, values[:n_grad])


def circuits_per_sample(gradient: str, num_gates: int) -> int:
    """Circuits one sample with a gradient costs: ``1 + 2G`` (parameter shift) or 3 (SPSA:
    the value and the two perturbed angle sets); a forward-only sample costs 1."""
    return 3 if gradient == "spsa" else 1 + 2 * num_gates


class BatchedEstimatorQNN(EstimatorQNN):
    """EstimatorQNN whose forward pass is one PUB and, in training, also yields the gradient.

    Set ``fuse = True`` before a forward pass whose backward pass will follow (the torch layer
    does this when autograd is recording): that pass runs :meth:`BatchedParamShiftGradient.evaluate`
    (values and gradients, one call) and the backward pass of the same inputs uses the cached
    gradients instead of calling the primitive again.
    """

    def __init__(self, *, gradient: BatchedParamShiftGradient, precision: float, **kw):
        # any BatchedParamShiftGradient: also SPSAGradient (same evaluate contract)
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

    def values_and_gradients(
        self, values: np.ndarray, n_grad: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(<O> [N, n_obs], d<O>/d(inputs, weights) [n_grad, n_obs, n_in + n_w]) at values
        [N, n_in + n_w], gradients per row (never summed) of the first ``n_grad`` rows (None:
        all; the others are forward-only): one primitive call, one PUB."""
        values = np.asarray(values, dtype=float).reshape(-1, self._circuit.num_parameters)
        evs, grads = self.gradient.evaluate(self._circuit, self._observables, values, n_grad)
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
    it, the forward pass is one call of B parameter sets. ``n_grad`` (None: B): only the first
    ``n_grad`` rows are differentiated, in the same call; the other rows are forward-only and
    get zero gradients (:meth:`QiskitLayer.functional` detaches their outputs).
    """

    @staticmethod
    def forward(ctx, x, w, qnn: BatchedEstimatorQNN, need_grad: bool, n_grad: int | None = None):
        values = np.concatenate(
            [x.detach().to(torch.float64).numpy(), w.detach().to(torch.float64).numpy()], axis=1
        )
        ctx.n_in, ctx.dtypes = x.shape[1], (x.dtype, w.dtype)
        if not need_grad:
            ctx.grads = None
            return torch.from_numpy(qnn.values(values)).to(x.dtype)
        evs, grads = qnn.values_and_gradients(values, n_grad)
        ctx.grads = torch.from_numpy(grads)  # [n_grad, n_obs, n_in + n_w]
        return torch.from_numpy(evs).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("per-sample QNN: forward ran without gradients (no_grad)")
        k = ctx.grads.shape[0]
        full = torch.zeros((grad_out.shape[0], ctx.grads.shape[-1]), dtype=torch.float64)
        full[:k] = torch.einsum("bo,bop->bp", grad_out[:k].to(torch.float64), ctx.grads)
        gx = full[:, : ctx.n_in].to(ctx.dtypes[0])
        gw = full[:, ctx.n_in :].to(ctx.dtypes[1])
        return gx, gw, None, None, None


@dataclass
class BuiltQNN:
    """A layer's Qiskit objects (built in the process that runs the layer)."""

    qnn: BatchedEstimatorQNN
    connector: TorchConnector
    execution: Execution | None

    @property
    def counter(self) -> CountingEstimator:
        return self.qnn.estimator


def build_qnn(vqc, execution: Execution, weight: nn.Parameter | None = None) -> BuiltQNN:
    """``TorchConnector(BatchedEstimatorQNN)`` for ``vqc`` on ``execution``."""
    estimator = counting(execution.estimator)
    opts = execution.gradient
    if opts.get("gradient", "param_shift") == "spsa":
        gradient = SPSAGradient(
            estimator,
            precision=execution.precision,
            perturbation=opts["spsa_perturbation"],
            seed=opts.get("spsa_seed"),
        )
    else:
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
    return BuiltQNN(qnn, connector, execution)
