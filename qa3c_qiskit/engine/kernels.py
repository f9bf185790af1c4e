"""Numba building blocks of the compiled executor: the lane layout, per-lane gate matrices and
the state updates (the whole-program sweeps are in :mod:`.sweeps`, the angle program in
:mod:`.angles`, the folded readout in :mod:`.fold`, the product-state reduced operators in
:mod:`.product`; the flat program is built by :mod:`.numba_exec`).

**Layout.** The batch runs in the innermost loop: the samples are cut into chunks of ``W`` lanes
and a chunk's states are ``[dim, 2, W]`` float64 arrays (real and imaginary parts, then the
lane), so every state update is a loop over lanes with unit stride that LLVM vectorises; a gate
matrix is ``[8, W]`` (re/im of its four entries, per lane). Per-sample weights cost nothing
extra; with shared weights, gates whose angles depend on weights only are built once per chunk.

**Program.** ``ops`` ``[n_ops, 3]`` = (pc into ``prog``, tape record or -1, unused); ``prog``:

* ``LOCAL n_chains (q n_gates g_first) * n_chains``: per qubit a chain of consecutive gates of
  the ``gates`` table, fused per lane into one 2x2 matrix; the first op, on ``|0...0>``, builds the
  product state;
* ``MONO m phase_off``: ``new[k] = phase[k] * old[perm[2m, k]]``; ``perm[2m + 1]`` is the inverse;
* ``DENSE k q_0 .. q_{k-1} g c``: a ``2^k x 2^k`` gate: gate ``g`` of the table, or (g = -1) the
  constant matrix at ``cplx[c:]``.

``gates`` ``[n_gates, 6]`` = (kind, s0, s1, s2, c, uniform): kind codes of
:mod:`.compile`; ``s*`` angle slots; ``c`` a ``cplx`` offset (constant 2x2 matrix, or the Pauli
product P of a two-qubit rotation); ``uniform`` = its angles do not depend on the inputs.

**Backward** (adjoint method): ``g`` with ``dL = Re sum(conj(g) dpsi)`` starts at
``2 psi (R^T g_out)`` and is carried back through every op's inverse; at a local layer, each
qubit's 2x2 reduced operator ``r = Tr_other(g psi^dagger)`` at the layer output (invariant under
the other qubits' gates) gives every gate angle of its chain: ``Re sum(conj(r) * D)`` with
``D = (dG/dangle) G^dagger``, ``r`` carried back through the chain as ``G^dagger r G``.

No ``fastmath``: NaN/inf must propagate (the trainer detects them). Compiled with ``cache=True``.
"""

from __future__ import annotations

import numpy as np
from numba import literally, njit

from .compile import (
    K_CONST,
    K_CRX,
    K_CRY,
    K_CRZ,
    K_P,
    K_PAULI2,
    K_RX,
    K_RY,
    K_RZ,
)

_JIT = {"cache": True, "nogil": True}
#: from this many lanes on, state updates loop over lanes innermost (vectorised); below, each
#: lane runs its own scalar loop (a short vector loop per amplitude pair costs more than it saves)
VEC_LANES = 16


# --------------------------------------------------------------------------------------------
# Gate matrices, per lane
# --------------------------------------------------------------------------------------------
@njit(**_JIT)
def _base_matrix(kind, t):
    """The 2x2 matrix (complex 4-tuple) of a one-angle single-qubit gate (or the target block
    of a controlled one)."""
    if kind == K_RX or kind == K_CRX:
        c, s = np.cos(t / 2), np.sin(t / 2)
        return (c + 0j, -1j * s, -1j * s, c + 0j)
    if kind == K_RY or kind == K_CRY:
        c, s = np.cos(t / 2), np.sin(t / 2)
        return (c + 0j, -s + 0j, s + 0j, c + 0j)
    if kind == K_RZ or kind == K_CRZ:
        e = np.exp(-0.5j * t)
        return (e, 0j, 0j, e.conjugate())
    return (1 + 0j, 0j, 0j, np.exp(1j * t))  # K_P, K_CP


