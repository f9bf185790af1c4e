"""Compiled (numba) kernels of the statevector engine: a whole circuit's forward pass and its
adjoint backward, for a batch of angle rows, in one call each.

The circuit arrives as a small *stage program* built by :class:`qa3c_qiskit.engine._NumbaProgram`
from the engine's compiled stages: an int64 op stream ``prog``, a table of permutations ``perm``
and a complex constant table ``cplx``. Ops:

* ``LOCAL n_chains [q n_gates [kind s0 s1 s2] * n_gates] * n_chains``: a layer of single-qubit
  gates, one chain per qubit. Each chain is fused into one 2x2 matrix (from the angles
  ``ang[b, s]``; ``kind`` 0 is a constant matrix at ``cplx[s0:s0+4]``) and applied to the state
  (the first op, on ``|0...0>``, builds the product state directly);
* ``MONO m phase_off``: ``new[k] = phase[k] * old[perm[2m, k]]`` (phase at ``cplx[phase_off:]``,
  -1 for none); ``perm[2m+1]`` is the inverse permutation, used by the backward;
* ``DENSE k q_0 .. q_{k-1} kind s0``: a ``2^k x 2^k`` gate, qargs[0] the least significant local
  bit; ``kind`` 0 is constant (matrix at ``cplx[s0:]``), else a two-qubit rotation of ``ang[b, s0]``.

The angles themselves come from a second small program (:func:`angles`: the Qiskit parameter
expressions as postfix code with forward-mode derivatives), so :func:`forward_xw` and
:func:`backward_xw` take the inputs and weights directly.

The backward is the adjoint method: the forward records the state after every op; walking the
ops backwards, a gate angle's gradient is ``Re sum(conj(r) * D)`` with ``r`` the reduced operator
``Tr_other(g psi^dagger)`` right after the gate and ``D = (dG/dangle) G^dagger``, and the adjoint
``g`` is carried back by each op's inverse. Within a chain the 2x2 ``r`` is carried back through
the chain's gates (``r <- G^dagger r G``), so a chain costs one pass over the state for ``r`` and
one to carry ``g``, whatever its length; the reduced operators of all qubits of a layer are taken
at its output (they do not change under the other qubits' gates).

Compiled with ``cache=True``: worker processes load the machine code from ``__pycache__``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

OP_LOCAL, OP_MONO, OP_DENSE = 1, 2, 3
#: single-qubit gate kinds (0: constant matrix)
K_RX, K_RY, K_RZ, K_P, K_U = 1, 2, 3, 4, 5
#: two-qubit gate kinds
K_RZZ, K_RXX, K_RYY, K_CRX, K_CRY, K_CRZ, K_CP = 6, 7, 8, 9, 10, 11, 12
KIND_CODES = {
    "rx": K_RX,
    "ry": K_RY,
    "rz": K_RZ,
    "p": K_P,
    "u": K_U,
    "rzz": K_RZZ,
    "rxx": K_RXX,
    "ryy": K_RYY,
    "crx": K_CRX,
    "cry": K_CRY,
    "crz": K_CRZ,
    "cp": K_CP,
}

_JIT = {"cache": True, "nogil": True, "fastmath": True}


# --------------------------------------------------------------------------------------------
# 2x2 algebra on 4-tuples (m00, m01, m10, m11): no allocations in the inner loops
# --------------------------------------------------------------------------------------------
@njit(**_JIT)
def _mul(a, b):
    return (
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
    )


@njit(**_JIT)
def _dag(a):
    return (a[0].conjugate(), a[2].conjugate(), a[1].conjugate(), a[3].conjugate())


@njit(**_JIT)
def _gate1(kind, row, s0, s1, s2, cplx):
    """The 2x2 matrix of a single-qubit gate."""
    if kind == 0:
        return (cplx[s0], cplx[s0 + 1], cplx[s0 + 2], cplx[s0 + 3])
    t = row[s0]
    if kind == K_RX:
        c, s = np.cos(t / 2), np.sin(t / 2)
        return (c + 0j, -1j * s, -1j * s, c + 0j)
    if kind == K_RY:
        c, s = np.cos(t / 2), np.sin(t / 2)
        return (c + 0j, -s + 0j, s + 0j, c + 0j)
    if kind == K_RZ:
        e = np.exp(-0.5j * t)
        return (e, 0j, 0j, e.conjugate())
    if kind == K_P:
        return (1 + 0j, 0j, 0j, np.exp(1j * t))
    # K_U: U(theta, phi, lam)
    phi, lam = row[s1], row[s2]
    c, s = np.cos(t / 2), np.sin(t / 2)
    return (c + 0j, -np.exp(1j * lam) * s, np.exp(1j * phi) * s, np.exp(1j * (phi + lam)) * c)


@njit(**_JIT)
def _grad1(kind, row, s0, s1, s2, r, m, g_row):
    """Add the angle gradients of one single-qubit gate (matrix ``m``, reduced operator ``r``
    right after it) to ``g_row``: Re sum(conj(r) * D) for each angle's generator D."""
    if kind == 0:
        return
    if kind == K_RX:  # D = -i/2 X
        g_row[s0] += (np.conj(r[1]) * -0.5j + np.conj(r[2]) * -0.5j).real
    elif kind == K_RY:  # D = -i/2 Y = [[0, -1/2], [1/2, 0]]
        g_row[s0] += 0.5 * (r[2].real - r[1].real)
    elif kind == K_RZ:  # D = -i/2 Z
        g_row[s0] += (np.conj(r[0]) * -0.5j + np.conj(r[3]) * 0.5j).real
    elif kind == K_P:  # D = diag(0, i)
        g_row[s0] += (np.conj(r[3]) * 1j).real
    else:  # K_U: D_a = (dM/da) M^dagger
        t, phi, lam = row[s0], row[s1], row[s2]
        c, s = np.cos(t / 2), np.sin(t / 2)
        ep, el, epl = np.exp(1j * phi), np.exp(1j * lam), np.exp(1j * (phi + lam))
        mh = _dag(m)
        d_t = _mul((-0.5 * s + 0j, -0.5 * el * c, 0.5 * ep * c, -0.5 * epl * s), mh)
        d_p = _mul((0j, 0j, 1j * ep * s, 1j * epl * c), mh)
        d_l = _mul((0j, -1j * el * s, 0j, 1j * epl * c), mh)
        g_row[s0] += _re_inner(r, d_t)
        g_row[s1] += _re_inner(r, d_p)
        g_row[s2] += _re_inner(r, d_l)


