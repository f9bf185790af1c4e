"""Stage 1 of the engine: a parameterized ``QuantumCircuit`` -> a :class:`Program`.

Everything an executor needs to know about the circuit is decided here, once:

* the **gate table** :data:`GATES` (the parameterized gates the engine, and the parameter-shift
  gradient, understand: qubit count, angle count, kernel code, the matrix as a torch function,
  the Pauli generator of ``exp(-i t/2 P)`` rotations); *add a gate here* (and its kernel code in
  :mod:`.kernels`; ``tests/test_engine.py`` checks every entry against Qiskit's matrix);
* the **stages**: runs of single-qubit gates become one :class:`LocalLayer` (a chain of gates per
  qubit); fixed gates whose matrix is a permutation with phases (CNOT, CZ, SWAP, CCX, ...) become
  one :class:`Monomial` (consecutive ones composed: a CNOT ring is one permutation); other
  multi-qubit gates a :class:`Dense` stage;
* the **angle program** (:func:`compile_angles`): every gate angle, a Qiskit parameter expression
  (``arctan(x_i)``, ``2*w_j + 0.3``, ...), as postfix code over its free parameters. The same code
  is run by the numba kernels (values and forward-mode derivatives), by the reference executor
  (torch ops, autograd) and by :meth:`AngleProgram.evaluate` (angles and d angle / d parameter,
  for the parameter-shift gradient);
* the readout: diagonal (I/Z) observables as a ``[n_obs, 2^n]`` table
  (:func:`qa3c_qiskit.circuit.observable_diagonals`).

Conventions follow Qiskit: qubit 0 is the least significant bit of a basis index; a gate's
``qargs[0]`` is the least significant bit of its local index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from qiskit.circuit import Parameter, ParameterExpression, QuantumCircuit
from qiskit.quantum_info import Operator, Pauli

from ..circuit import observable_diagonals

CDTYPE = torch.complex128
SKIPPED = {"barrier", "delay"}

# --------------------------------------------------------------------------------------------
# Kernel codes (shared with .kernels)
# --------------------------------------------------------------------------------------------
#: stage ops of the flat program (see .numba_exec; OP_ZFOLD: a final local layer folded into a
#: <Z_q> readout, see .fold)
OP_LOCAL, OP_MONO, OP_DENSE, OP_ZFOLD = 1, 2, 3, 4
#: gate kinds; 0 is a constant matrix
K_CONST, K_RX, K_RY, K_RZ, K_P, K_U, K_PAULI2, K_CRX, K_CRY, K_CRZ, K_CP = range(11)
#: angle-program opcodes: A_PARAM j (the slot's j-th parameter), A_CONST c (``consts[c]``),
#: A_ADD n / A_MUL n (n-ary), A_POW, A_FUNC f
A_PARAM, A_CONST, A_ADD, A_MUL, A_POW, A_FUNC = range(6)
#: functions of A_FUNC, by sympy name
FUNC_CODES = {
    "atan": 0,
    "sin": 1,
    "cos": 2,
    "tan": 3,
    "asin": 4,
    "acos": 5,
    "exp": 6,
    "log": 7,
    "Abs": 8,
    "sign": 9,
}


# --------------------------------------------------------------------------------------------
# The gate table
# --------------------------------------------------------------------------------------------
def _mat(entries: Sequence[torch.Tensor], d: int) -> torch.Tensor:
    return torch.stack(entries, dim=-1).reshape(*entries[0].shape, d, d)


def _phase(t: torch.Tensor) -> torch.Tensor:
    return torch.polar(torch.ones_like(t), t)


def _pauli_rotation(label: str) -> Callable:
    """exp(-i t/2 P) = cos(t/2) I - i sin(t/2) P for the Pauli string ``label``."""
    p = torch.tensor(Pauli(label).to_matrix(), dtype=CDTYPE)
    eye = torch.eye(p.shape[0], dtype=CDTYPE)

    def fn(t):
        c, s = torch.cos(t / 2).to(CDTYPE), torch.sin(t / 2).to(CDTYPE)
        return c[..., None, None] * eye - 1j * s[..., None, None] * p

    return fn


def _p(t):
    e = _phase(t)
    one, z = torch.ones_like(e), torch.zeros_like(e)
    return _mat([one, z, z, e], 2)


def _u(theta, phi, lam):
    c, s = torch.cos(theta / 2).to(CDTYPE), torch.sin(theta / 2).to(CDTYPE)
    return _mat([c, -_phase(lam) * s, _phase(phi) * s, _phase(phi + lam) * c], 2)


def _controlled(single: Callable) -> Callable:
    """Controlled version, control = qargs[0] (local bit 0), target = qargs[1]."""

    def fn(*angles):
        m = single(*angles)
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        one, z = torch.ones_like(a), torch.zeros_like(a)
        return _mat([one, z, z, z, z, a, z, b, z, z, one, z, z, c, z, d], 4)

    return fn


@dataclass(frozen=True)
class Gate:
    """A parameterized gate the engine simulates.

    ``matrix(*angles)`` maps angle tensors of any shape S to ``[*S, d, d]`` complex128;
    ``pauli`` is the Pauli string P of a rotation ``exp(-i t/2 P)``; ``shift_rule`` says that
    ``d<O>/dt = (f(t + pi/2) - f(t - pi/2)) / 2`` holds (Pauli rotations, and the phase gate,
    which is ``rz`` up to a global phase).
    """

    n_qubits: int
    n_angles: int
    code: int
    matrix: Callable
    pauli: str | None = None
    shift_rule: bool = False


def _rot(label: str, code: int) -> Gate:
    return Gate(len(label), 1, code, _pauli_rotation(label), label, True)


GATES: dict[str, Gate] = {
    "rx": _rot("X", K_RX),
    "ry": _rot("Y", K_RY),
    "rz": _rot("Z", K_RZ),
    "p": Gate(1, 1, K_P, _p, shift_rule=True),
    "u1": Gate(1, 1, K_P, _p, shift_rule=True),
    "u": Gate(1, 3, K_U, _u),
    "rxx": _rot("XX", K_PAULI2),
    "ryy": _rot("YY", K_PAULI2),
    "rzz": _rot("ZZ", K_PAULI2),
    "rzx": _rot("XZ", K_PAULI2),  # Qiskit: Z on qargs[0], X on qargs[1]
    "crx": Gate(2, 1, K_CRX, _controlled(_pauli_rotation("X"))),
    "cry": Gate(2, 1, K_CRY, _controlled(_pauli_rotation("Y"))),
    "crz": Gate(2, 1, K_CRZ, _controlled(_pauli_rotation("Z"))),
    "cp": Gate(2, 1, K_CP, _controlled(_p)),
}

#: gates with the two-term parameter-shift rule
SHIFTABLE_GATES = frozenset(name for name, g in GATES.items() if g.shift_rule)


# --------------------------------------------------------------------------------------------
# Angle expressions -> postfix code
# --------------------------------------------------------------------------------------------
class UnsupportedExpression(ValueError):
    pass


@dataclass(frozen=True)
class AngleSlot:
    """One angle: its free parameters (columns of theta) and postfix code over them."""

    params: tuple[int, ...]
    code: tuple[int, ...]
    depth: int


@dataclass
class AngleProgram:
    """Angles as functions of the parameter row ``theta`` (columns = the compile-time order).

    ``evaluate(theta [N, P]) -> (angles [N, S], jacobian [N, S, P])`` is what the
    parameter-shift gradient needs; :attr:`code` is the int64 program of the numba kernels.
    """

    n_params: int
    slots: list[AngleSlot]
    consts: np.ndarray  # float64, indexed by A_CONST
    code: np.ndarray = field(
        init=False
    )  # [n_slots, k_max, depth] then per slot k, params, len, code

    def __post_init__(self):
        k_max = max([1] + [len(s.params) for s in self.slots])
        depth = max([1] + [s.depth for s in self.slots])
        flat = [len(self.slots), k_max, depth]
        for s in self.slots:
            flat += [len(s.params), *s.params, len(s.code), *s.code]
        self.code = np.array(flat, dtype=np.int64)

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    def evaluate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(angles [N, S], d angle_s / d theta_p [N, S, P]) for parameter values [N, P]."""
        from .angles import angles as run

        theta = np.ascontiguousarray(theta, dtype=np.float64).reshape(-1, self.n_params)
        ang, dang = run(theta, np.zeros((1, 0)), self.code, self.consts, True)
        jac = np.zeros((theta.shape[0], self.n_slots, self.n_params))
        for s, slot in enumerate(self.slots):
            for j, p in enumerate(slot.params):
                jac[:, s, p] += dang[:, s, j]
        return ang, jac


