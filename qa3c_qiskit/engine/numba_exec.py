"""The compiled executor (``QA3C_ENGINE=numba``, the default): a :class:`~.compile.Program`
flattened into int64/complex tables for the kernels of :mod:`.sweeps`, wrapped in one
``torch.autograd.Function`` whose backward is the adjoint sweep.

A call costs one kernel call each way plus a few microseconds of Python, whatever the batch
size; weights may be shared (``[n_w]``) or per sample (``[B, n_w]``, per-sample gradients).
"""

from __future__ import annotations

import numpy as np
import torch
from qiskit.quantum_info import Pauli

from .compile import (
    GATES,
    K_CONST,
    K_PAULI2,
    OP_DENSE,
    OP_LOCAL,
    OP_MONO,
    OP_ZFOLD,
    Dense,
    LocalLayer,
    Monomial,
    Program,
)
from .fold import z_coefficients
from .sweeps import backward, forward

RDTYPE = torch.float64
#: at most this many lanes (samples) per chunk: the width of the vectorised inner loops
LANES = 64


class NumbaExecutor:
    """``executor(x [B, n_in], w [n_w] or [B, n_w]) -> [B, n_obs]``, differentiable."""

    def __init__(self, program: Program):
        self.n_in, self.n_w = program.n_inputs, program.n_weights
        n_in = program.n_inputs
        input_slots = {
            s for s, slot in enumerate(program.angles.slots) if any(p < n_in for p in slot.params)
        }
        consts: list[np.ndarray] = []
        n_const = 0

        def const(values) -> int:
            nonlocal n_const
            consts.append(np.asarray(values, dtype=complex).ravel())
            n_const += consts[-1].size
            return n_const - consts[-1].size

        gates: list[list[int]] = []

        def gate(kind: int, slots=(), c: int = -1) -> int:
            s = list(slots) + [-1] * (3 - len(slots))
            uniform = int(not set(slots) & input_slots)
            gates.append([kind, *s, c, uniform])
            return len(gates) - 1

        prog: list[int] = []
        ops: list[list[int]] = []
        perms: list[np.ndarray] = []
        n_rec = 0
        for st in program.stages:
            pc = len(prog)
            if isinstance(st, LocalLayer):
                chains = []
                for q, chain in enumerate(st.per_qubit):
                    first, fixed = len(gates), None
                    for kind, payload in chain + [("end", None)]:
                        if kind == "fixed":  # consecutive constant gates, multiplied together
                            fixed = payload if fixed is None else payload @ fixed
                            continue
                        if fixed is not None:
                            gate(K_CONST, c=const(fixed))
                            fixed = None
                        if kind != "end":
                            gate(GATES[kind].code, payload)
                    if len(gates) > first:
                        chains += [q, len(gates) - first, first]
                prog += [OP_LOCAL, len(chains) // 3] + chains
            elif isinstance(st, Monomial):
                perms += [st.index.astype(np.int64), np.argsort(st.index)]
                prog += [OP_MONO, len(perms) // 2 - 1, -1 if st.phase is None else const(st.phase)]
            else:
                assert isinstance(st, Dense)
                if st.matrix is not None:
                    g, c = -1, const(st.matrix)
                else:
                    spec = GATES[st.kind]
                    p = const(Pauli(spec.pauli).to_matrix()) if spec.code == K_PAULI2 else -1
                    g, c = gate(spec.code, st.slots, p), -1
                prog += [OP_DENSE, len(st.qubits), *st.qubits, g, c]
            record = not isinstance(st, Monomial)
            ops.append([pc, n_rec if record else -1, 0])
            n_rec += record
        # the paper's <Z_q> readout after a final local layer: fold the layer into the readout
        self.zcoef = z_coefficients(program.readout)
        if self.zcoef is not None and len(ops) >= 2 and prog[ops[-1][0]] == OP_LOCAL:
            prog[ops[-1][0]] = OP_ZFOLD
            ops[-1][1] = -1
            n_rec -= 1
            if ops[-2][1] < 0:  # the backward starts from the state before the fold
                ops[-2][1] = n_rec
        elif ops and ops[-1][1] < 0:  # the backward starts from the final state
            ops[-1][1] = n_rec
        if self.zcoef is None:
            self.zcoef = np.zeros((program.readout.shape[0], program.n + 1))
        self.ops = np.array(ops, dtype=np.int64).reshape(-1, 3)
        self.prog = np.array(prog, dtype=np.int64)
        self.gates = np.array(gates, dtype=np.int64).reshape(-1, 6)
        self.perm = np.ascontiguousarray(
            np.stack(perms) if perms else np.zeros((0, program.dim), dtype=np.int64)
        )
        self.cplx = np.concatenate(consts) if consts else np.zeros(1, dtype=complex)
        self.aprog, self.aconst = program.angles.code, program.angles.consts
        if self.aconst.size == 0:
            self.aconst = np.zeros(1)
        self.readout = np.ascontiguousarray(program.readout)
        warm_kernels()

    def _args(self):
        return (self.ops, self.prog, self.gates, self.perm, self.cplx, self.readout, self.zcoef)

    def forward(self, x: np.ndarray, w: np.ndarray, keep: bool):
        """(outputs [B, n_obs], tape for :meth:`backward` or None); ``w`` [1 or B, n_w]."""
        out, tape, ang, dang, mats, rho = forward(
            x, w, self.aprog, self.aconst, *self._args(), LANES, keep
        )
        return out, ((x, w, tape, ang, dang, mats, rho) if keep else None)

    def backward(self, tape, g_out: np.ndarray, per_sample: bool):
        """(dL/dx [B, n_in], dL/dw [B or 1, n_w]) from dL/d outputs [B, n_obs]."""
        x, w, states, ang, dang, mats, rho = tape
        if self.ops.shape[0] == 0:  # no gates: nothing depends on x or w
            return np.zeros_like(x), np.zeros((x.shape[0] if per_sample else 1, w.shape[1]))
        return backward(
            x, w, self.aprog, *self._args(), states, ang, dang, mats, rho, g_out, per_sample,
        )  # fmt: skip

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return AdjointFunction.apply(x, w, self)
        out, _ = self.forward(_np64(x), _np64(w if w.dim() == 2 else w[None]), keep=False)
        return torch.from_numpy(out)


def _np64(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return np.ascontiguousarray((t if t.dtype == RDTYPE else t.to(RDTYPE)).numpy())


class AdjointFunction(torch.autograd.Function):
    """Outputs [B, n_obs] from (x [B, n_in], w [n_w] or [B, n_w]); backward by the adjoint
    sweep. The tape is freed by the first backward (no ``retain_graph``)."""

    @staticmethod
    def forward(ctx, x, w, executor):
        per_sample = w.dim() == 2
        out, tape = executor.forward(_np64(x), _np64(w if w.dim() == 2 else w[None]), keep=True)
        ctx.executor, ctx.tape, ctx.per_sample = executor, tape, per_sample
        ctx.dtypes = (x.dtype, w.dtype)
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        if ctx.tape is None:
            raise RuntimeError(
                "the statevector engine's tape was freed by an earlier backward through this "
                "output: backward twice (retain_graph=True) is not supported; call the engine's "
                "forward again for a second backward"
            )
        gx, gw = ctx.executor.backward(ctx.tape, _np64(grad), ctx.per_sample)
        ctx.tape = None
        if not ctx.per_sample:
            gw = gw[0]
        gx = torch.from_numpy(gx).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = torch.from_numpy(gw).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return gx, gw, None


_KERNELS_READY = False


def warm_kernels() -> None:
    """Compile (or load from numba's on-disk cache) the kernels once per process."""
    global _KERNELS_READY
    if _KERNELS_READY:
        return
    from qiskit.circuit import Parameter, QuantumCircuit

    from .compile import compile_circuit

    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.ry(a, 1)
    qc.cx(0, 1)
    qc.rzz(b, 0, 1)
    qc.rx(a.arctan(), 0)
    _KERNELS_READY = True
    ex = NumbaExecutor(compile_circuit(qc, [a], [b]))
    x = np.zeros((1, 1))
    for w in (np.zeros((1, 1)), np.zeros((1, 1))):
        for keep in (False, True):
            out, tape = ex.forward(x, w, keep)
        for per_sample in (False, True):
            ex.backward(tape, np.ones_like(out), per_sample)