@njit(**_JIT)
def _re_inner(r, d):
    """Re sum(conj(r) * d) of two 2x2 4-tuples."""
    return (
        np.conj(r[0]) * d[0] + np.conj(r[1]) * d[1] + np.conj(r[2]) * d[2] + np.conj(r[3]) * d[3]
    ).real


@njit(**_JIT)
def _apply1(psi, q, m):
    """psi <- m on qubit q (qubit 0 = least significant bit)."""
    stride = 1 << q
    dim = psi.shape[0]
    for base in range(0, dim, 2 * stride):
        for i in range(base, base + stride):
            a, b = psi[i], psi[i + stride]
            psi[i] = m[0] * a + m[1] * b
            psi[i + stride] = m[2] * a + m[3] * b


@njit(**_JIT)
def _reduced1(g, psi, q):
    """Tr_other(g psi^dagger) on qubit q as a 4-tuple."""
    stride = 1 << q
    dim = psi.shape[0]
    r00 = r01 = r10 = r11 = 0j
    for base in range(0, dim, 2 * stride):
        for i in range(base, base + stride):
            g0, g1 = g[i], g[i + stride]
            p0, p1 = psi[i].conjugate(), psi[i + stride].conjugate()
            r00 += g0 * p0
            r01 += g0 * p1
            r10 += g1 * p0
            r11 += g1 * p1
    return (r00, r01, r10, r11)


