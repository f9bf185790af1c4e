"""Exact PyTorch statevector engine compiled from a Qiskit ``QuantumCircuit``.

The engine reads the circuit's instructions once and compiles them into a short list of
batched torch stages, so that the gradient comes from autograd and a forward pass costs a few
dozen torch ops instead of one op per gate:

* runs of single-qubit gates become one **local layer**: a 2x2 matrix per qubit (fused at
  compile time where constant), applied to the state viewed as a ``2^hi x 2^lo`` matrix from
  both sides (``U_hi @ S @ U_lo^T``); the first layer, acting on ``|0...0>``, builds a product
  state directly;
* fixed gates whose matrix is a permutation with phases (CNOT, CZ, SWAP, CCX, ...) become one
  **monomial** stage (a gather and an optional phase); consecutive ones are composed;
* other multi-qubit gates become a **dense** stage (a ``2^k x 2^k`` matrix on k qubits);
* parameter expressions (``arctan(x)``, ``arctan(x**2)``, ...) are grouped by their symbolic
  shape and evaluated with one torch call per group.

Conventions follow Qiskit: qubit 0 is the least significant bit of a basis index.
Amplitudes are complex128, so results agree with ``qiskit.quantum_info.Statevector`` to ~1e-12.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
from qiskit.circuit import Parameter, ParameterExpression, QuantumCircuit
from qiskit.quantum_info import Operator, SparsePauliOp

CDTYPE = torch.complex128
RDTYPE = torch.float64

SKIPPED = {"barrier", "delay"}


# --------------------------------------------------------------------------------------------
# Parameterized gate matrices as torch functions of their angles: (*angles [B, m]) -> [B, m, d, d]
# --------------------------------------------------------------------------------------------
def _mat(entries: Sequence[torch.Tensor], d: int) -> torch.Tensor:
    return torch.stack(entries, dim=-1).reshape(*entries[0].shape, d, d)


def _phase(t: torch.Tensor) -> torch.Tensor:
    """exp(i t) as complex."""
    return torch.polar(torch.ones_like(t), t)


def _rx(t):
    c, s = torch.cos(t / 2).to(CDTYPE), torch.sin(t / 2).to(CDTYPE)
    return _mat([c, -1j * s, -1j * s, c], 2)


def _ry(t):
    c, s = torch.cos(t / 2), torch.sin(t / 2)
    return _mat([c, -s, s, c], 2).to(CDTYPE)


def _rz(t):
    e = _phase(-t / 2)
    z = torch.zeros_like(e)
    return _mat([e, z, z, e.conj()], 2)


def _p(t):
    e = _phase(t)
    one, z = torch.ones_like(e), torch.zeros_like(e)
    return _mat([one, z, z, e], 2)


def _u(theta, phi, lam):
    c, s = torch.cos(theta / 2).to(CDTYPE), torch.sin(theta / 2).to(CDTYPE)
    return _mat([c, -_phase(lam) * s, _phase(phi) * s, _phase(phi + lam) * c], 2)


def _rzz(t):
    e = _phase(-t / 2)
    z = torch.zeros_like(e)
    ec = e.conj()
    return _mat([e, z, z, z, z, ec, z, z, z, z, ec, z, z, z, z, e], 4)


def _rxx(t):
    c, s = torch.cos(t / 2).to(CDTYPE), -1j * torch.sin(t / 2).to(CDTYPE)
    z = torch.zeros_like(c)
    return _mat([c, z, z, s, z, c, s, z, z, s, c, z, s, z, z, c], 4)


def _ryy(t):
    c, s = torch.cos(t / 2).to(CDTYPE), 1j * torch.sin(t / 2).to(CDTYPE)
    z = torch.zeros_like(c)
    return _mat([c, z, z, s, z, c, -s, z, z, -s, c, z, s, z, z, c], 4)


def _controlled(single):
    """Controlled version, control = first qarg (least significant), target = second."""

    def fn(*angles):
        m = single(*angles)
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        one, z = torch.ones_like(a), torch.zeros_like(a)
        return _mat([one, z, z, z, z, a, z, b, z, z, one, z, z, c, z, d], 4)

    return fn


#: name -> (number of qubits, number of angles, torch matrix function)
PARAM_GATES = {
    "rx": (1, 1, _rx),
    "ry": (1, 1, _ry),
    "rz": (1, 1, _rz),
    "p": (1, 1, _p),
    "u": (1, 3, _u),
    "rzz": (2, 1, _rzz),
    "rxx": (2, 1, _rxx),
    "ryy": (2, 1, _ryy),
    "crx": (2, 1, _controlled(_rx)),
    "cry": (2, 1, _controlled(_ry)),
    "crz": (2, 1, _controlled(_rz)),
    "cp": (2, 1, _controlled(_p)),
}


# --------------------------------------------------------------------------------------------
# Angle expressions: grouped by symbolic shape, one torch call per group
# --------------------------------------------------------------------------------------------
_TORCH_FUNCS = {
    "atan": torch.atan,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "Abs": torch.abs,
    "sign": torch.sign,
}


@dataclass
class _AngleGroup:
    fn: object  # callable(*cols) -> tensor
    args: torch.Tensor  # [n_slots_in_group, n_args] parameter indices
    slots: list[int]


@dataclass
class _AngleProgram:
    """Evaluates a list of angle slots from the parameter row-vector theta [B, P]."""

    groups: list[_AngleGroup] = field(default_factory=list)
    constants: dict[int, float] = field(default_factory=dict)
    n_slots: int = 0
    order: torch.Tensor | None = None  # maps concatenated group outputs to slot order

    def finalize(self):
        produced = [s for g in self.groups for s in g.slots] + list(self.constants)
        self.const_values = torch.tensor(list(self.constants.values()), dtype=RDTYPE)
        inv = [0] * len(produced)
        for pos, slot in enumerate(produced):
            inv[slot] = pos
        self.order = torch.tensor(inv, dtype=torch.long)
        self.identity_order = inv == list(range(len(inv)))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        parts = []
        for g in self.groups:
            cols = theta[:, g.args]  # [B, m, n_args]
            parts.append(g.fn(*cols.unbind(-1)) if g.fn is not None else cols[..., 0])
        if self.constants:
            parts.append(self.const_values.expand(theta.shape[0], -1))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out if self.identity_order else out[:, self.order]


def _compile_angles(exprs: list, param_index: dict[str, int]) -> _AngleProgram:
    prog = _AngleProgram(n_slots=len(exprs))
    by_key: dict[str, tuple[object, list, list]] = {}
    for slot, e in enumerate(exprs):
        if isinstance(e, ParameterExpression) and e.parameters:
            if isinstance(e, Parameter):
                key, fn, idx = "identity", None, [param_index[e.name]]
            else:
                sym = e.sympify()
                free = sorted(sym.free_symbols, key=lambda s: param_index[str(s)])
                idx = [param_index[str(s)] for s in free]
                dummies = sympy.symbols(f"_a0:{len(free)}")
                template = sym.xreplace(dict(zip(free, dummies)))
                key = sympy.srepr(template)
                fn = None
                if key not in by_key:
                    fn = sympy.lambdify(dummies, template, modules=[_TORCH_FUNCS, "math"])
            entry = by_key.setdefault(key, (fn, [], []))
            entry[1].append(idx)
            entry[2].append(slot)
        else:
            prog.constants[slot] = float(e)
    for fn, idx, slots in by_key.values():
        prog.groups.append(_AngleGroup(fn, torch.tensor(idx, dtype=torch.long), slots))
    prog.finalize()
    return prog


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
@dataclass
class _Column:
    """One single-qubit gate per qubit (or identity), all of one kind."""

    kind: str  # "fixed" or a PARAM_GATES name
    qubits: list[int]
    matrices: torch.Tensor | None = None  # fixed: [1, m, 2, 2]
    slots: list[list[int]] | None = None  # param: per qubit, the angle slots


@dataclass
class _LocalLayer:
    per_qubit: list[list]  # per qubit, a list of ("fixed", 2x2 ndarray) / (name, [slots])
    columns: list[list[_Column]] = field(default_factory=list)


@dataclass
class _Monomial:
    index: torch.Tensor  # new[k] = phase[k] * old[index[k]]
    phase: torch.Tensor | None


@dataclass
class _Dense:
    qubits: list[int]
    matrix: torch.Tensor | None = None  # fixed [1, d, d]
    kind: str | None = None
    slots: list[int] | None = None


class CircuitEngine:
    """Exact, batched, differentiable simulation of a parameterized ``QuantumCircuit``.

    ``engine(x, w)`` takes inputs ``x`` of shape ``[B, len(input_params)]`` and weights ``w`` of
    shape ``[len(weight_params)]`` and returns the expectation values of ``observables``
    (diagonal Pauli strings, ``Z_i`` on each qubit by default) as a ``[B, n_obs]`` float64
    tensor, differentiable with respect to both.
    """

    def __init__(
        self,
        circuit: QuantumCircuit,
        input_params: Sequence[Parameter],
        weight_params: Sequence[Parameter],
        observables: Sequence[SparsePauliOp] | None = None,
    ):
        self.n = circuit.num_qubits
        self.dim = 2**self.n
        self.input_params = list(input_params)
        self.weight_params = list(weight_params)
        names = [p.name for p in self.input_params + self.weight_params]
        param_index = {name: i for i, name in enumerate(names)}
        missing = {p.name for p in circuit.parameters} - set(names)
        if missing:
            raise ValueError(
                f"circuit parameters not given as inputs or weights: {sorted(missing)}"
            )
        self.num_inputs = len(self.input_params)
        self.num_weights = len(self.weight_params)
        exprs: list = []
        self.stages = self._compile(circuit, exprs)
        self.angles = _compile_angles(exprs, param_index)
        self.readout = _diagonal_readout(observables, self.n)

    # -- compilation ---------------------------------------------------------------------------
    def _compile(self, circuit: QuantumCircuit, exprs: list) -> list:
        stages: list = []
        pending: list[list] = [[] for _ in range(self.n)]

        def flush():
            if any(pending):
                stages.append(_LocalLayer([list(p) for p in pending]))
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
            if is_param and name not in PARAM_GATES:
                raise ValueError(
                    f"statevector engine: unsupported parameterized gate {name!r}; supported: "
                    f"{', '.join(sorted(PARAM_GATES))} (and any fixed gate with a matrix)"
                )
            if is_param or (name in PARAM_GATES and op.params):
                nq, na, _ = PARAM_GATES[name]
                slots = list(range(len(exprs), len(exprs) + na))
                exprs.extend(op.params)
                if nq == 1:
                    pending[qubits[0]].append((name, slots))
                else:
                    flush()
                    stages.append(_Dense(qubits, kind=name, slots=slots))
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
            stages.append(self._fixed_multi(mat, qubits))
        flush()
        stages = _merge_monomials(stages)
        for st in stages:
            if isinstance(st, _LocalLayer):
                st.columns = _columns(st.per_qubit, self.n)
        return stages

    def _fixed_multi(self, mat: np.ndarray, qubits: list[int]):
        nz = np.abs(mat) > 1e-12
        if (nz.sum(axis=0) == 1).all() and (nz.sum(axis=1) == 1).all():
            cols = nz.argmax(axis=1)  # U[i, cols[i]] != 0: new local i <- old local cols[i]
            full = np.arange(self.dim)
            local = np.zeros(self.dim, dtype=np.int64)
            for j, q in enumerate(qubits):
                local |= ((full >> q) & 1) << j
            src_local = cols[local]
            src = full.copy()
            for j, q in enumerate(qubits):
                src &= ~(1 << q)
                src |= ((src_local >> j) & 1) << q
            phase = mat[local, src_local]
            ph = None if np.allclose(phase, 1) else torch.tensor(phase, dtype=CDTYPE)
            return _Monomial(torch.tensor(src, dtype=torch.long), ph)
        return _Dense(qubits, matrix=torch.tensor(mat, dtype=CDTYPE)[None])

    # -- execution -----------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x[None]
        if x.shape[-1] != self.num_inputs or w.shape[-1] != self.num_weights:
            raise ValueError(
                f"expected inputs [B, {self.num_inputs}] and weights [{self.num_weights}], "
                f"got {tuple(x.shape)} and {tuple(w.shape)}"
            )
        batch = x.shape[0]
        theta = torch.cat([x.to(RDTYPE), w.to(RDTYPE).expand(batch, -1)], dim=1)
        angles = self.angles(theta) if self.angles.n_slots else theta[:, :0]
        state = None
        for st in self.stages:
            if isinstance(st, _LocalLayer):
                state = self._apply_local(st, state, angles)
            elif isinstance(st, _Monomial):
                state = self._zero_state() if state is None else state
                state = state[:, st.index]
                if st.phase is not None:
                    state = state * st.phase
            else:
                state = self._zero_state() if state is None else state
                state = self._apply_dense(st, state, angles)
        if state is None:
            state = self._zero_state()
        probs = torch.view_as_real(state).square().sum(-1)
        out = probs @ self.readout
        return out.expand(batch, -1) if out.shape[0] != batch else out

    def _zero_state(self) -> torch.Tensor:
        s = torch.zeros(1, self.dim, dtype=CDTYPE)
        s[0, 0] = 1
        return s

    def _layer_matrices(self, st: _LocalLayer, angles: torch.Tensor) -> torch.Tensor:
        """The fused 2x2 matrix of every qubit: [B or 1, n, 2, 2]."""
        total = None
        for col in st.columns:
            pieces = []
            for part in col:
                if part.kind == "fixed":
                    pieces.append(part.matrices)
                else:
                    fn = PARAM_GATES[part.kind][2]
                    slot = torch.tensor(part.slots)
                    args = [angles[:, slot[:, a]] for a in range(slot.shape[1])]
                    pieces.append(fn(*args))
            m = _cat_qubits(pieces, [p.qubits for p in col], self.n)
            total = m if total is None else m @ total
        return total

    def _apply_local(self, st: _LocalLayer, state, angles):
        mats = self._layer_matrices(st, angles)
        b = mats.shape[0]
        if state is None:  # product state from |0...0>
            vec = mats[..., 0]  # [b, n, 2]
            out = vec[:, self.n - 1]
            for q in range(self.n - 2, -1, -1):
                out = (out[:, :, None] * vec[:, q, None, :]).reshape(b, -1)
            return out
        lo = self.n // 2
        hi_mat = _kron_chain(mats, range(self.n - 1, lo - 1, -1))
        s = state.reshape(state.shape[0], 2 ** (self.n - lo), 2**lo)
        s = hi_mat @ s
        if lo:
            lo_mat = _kron_chain(mats, range(lo - 1, -1, -1))
            s = s @ lo_mat.transpose(-1, -2)
        return s.reshape(s.shape[0], self.dim)

    def _apply_dense(self, st: _Dense, state, angles):
        if st.matrix is not None:
            u = st.matrix
        else:
            fn = PARAM_GATES[st.kind][2]
            u = fn(*[angles[:, s : s + 1] for s in st.slots])[:, 0]
        k = len(st.qubits)
        b = state.shape[0]
        t = state.reshape([b] + [2] * self.n)
        axes = [self.n - q for q in reversed(st.qubits)]  # most significant local bit first
        t = torch.movedim(t, axes, list(range(self.n + 1 - k, self.n + 1)))
        shape = t.shape
        t = t.reshape(b, -1, 2**k) @ u.transpose(-1, -2)
        t = t.reshape(max(b, u.shape[0]), *shape[1:])
        t = torch.movedim(t, list(range(self.n + 1 - k, self.n + 1)), axes)
        return t.reshape(t.shape[0], self.dim)


def _cat_qubits(pieces, qubit_lists, n) -> torch.Tensor:
    """Assemble per-kind [b, m, 2, 2] pieces into [b, n, 2, 2] in qubit order."""
    order = [q for qs in qubit_lists for q in qs]
    if len(pieces) == 1 and order == list(range(n)):
        return pieces[0]
    b = max(p.shape[0] for p in pieces)
    eye = torch.eye(2, dtype=CDTYPE).expand(b, n - len(order), 2, 2) if len(order) < n else None
    pieces = [p.expand(b, -1, -1, -1) for p in pieces]
    if eye is not None:
        pieces.append(eye)
        order = order + [q for q in range(n) if q not in order]
    inv = [0] * n
    for pos, q in enumerate(order):
        inv[q] = pos
    return torch.cat(pieces, dim=1)[:, inv]


def _kron_chain(mats: torch.Tensor, qubits) -> torch.Tensor:
    """kron of the 2x2 matrices of ``qubits`` (first = most significant): [b, 2^k, 2^k]."""
    qubits = list(qubits)
    out = mats[:, qubits[0]]
    for q in qubits[1:]:
        m = mats[:, q]
        d = out.shape[-1] * 2
        out = (out[:, :, None, :, None] * m[:, None, :, None, :]).reshape(-1, d, d)
    return out


def _columns(per_qubit: list[list], n: int) -> list[list[_Column]]:
    """Fuse constant runs per qubit, then group the j-th gate of every qubit into column j."""
    fused: list[list] = []
    for ops in per_qubit:
        out: list = []
        for kind, payload in ops:
            if kind == "fixed" and out and out[-1][0] == "fixed":
                out[-1] = ("fixed", payload @ out[-1][1])
            else:
                out.append((kind, payload))
        fused.append(out)
    columns = []
    for j in range(max(len(f) for f in fused)):
        kinds: dict[str, list] = {}
        for q, ops in enumerate(fused):
            if j < len(ops):
                kinds.setdefault(ops[j][0], []).append((q, ops[j][1]))
        col = []
        for kind, items in kinds.items():
            qs = [q for q, _ in items]
            if kind == "fixed":
                mats = torch.tensor(np.stack([m for _, m in items]), dtype=CDTYPE)[None]
                col.append(_Column(kind, qs, matrices=mats))
            else:
                col.append(_Column(kind, qs, slots=[s for _, s in items]))
        columns.append(col)
    return columns


def _merge_monomials(stages: list) -> list:
    out: list = []
    for st in stages:
        if isinstance(st, _Monomial) and out and isinstance(out[-1], _Monomial):
            prev = out[-1]
            index = prev.index[st.index]
            phase = None
            if prev.phase is not None or st.phase is not None:
                p1 = prev.phase[st.index] if prev.phase is not None else 1
                p2 = st.phase if st.phase is not None else 1
                phase = p1 * p2
            out[-1] = _Monomial(index, phase)
        else:
            out.append(st)
    return out


def _diagonal_readout(observables, n: int) -> torch.Tensor:
    """[2^n, n_obs] table of eigenvalues of diagonal (I/Z) observables per basis state."""
    if observables is None:
        from .circuit import z_observables

        observables = z_observables(n)
    idx = np.arange(2**n)
    cols = []
    for obs in observables:
        obs = SparsePauliOp(obs)
        col = np.zeros(2**n)
        for label, coeff in obs.to_list():
            if set(label) - {"I", "Z"}:
                raise ValueError(
                    f"statevector engine reads out diagonal observables (I/Z) only, got {label!r}"
                )
            if abs(complex(coeff).imag) > 1e-12:
                raise ValueError(f"observable coefficient must be real, got {coeff}")
            sign = np.ones(2**n)
            for q, ch in enumerate(reversed(label)):
                if ch == "Z":
                    sign *= 1 - 2 * ((idx >> q) & 1)
            col += complex(coeff).real * sign
        cols.append(col)
    return torch.tensor(np.stack(cols, axis=1), dtype=RDTYPE)