@njit(**_JIT)
def _u_matrix(t, phi, lam):
    """U(theta, phi, lam) as a complex 4-tuple."""
    c, s = np.cos(t / 2), np.sin(t / 2)
    return (c + 0j, -np.exp(1j * lam) * s, np.exp(1j * phi) * s, np.exp(1j * (phi + lam)) * c)


@njit(**_JIT)
def _build_gates(gates, ang, wc, cplx, shared, mats):
    """mats [n_gates, 8, W] <- every single-qubit gate's matrix per lane."""
    for g in range(gates.shape[0]):
        kind = gates[g, 0]
        if kind >= K_PAULI2:  # two-qubit gates are built per lane when applied
            continue
        lanes = 1 if (kind == K_CONST or (shared and gates[g, 5] == 1)) else wc
        if kind == K_CONST:
            c = gates[g, 4]
            for e in range(4):
                mats[g, 2 * e, 0] = cplx[c + e].real
                mats[g, 2 * e + 1, 0] = cplx[c + e].imag
        for lane in range(lanes if kind != K_CONST else 0):
            if kind <= K_P:  # the branches kept apart: a merged tuple type costs 2x here
                m = _base_matrix(kind, ang[gates[g, 1], lane])
            else:
                m = _u_matrix(
                    ang[gates[g, 1], lane], ang[gates[g, 2], lane], ang[gates[g, 3], lane]
                )
            for e in range(4):
                mats[g, 2 * e, lane] = m[e].real
                mats[g, 2 * e + 1, lane] = m[e].imag
        for e in range(8):
            v0 = mats[g, e, 0]
            for lane in range(lanes, wc):
                mats[g, e, lane] = v0


@njit(**_JIT)
def _get(mats, g, lane):
    """Gate g's matrix for one lane (indexing only: a view in a hot loop costs refcounting)."""
    return (
        complex(mats[g, 0, lane], mats[g, 1, lane]),
        complex(mats[g, 2, lane], mats[g, 3, lane]),
        complex(mats[g, 4, lane], mats[g, 5, lane]),
        complex(mats[g, 6, lane], mats[g, 7, lane]),
    )


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
def _chain(mats, g_first, n_gates, wc, adjoint, out):
    """out [8, W] <- the chain's fused matrix G_last ... G_first (or its adjoint) per lane."""
    for lane in range(wc):
        m = _get(mats, g_first, lane)
        for g in range(g_first + 1, g_first + n_gates):
            m = _mul(_get(mats, g, lane), m)
        if adjoint:
            m = _dag(m)
        for e in range(4):
            out[2 * e, lane] = m[e].real
            out[2 * e + 1, lane] = m[e].imag


# --------------------------------------------------------------------------------------------
# State updates, lanes innermost
# --------------------------------------------------------------------------------------------
@njit(**_JIT)
def _apply1(psi, q, m, wc):
    """psi [dim, 2, W] <- m [8, W] on qubit q."""
    stride = 1 << q
    dim = psi.shape[0]
    if wc < VEC_LANES:
        for lane in range(wc):
            m0r, m0i, m1r, m1i = m[0, lane], m[1, lane], m[2, lane], m[3, lane]
            m2r, m2i, m3r, m3i = m[4, lane], m[5, lane], m[6, lane], m[7, lane]
            for base in range(0, dim, 2 * stride):
                for i in range(base, base + stride):
                    j = i + stride
                    ar, ai = psi[i, 0, lane], psi[i, 1, lane]
                    br, bi = psi[j, 0, lane], psi[j, 1, lane]
                    psi[i, 0, lane] = m0r * ar - m0i * ai + m1r * br - m1i * bi
                    psi[i, 1, lane] = m0r * ai + m0i * ar + m1r * bi + m1i * br
                    psi[j, 0, lane] = m2r * ar - m2i * ai + m3r * br - m3i * bi
                    psi[j, 1, lane] = m2r * ai + m2i * ar + m3r * bi + m3i * br
        return
    for base in range(0, dim, 2 * stride):
        for i in range(base, base + stride):
            j = i + stride
            for lane in range(wc):
                ar, ai = psi[i, 0, lane], psi[i, 1, lane]
                br, bi = psi[j, 0, lane], psi[j, 1, lane]
                psi[i, 0, lane] = (
                    m[0, lane] * ar - m[1, lane] * ai + m[2, lane] * br - m[3, lane] * bi
                )
                psi[i, 1, lane] = (
                    m[0, lane] * ai + m[1, lane] * ar + m[2, lane] * bi + m[3, lane] * br
                )
                psi[j, 0, lane] = (
                    m[4, lane] * ar - m[5, lane] * ai + m[6, lane] * br - m[7, lane] * bi
                )
                psi[j, 1, lane] = (
                    m[4, lane] * ai + m[5, lane] * ar + m[6, lane] * bi + m[7, lane] * br
                )