# --------------------------------------------------------------------------------------------
# Dense (k-qubit) gates
# --------------------------------------------------------------------------------------------
@njit(**_JIT)
def _dense_matrix(kind, t, s0, cplx, d):
    """(U [d, d], D [d, d]) of a dense gate; D (the angle's generator) is zero for constants."""
    u = np.zeros((d, d), dtype=np.complex128)
    gen = np.zeros((d, d), dtype=np.complex128)
    if kind == 0:
        for i in range(d):
            for j in range(d):
                u[i, j] = cplx[s0 + i * d + j]
        return u, gen
    c, s = np.cos(t / 2), np.sin(t / 2)
    if kind == K_RZZ or kind == K_RXX or kind == K_RYY:
        pauli = np.zeros((4, 4), dtype=np.complex128)  # the Pauli product P: U = cI - i s P
        if kind == K_RZZ:
            pauli[0, 0] = pauli[3, 3] = 1
            pauli[1, 1] = pauli[2, 2] = -1
        elif kind == K_RXX:
            pauli[0, 3] = pauli[1, 2] = pauli[2, 1] = pauli[3, 0] = 1
        else:
            pauli[0, 3] = pauli[3, 0] = -1
            pauli[1, 2] = pauli[2, 1] = 1
        for i in range(4):
            for j in range(4):
                u[i, j] = -1j * s * pauli[i, j]
                gen[i, j] = -0.5j * pauli[i, j]
            u[i, i] += c
        return u, gen
    # controlled single-qubit gate: control = local bit 0, the target block on indices 1, 3
    u[0, 0] = u[2, 2] = 1
    if kind == K_CRX:
        m = (c + 0j, -1j * s, -1j * s, c + 0j)
        dg = (0j, -0.5j, -0.5j, 0j)
    elif kind == K_CRY:
        m = (c + 0j, -s + 0j, s + 0j, c + 0j)
        dg = (0j, -0.5 + 0j, 0.5 + 0j, 0j)
    elif kind == K_CRZ:
        e = np.exp(-0.5j * t)
        m = (e, 0j, 0j, e.conjugate())
        dg = (-0.5j, 0j, 0j, 0.5j)
    else:  # K_CP
        m = (1 + 0j, 0j, 0j, np.exp(1j * t))
        dg = (0j, 0j, 0j, 1j)
    u[1, 1], u[1, 3], u[3, 1], u[3, 3] = m[0], m[1], m[2], m[3]
    gen[1, 1], gen[1, 3], gen[3, 1], gen[3, 3] = dg[0], dg[1], dg[2], dg[3]
    return u, gen


@njit(**_JIT)
def _dense_offsets(prog, pc, k):
    """(mask of the gate's qubits, offsets [2^k] of its local basis states)."""
    d = 1 << k
    offs = np.zeros(d, dtype=np.int64)
    mask = 0
    for j in range(k):
        bit = 1 << prog[pc + j]
        mask |= bit
        for loc in range(d):
            if (loc >> j) & 1:
                offs[loc] += bit
    return mask, offs


@njit(**_JIT)
def _apply_dense(psi, u, mask, offs, adjoint):
    d = offs.shape[0]
    v = np.empty(d, dtype=np.complex128)
    for base in range(psi.shape[0]):
        if base & mask:
            continue
        for a in range(d):
            v[a] = psi[base + offs[a]]
        for a in range(d):
            acc = 0j
            if adjoint:
                for b in range(d):
                    acc += u[b, a].conjugate() * v[b]
            else:
                for b in range(d):
                    acc += u[a, b] * v[b]
            psi[base + offs[a]] = acc