def compile_angles(exprs: Sequence, params: Sequence[Parameter]) -> AngleProgram:
    """The angle program of ``exprs`` (ParameterExpressions or numbers) over ``params``
    (the columns of theta). Raises :class:`UnsupportedExpression` (a ValueError) naming a
    sympy function the kernels do not implement."""
    index = {p.name: i for i, p in enumerate(params)}
    consts: list[float] = []
    slots = [_slot(e, index, consts) for e in exprs]
    return AngleProgram(len(index), slots, np.array(consts, dtype=np.float64))


def _slot(e, index: dict[str, int], consts: list[float]) -> AngleSlot:
    def const(value: float) -> int:
        consts.append(value)
        return len(consts) - 1

    if not (isinstance(e, ParameterExpression) and e.parameters):
        return AngleSlot((), (A_CONST, const(float(e))), 1)
    if isinstance(e, Parameter):
        return AngleSlot((index[e.name],), (A_PARAM, 0), 1)
    sym = e.sympify()
    free = sorted(sym.free_symbols, key=lambda s: index[str(s)])
    local = {str(s): j for j, s in enumerate(free)}
    code: list[int] = []
    depth = [0, 0]  # current, max

    def push(n: int) -> None:
        depth[0] += n
        depth[1] = max(depth)

    def emit(node) -> None:
        if node.is_Symbol:
            code.extend([A_PARAM, local[str(node)]])
            push(1)
        elif node.is_number:
            value = complex(node)
            if value.imag:
                raise UnsupportedExpression(f"complex constant in angle {e}")
            code.extend([A_CONST, const(value.real)])
            push(1)
        elif node.is_Add or node.is_Mul:
            for arg in node.args:
                emit(arg)
            code.extend([A_ADD if node.is_Add else A_MUL, len(node.args)])
            push(1 - len(node.args))
        elif node.is_Pow:
            emit(node.base)
            emit(node.exp)
            code.append(A_POW)
            push(-1)
        elif node.func.__name__ in FUNC_CODES and len(node.args) == 1:
            emit(node.args[0])
            code.extend([A_FUNC, FUNC_CODES[node.func.__name__]])
        else:
            raise UnsupportedExpression(
                f"statevector engine: unsupported function {node.func.__name__!r} in angle {e}; "
                f"supported: {', '.join(FUNC_CODES)}, +, *, **"
            )

    emit(sym)
    return AngleSlot(tuple(index[str(s)] for s in free), tuple(code), depth[1])


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
@dataclass
class LocalLayer:
    """Single-qubit gates, per qubit a chain (in circuit order) of ``("fixed", 2x2 matrix)`` or
    ``(gate name, [angle slots])``."""

    per_qubit: list[list]


