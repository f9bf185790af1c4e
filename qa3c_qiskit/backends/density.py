"""Noisy density-matrix estimator (profile kind ``torch_density``, e.g. ``density_noisy``): exact mixed-state expectation values with
parameter-shift gradients from one forward and one backward sweep.

The circuit is the VQC transpiled to the device's basis (``rz``, ``sx``, ``x``, ``cx``) on the
logical qubits; every ``sx``/``x``/``cx`` is followed by the device's calibrated error for that
gate and qubit(s) (:func:`qa3c_qiskit.backends.noise.logical_gate_errors`: depolarizing + thermal
relaxation, as Aer's ``basic_device_gate_errors`` builds them), folded with the gate into one
superoperator; ``rz`` is virtual on IBM devices (no error). Readout errors (per-qubit confusion
matrices) are applied to the outcome distribution. Consecutive fixed one-qubit gates on a qubit
are fused into one superoperator. The density matrix is a torch tensor of 4-entry blocks, one per
qubit (its row and column bit), so a one-qubit superoperator is a single in-place matmul.

Why not Aer: an 8-qubit noisy density matrix costs ~0.1 s per circuit in Aer here, and a
parameter-shift update needs ``11 x (1 + 2G)`` = 1,419 circuits. The shifted circuits differ
from the unshifted one in a single ``rz``, so in the Heisenberg picture

    f(theta_k +- pi/2) = Tr[ O_k  R_k(+-pi/2)(rho_k) ],

with ``rho_k`` the state right after gate ``k`` (forward sweep) and ``O_k`` the observable
propagated back through the rest of the noisy circuit (backward sweep with the adjoint
channels, all observables at once). This gives *exactly* the values the 1 + 2G shifted
circuits would give, from 2 sweeps instead of 1 + 2G simulations.

Shots: the unshifted values of a forward call sample ``shots`` outcomes from the exact noisy
outcome distribution (readout confusion applied), as :class:`~qa3c_qiskit.backends.estimators.AerShotEstimator`
does. The shifted values sample each observable ``Z_i`` from its exact +-1 distribution
(binomial), so each estimate has exactly the statistics of ``shots`` measurements; what is not
reproduced is the correlation between the estimates of different ``Z_i`` of one shifted circuit
(they are drawn independently), which the gradient's mean does not depend on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.primitives import BaseEstimatorV2, PrimitiveResult
from qiskit.primitives.containers import EstimatorPubLike
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.quantum_info import Kraus, Operator

from .estimators import (
    CircuitCache,
    apply_readout,
    broadcast_evs,
    diagonals,
    pub_result,
    shots_for,
    submit,
)
from .gradient import GateShiftPlan


class _Compiled:
    """A circuit as a list of ops: ("S", axes_qubits, superop tensor) or ("rz", qubit, column)."""

    def __init__(self, circuit: QuantumCircuit, params: list[Parameter], errors: dict):
        self.n = circuit.num_qubits
        column = {p: j for j, p in enumerate(params)}
        self.ops: list[tuple] = []
        self.param_ops: list[int] = []  # op index of the k-th parameter column's gate
        k_of_col = {}
        # consecutive fixed one-qubit gates (with their errors) on a qubit are fused into one
        # superoperator, flushed when a parameterized or multi-qubit gate touches the qubit
        pending: dict[int, np.ndarray] = {}

        def flush(qs):
            for q in qs:
                if q in pending:
                    self.ops.append(("S", (q,), torch.from_numpy(pending.pop(q))))

        for inst in circuit.data:
            op = inst.operation
            if op.name in ("barrier", "delay"):
                continue
            qubits = tuple(circuit.find_bit(q).index for q in inst.qubits)
            flush_now = op.is_parameterized() or len(qubits) > 1
            if flush_now:
                flush(qubits)
            if op.is_parameterized():
                p = op.params[0]
                if op.name != "rz" or not isinstance(p, Parameter) or p not in column:
                    raise ValueError(f"density engine: unsupported parameterized gate {op.name!r}")
                if (op.name, qubits) in errors:
                    raise ValueError("density engine: rz is expected to be error-free (virtual)")
                k_of_col[column[p]] = len(self.ops)
                self.ops.append(("rz", qubits[0], column[p]))
                continue
            u = Operator(op).data
            err = errors.get((op.name, qubits))
            kraus = [u] if err is None else [k @ u for k in Kraus(err.to_quantumchannel()).data]
            sup = _superop(kraus, len(qubits))
            if len(qubits) == 1:
                q = qubits[0]
                pending[q] = sup if q not in pending else sup @ pending[q]
            else:
                self.ops.append(("S", qubits, torch.from_numpy(sup)))
        flush(sorted(pending))
        if sorted(k_of_col) != list(range(len(params))):
            raise ValueError("density engine: every parameter must drive exactly one rz gate")
        self.param_ops = [k_of_col[j] for j in range(len(params))]


def _superop(kraus: list[np.ndarray], k: int) -> np.ndarray:
    """S[(a, b), (c, d)] = sum_K K[a, c] conj(K[b, d]) as a [4^k, 4^k] matrix: out index
    (rows, cols), in index (rows, cols); each bit group big-endian in the op's qubits."""
    s = sum(np.einsum("ac,bd->abcd", m, m.conj()) for m in kraus)
    return np.ascontiguousarray(s.reshape(4**k, 4**k))