# --------------------------------------------------------------------------------------------
# Whole programs
# --------------------------------------------------------------------------------------------
@njit(**_JIT)
def _run_forward(row, prog, perm, cplx, psi, tmp, tape):
    """psi (|0...0> on entry) <- the circuit applied with angles ``row``; returns the final
    state (``psi`` or ``tmp``: a permutation swaps them). If ``tape`` has rows, the state after
    op ``o`` is copied to ``tape[o]``."""
    pc = 0
    n_prog = prog.shape[0]
    dim = psi.shape[0]
    o = 0
    record = tape.shape[0] > 0
    while pc < n_prog:
        op = prog[pc]
        if op == OP_LOCAL and pc == 0:  # on |0...0>: the product of each qubit's M|0>
            pc = _product_state(row, prog, cplx, psi)
        elif op == OP_LOCAL:
            n_chains = prog[pc + 1]
            pc += 2
            for _ in range(n_chains):
                q, n_gates = prog[pc], prog[pc + 1]
                pc += 2
                m = (1 + 0j, 0j, 0j, 1 + 0j)
                for _ in range(n_gates):
                    g = _gate1(prog[pc], row, prog[pc + 1], prog[pc + 2], prog[pc + 3], cplx)
                    m = _mul(g, m)
                    pc += 4
                _apply1(psi, q, m)
        elif op == OP_MONO:
            idx = perm[2 * prog[pc + 1]]
            off = prog[pc + 2]
            if off < 0:
                for i in range(dim):
                    tmp[i] = psi[idx[i]]
            else:
                for i in range(dim):
                    tmp[i] = cplx[off + i] * psi[idx[i]]
            psi[:] = tmp
            pc += 3
        else:  # OP_DENSE
            k = prog[pc + 1]
            kind, s0 = prog[pc + 2 + k], prog[pc + 3 + k]
            t = row[s0] if kind != 0 else 0.0
            u, _ = _dense_matrix(kind, t, s0, cplx, 1 << k)
            mask, offs = _dense_offsets(prog, pc + 2, k)
            _apply_dense(psi, u, mask, offs, False)
            pc += 4 + k
        if record:
            tape[o] = psi
        o += 1
    return psi


@njit(**_JIT)
def _product_state(row, prog, cplx, psi):
    """psi <- the first local layer (at prog[0]) applied to |0...0>, built qubit by qubit
    (2 + 4 + ... + 2^n products instead of n passes over the state); returns the next pc."""
    dim = psi.shape[0]
    n = 0
    while (1 << n) < dim:
        n += 1
    v0 = np.ones(n, dtype=np.complex128)  # M_q|0> per qubit; (1, 0) without gates
    v1 = np.zeros(n, dtype=np.complex128)
    n_chains = prog[1]
    pc = 2
    for _ in range(n_chains):
        q, n_gates = prog[pc], prog[pc + 1]
        pc += 2
        a, b = 1 + 0j, 0j
        for _ in range(n_gates):
            g = _gate1(prog[pc], row, prog[pc + 1], prog[pc + 2], prog[pc + 3], cplx)
            a, b = g[0] * a + g[1] * b, g[2] * a + g[3] * b
            pc += 4
        v0[q], v1[q] = a, b
    psi[0] = 1
    size = 1
    for q in range(n):
        for i in range(size):
            psi[i + size] = psi[i] * v1[q]
            psi[i] = psi[i] * v0[q]
        size *= 2
    return pc


@njit(**_JIT)
def forward(ang, prog, perm, cplx, readout, keep):
    """(<O_j> [B, n_obs], the tape [B, n_ops, dim] of states after every op if ``keep``, else
    [0, 0, dim]) for angles ``ang`` [B, n_slots]."""
    b_rows = ang.shape[0]
    dim, n_obs = readout.shape
    n_ops = _op_starts(prog).shape[0]
    out = np.zeros((b_rows, n_obs))
    tapes = np.empty((b_rows if keep else 0, n_ops if keep else 0, dim), dtype=np.complex128)
    no_tape = np.empty((0, dim), dtype=np.complex128)
    psi0 = np.empty(dim, dtype=np.complex128)
    tmp = np.empty(dim, dtype=np.complex128)
    for b in range(b_rows):
        psi0[:] = 0
        psi0[0] = 1
        tape = tapes[b] if keep else no_tape
        psi = _run_forward(ang[b], prog, perm, cplx, psi0, tmp, tape)
        for i in range(dim):
            p = psi[i].real ** 2 + psi[i].imag ** 2
            if p != 0.0:
                for j in range(n_obs):
                    out[b, j] += p * readout[i, j]
    return out, tapes


