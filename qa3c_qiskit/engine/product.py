"""Reduced operators at a product state (numba kernel), for the circuit's first local layer.

Right after the first layer the state is a product ``psi = (x)_q v_q`` (``v_q = M_q|0>``), so
``r_q = Tr_other(g psi^dagger)`` factorises: ``r_q[a, c] = G_q[a] conj(v_q[c])`` with
``G_q[a] = <(x)_{p != q} v_p | g restricted to bit q = a>``. Contracting ``g`` once with the
high half of the vectors and once with the low half, then finishing each qubit inside its half,
costs about ``2 * 2^n`` complex products instead of ``n`` passes of ``4 * 2^(n-1)`` (one
:func:`.kernels._reduced1` per qubit).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import _JIT


@njit(**_JIT)
def _half_products(v, first, k, wc, out):
    """out [2^k, 2, W] <- prod_{j<k} v_{first+j}[bit j of idx] (complex, per lane)."""
    for lane in range(wc):
        out[0, 0, lane] = 1.0
        out[0, 1, lane] = 0.0
    size = 1
    for j in range(k):
        q = first + j
        for i in range(size):
            for lane in range(wc):
                pr, pi = out[i, 0, lane], out[i, 1, lane]
                out[i + size, 0, lane] = pr * v[q, 2, lane] - pi * v[q, 3, lane]
                out[i + size, 1, lane] = pr * v[q, 3, lane] + pi * v[q, 2, lane]
                out[i, 0, lane] = pr * v[q, 0, lane] - pi * v[q, 1, lane]
                out[i, 1, lane] = pr * v[q, 1, lane] + pi * v[q, 0, lane]
        size *= 2


@njit(**_JIT)
def _finish(acc, v, first, k, wc, r, scratch):
    """r[first + j] for each qubit j of a half, from ``acc`` [2^k, 2, W] (g contracted with the
    other half): G[a] = sum over idx with bit j = a of acc[idx] conj(prod of the half's other v)."""
    d = 1 << k
    for j in range(k):
        q = first + j
        for lane in range(wc):
            scratch[0, lane] = scratch[1, lane] = scratch[2, lane] = scratch[3, lane] = 0.0
        for idx in range(d):
            a = (idx >> j) & 1
            for lane in range(wc):
                pr, pi = 1.0, 0.0  # prod_{p != j} v_p[bit p of idx], conjugated below
                for p in range(k):
                    if p != j:
                        b = (idx >> p) & 1
                        vr, vi = v[first + p, 2 * b, lane], v[first + p, 2 * b + 1, lane]
                        pr, pi = pr * vr - pi * vi, pr * vi + pi * vr
                ar, ai = acc[idx, 0, lane], acc[idx, 1, lane]
                scratch[2 * a, lane] += ar * pr + ai * pi  # acc conj(prod)
                scratch[2 * a + 1, lane] += ai * pr - ar * pi
        for lane in range(wc):
            for a in range(2):
                gr, gi = scratch[2 * a, lane], scratch[2 * a + 1, lane]
                for c in range(2):
                    vr, vi = v[q, 2 * c, lane], v[q, 2 * c + 1, lane]
                    r[q, 4 * a + 2 * c, lane] = gr * vr + gi * vi  # G[a] conj(v[c])
                    r[q, 4 * a + 2 * c + 1, lane] = gi * vr - gr * vi


@njit(**_JIT)
def product_reduced(g, v, wc, r):
    """r [n, 8, W] <- Tr_other(g psi^dagger) for every qubit at the product state with factors
    ``v`` [n, 4, W] (re/im of v_q[0], v_q[1]); ``g`` [2^n, 2, W]."""
    n = v.shape[0]
    lo = n // 2
    hi = n - lo
    d_lo, d_hi = 1 << lo, 1 << hi
    w = g.shape[2]
    v_lo = np.empty((d_lo, 2, w))
    v_hi = np.empty((d_hi, 2, w))
    a_lo = np.zeros((d_lo, 2, w))  # g contracted with the high half
    b_hi = np.zeros((d_hi, 2, w))  # g contracted with the low half
    scratch = np.empty((4, w))
    _half_products(v, 0, lo, wc, v_lo)
    _half_products(v, lo, hi, wc, v_hi)
    for h in range(d_hi):
        for lw in range(d_lo):
            k = h * d_lo + lw
            for lane in range(wc):
                gr, gi = g[k, 0, lane], g[k, 1, lane]
                hr, hi_ = v_hi[h, 0, lane], v_hi[h, 1, lane]
                lr, li = v_lo[lw, 0, lane], v_lo[lw, 1, lane]
                a_lo[lw, 0, lane] += gr * hr + gi * hi_  # g conj(v_hi)
                a_lo[lw, 1, lane] += gi * hr - gr * hi_
                b_hi[h, 0, lane] += gr * lr + gi * li  # g conj(v_lo)
                b_hi[h, 1, lane] += gi * lr - gr * li
    _finish(a_lo, v, 0, lo, wc, r, scratch)
    _finish(b_hi, v, lo, hi, wc, r, scratch)