class NoisyDensityEstimator(BaseEstimatorV2):
    """EstimatorV2 (diagonal observables) on the in-package noisy density-matrix simulator.

    ``errors`` = {(gate name, qubits): QuantumError}; ``readout`` = {qubit: M[true, measured]};
    ``shots=None`` gives exact values. ``run`` accepts any circuit whose parameterized gates are
    ``rz`` of one parameter expression each (the VQC transpiled to an IBM basis);
    :meth:`shift_values` is the fast parameter-shift path (the
    :class:`~qa3c_qiskit.backends.estimators.ShiftValuesEstimator` protocol) used by
    :class:`~qa3c_qiskit.backends.gradient.BatchedParamShiftGradient`.
    """

    def __init__(
        self,
        errors: dict,
        readout: dict | None = None,
        shots: int | None = 1024,
        seed: int | None = None,
        chunk: int = 2,
        dtype=torch.complex128,
        run_dtype=None,
    ):
        self.errors = errors
        self.dtype = dtype  # shift_values (gradients)
        # run (forward values, e.g. actions); complex64 halves its time, its ~1e-7 error is
        # far below shot noise
        self.run_dtype = run_dtype or dtype
        self.readout = readout or {}
        self.shots = shots
        self.chunk = chunk
        self._rng = np.random.default_rng(seed)
        self._compiled = CircuitCache()
        self._plans = CircuitCache()
        self._block_cache: dict = {}

    # ---------------------------------------------------------------- compilation / sweeps
    def _compile(self, circuit: QuantumCircuit, params: list[Parameter], dtype=None) -> _Compiled:
        dtype = dtype or self.dtype

        def build():
            compiled = _Compiled(circuit, params, self.errors)
            compiled.ops = [
                (op[0], op[1], op[2].to(dtype)) if op[0] == "S" else op for op in compiled.ops
            ]
            compiled.dtype = dtype
            return compiled

        return self._compiled.get(circuit, build, (tuple(params), dtype))

    # Layout: the state is a tensor [L, 4^n] (L = batch) made of one 4-entry block per qubit,
    # (row bit, column bit), blocks in the order ``qorder`` (first = most significant). A
    # superoperator on qubits whose blocks are adjacent is one matmul in place (no copy); only
    # two-qubit gates on non-adjacent blocks move those blocks last first (one copy).
    @staticmethod
    def _to_canonical(t: torch.Tensor, qorder: list[int]) -> torch.Tensor:
        """[L, 4^n] in ``qorder`` blocks -> [L, 2^n, 2^n] density matrices (little-endian q)."""
        n = len(qorder)
        pos = {q: i for i, q in enumerate(qorder)}
        v = t.reshape((t.shape[0],) + (2,) * (2 * n))
        rows = [1 + 2 * pos[q] for q in range(n - 1, -1, -1)]
        cols = [2 + 2 * pos[q] for q in range(n - 1, -1, -1)]
        return v.permute([0] + rows + cols).reshape(t.shape[0], 2**n, 2**n)

    @staticmethod
    def _from_canonical(m: torch.Tensor, qorder: list[int]) -> torch.Tensor:
        """[L, 2^n, 2^n] -> [L, 4^n] in ``qorder`` blocks."""
        n = len(qorder)
        v = m.reshape((m.shape[0],) + (2,) * (2 * n))
        axes = [0]
        for q in qorder:
            axes += [1 + (n - 1 - q), 1 + n + (n - 1 - q)]
        return v.permute(axes).reshape(m.shape[0], -1)

    @staticmethod
    def _move(t: torch.Tensor, qorder: list[int], want: list[int]) -> torch.Tensor:
        if qorder == want:
            return t
        pos = {q: i for i, q in enumerate(qorder)}
        v = t.reshape((t.shape[0],) + (4,) * len(qorder))
        return v.permute([0] + [1 + pos[q] for q in want]).reshape(t.shape[0], -1)

    def _block_superop(self, s: torch.Tensor, qubits: tuple, layout: tuple) -> torch.Tensor:
        """Superop ``s`` (op convention) as a [4^k, 4^k] matrix on the blocks ``layout``."""
        key = (id(s), layout)
        hit = self._block_cache.get(key)
        if hit is None:
            k = len(qubits)
            rev = list(reversed(qubits))  # op convention: rows then cols, big-endian in op
            v = s.reshape((2,) * (4 * k))
            out_axes, in_axes = [], []
            for q in layout:
                i = rev.index(q)
                out_axes += [i, k + i]
                in_axes += [2 * k + i, 3 * k + i]
            hit = v.permute(out_axes + in_axes).reshape(4**k, 4**k).contiguous()
            self._block_cache[key] = (s, hit)
        else:
            hit = hit[1]
        return hit

    def _apply(self, t, qorder, c: _Compiled, op: tuple, theta, adjoint: bool = False):
        """Apply op to state ``t`` ([L, 4^n], blocks ``qorder``): returns (t, qorder)."""
        n = c.n
        if op[0] == "rz":
            _, q, col = op
            ph = _rz_phase(theta[:, col]).to(t.dtype).reshape(-1, 1, 4, 1)  # (row, col) block
            a = qorder.index(q)
            return (t.reshape(t.shape[0], 4**a, 4, -1) * ph).reshape(t.shape[0], -1), qorder
        _, qubits, s = op
        k = len(qubits)
        pos = sorted(qorder.index(q) for q in qubits)
        if pos[-1] - pos[0] != k - 1:  # not adjacent: move the blocks last
            new = [q for q in qorder if q not in qubits] + list(qubits)
            t, qorder = self._move(t, qorder, new), new
            pos = list(range(n - k, n))
        layout = tuple(qorder[pos[0] : pos[0] + k])
        m = self._block_superop(s, qubits, layout)
        if adjoint:  # Ot_prev[in] = sum_out Ot[out] S[out, in]
            m = m.transpose(0, 1)
        a, rest = 4 ** pos[0], 4 ** (n - pos[-1] - 1)
        x = t.reshape(t.shape[0] * a, 4**k, rest)
        y = (x.reshape(-1, 4**k) @ m.transpose(0, 1)) if rest == 1 else torch.matmul(m, x)
        return y.reshape(t.shape[0], -1), qorder

    def _initial(self, b: int, n: int, dtype):
        rho = torch.zeros((b, 4**n), dtype=dtype)
        rho[:, 0] = 1.0
        return rho, list(range(n - 1, -1, -1))

    def _forward(self, c: _Compiled, theta: torch.Tensor, keep: bool = False):
        rho, qorder = self._initial(theta.shape[0], c.n, c.dtype)
        kept = {}
        for i, op in enumerate(c.ops):
            rho, qorder = self._apply(rho, qorder, c, op, theta)
            if keep and op[0] == "rz":
                kept[i] = (rho, qorder)
        return self._to_canonical(rho, qorder), kept

    def _probs(self, rho: torch.Tensor, n: int) -> np.ndarray:
        d = 2**n
        return torch.diagonal(rho.reshape(-1, d, d), dim1=1, dim2=2).real.double().numpy()

    def _observable_diagonals(self, observables, n: int) -> np.ndarray:
        """Each observable's diagonal [n_obs, 2^n], readout folded in (E[measured value])."""
        return diagonals(observables, n, self.readout)

    # ---------------------------------------------------------------- fast parameter shift
    def shift_values(
        self,
        circuit: QuantumCircuit,
        params: list[Parameter],
        observables,
        theta: np.ndarray,
        precision: float | None = None,
        n_grad: int | None = None,
    ) -> np.ndarray:
        """<O> at theta and at every theta +- pi/2 e_k: [n_obs, N, 1 + 2G] (the layout of
        :meth:`BatchedParamShiftGradient.evaluate`'s PUB), from one forward and one backward
        sweep per sample; sampled with the estimator's shots unless ``precision`` is 0.

        Only the first ``n_grad`` rows (default: all) get their shifted values; the others are
        forward-only (one sweep, column 0; their shift columns are 0)."""
        c = self._compile(circuit, list(params))
        n, g = c.n, len(params)
        if self._shots_of(precision) is not None and not all(
            len(o) == 1 and abs(abs(complex(o.coeffs[0])) - 1) < 1e-12 for o in observables
        ):
            raise ValueError("sampled shift values need single Pauli-Z-string observables")
        theta_t = torch.as_tensor(np.asarray(theta, dtype=float).reshape(-1, g))
        n_rows = theta_t.shape[0]
        n_grad = n_rows if n_grad is None else int(n_grad)
        diags = torch.from_numpy(self._observable_diagonals(observables, n))  # [O, 2^n]
        diags = diags.to(self.dtype)
        n_obs, d = diags.shape[0], 2**n
        out = np.zeros((n_obs, n_rows, 1 + 2 * g))
        plus = torch.full((1, 1), math.pi / 2, dtype=torch.float64)
        minus = -plus
        for s0 in range(0, n_grad, self.chunk):
            th = theta_t[s0 : min(s0 + self.chunk, n_grad)]
            b = th.shape[0]
            rho, kept = self._forward(c, th, keep=True)
            probs = self._probs(rho, n)  # [b, 2^n]
            out[:, s0 : s0 + b, 0] = diags.real.numpy() @ probs.T
            # backward: O (transposed; diagonal here) per sample and observable, [b*O, 4^n]
            ot = torch.zeros((b * n_obs, d, d), dtype=self.dtype)
            ot.diagonal(dim1=1, dim2=2).copy_(diags.repeat(b, 1))
            qorder = list(range(n - 1, -1, -1))
            ot = self._from_canonical(ot, qorder)
            th_rep = th.repeat_interleave(n_obs, dim=0)
            col_of_op = {op_i: j for j, op_i in enumerate(c.param_ops)}
            for i in range(len(c.ops) - 1, -1, -1):
                op = c.ops[i]
                if i in col_of_op:
                    j = col_of_op[i]
                    rho_k, rho_order = kept.pop(i)  # state right after gate i
                    rho_k = self._move(rho_k, rho_order, qorder)
                    o = ot.reshape(b, n_obs, -1)
                    for first, ph in ((1, plus), (1 + g, minus)):
                        shifted, _ = self._apply(rho_k, qorder, c, ("rz", op[1], 0), ph)
                        val = torch.einsum("bok,bk->ob", o, shifted).real
                        out[:, s0 : s0 + b, first + j] = val.numpy()
                ot, qorder = self._apply(ot, qorder, c, op, th_rep, adjoint=True)
        for s0 in range(n_grad, n_rows, self.chunk):  # forward-only rows
            th = theta_t[s0 : s0 + self.chunk]
            probs = self._probs(self._forward(c, th)[0], n)
            out[:, s0 : s0 + th.shape[0], 0] = diags.real.numpy() @ probs.T
        if n_grad == n_rows:
            return self._sample_marginals(out, precision)
        out[:, :n_grad] = self._sample_marginals(out[:, :n_grad], precision)
        out[:, n_grad:, :1] = self._sample_marginals(out[:, n_grad:, :1], precision)
        return out

    def _shots_of(self, precision: float | None) -> int | None:
        return shots_for(precision, self.shots)

    def _sample_marginals(self, exact: np.ndarray, precision) -> np.ndarray:
        """``shots`` +-1 outcomes per value (binomial); valid for single Z strings, where the
        value is E[outcome] in [-1, 1]."""
        shots = self._shots_of(precision)
        if shots is None:
            return exact
        p = np.clip((1.0 + exact) / 2.0, 0.0, 1.0)
        return 2.0 * self._rng.binomial(shots, p) / shots - 1.0

    # ---------------------------------------------------------------- EstimatorV2
    def run(self, pubs: list[EstimatorPubLike], *, precision: float | None = None):
        return submit(self._run, pubs, precision)

    def _plan(self, circuit: QuantumCircuit) -> GateShiftPlan:
        return self._plans.get(circuit, lambda: GateShiftPlan(circuit))

    def _run(self, pubs: list[EstimatorPub]) -> PrimitiveResult:
        out = []
        for pub in pubs:
            plan = self._plan(pub.circuit)
            c = self._compile(plan.gate_circuit, plan.thetas, self.run_dtype)
            values = pub.parameter_values.as_array(plan.params).reshape(-1, len(plan.params))
            theta = torch.as_tensor(plan.angles(values))
            probs = np.concatenate(
                [
                    self._probs(self._forward(c, theta[i : i + self.chunk])[0], c.n)
                    for i in range(0, theta.shape[0], self.chunk)
                ]
            )
            shots = self._shots_of(pub.precision)
            probs = apply_readout(np.clip(probs, 0.0, None), c.n, self.readout)
            if shots is not None:
                probs = self._rng.multinomial(shots, probs / probs.sum(1, keepdims=True)) / shots
            terms = probs @ diagonals(pub.observables, c.n).T  # [size, n_obs]
            out.append(pub_result(broadcast_evs(terms, pub), shots, pub.precision))
        return PrimitiveResult(out, metadata={"version": 2})


def _rz_phase(theta: torch.Tensor) -> torch.Tensor:
    """[B, 2, 2] factors rho[a, b] -> rho[a, b] * P[a, b] of Rz(theta) (rows a, cols b)."""
    e = torch.exp(-0.5j * theta.to(torch.complex128))  # U[0] = e^{-i t/2}, U[1] = e^{+i t/2}
    u = torch.stack([e, e.conj()], dim=-1)  # [B, 2]
    return u[:, :, None] * u.conj()[:, None, :]