@njit(**_JIT)
def _reduced1(g, psi, q, wc, r, hermitian):
    """r [8, W] <- Tr_other(g psi^dagger) on qubit q, per lane. With ``hermitian`` (a
    compile-time constant: ``g`` is ``psi``, the reduced state rho_q of the readout fold) only
    the 4 independent reals (rho00, rho11, Re rho01, Im rho01) are computed, into ``r[:4]``."""
    literally(hermitian)
    stride = 1 << q
    dim = psi.shape[0]
    n_out = 4 if hermitian else 8
    if wc < VEC_LANES:
        for lane in range(wc):
            r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = 0.0
            for base in range(0, dim, 2 * stride):
                for i in range(base, base + stride):
                    j = i + stride
                    p0r, p0i = psi[i, 0, lane], psi[i, 1, lane]
                    p1r, p1i = psi[j, 0, lane], psi[j, 1, lane]
                    if hermitian:
                        r0 += p0r * p0r + p0i * p0i
                        r1 += p1r * p1r + p1i * p1i
                        r2 += p0r * p1r + p0i * p1i  # p0 conj(p1)
                        r3 += p0i * p1r - p0r * p1i
                        continue
                    g0r, g0i, g1r, g1i = g[i, 0, lane], g[i, 1, lane], g[j, 0, lane], g[j, 1, lane]
                    r0 += g0r * p0r + g0i * p0i
                    r1 += g0i * p0r - g0r * p0i
                    r2 += g0r * p1r + g0i * p1i
                    r3 += g0i * p1r - g0r * p1i
                    r4 += g1r * p0r + g1i * p0i
                    r5 += g1i * p0r - g1r * p0i
                    r6 += g1r * p1r + g1i * p1i
                    r7 += g1i * p1r - g1r * p1i
            r[0, lane], r[1, lane], r[2, lane], r[3, lane] = r0, r1, r2, r3
            if not hermitian:  # r may have 4 rows only
                r[4, lane], r[5, lane], r[6, lane], r[7, lane] = r4, r5, r6, r7
        return
    for e in range(n_out):
        for lane in range(wc):
            r[e, lane] = 0.0
    for base in range(0, dim, 2 * stride):
        for i in range(base, base + stride):
            j = i + stride
            for lane in range(wc):
                p0r, p0i, p1r, p1i = (
                    psi[i, 0, lane],
                    psi[i, 1, lane],
                    psi[j, 0, lane],
                    psi[j, 1, lane],
                )
                if hermitian:
                    r[0, lane] += p0r * p0r + p0i * p0i
                    r[1, lane] += p1r * p1r + p1i * p1i
                    r[2, lane] += p0r * p1r + p0i * p1i
                    r[3, lane] += p0i * p1r - p0r * p1i
                    continue
                g0r, g0i, g1r, g1i = g[i, 0, lane], g[i, 1, lane], g[j, 0, lane], g[j, 1, lane]
                r[0, lane] += g0r * p0r + g0i * p0i  # g0 conj(p0)
                r[1, lane] += g0i * p0r - g0r * p0i
                r[2, lane] += g0r * p1r + g0i * p1i  # g0 conj(p1)
                r[3, lane] += g0i * p1r - g0r * p1i
                r[4, lane] += g1r * p0r + g1i * p0i  # g1 conj(p0)
                r[5, lane] += g1i * p0r - g1r * p0i
                r[6, lane] += g1r * p1r + g1i * p1i  # g1 conj(p1)
                r[7, lane] += g1i * p1r - g1r * p1i