@dataclass
class Monomial:
    index: np.ndarray  # new[k] = phase[k] * old[index[k]]
    phase: np.ndarray | None


@dataclass
class Dense:
    qubits: list[int]
    matrix: np.ndarray | None = None  # fixed [d, d]
    kind: str | None = None  # a GATES name
    slots: list[int] | None = None


@dataclass
class Program:
    """A compiled circuit: what every executor runs."""

    n: int
    n_inputs: int
    n_weights: int
    stages: list
    angles: AngleProgram  # theta = [inputs, weights]
    readout: np.ndarray  # [n_obs, 2^n]

    @property
    def dim(self) -> int:
        return 2**self.n


def compile_circuit(
    circuit: QuantumCircuit,
    input_params: Sequence[Parameter],
    weight_params: Sequence[Parameter],
    observables=None,
) -> Program:
    """Compile ``circuit`` (parameters = ``input_params`` then ``weight_params``) and the diagonal
    ``observables`` (default ``Z_i`` on every qubit) into a :class:`Program`."""
    params = list(input_params) + list(weight_params)
    missing = {p.name for p in circuit.parameters} - {p.name for p in params}
    if missing:
        raise ValueError(f"circuit parameters not given as inputs or weights: {sorted(missing)}")
    n = circuit.num_qubits
    exprs: list = []
    stages: list = []
    pending: list[list] = [[] for _ in range(n)]

    def flush():
        if any(pending):
            stages.append(LocalLayer([list(p) for p in pending]))
            for p in pending:
                p.clear()

    for inst in circuit.data:
        op = inst.operation
        name = op.name
        qubits = [circuit.find_bit(q).index for q in inst.qubits]
        if name in SKIPPED:
            continue
        if inst.clbits or name in {"measure", "reset"}:
            raise ValueError(f"statevector engine: unsupported instruction {name!r}")
        is_param = any(isinstance(p, ParameterExpression) for p in op.params)
        if is_param and name not in GATES:
            raise ValueError(
                f"statevector engine: unsupported parameterized gate {name!r}; supported: "
                f"{', '.join(sorted(GATES))} (and any fixed gate with a matrix)"
            )
        if is_param or (name in GATES and op.params):
            gate = GATES[name]
            slots = list(range(len(exprs), len(exprs) + gate.n_angles))
            exprs.extend(op.params)
            if gate.n_qubits == 1:
                pending[qubits[0]].append((name, slots))
            else:
                flush()
                stages.append(Dense(qubits, kind=name, slots=slots))
            continue
        try:
            mat = Operator(op).data
        except Exception as exc:
            raise ValueError(
                f"statevector engine: unsupported gate {name!r} (no matrix: {exc})"
            ) from None
        if len(qubits) == 1:
            pending[qubits[0]].append(("fixed", mat))
            continue
        flush()
        stages.append(_fixed_multi(mat, qubits, n))
    flush()
    if observables is None:
        from ..circuit import z_observables

        observables = z_observables(n)
    return Program(
        n=n,
        n_inputs=len(input_params),
        n_weights=len(weight_params),
        stages=_merge_monomials(stages),
        angles=compile_angles(exprs, params),
        readout=observable_diagonals(observables, n),
    )


