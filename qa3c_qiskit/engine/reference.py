"""The reference executor: a :class:`~.compile.Program` run as plain torch ops, differentiated by
autograd (``QA3C_ENGINE=reference``).

A few hundred small torch ops per call: slow, but short and obviously right; the tests hold the
compiled executor to it (1e-10). Local layers are applied to the state viewed as a
``2^hi x 2^lo`` matrix from both sides (``U_hi @ S @ U_lo^T``); the first one, on ``|0...0>``,
builds the product state directly.
"""

from __future__ import annotations

import numpy as np
import torch

from .compile import (
    A_ADD,
    A_CONST,
    A_MUL,
    A_PARAM,
    A_POW,
    CDTYPE,
    FUNC_CODES,
    GATES,
    AngleProgram,
    Dense,
    LocalLayer,
    Monomial,
    Program,
)

RDTYPE = torch.float64
_TORCH_FUNCS = {
    "atan": torch.atan,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "asin": torch.asin,
    "acos": torch.acos,
    "exp": torch.exp,
    "log": torch.log,
    "Abs": torch.abs,
    "sign": torch.sign,
}
_FUNCS = {code: _TORCH_FUNCS[name] for name, code in FUNC_CODES.items()}


class TorchAngles:
    """The angle program evaluated with torch ops; slots of equal code run as one group."""

    def __init__(self, angles: AngleProgram):
        groups: dict[tuple, tuple[list, list]] = {}
        for s, slot in enumerate(angles.slots):
            key = []
            code = slot.code
            i = 0
            while i < len(code):
                op = code[i]
                if op == A_POW:
                    key.append((op,))
                    i += 1
                    continue
                arg = code[i + 1]
                key.append((op, float(angles.consts[arg]) if op == A_CONST else arg))
                i += 2
            entry = groups.setdefault((len(slot.params), tuple(key)), ([], []))
            entry[0].append(slot.params)
            entry[1].append(s)
        self.groups = [
            (key, torch.tensor(params, dtype=torch.long).reshape(len(slots), -1), slots)
            for (_, key), (params, slots) in groups.items()
        ]
        order = [s for _, _, slots in self.groups for s in slots]
        inv = np.empty(len(order), dtype=np.int64)
        inv[order] = np.arange(len(order))
        self.order = torch.from_numpy(inv)
        self.identity = bool((inv == np.arange(len(inv))).all())

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """Angles [B, n_slots] from theta [B, P]."""
        if not self.groups:
            return theta[:, :0]
        parts = [_run(key, theta[:, params]) for key, params, _ in self.groups]
        parts = [p.expand(theta.shape[0], len(s)) for p, (_, _, s) in zip(parts, self.groups)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out if self.identity else out[:, self.order]


def _run(key: tuple, cols: torch.Tensor) -> torch.Tensor:
    """Postfix code on columns ``cols`` [B, m, k] (slot parameters): [B, m]."""
    stack: list = []
    for item in key:
        op = item[0]
        if op == A_PARAM:
            stack.append(cols[..., item[1]])
        elif op == A_CONST:
            stack.append(torch.tensor(item[1], dtype=RDTYPE))
        elif op in (A_ADD, A_MUL):
            args = stack[-item[1] :]
            del stack[-item[1] :]
            acc = args[0]
            for a in args[1:]:
                acc = acc + a if op == A_ADD else acc * a
            stack.append(acc)
        elif op == A_POW:
            e = stack.pop()
            stack.append(stack.pop() ** e)
        else:  # A_FUNC
            stack.append(_FUNCS[item[1]](stack.pop()))
    out = stack[0]
    return out if out.dim() else out.expand(cols.shape[0], cols.shape[1])


class ReferenceExecutor:
    """``executor(x [B, n_in], w [n_w] or [B, n_w]) -> [B, n_obs]`` in torch ops (autograd)."""

    def __init__(self, program: Program):
        self.program = program
        self.n, self.dim = program.n, program.dim
        self.angles = TorchAngles(program.angles)
        self.readout = torch.from_numpy(program.readout.T.copy())  # [2^n, n_obs]
        self.stages = []
        for st in program.stages:
            if isinstance(st, LocalLayer):
                self.stages.append(("local", _columns(st.per_qubit)))
            elif isinstance(st, Monomial):
                ph = None if st.phase is None else torch.tensor(st.phase, dtype=CDTYPE)
                self.stages.append(("mono", torch.from_numpy(st.index), ph))
            else:
                self.stages.append(("dense", st))

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        theta = torch.cat([x.to(RDTYPE), w.to(RDTYPE).expand(batch, -1)], dim=1)
        angles = self.angles(theta)
        state = None
        for st in self.stages:
            if st[0] == "local":
                state = self._apply_local(st[1], state, angles)
                continue
            state = self._zero_state() if state is None else state
            if st[0] == "mono":
                state = state[:, st[1]] if st[2] is None else state[:, st[1]] * st[2]
            else:
                state = self._apply_dense(st[1], state, angles)
        if state is None:
            state = self._zero_state()
        out = torch.view_as_real(state).square().sum(-1) @ self.readout
        return out.expand(batch, -1) if out.shape[0] != batch else out

    def _zero_state(self) -> torch.Tensor:
        s = torch.zeros(1, self.dim, dtype=CDTYPE)
        s[0, 0] = 1
        return s

    def _layer_matrices(self, columns, angles: torch.Tensor) -> torch.Tensor:
        """The fused 2x2 matrix of every qubit: [B or 1, n, 2, 2]."""
        total = None
        for col in columns:
            pieces, qubits = [], []
            for kind, qs, payload in col:
                if kind == "fixed":
                    pieces.append(payload)
                else:
                    args = [angles[:, payload[:, a]] for a in range(payload.shape[1])]
                    pieces.append(GATES[kind].matrix(*args))
                qubits.append(qs)
            m = _cat_qubits(pieces, qubits, self.n)
            total = m if total is None else m @ total
        return total

    def _apply_local(self, columns, state, angles):
        mats = self._layer_matrices(columns, angles)
        b = mats.shape[0]
        if state is None:  # product state from |0...0>
            vec = mats[..., 0]  # [b, n, 2]
            out = vec[:, self.n - 1]
            for q in range(self.n - 2, -1, -1):
                out = (out[:, :, None] * vec[:, q, None, :]).reshape(b, -1)
            return out
        lo = self.n // 2
        s = state.reshape(state.shape[0], 2 ** (self.n - lo), 2**lo)
        s = _kron_chain(mats, range(self.n - 1, lo - 1, -1)) @ s
        if lo:
            s = s @ _kron_chain(mats, range(lo - 1, -1, -1)).transpose(-1, -2)
        return s.reshape(s.shape[0], self.dim)

    def _apply_dense(self, st: Dense, state, angles):
        if st.matrix is not None:
            u = torch.tensor(st.matrix, dtype=CDTYPE)[None]
        else:
            u = GATES[st.kind].matrix(*[angles[:, s] for s in st.slots])
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
    pieces = [p.expand(b, -1, -1, -1) for p in pieces]
    if len(order) < n:
        pieces.append(torch.eye(2, dtype=CDTYPE).expand(b, n - len(order), 2, 2))
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


def _columns(per_qubit: list[list]) -> list[list[tuple]]:
    """Fuse constant runs per qubit, then group the j-th gate of every qubit into column j:
    per column a list of (kind, qubits, payload) with payload [1, m, 2, 2] matrices (fixed) or
    [m, n_angles] angle slots."""
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
                col.append((kind, qs, mats))
            else:
                slots = torch.tensor([s for _, s in items], dtype=torch.long)
                col.append((kind, qs, slots))
        columns.append(col)
    return columns