@njit(**_JIT)
def _product_factors(prog, mats, wc, v):
    """v [n, 4, W] <- each qubit's M_q|0> (re/im of both entries) for the first local layer."""
    n = v.shape[0]
    for q in range(n):
        for lane in range(wc):
            v[q, 0, lane] = 1.0  # (1, 0) for qubits without gates
            v[q, 1, lane] = v[q, 2, lane] = v[q, 3, lane] = 0.0
    for c in range(prog[1]):
        q, n_gates, g_first = prog[2 + 3 * c], prog[3 + 3 * c], prog[4 + 3 * c]
        for lane in range(wc):
            a, b = 1 + 0j, 0j
            for g in range(g_first, g_first + n_gates):
                m = _get(mats, g, lane)
                a, b = m[0] * a + m[1] * b, m[2] * a + m[3] * b
            v[q, 0, lane], v[q, 1, lane] = a.real, a.imag
            v[q, 2, lane], v[q, 3, lane] = b.real, b.imag


@njit(**_JIT)
def _product_state(prog, mats, wc, psi, v):
    """psi <- the first local layer (at prog[0]) applied to |0...0>: per lane the product of
    each qubit's M|0>, built qubit by qubit. ``v`` [n, 4, W] scratch."""
    _product_factors(prog, mats, wc, v)
    n = v.shape[0]
    for lane in range(wc):
        psi[0, 0, lane] = 1.0
        psi[0, 1, lane] = 0.0
    size = 1
    if wc < VEC_LANES:
        for lane in range(wc):
            size = 1
            for q in range(n):
                v0r, v0i, v1r, v1i = v[q, 0, lane], v[q, 1, lane], v[q, 2, lane], v[q, 3, lane]
                for i in range(size):
                    pr, pi = psi[i, 0, lane], psi[i, 1, lane]
                    psi[i + size, 0, lane] = pr * v1r - pi * v1i
                    psi[i + size, 1, lane] = pr * v1i + pi * v1r
                    psi[i, 0, lane] = pr * v0r - pi * v0i
                    psi[i, 1, lane] = pr * v0i + pi * v0r
                size *= 2
        return
    for q in range(n):
        for i in range(size):
            j = i + size
            for lane in range(wc):
                pr, pi = psi[i, 0, lane], psi[i, 1, lane]
                psi[j, 0, lane] = pr * v[q, 2, lane] - pi * v[q, 3, lane]
                psi[j, 1, lane] = pr * v[q, 3, lane] + pi * v[q, 2, lane]
                psi[i, 0, lane] = pr * v[q, 0, lane] - pi * v[q, 1, lane]
                psi[i, 1, lane] = pr * v[q, 1, lane] + pi * v[q, 0, lane]
        size *= 2


@njit(**_JIT)
def _permute(psi, tmp, idx, cplx, off, conj, wc):
    """tmp[k] <- phase[k] * psi[idx[k]] (conj phase if ``conj``; no phase if off < 0)."""
    if wc < VEC_LANES:
        for lane in range(wc):
            for k in range(psi.shape[0]):
                j = idx[k]
                sr, si = psi[j, 0, lane], psi[j, 1, lane]
                if off < 0:
                    tmp[k, 0, lane], tmp[k, 1, lane] = sr, si
                else:
                    ph = cplx[off + (j if conj else k)]
                    pr, pi = ph.real, -ph.imag if conj else ph.imag
                    tmp[k, 0, lane] = pr * sr - pi * si
                    tmp[k, 1, lane] = pr * si + pi * sr
        return
    for k in range(psi.shape[0]):
        j = idx[k]
        if off < 0:
            for lane in range(wc):
                tmp[k, 0, lane] = psi[j, 0, lane]
                tmp[k, 1, lane] = psi[j, 1, lane]
        else:
            ph = cplx[off + (j if conj else k)]
            pr, pi = ph.real, -ph.imag if conj else ph.imag
            for lane in range(wc):
                sr, si = psi[j, 0, lane], psi[j, 1, lane]
                tmp[k, 0, lane] = pr * sr - pi * si
                tmp[k, 1, lane] = pr * si + pi * sr


