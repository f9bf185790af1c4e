"""Exact statevector engine compiled from a Qiskit ``QuantumCircuit``, differentiable in torch.

The engine reads the circuit's instructions once and compiles them into a short list of
batched stages:

* runs of single-qubit gates become one **local layer**: a 2x2 matrix per qubit, applied to the
  state viewed as a ``2^hi x 2^lo`` matrix from both sides (``U_hi @ S @ U_lo^T``); the first
  layer, acting on ``|0...0>``, builds a product state directly;
* fixed gates whose matrix is a permutation with phases (CNOT, CZ, SWAP, CCX, ...) become one
  **monomial** stage (a gather and an optional phase); consecutive ones are composed, so a
  CNOT ring is one fixed permutation;
* other multi-qubit gates become a **dense** stage (a ``2^k x 2^k`` matrix on k qubits);
* parameter expressions (``arctan(x)``, ``arctan(x**2)``, ...) are grouped by their symbolic
  shape and evaluated with one call per group.

Conventions follow Qiskit: qubit 0 is the least significant bit of a basis index.
Amplitudes are complex128, so results agree with ``qiskit.quantum_info.Statevector`` to ~1e-12.

Three executors share this compiled program (``mode=`` or the environment variable
``QA3C_ENGINE=numba|numpy|reference``; default ``numba`` when numba is installed, else ``numpy``):

* :meth:`CircuitEngine.reference` (mode ``reference``) runs the stages as plain torch ops
  differentiated by autograd (a few hundred small torch ops per call): simple, and the reference
  the tests hold the fast paths to (1e-10, on the paper's circuit and on random circuits);
* mode ``numba``: the stages become a flat op stream run by two compiled kernels
  (:mod:`qa3c_qiskit.engine_kernels`: angle expressions, gates, readout in one call; the adjoint
  backward in another), wrapped in one ``torch.autograd.Function``; a call costs a few
  microseconds of Python, and the kernels are compiled once per machine (numba's on-disk cache);
* mode ``numpy``: the same stages in numpy inside one
  ``torch.autograd.Function`` whose backward is the **adjoint method**: the state after every
  stage is kept, the adjoint ``g`` (dL = Re sum conj(g) dpsi) is propagated back through each
  unitary stage, and every gate angle's gradient is ``Re sum(conj(r) * D)`` with ``r`` the
  2x2 reduced operator ``Tr_other(g psi^dagger)`` of its qubit(s) and ``D = (dG/dangle) G^dagger``
  the gate's generator (``-i/2 P`` for a Pauli rotation), carried to the layer's output;
  angle-expression derivatives come from sympy. Layers whose angles depend on the weights only
  are evaluated once per weight vector (batch size 1) and cached, since a worker's weights
  change only at a pull (every S steps); layers of equal structure are evaluated together.
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


def _expression_template(e, param_index: dict[str, int]):
    """(group key, parameter indices, sympy template, placeholder symbols) of an angle.

    Angles with the same symbolic shape (e.g. ``arctan(x[i]**2)`` for every i) share a key, so
    each shape is evaluated once for all its slots. A bare parameter has key ``"identity"``.
    """
    if isinstance(e, Parameter):
        return "identity", [param_index[e.name]], None, None
    sym = e.sympify()
    free = sorted(sym.free_symbols, key=lambda s: param_index[str(s)])
    idx = [param_index[str(s)] for s in free]
    dummies = sympy.symbols(f"_a0:{len(free)}")
    template = sym.xreplace(dict(zip(free, dummies)))
    return sympy.srepr(template), idx, template, dummies


def _compile_angles(exprs: list, param_index: dict[str, int]) -> _AngleProgram:
    prog = _AngleProgram(n_slots=len(exprs))
    by_key: dict[str, tuple[object, list, list]] = {}
    for slot, e in enumerate(exprs):
        if isinstance(e, ParameterExpression) and e.parameters:
            key, idx, template, dummies = _expression_template(e, param_index)
            fn = None
            if template is not None and key not in by_key:
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


ENGINE_MODES = ("numba", "numpy", "reference")


def numba_available() -> bool:
    """True if the compiled kernels (:mod:`qa3c_qiskit.engine_kernels`) can be imported."""
    try:
        from . import engine_kernels  # noqa: F401
    except ImportError:
        return False
    return True


def engine_mode(mode: str | None = None) -> str:
    """The executor to use: ``mode`` if given, else the environment variable ``QA3C_ENGINE``,
    else ``numba`` when numba is installed and ``numpy`` otherwise."""
    import os

    mode = mode or os.environ.get("QA3C_ENGINE") or None
    if mode is None:
        return "numba" if numba_available() else "numpy"
    if mode not in ENGINE_MODES:
        raise ValueError(
            f"unknown statevector engine mode {mode!r} (QA3C_ENGINE); "
            f"supported: {', '.join(ENGINE_MODES)}"
        )
    if mode == "numba" and not numba_available():
        raise ValueError("statevector engine mode 'numba' needs numba: pip install numba")
    return mode


class CircuitEngine:
    """Exact, batched, differentiable simulation of a parameterized ``QuantumCircuit``.

    ``engine(x, w)`` takes inputs ``x`` of shape ``[B, len(input_params)]`` and weights ``w`` of
    shape ``[len(weight_params)]`` (shared) or ``[B, len(weight_params)]`` (per sample) and returns the expectation values of ``observables``
    (diagonal Pauli strings, ``Z_i`` on each qubit by default) as a ``[B, n_obs]`` float64
    tensor, differentiable with respect to both.

    ``mode`` picks the executor (see :func:`engine_mode`): ``numba`` (compiled kernels, the
    default when numba is installed), ``numpy`` (vectorised numpy) or ``reference`` (torch
    autograd); all three compute the same values and gradients.
    """

    def __init__(
        self,
        circuit: QuantumCircuit,
        input_params: Sequence[Parameter],
        weight_params: Sequence[Parameter],
        observables: Sequence[SparsePauliOp] | None = None,
        mode: str | None = None,
    ):
        self.mode = engine_mode(mode)
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
        program = _NumbaProgram if self.mode == "numba" else _FastProgram
        self.fast = program(self, exprs, param_index)

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
    def _check(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x[None]
        ok = x.dim() == 2 and x.shape[-1] == self.num_inputs
        ok = ok and (w.shape == (self.num_weights,) or w.shape == (x.shape[0], self.num_weights))
        if not ok:
            raise ValueError(
                f"expected inputs [B, {self.num_inputs}] and weights [{self.num_weights}] "
                f"or [B, {self.num_weights}], got {tuple(x.shape)} and {tuple(w.shape)}"
            )
        return x

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """<observables> for inputs ``x`` [B, n_in] and weights ``w`` [n_w] (shared by every row)
        or [B, n_w] (one weight vector per row): [B, n_obs] float64. The weight gradient has the
        shape of ``w``: summed over the batch for shared weights, per row otherwise.

        Fast path (mode ``numba`` or ``numpy``): forward and adjoint backward in one autograd
        function; mode ``reference``: :meth:`reference`.
        """
        x = self._check(x, w)
        if self.mode == "reference":
            return self.reference(x, w)
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return _AdjointFunction.apply(x, w, self.fast)
        out, _ = self.fast.forward(_np64(x), _np64(w), keep=False)
        return torch.from_numpy(out)

    def reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The same as ``engine(x, w)``, executed as plain torch ops differentiated by autograd."""
        x = self._check(x, w)
        batch = x.shape[0]
        theta = torch.cat(
            [x.to(RDTYPE), w.to(RDTYPE).expand(batch, -1)], dim=1
        )  # w: [n_w] or [B, n_w]
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