def _fixed_multi(mat: np.ndarray, qubits: list[int], n: int):
    nz = np.abs(mat) > 1e-12
    if (nz.sum(axis=0) == 1).all() and (nz.sum(axis=1) == 1).all():
        cols = nz.argmax(axis=1)  # U[i, cols[i]] != 0: new local i <- old local cols[i]
        full = np.arange(2**n)
        local = np.zeros(2**n, dtype=np.int64)
        for j, q in enumerate(qubits):
            local |= ((full >> q) & 1) << j
        src_local = cols[local]
        src = full.copy()
        for j, q in enumerate(qubits):
            src &= ~(1 << q)
            src |= ((src_local >> j) & 1) << q
        phase = mat[local, src_local]
        return Monomial(src, None if np.allclose(phase, 1) else phase.astype(complex))
    return Dense(qubits, matrix=np.asarray(mat, dtype=complex))


def _merge_monomials(stages: list) -> list:
    out: list = []
    for st in stages:
        if isinstance(st, Monomial) and out and isinstance(out[-1], Monomial):
            prev = out[-1]
            phase = None
            if prev.phase is not None or st.phase is not None:
                p1 = prev.phase[st.index] if prev.phase is not None else 1
                p2 = st.phase if st.phase is not None else 1
                phase = p1 * p2
            out[-1] = Monomial(prev.index[st.index], phase)
        else:
            out.append(st)
    return out


class CircuitCache:
    """Values computed from a circuit, keyed by the circuit object (``id`` plus an identity
    check, so a recycled id never returns another circuit's value)."""

    def __init__(self):
        self._items: dict[int, tuple[object, object]] = {}

    def get(self, circuit, build: Callable):
        hit = self._items.get(id(circuit))
        if hit is None or hit[0] is not circuit:
            hit = (circuit, build(circuit))
            self._items[id(circuit)] = hit
        return hit[1]