@njit(**_JIT)
def _dense_lane(gate, ang, lane, cplx, c_off, d):
    """(U [d, d], D [d, d]) of a dense gate for one lane; D = dU/dt U^dagger (zero if constant)."""
    u = np.zeros((d, d), dtype=np.complex128)
    gen = np.zeros((d, d), dtype=np.complex128)
    if gate[0] < 0:
        for i in range(d):
            for j in range(d):
                u[i, j] = cplx[c_off + i * d + j]
        return u, gen
    kind = gate[0]
    t = ang[gate[1], lane]
    if kind == K_PAULI2:  # exp(-i t/2 P) = cI - i s P, P at cplx[gate[4]:]
        c, s = np.cos(t / 2), np.sin(t / 2)
        for i in range(4):
            for j in range(4):
                p = cplx[gate[4] + 4 * i + j]
                u[i, j] = -1j * s * p
                gen[i, j] = -0.5j * p
            u[i, i] += c
        return u, gen
    m = _base_matrix(kind, t)  # controlled: control = local bit 0, target block on 1, 3
    if kind == K_CRX:
        dg = (0j, -0.5j, -0.5j, 0j)
    elif kind == K_CRY:
        dg = (0j, -0.5 + 0j, 0.5 + 0j, 0j)
    elif kind == K_CRZ:
        dg = (-0.5j, 0j, 0j, 0.5j)
    else:  # K_CP
        dg = (0j, 0j, 0j, 1j)
    u[0, 0] = u[2, 2] = 1
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
def _apply_dense_lane(psi, lane, u, mask, offs, adjoint):
    d = offs.shape[0]
    v = np.empty(d, dtype=np.complex128)
    for base in range(psi.shape[0]):
        if base & mask:
            continue
        for a in range(d):
            v[a] = complex(psi[base + offs[a], 0, lane], psi[base + offs[a], 1, lane])
        for a in range(d):
            acc = 0j
            for b in range(d):
                acc += (u[b, a].conjugate() if adjoint else u[a, b]) * v[b]
            psi[base + offs[a], 0, lane] = acc.real
            psi[base + offs[a], 1, lane] = acc.imag


@njit(**_JIT)
def _grad1(gates, gi, ang, lane, r, m, g_ang):
    """Add the angle gradients of one single-qubit gate (matrix ``m``, reduced operator ``r``
    right after it) to ``g_ang[:, lane]``: Re sum(conj(r) * D) for each angle's generator D."""
    kind = gates[gi, 0]
    s0 = gates[gi, 1]
    if kind == K_CONST:
        return
    if kind == K_RX:  # D = -i/2 X
        g_ang[s0, lane] += 0.5 * (r[1].imag + r[2].imag) * -1.0
    elif kind == K_RY:  # D = [[0, -1/2], [1/2, 0]]
        g_ang[s0, lane] += 0.5 * (r[2].real - r[1].real)
    elif kind == K_RZ:  # D = -i/2 Z
        g_ang[s0, lane] += 0.5 * (r[3].imag - r[0].imag)
    elif kind == K_P:  # D = diag(0, i)
        g_ang[s0, lane] += r[3].imag
    else:  # K_U: D_a = (dM/da) M^dagger
        s1, s2 = gates[gi, 2], gates[gi, 3]
        t, phi, lam = ang[s0, lane], ang[s1, lane], ang[s2, lane]
        c, s = np.cos(t / 2), np.sin(t / 2)
        ep, el, epl = np.exp(1j * phi), np.exp(1j * lam), np.exp(1j * (phi + lam))
        mh = _dag(m)
        d_t = _mul((-0.5 * s + 0j, -0.5 * el * c, 0.5 * ep * c, -0.5 * epl * s), mh)
        d_p = _mul((0j, 0j, 1j * ep * s, 1j * epl * c), mh)
        d_l = _mul((0j, -1j * el * s, 0j, 1j * epl * c), mh)
        g_ang[s0, lane] += _re_inner(r, d_t)
        g_ang[s1, lane] += _re_inner(r, d_p)
        g_ang[s2, lane] += _re_inner(r, d_l)