# --------------------------------------------------------------------------------------------
# Fast path: numpy forward, adjoint backward
# --------------------------------------------------------------------------------------------
# Gate matrices with their angle *generators*, vectorised over angle arrays of any shape S:
# fn(*angles[S], derivs) -> (matrix M [*S, d, d], [D_a = (dM / d angle_a) M^dagger, one per angle,
# each broadcastable to [*S, d, d]] or None if not derivs). With the reduced operator
# r = Tr_other(g psi^dagger) right after the gate, dL/d angle_a = Re sum(conj(r) * D_a).
_I2 = np.eye(2, dtype=complex)
_X = np.array([[0, 1], [1, 0]], dtype=complex)
_Y = np.array([[0, -1j], [1j, 0]])
_Z = np.diag([1.0, -1.0]).astype(complex)


def _np_pauli_rotation(gen: np.ndarray):
    """exp(-i t/2 P) = cos(t/2) I - i sin(t/2) P, whose generator is the constant -i/2 P."""
    eye = np.eye(gen.shape[0], dtype=complex)
    m_gen, d_gen = -1j * gen, [-0.5j * gen]

    def fn(t, derivs=True):
        c, s = np.cos(t / 2)[..., None, None], np.sin(t / 2)[..., None, None]
        return c * eye + s * m_gen, d_gen

    return fn


_P_GEN = [np.diag([0.0, 1.0j])]


def _np_p(t, derivs=True):
    m = np.zeros(t.shape + (2, 2), dtype=complex)
    m[..., 0, 0] = 1
    m[..., 1, 1] = np.exp(1j * t)
    return m, _P_GEN


def _np_u(theta, phi, lam, derivs=True):
    c, s = np.cos(theta / 2), np.sin(theta / 2)
    ep, el, epl = np.exp(1j * phi), np.exp(1j * lam), np.exp(1j * (phi + lam))
    m = np.stack([c, -el * s, ep * s, epl * c], -1).reshape(theta.shape + (2, 2))
    if not derivs:
        return m, None
    dt = 0.5 * np.stack([-s, -el * c, ep * c, -epl * s], -1).reshape(m.shape)
    z = np.zeros_like(c)
    dp = np.stack([z, z, 1j * ep * s, 1j * epl * c], -1).reshape(m.shape)
    dl = np.stack([z, -1j * el * s, z, 1j * epl * c], -1).reshape(m.shape)
    mh = m.conj().swapaxes(-1, -2)
    return m, [dt @ mh, dp @ mh, dl @ mh]


def _np_controlled(single):
    """Controlled gate (control = first qarg = local bit 0) from a single-qubit one."""

    def embed(m, identity):
        out = np.zeros(m.shape[:-2] + (4, 4), dtype=complex)
        if identity:
            out[..., 0, 0] = out[..., 2, 2] = 1
        out[..., 1::2, 1::2] = m
        return out

    def fn(*angles, derivs=True):
        m, ds = single(*angles, derivs=derivs)
        return embed(m, True), ([embed(d, False) for d in ds] if derivs else None)

    return fn