@njit(**_JIT)
def _op_starts(prog):
    starts = np.empty(prog.shape[0], dtype=np.int64)
    n_ops = 0
    pc = 0
    while pc < prog.shape[0]:
        starts[n_ops] = pc
        n_ops += 1
        op = prog[pc]
        if op == OP_LOCAL:
            n_chains = prog[pc + 1]
            pc += 2
            for _ in range(n_chains):
                pc += 2 + 4 * prog[pc + 1]
        elif op == OP_MONO:
            pc += 3
        else:
            pc += 4 + prog[pc + 1]
    return starts[:n_ops]


@njit(**_JIT)
def backward(ang, prog, perm, cplx, readout, tapes, g_out):
    """dL/d angles [B, n_slots] from dL/d<O_j> ``g_out`` [B, n_obs] and the forward's
    ``tapes`` [B, n_ops, dim] (the state after every op).

    At each op, the reduced operators are taken against the recorded state after it, and only
    the adjoint ``g`` is carried back (by the op's inverse).
    """
    b_rows, n_slots = ang.shape
    dim, n_obs = readout.shape
    g_ang = np.zeros((b_rows, n_slots))
    starts = _op_starts(prog)
    chain = np.empty((prog.shape[0] // 4 + 1, 4), dtype=np.complex128)  # a chain's matrices
    g = np.empty(dim, dtype=np.complex128)
    tmp = np.empty(dim, dtype=np.complex128)
    for b in range(b_rows):
        row = ang[b]
        g_row = g_ang[b]
        n_ops = starts.shape[0]
        final = tapes[b, n_ops - 1]
        for i in range(dim):
            w = 0.0
            for j in range(n_obs):
                w += readout[i, j] * g_out[b, j]
            g[i] = 2.0 * w * final[i]  # dL = Re sum(conj(g) dpsi)
        for o in range(n_ops - 1, -1, -1):
            pc = starts[o]
            op = prog[pc]
            psi = tapes[b, o]
            if op == OP_LOCAL:
                n_chains = prog[pc + 1]
                pc += 2
                # reduced operators are invariant under the other qubits' gates: all of them
                # are taken at the layer's output, then g is carried back through the layer
                first = pc
                for _ in range(n_chains):
                    q, n_gates = prog[pc], prog[pc + 1]
                    pc += 2
                    any_angle = False
                    for k in range(n_gates):
                        gm = _gate1(prog[pc], row, prog[pc + 1], prog[pc + 2], prog[pc + 3], cplx)
                        chain[k, 0], chain[k, 1], chain[k, 2], chain[k, 3] = gm
                        any_angle = any_angle or prog[pc] != 0
                        pc += 4
                    if any_angle:
                        r = _reduced1(g, psi, q)
                        for k in range(n_gates - 1, -1, -1):
                            p = pc - 4 * (n_gates - k)
                            gm = (chain[k, 0], chain[k, 1], chain[k, 2], chain[k, 3])
                            _grad1(
                                prog[p], row, prog[p + 1], prog[p + 2], prog[p + 3], r, gm, g_row
                            )
                            if k:
                                r = _mul(_dag(gm), _mul(r, gm))
                if o:  # nothing before the first op: no need to carry g further
                    pc = first
                    for _ in range(n_chains):
                        q, n_gates = prog[pc], prog[pc + 1]
                        pc += 2
                        m = (1 + 0j, 0j, 0j, 1 + 0j)
                        for _ in range(n_gates):
                            gm = _gate1(
                                prog[pc], row, prog[pc + 1], prog[pc + 2], prog[pc + 3], cplx
                            )
                            m = _mul(gm, m)
                            pc += 4
                        _apply1(g, q, _dag(m))
            elif op == OP_MONO:
                inv = perm[2 * prog[pc + 1] + 1]
                off = prog[pc + 2]
                if off < 0:
                    for i in range(dim):
                        tmp[i] = g[inv[i]]
                else:
                    for i in range(dim):
                        j = inv[i]
                        tmp[i] = cplx[off + j].conjugate() * g[j]
                g[:] = tmp
            else:  # OP_DENSE
                k = prog[pc + 1]
                kind, s0 = prog[pc + 2 + k], prog[pc + 3 + k]
                t = row[s0] if kind != 0 else 0.0
                d = 1 << k
                u, gen = _dense_matrix(kind, t, s0, cplx, d)
                mask, offs = _dense_offsets(prog, pc + 2, k)
                if kind != 0:
                    acc = 0.0
                    for base in range(dim):
                        if base & mask:
                            continue
                        for a in range(d):
                            ga = g[base + offs[a]]
                            for c in range(d):
                                if gen[a, c] != 0:
                                    r = ga * psi[base + offs[c]].conjugate()
                                    acc += (r.conjugate() * gen[a, c]).real
                    g_row[s0] += acc
                if o:
                    _apply_dense(g, u, mask, offs, True)
    return g_ang


# --------------------------------------------------------------------------------------------
# Angle expressions: a tiny stack machine with forward-mode derivatives
# --------------------------------------------------------------------------------------------
#: angle-program opcodes (see :func:`angles`)
A_PARAM, A_CONST, A_ADD, A_MUL, A_POW, A_FUNC = 0, 1, 2, 3, 4, 5
#: functions of A_FUNC
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


@njit(**_JIT)
def _func(f, a):
    """(f(a), f'(a)) for a FUNC_CODES function."""
    if f == 0:
        return np.arctan(a), 1.0 / (1.0 + a * a)
    if f == 1:
        return np.sin(a), np.cos(a)
    if f == 2:
        return np.cos(a), -np.sin(a)
    if f == 3:
        t = np.tan(a)
        return t, 1.0 + t * t
    if f == 4:
        return np.arcsin(a), 1.0 / np.sqrt(1.0 - a * a)
    if f == 5:
        return np.arccos(a), -1.0 / np.sqrt(1.0 - a * a)
    if f == 6:
        e = np.exp(a)
        return e, e
    if f == 7:
        return np.log(a), 1.0 / a
    if f == 8:
        return abs(a), float(np.sign(a))
    return float(np.sign(a)), 0.0


@njit(**_JIT)
def angles(x, w, aprog, cplx, keep):
    """(angles [B, n_slots], d angle / d its free parameters [B, n_slots, k_max] if ``keep``)
    from inputs ``x`` [B, n_in] and weights ``w`` [1, n_w] (shared) or [B, n_w] (per sample).

    ``aprog`` = ``[n_in, n_w, n_slots, k_max, depth]`` then per slot ``[k, p_0 .. p_{k-1},
    code_len, code...]``: the slot's free parameters (indices into x then w) and its postfix
    code (A_PARAM j: the slot's j-th parameter; A_CONST c: ``cplx[c].real``; A_ADD n, A_MUL n:
    n-ary; A_POW; A_FUNC f).
    """
    n_in, n_slots, k_max, depth = aprog[0], aprog[2], aprog[3], aprog[4]
    b_rows = x.shape[0]
    shared = w.shape[0] == 1
    ang = np.empty((b_rows, n_slots))
    dang = np.zeros((b_rows if keep else 0, n_slots, k_max))
    vals = np.empty(depth)
    grads = np.zeros((depth, k_max))
    for b in range(b_rows):
        pc = 5
        for s in range(n_slots):
            k = aprog[pc]
            p0 = pc + 1
            pc += 1 + k
            end = pc + 1 + aprog[pc]
            pc += 1
            sp = 0
            while pc < end:
                op = aprog[pc]
                if op == A_PARAM:
                    j = aprog[pc + 1]
                    p = aprog[p0 + j]
                    if p < n_in:
                        vals[sp] = x[b, p]
                    else:
                        vals[sp] = w[0 if shared else b, p - n_in]
                    grads[sp, :k] = 0.0
                    grads[sp, j] = 1.0
                    sp += 1
                    pc += 2
                elif op == A_CONST:
                    vals[sp] = cplx[aprog[pc + 1]].real
                    grads[sp, :k] = 0.0
                    sp += 1
                    pc += 2
                elif op == A_ADD:
                    n = aprog[pc + 1]
                    base = sp - n
                    for i in range(1, n):
                        vals[base] += vals[base + i]
                        for t in range(k):
                            grads[base, t] += grads[base + i, t]
                    sp = base + 1
                    pc += 2
                elif op == A_MUL:
                    n = aprog[pc + 1]
                    base = sp - n
                    for i in range(1, n):
                        a, c = vals[base], vals[base + i]
                        for t in range(k):
                            grads[base, t] = grads[base, t] * c + a * grads[base + i, t]
                        vals[base] = a * c
                    sp = base + 1
                    pc += 2
                elif op == A_POW:
                    a, e = vals[sp - 2], vals[sp - 1]
                    v = a**e
                    for t in range(k):
                        d = 0.0
                        if grads[sp - 2, t] != 0.0:
                            d += e * a ** (e - 1.0) * grads[sp - 2, t]
                        if grads[sp - 1, t] != 0.0:
                            d += v * np.log(a) * grads[sp - 1, t]
                        grads[sp - 2, t] = d
                    vals[sp - 2] = v
                    sp -= 1
                    pc += 1
                else:  # A_FUNC
                    v, dv = _func(aprog[pc + 1], vals[sp - 1])
                    vals[sp - 1] = v
                    for t in range(k):
                        grads[sp - 1, t] *= dv
                    pc += 2
            ang[b, s] = vals[0]
            if keep:
                for t in range(k):
                    dang[b, s, t] = grads[0, t]
    return ang, dang


@njit(**_JIT)
def angles_backward(g_ang, dang, aprog, per_sample):
    """(dL/dx [B, n_in], dL/dw) from dL/d angles [B, n_slots]; dL/dw is [B, n_w] if
    ``per_sample``, else [1, n_w] (summed over the batch)."""
    n_in, n_w, n_slots = aprog[0], aprog[1], aprog[2]
    b_rows = g_ang.shape[0]
    gx = np.zeros((b_rows, n_in))
    gw_all = np.zeros((b_rows if per_sample else 1, n_w))
    for b in range(b_rows):
        gw = gw_all[b if per_sample else 0]
        pc = 5
        for s in range(n_slots):
            k = aprog[pc]
            g = g_ang[b, s]
            for j in range(k):
                p = aprog[pc + 1 + j]
                if p < n_in:
                    gx[b, p] += g * dang[b, s, j]
                else:
                    gw[p - n_in] += g * dang[b, s, j]
            pc += 1 + k
            pc += 1 + aprog[pc]
    return gx, gw_all


@njit(**_JIT)
def forward_xw(x, w, aprog, prog, perm, cplx, readout, keep):
    """:func:`forward` with the angles computed from ``x`` [B, n_in] and ``w`` [1 or B, n_w]:
    (outputs [B, n_obs], tapes, angles, their derivatives)."""
    ang, dang = angles(x, w, aprog, cplx, keep)
    out, tapes = forward(ang, prog, perm, cplx, readout, keep)
    return out, tapes, ang, dang


@njit(**_JIT)
def backward_xw(ang, dang, aprog, prog, perm, cplx, readout, tapes, g_out, per_sample):
    """(dL/dx [B, n_in], dL/dw: [B, n_w] if ``per_sample`` else [1, n_w]) from dL/d outputs
    ``g_out`` [B, n_obs]."""
    g_ang = backward(ang, prog, perm, cplx, readout, tapes, g_out)
    return angles_backward(g_ang, dang, aprog, per_sample)