@njit(**_JIT)
def _re_inner(r, d):
    """Re sum(conj(r) * d) of two 2x2 4-tuples."""
    return (
        np.conj(r[0]) * d[0] + np.conj(r[1]) * d[1] + np.conj(r[2]) * d[2] + np.conj(r[3]) * d[3]
    ).real


@njit(**_JIT)
def chain_grads(gates, g0, n_g, mats, ang, r, g_ang, wc):
    """Add the angle gradients of a chain of single-qubit gates ``g0 .. g0 + n_g - 1`` to
    ``g_ang`` [n_slots, W], from ``r`` [8, W] (the reduced operator after the chain; consumed).
    Lanes innermost: r is carried back gate by gate as ``G^dagger r G``."""
    for gi in range(g0 + n_g - 1, g0 - 1, -1):
        kind, s0 = gates[gi, 0], gates[gi, 1]
        if kind == K_RX:  # Re sum(conj(r) * D), D = -i/2 X
            for lane in range(wc):
                g_ang[s0, lane] -= 0.5 * (r[3, lane] + r[5, lane])
        elif kind == K_RY:  # D = [[0, -1/2], [1/2, 0]]
            for lane in range(wc):
                g_ang[s0, lane] += 0.5 * (r[4, lane] - r[2, lane])
        elif kind == K_RZ:  # D = -i/2 Z
            for lane in range(wc):
                g_ang[s0, lane] += 0.5 * (r[7, lane] - r[1, lane])
        elif kind == K_P:  # D = diag(0, i)
            for lane in range(wc):
                g_ang[s0, lane] += r[7, lane]
        elif kind != K_CONST:  # K_U
            for lane in range(wc):
                rr = (
                    complex(r[0, lane], r[1, lane]),
                    complex(r[2, lane], r[3, lane]),
                    complex(r[4, lane], r[5, lane]),
                    complex(r[6, lane], r[7, lane]),
                )
                _grad1(gates, gi, ang, lane, rr, _get(mats, gi, lane), g_ang)
        if gi == g0:
            break
        for lane in range(wc):  # r <- G^dagger r G
            g00 = complex(mats[gi, 0, lane], mats[gi, 1, lane])
            g01 = complex(mats[gi, 2, lane], mats[gi, 3, lane])
            g10 = complex(mats[gi, 4, lane], mats[gi, 5, lane])
            g11 = complex(mats[gi, 6, lane], mats[gi, 7, lane])
            r00 = complex(r[0, lane], r[1, lane])
            r01 = complex(r[2, lane], r[3, lane])
            r10 = complex(r[4, lane], r[5, lane])
            r11 = complex(r[6, lane], r[7, lane])
            t00, t01 = r00 * g00 + r01 * g10, r00 * g01 + r01 * g11
            t10, t11 = r10 * g00 + r11 * g10, r10 * g01 + r11 * g11
            c00, c01, c10, c11 = g00.conjugate(), g01.conjugate(), g10.conjugate(), g11.conjugate()
            n00, n01 = c00 * t00 + c10 * t10, c00 * t01 + c10 * t11
            n10, n11 = c01 * t00 + c11 * t10, c01 * t01 + c11 * t11
            r[0, lane], r[1, lane], r[2, lane], r[3, lane] = n00.real, n00.imag, n01.real, n01.imag
            r[4, lane], r[5, lane], r[6, lane], r[7, lane] = n10.real, n10.imag, n11.real, n11.imag