_np_rx = _np_pauli_rotation(_X)
_np_ry = _np_pauli_rotation(_Y)
_np_rz = _np_pauli_rotation(_Z)

#: numpy twins of PARAM_GATES (same names, qubit counts and angle counts).
NP_GATES = {
    "rx": _np_rx,
    "ry": _np_ry,
    "rz": _np_rz,
    "p": _np_p,
    "u": _np_u,
    "rzz": _np_pauli_rotation(np.kron(_Z, _Z)),
    "rxx": _np_pauli_rotation(np.kron(_X, _X)),
    "ryy": _np_pauli_rotation(np.kron(_Y, _Y)),
    "crx": _np_controlled(_np_rx),
    "cry": _np_controlled(_np_ry),
    "crz": _np_controlled(_np_rz),
    "cp": _np_controlled(_np_p),
}


def _mm2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stacked 2x2 matrix products a @ b; numpy's matmul loops slowly over tiny matrices."""
    return a[..., :, :1] * b[..., :1, :] + a[..., :, 1:] * b[..., 1:, :]


def limit_blas_threads(n: int = 1) -> None:
    """Limit numpy's BLAS to ``n`` threads for the rest of the process (a worker: 1).

    The fast path makes many tiny BLAS calls; a multi-threaded OpenBLAS may hand some of them
    to its thread pool, which on a busy machine costs milliseconds per call.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it numpy keeps its default
        return
    threadpool_limits(n, user_api="blas")


def _np64(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t if t.dtype == RDTYPE else t.to(RDTYPE)).numpy()


class _NpAngles:
    """Angle slots as numpy functions of theta [B, P], with their partial derivatives."""

    def __init__(self, exprs: list, param_index: dict[str, int], n_params: int):
        self.n_slots, self.n_params = len(exprs), n_params
        groups: dict[str, list] = {}
        self.const_slots, const_vals = [], []
        for slot, e in enumerate(exprs):
            if not (isinstance(e, ParameterExpression) and e.parameters):
                self.const_slots.append(slot)
                const_vals.append(float(e))
                continue
            key, idx, template, dummies = _expression_template(e, param_index)
            entry = groups.setdefault(key, [template, dummies, [], []])
            entry[2].append(idx)
            entry[3].append(slot)
        self.const_vals = np.array(const_vals)
        self.groups = []
        for key, (template, dummies, idx, slots) in groups.items():
            idx = np.array(idx, dtype=np.int64)  # [m, n_args]
            if key == "identity":
                fn, dfns = None, None
            else:
                fn = sympy.lambdify(dummies, template, modules="numpy")
                dfns = [sympy.lambdify(dummies, sympy.diff(template, d), "numpy") for d in dummies]
            # scatter[k] [m, P]: one-hot rows sending slot gradients to parameter k of each slot
            scatter = np.zeros((idx.shape[1], len(slots), n_params))
            for k in range(idx.shape[1]):
                scatter[k, np.arange(len(slots)), idx[:, k]] = 1.0
            self.groups.append((fn, dfns, idx, np.array(slots), scatter))

    def forward(self, theta: np.ndarray) -> tuple[np.ndarray, list]:
        """(angles [B, n_slots], per group the partial derivatives needed by backward)."""
        b = theta.shape[0]
        ang = np.empty((b, self.n_slots))
        if self.const_slots:
            ang[:, self.const_slots] = self.const_vals
        partials = []
        for fn, _, idx, slots, _ in self.groups:
            if fn is None:
                ang[:, slots] = theta[:, idx[:, 0]]
                partials.append(None)
                continue
            cols = [theta[:, idx[:, k]] for k in range(idx.shape[1])]
            ang[:, slots] = fn(*cols)
            partials.append(cols)
        return ang, partials

    def backward(self, g_ang: np.ndarray, partials: list) -> np.ndarray:
        """dL/dtheta [B, P] from dL/dangles [B, n_slots]."""
        g_theta = np.zeros((g_ang.shape[0], self.n_params))
        for (fn, dfns, _, slots, scatter), cols in zip(self.groups, partials):
            g = g_ang[:, slots]
            if fn is None:
                g_theta += g @ scatter[0]
                continue
            for k, dfn in enumerate(dfns):
                g_theta += (g * dfn(*cols)) @ scatter[k]  # a derivative may be a constant
        return g_theta


def _trace_map(n_reg: int) -> np.ndarray:
    """[(2^k)^2, k*4] 0/1 matrix: a k-qubit operator R[h, h'] (flattened) -> its k one-qubit
    partial traces C_j[a, c] (summing the other qubits' diagonal), qubit j = bit j of h."""
    d = 2**n_reg
    t = np.zeros((d * d, max(n_reg, 1) * 4))
    for h in range(d):
        for h2 in range(d):
            for j in range(n_reg):
                mask = ~(1 << j)
                if (h & mask) == (h2 & mask):
                    t[h * d + h2, j * 4 + ((h >> j) & 1) * 2 + ((h2 >> j) & 1)] = 1.0
    return t.astype(complex)


class _FastLocal:
    """A local layer for the fast path: per-qubit 2x2 matrices, applied as A @ S @ B^T.

    For the backward, each gate angle's generator D (``dG/dangle = D G``) is carried to the
    layer's output, ``E = S D S^dagger`` with ``S`` the part of the layer after the gate, so
    that all angle gradients of the layer are one contraction ``Re sum(conj(red[q]) * E)``
    with the per-qubit reduced operators ``red`` at the layer's output.
    """

    def __init__(self, st: _LocalLayer, n: int, input_slots: set[int]):
        self.n, self.lo = n, n // 2
        self.columns = []  # per column: list of (kind, qubit array | None = all, payload)
        slots_used = set()
        for col in st.columns:
            parts = []
            full = len(col) == 1 and col[0].qubits == list(range(n))
            for part in col:
                qs = None if full else np.array(part.qubits)
                if part.kind == "fixed":
                    parts.append(("fixed", qs, part.matrices[0].numpy()))
                else:
                    slots = np.array(part.slots, dtype=np.int64)  # [m, n_angles]
                    slots_used.update(slots.ravel().tolist())
                    parts.append((part.kind, qs, slots))
            self.columns.append(parts)
        self.input_dependent = bool(slots_used & input_slots)
        # layers with equal signatures differ only in their angle slots (slot_order, position
        # by position), so weight-only ones can be evaluated together, one row per layer
        self.signature = tuple(
            tuple(
                (kind, None if qs is None else tuple(qs.tolist()))
                + ((payload.tobytes(),) if kind == "fixed" else (payload.shape,))
                for kind, qs, payload in parts
            )
            for parts in self.columns
        )
        self.slot_order = np.array(
            [s for parts in self.columns for k, _, p in parts if k != "fixed" for s in p.ravel()],
            dtype=np.int64,
        )
        # gradient bookkeeping in the order matrices() builds E: last column first
        q_all, s_all = [], []
        for parts in reversed(self.columns):
            for kind, qs, slots in parts:
                if kind == "fixed":
                    continue
                qubits = list(range(n)) if qs is None else qs.tolist()
                for a in range(slots.shape[1]):
                    q_all += qubits
                    s_all += slots[:, a].tolist()
        self.q_all = np.array(q_all, dtype=np.int64)
        self.s_all = np.array(s_all, dtype=np.int64)  # every angle slot once
        self.has_angles = bool(s_all)
        k = np.arange(2**n)
        self.product_index = np.stack([2 * q + ((k >> q) & 1) for q in range(n)])  # [n, 2^n]

    def matrices(self, ang: np.ndarray, derivs: bool = True, product: bool = False) -> dict:
        """What applying (and differentiating) the layer needs, from angles [b, n_slots]:
        ``A`` and ``B`` (krons of the hi and lo qubits' matrices) or, for a ``product`` layer
        on |0...0>, ``vecs`` [b, n, 2] (each qubit's matrix times |0>); if ``derivs``, also
        ``E`` [b, K, 2, 2] (every angle's generator at the layer output) and for non-product
        layers ``A_h``, ``B_c`` (A^dagger and conj(B), applied to the adjoint)."""
        b = ang.shape[0]
        cols, gens = [], []
        for parts in self.columns:
            c, gs = None, []
            for kind, qs, payload in parts:
                if kind == "fixed":
                    m = payload
                else:
                    args = [ang[:, payload[:, a]] for a in range(payload.shape[1])]
                    m, d = NP_GATES[kind](*args, derivs=derivs)
                    gs.append((qs, d))
                if qs is None:
                    c = m  # [n, 2, 2] (fixed) or [b, n, 2, 2]: broadcasting does the rest
                else:
                    if c is None:
                        c = np.broadcast_to(_I2, (b, self.n, 2, 2)).copy()
                    c[:, qs] = m
            cols.append(c)
            gens.append(gs)
        out = {}
        if derivs and self.has_angles:
            e = np.empty((b, len(self.s_all), 2, 2), dtype=complex)
            k, after = 0, None  # after = the layer's columns after column j, fused
            for j in range(len(cols) - 1, -1, -1):
                for qs, ds in gens[j]:
                    m = self.n if qs is None else len(qs)
                    for d in ds:
                        if after is not None:
                            s = after if qs is None else after[..., qs, :, :]
                            d = _mm2(_mm2(s, d), s.conj().swapaxes(-1, -2))
                        e[:, k : k + m] = d
                        k += m
                if j and any(gens[:j]):
                    after = cols[j] if after is None else _mm2(after, cols[j])
            out["E"] = e
        if product:  # only M|0>: a chain of 2x2 matrix-vector products
            v = cols[0][..., 0]
            for c in cols[1:]:
                v = c[..., 0] * v[..., :1] + c[..., 1] * v[..., 1:]
            out["vecs"] = np.broadcast_to(v, (b, self.n, 2))
            return out
        fused = cols[0]
        for c in cols[1:]:
            fused = _mm2(c, fused)
        if fused.ndim == 3:  # a layer of constant full columns only
            fused = np.broadcast_to(fused, (b, self.n, 2, 2))
        out["A"] = _np_kron(fused, list(range(self.n - 1, self.lo - 1, -1)))
        lo_q = list(range(self.lo - 1, -1, -1))
        out["B"] = _np_kron(fused, lo_q) if lo_q else None
        if derivs:
            out["A_h"] = out["A"].conj().swapaxes(-1, -2)
            out["B_c"] = None if out["B"] is None else out["B"].conj()
        return out

    def apply(self, mats: dict, psi: np.ndarray | None) -> np.ndarray:
        """The layer applied to ``psi`` [b, 2^n] (None: to |0...0>): [b', 2^n]."""
        if psi is None:  # product state: psi[k] = prod_q (M_q|0>)[bit q of k]
            v = mats["vecs"]
            return v.reshape(v.shape[0], 2 * self.n)[:, self.product_index].prod(axis=1)
        h, l_ = 2 ** (self.n - self.lo), 2**self.lo
        s = psi.reshape(psi.shape[0], h, l_)
        s = mats["A"] @ s
        if mats["B"] is not None:
            s = s @ mats["B"].transpose(0, 2, 1)
        return s.reshape(s.shape[0], h * l_)


def _np_kron(mats: np.ndarray, qubits: list[int]) -> np.ndarray:
    """kron of the [b, 2, 2] matrices of ``qubits`` (first = most significant): [b, d, d]."""
    out = mats[:, qubits[0]]
    for q in qubits[1:]:
        m = mats[:, q]
        d = out.shape[-1] * 2
        out = (out[:, :, None, :, None] * m[:, None, :, None, :]).reshape(-1, d, d)
    return out


class _FastProgram:
    """The compiled stages of a :class:`CircuitEngine`, executed in numpy with an adjoint
    backward. ``forward`` returns the outputs and a tape; ``backward`` the input/weight grads."""

    def __init__(self, engine: CircuitEngine, exprs: list, param_index: dict[str, int]):
        self.n, self.dim = engine.n, engine.dim
        self.n_in, self.n_w = engine.num_inputs, engine.num_weights
        self.angles = _NpAngles(exprs, param_index, self.n_in + self.n_w)
        input_slots = {
            s
            for fn, dfns, idx, slots, _ in self.angles.groups
            for s, row in zip(slots.tolist(), idx.tolist())
            if min(row) < self.n_in
        }
        self.stages = []
        for st in engine.stages:
            if isinstance(st, _LocalLayer):
                self.stages.append(_FastLocal(st, self.n, input_slots))
            elif isinstance(st, _Monomial):
                inv = torch.argsort(st.index).numpy()
                ph = None if st.phase is None else st.phase.numpy()
                self.stages.append(("monomial", st.index.numpy(), inv, ph))
            else:
                mat = None if st.matrix is None else st.matrix[0].numpy()
                slots = None if st.slots is None else np.array(st.slots)
                dep = slots is not None and bool(set(st.slots) & input_slots)
                self.stages.append(("dense", st.qubits, mat, st.kind, slots, dep))
        self.readout = engine.readout.numpy()
        self.readout2 = np.repeat(self.readout, 2, axis=0)  # rows for (re, im) of each amplitude
        lo = self.n // 2
        self.trace_hi, self.trace_lo = _trace_map(self.n - lo), _trace_map(lo)
        self._cache: dict[bytes, list] = {}
        groups: dict[tuple, list[int]] = {}
        for i, st in enumerate(self.stages):
            if isinstance(st, _FastLocal) and not st.input_dependent and i > 0:
                groups.setdefault(st.signature, []).append(i)
        # (representative layer, stage indices, [L, K] slots gathered into the rep's slots)
        self.weight_groups = [
            (self.stages[idx[0]], idx, np.stack([self.stages[i].slot_order for i in idx]))
            for idx in groups.values()
        ]

    # -- forward ---------------------------------------------------------------------------------
    def _weight_layers(self, w: np.ndarray, ang1: np.ndarray) -> list:
        """Matrices of the weight-only local layers (batch 1), cached per weight vector."""
        key = w.tobytes()
        hit = self._cache.get(key)
        if hit is None:
            hit = [None] * len(self.stages)
            st = self.stages[0] if self.stages else None
            if isinstance(st, _FastLocal) and not st.input_dependent:
                hit[0] = st.matrices(ang1, product=True)
            for rep, idx, gather in self.weight_groups:
                ang = np.zeros((len(idx), ang1.shape[1]))
                ang[:, rep.slot_order] = ang1[0, gather]
                mats = rep.matrices(ang)  # row r = layer idx[r]
                for r, i in enumerate(idx):
                    hit[i] = {k: None if v is None else v[r : r + 1] for k, v in mats.items()}
            if len(self._cache) >= 8:  # a worker alternates actor/critic weights: keep a few
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def forward(self, x: np.ndarray, w: np.ndarray, keep: bool):
        b = x.shape[0]
        theta = np.empty((b, self.n_in + self.n_w))
        theta[:, : self.n_in] = x
        theta[:, self.n_in :] = w
        ang, partials = self.angles.forward(theta)
        per_sample = w.ndim == 2  # one weight vector per row: no weight-only layer is shared
        cached = [None] * len(self.stages) if per_sample else self._weight_layers(w, ang[:1])
        psi = None
        tape = []
        for st, mats in zip(self.stages, cached):
            psi_in = psi
            if isinstance(st, _FastLocal):
                if mats is None:  # input-dependent: batch B, derivatives only for backward
                    mats = st.matrices(ang, derivs=keep, product=psi is None)
                psi = st.apply(mats, psi)
            else:
                if psi is None:
                    psi = np.zeros((1, self.dim), dtype=complex)
                    psi[0, 0] = 1
                    psi_in = psi
                if st[0] == "monomial":
                    psi = psi[:, st[1]] if st[3] is None else psi[:, st[1]] * st[3]
                else:
                    mats = self._dense_matrix(st, ang, keep, per_sample)
                    psi = self._apply_dense(st[1], mats[0], psi)
            if keep:
                tape.append((psi_in, psi, mats))
        if psi is None:
            psi = np.zeros((1, self.dim), dtype=complex)
            psi[0, 0] = 1
        out = np.square(np.ascontiguousarray(psi).view(np.float64)) @ self.readout2  # |psi|^2 R
        if out.shape[0] != b:
            out = np.broadcast_to(out, (b, out.shape[1])).copy()
        return out, ((theta, ang, partials, psi, tape, per_sample) if keep else None)

    def _reduced(self, gm: np.ndarray, sc: np.ndarray, b: int) -> np.ndarray:
        """Per-qubit 2x2 reduced operators Tr_other(g psi^dagger): [b, n, 2, 2], qubit order.

        ``gm`` and ``sc`` (conj psi) are [B, 2^hi, 2^lo]; ``b == 1`` sums over the batch (a
        weight-only layer, whose angles are shared by all rows).
        """
        h, l_ = gm.shape[1], gm.shape[2]
        r_hi = gm @ sc.transpose(0, 2, 1)  # [B, h, h], summed over the lo qubits
        if b == 1 and gm.shape[0] != 1:
            r_hi = r_hi.sum(0, keepdims=True)
        parts = [(r_hi.reshape(b, h * h) @ self.trace_hi).reshape(b, -1, 2, 2)]
        if l_ > 1:
            r_lo = gm.transpose(0, 2, 1) @ sc  # [B, l, l], summed over the hi qubits
            if b == 1 and r_lo.shape[0] != 1:
                r_lo = r_lo.sum(0, keepdims=True)
            parts.insert(0, (r_lo.reshape(b, l_ * l_) @ self.trace_lo).reshape(b, -1, 2, 2))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    @staticmethod
    def _dense_matrix(st, ang, derivs, per_sample=False):
        _, qubits, mat, kind, slots, dep = st
        if mat is not None:
            return mat[None], None
        a = ang if dep or per_sample else ang[:1]
        return NP_GATES[kind](*[a[:, s] for s in slots], derivs=derivs)

    def _dense_view(self, qubits: list[int], psi: np.ndarray) -> np.ndarray:
        """psi [b, 2^n] -> [b, rest, 2^k], the gate's qubits last (most significant first)."""
        t = psi.reshape([psi.shape[0]] + [2] * self.n)
        axes = [self.n - q for q in reversed(qubits)]
        t = np.moveaxis(t, axes, list(range(self.n + 1 - len(qubits), self.n + 1)))
        return t.reshape(psi.shape[0], -1, 2 ** len(qubits))

    def _dense_unview(self, qubits: list[int], t: np.ndarray) -> np.ndarray:
        k = len(qubits)
        axes = [self.n - q for q in reversed(qubits)]
        t = t.reshape([t.shape[0]] + [2] * self.n)
        t = np.moveaxis(t, list(range(self.n + 1 - k, self.n + 1)), axes)
        return t.reshape(t.shape[0], self.dim)

    def _apply_dense(self, qubits, u, psi):
        return self._dense_unview(qubits, self._dense_view(qubits, psi) @ u.swapaxes(-1, -2))

    # -- backward --------------------------------------------------------------------------------
    def backward(self, tape, g_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dL/dx [B, n_in], dL/dw [n_w]) from dL/dout [B, n_obs].

        Adjoint convention: ``g`` is the complex gradient with dL = Re(sum conj(g) dpsi).
        """
        theta, ang, partials, psi, stages, per_sample = tape
        g_ang = np.zeros_like(ang)
        g = 2 * psi * (g_out @ self.readout.T)  # [B, dim]
        lo = self.n // 2
        h, l_ = 2 ** (self.n - lo), 2**lo
        for i in range(len(self.stages) - 1, -1, -1):
            st = self.stages[i]
            psi_in, psi_out, mats = stages[i]
            if isinstance(st, _FastLocal):
                gm = g.reshape(-1, h, l_)
                if st.has_angles:
                    red = self._reduced(gm, psi_out.reshape(-1, h, l_).conj(), mats["E"].shape[0])
                    val = (red[:, st.q_all].conj() * mats["E"]).real.sum((-1, -2))  # [b, K]
                    g_ang[: val.shape[0], st.s_all] += val
                if psi_in is not None and i > 0:
                    s = mats["A_h"] @ gm
                    if mats["B_c"] is not None:
                        s = s @ mats["B_c"]
                    g = s.reshape(s.shape[0], self.dim)
            elif st[0] == "monomial":
                g = g if st[3] is None else g * st[3].conj()
                g = g[:, st[2]]
            else:
                _, qubits, _, kind, slots, dep = st
                u = mats[0]
                if kind is not None:  # reduced operator on the gate's qubits after it
                    gv = self._dense_view(qubits, g)
                    pv = self._dense_view(qubits, psi_out)
                    red = gv.swapaxes(-1, -2) @ pv.conj()  # [b, d, d]
                    if u.shape[0] == 1 and red.shape[0] != 1:
                        red = red.sum(0, keepdims=True)
                    for a, d in enumerate(mats[1]):
                        val = (red.conj() * d).real.sum((-1, -2))
                        g_ang[: val.shape[0], slots[a]] += val
                g = self._apply_dense(qubits, u.conj().swapaxes(-1, -2), g)
        g_theta = self.angles.backward(g_ang, partials)
        gw = g_theta[:, self.n_in :]
        return g_theta[:, : self.n_in], (gw if per_sample else gw.sum(0))


class _AdjointFunction(torch.autograd.Function):
    """engine outputs [B, n_obs] from (x [B, n_in], w [n_w]); backward by the adjoint method."""

    @staticmethod
    def forward(ctx, x, w, program):
        out, tape = program.forward(_np64(x), _np64(w), keep=True)
        ctx.program, ctx.tape = program, tape
        ctx.dtypes = (x.dtype, w.dtype)
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gx, gw = ctx.program.backward(ctx.tape, _np64(grad))
        ctx.tape = None
        gx = torch.from_numpy(gx).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = torch.from_numpy(gw).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return gx, gw, None


# --------------------------------------------------------------------------------------------
# Compiled path: the whole stage program in two numba kernels (qa3c_qiskit.engine_kernels)
# --------------------------------------------------------------------------------------------
_KERNELS_READY = False


def _warm_kernels() -> float:
    """Compile (or load from numba's on-disk cache) the kernels once per process: seconds."""
    global _KERNELS_READY
    if _KERNELS_READY:
        return 0.0
    import time

    from . import engine_kernels as K

    t0 = time.perf_counter()
    prog = np.array([K.OP_LOCAL, 1, 0, 1, K.K_RY, 0, -1, -1], dtype=np.int64)
    perm = np.zeros((0, 2), dtype=np.int64)
    ang, readout = np.zeros((1, 1)), np.array([[1.0], [-1.0]])
    cplx = np.zeros(0, dtype=complex)
    _, states = K.forward(ang, prog, perm, cplx, readout, True)
    K.backward(ang, prog, perm, cplx, readout, states, np.ones((1, 1)))
    aprog = np.array([1, 0, 1, 1, 1, 1, 0, 2, K.A_PARAM, 0], dtype=np.int64)
    x = np.zeros((1, 1))
    for keep in (False, True):
        _, tapes, ang, dang = K.forward_xw(
            x, np.zeros((1, 0)), aprog, prog, perm, cplx, readout, keep
        )
    for per_sample in (False, True):
        K.backward_xw(
            ang, dang, aprog, prog, perm, cplx, readout, tapes, np.ones((1, 1)), per_sample
        )
    _KERNELS_READY = True
    return time.perf_counter() - t0


class _UnsupportedExpression(Exception):
    pass


def _angle_code(exprs: list, param_index: dict[str, int], n_in: int, n_w: int, const) -> np.ndarray:
    """The angle slots ``exprs`` as the stack-machine program of
    :func:`qa3c_qiskit.engine_kernels.angles` (constants stored with ``const(values) -> offset``);
    raises _UnsupportedExpression for a sympy node it does not know."""
    slots: list[list[int]] = []
    k_max, depth_max = 1, 1
    for e in exprs:
        params, code, depth = _slot_code(e, param_index, const)
        k_max, depth_max = max(k_max, len(params)), max(depth_max, depth)
        slots.append([len(params), *params, len(code), *code])
    header = [n_in, n_w, len(exprs), k_max, depth_max]
    return np.array(header + [v for s in slots for v in s], dtype=np.int64)


def _slot_code(e, param_index: dict[str, int], const) -> tuple[list[int], list[int], int]:
    """(free parameter indices, postfix code, stack depth) of one angle expression."""
    from . import engine_kernels as K

    if not (isinstance(e, ParameterExpression) and e.parameters):
        return [], [K.A_CONST, const(np.array([float(e)]))], 1
    sym = e.sympify()
    free = sorted(sym.free_symbols, key=lambda s: param_index[str(s)])
    local = {str(s): j for j, s in enumerate(free)}
    code: list[int] = []
    depth = [0, 0]  # current, max

    def push(n: int) -> None:
        depth[0] += n
        depth[1] = max(depth)

    def emit(node) -> None:
        if node.is_Symbol:
            code.extend([K.A_PARAM, local[str(node)]])
            push(1)
        elif node.is_number:
            value = complex(node)
            if value.imag:
                raise _UnsupportedExpression(str(node))
            code.extend([K.A_CONST, const(np.array([value.real]))])
            push(1)
        elif node.is_Add or node.is_Mul:
            for arg in node.args:
                emit(arg)
            code.extend([K.A_ADD if node.is_Add else K.A_MUL, len(node.args)])
            push(1 - len(node.args))
        elif node.is_Pow:
            emit(node.base)
            emit(node.exp)
            code.append(K.A_POW)
            push(-1)
        elif node.func.__name__ in K.FUNC_CODES and len(node.args) == 1:
            emit(node.args[0])
            code.extend([K.A_FUNC, K.FUNC_CODES[node.func.__name__]])
        else:
            raise _UnsupportedExpression(str(node))

    emit(sym)
    return [param_index[str(s)] for s in free], code, depth[1]


class _NumbaProgram:
    """The compiled stages of a :class:`CircuitEngine` as a flat op stream for the numba
    kernels; the same ``forward``/``backward`` interface as :class:`_FastProgram`.

    Angles (parameter expressions) stay in numpy (:class:`_NpAngles`, a handful of vectorised
    calls); everything from the gate matrices to the readout, and the whole adjoint backward,
    runs in one kernel call each, so a call costs a few microseconds of Python.
    """

    def __init__(self, engine: CircuitEngine, exprs: list, param_index: dict[str, int]):
        from . import engine_kernels as K

        self.kernels = K
        self.n, self.dim = engine.n, engine.dim
        self.n_in, self.n_w = engine.num_inputs, engine.num_weights
        self.angles = _NpAngles(exprs, param_index, self.n_in + self.n_w)
        prog: list[int] = []
        perms: list[np.ndarray] = []
        consts: list[np.ndarray] = []
        n_const = 0

        def const(values: np.ndarray) -> int:
            nonlocal n_const
            consts.append(np.asarray(values, dtype=complex).ravel())
            n_const += consts[-1].size
            return n_const - consts[-1].size

        for st in engine.stages:
            if isinstance(st, _LocalLayer):
                chains = []
                for q, ops in enumerate(st.per_qubit):
                    gates: list[list[int]] = []
                    fixed = None  # consecutive constant gates, multiplied together
                    for kind, payload in ops + [("end", None)]:
                        if kind == "fixed":
                            fixed = payload if fixed is None else payload @ fixed
                            continue
                        if fixed is not None:
                            gates.append([0, const(fixed), -1, -1])
                            fixed = None
                        if kind != "end":
                            slots = list(payload) + [-1] * (3 - len(payload))
                            gates.append([K.KIND_CODES[kind]] + slots)
                    if gates:
                        chains.append([q, len(gates)] + [v for gt in gates for v in gt])
                if chains:
                    prog += [K.OP_LOCAL, len(chains)] + [v for c in chains for v in c]
            elif isinstance(st, _Monomial):
                index = st.index.numpy().astype(np.int64)
                perms += [index, np.argsort(index)]
                off = -1 if st.phase is None else const(st.phase.numpy())
                prog += [K.OP_MONO, len(perms) // 2 - 1, off]
            else:
                if st.matrix is not None:
                    kind, s0 = 0, const(st.matrix[0].numpy())
                else:
                    kind, s0 = K.KIND_CODES[st.kind], st.slots[0]
                prog += [K.OP_DENSE, len(st.qubits)] + list(st.qubits) + [kind, s0]
        self.prog = np.array(prog, dtype=np.int64)
        self.perm = np.ascontiguousarray(
            np.stack(perms) if perms else np.zeros((0, self.dim), dtype=np.int64)
        )
        try:  # angle expressions compiled too, unless they use a function it does not know
            self.aprog = _angle_code(exprs, param_index, self.n_in, self.n_w, const)
        except _UnsupportedExpression:
            self.aprog = None
        self.cplx = np.concatenate(consts) if consts else np.zeros(0, dtype=complex)
        self.readout = np.ascontiguousarray(engine.readout.numpy())
        self.compile_seconds = _warm_kernels()

    def forward(self, x: np.ndarray, w: np.ndarray, keep: bool):
        """(outputs [B, n_obs], tape for :meth:`backward` or None)."""
        if self.aprog is not None:  # everything in one call
            out, tapes, ang, dang = self.kernels.forward_xw(
                np.ascontiguousarray(x),  # one compiled specialization: C-contiguous arrays
                np.ascontiguousarray(w if w.ndim == 2 else w[None]),  # [1 or B, n_w]
                self.aprog,
                self.prog,
                self.perm,
                self.cplx,
                self.readout,
                bool(keep),
            )
            return out, ((ang, dang, tapes, w.ndim == 2) if keep else None)
        b = x.shape[0]
        theta = np.empty((b, self.n_in + self.n_w))
        theta[:, : self.n_in] = x
        theta[:, self.n_in :] = w
        ang, partials = self.angles.forward(theta)
        out, states = self.kernels.forward(
            ang, self.prog, self.perm, self.cplx, self.readout, bool(keep)
        )
        return out, ((ang, partials, states, w.ndim == 2) if keep else None)

    def backward(self, tape, g_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dL/dx [B, n_in], dL/dw [n_w]) from dL/dout [B, n_obs]."""
        if self.aprog is not None:
            ang, dang, tapes, per_sample = tape
            gx, gw = self.kernels.backward_xw(
                ang,
                dang,
                self.aprog,
                self.prog,
                self.perm,
                self.cplx,
                self.readout,
                tapes,
                np.ascontiguousarray(g_out),
                per_sample,
            )
            return gx, (gw if per_sample else gw[0])
        ang, partials, states, per_sample = tape
        g_ang = self.kernels.backward(
            ang, self.prog, self.perm, self.cplx, self.readout, states, np.ascontiguousarray(g_out)
        )
        g_theta = self.angles.backward(g_ang, partials)
        gw = g_theta[:, self.n_in :]
        return g_theta[:, : self.n_in], (gw if per_sample else gw.sum(0))
