"""The final local layer folded into a single-qubit ``<Z_q>`` readout (numba kernels).

When every observable is ``c_0 + sum_q c_q Z_q`` (the paper's ``<Z_i>`` readout) and the circuit
ends with a layer of single-qubit gates ``M = (x)_q M_q``, the layer is never applied to the
state: ``<Z_q> = Tr(sigma_q Z)`` with ``sigma_q = M_q rho_q M_q^dagger`` and ``rho_q`` the 2x2
reduced state of qubit q before the layer (one light pass per qubit instead of applying the
layer and reading out). Backward: with ``h_q = sum_j g_out_j c_jq``, the chain's reduced operator
is ``r_q = 2 h_q Z sigma_q`` (other qubits' terms are Hermitian and do not contribute), and the
adjoint before the layer is ``g = sum_q 2 h_q N_q psi`` with ``N_q = M_q^dagger Z M_q``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import _JIT, VEC_LANES, _dag, _get, _mul, _reduced1, chain_grads


@njit(**_JIT)
def fold_rho(psi, n, wc, rho):
    """rho [n, 4, W] <- per qubit (rho00, rho11, Re rho01, Im rho01) of psi [dim, 2, W]: the
    reduced operator ``Tr_other(psi psi^dagger)`` (:func:`~.kernels._reduced1`, Hermitian)."""
    for q in range(n):
        _reduced1(psi, psi, q, wc, rho[q], True)


@njit(**_JIT)
def _chain_matrix(prog, pc, q, mats, lane):
    """The fused matrix of qubit q's chain in the layer at ``pc`` (identity if none)."""
    m = (1 + 0j, 0j, 0j, 1 + 0j)
    for c in range(prog[pc + 1]):
        if prog[pc + 2 + 3 * c] == q:
            n_g, g0 = prog[pc + 3 + 3 * c], prog[pc + 4 + 3 * c]
            for g in range(g0, g0 + n_g):
                m = _mul(_get(mats, g, lane), m)
    return m


@njit(**_JIT)
def _sigma(rho, q, lane, m):
    r01 = complex(rho[q, 2, lane], rho[q, 3, lane])
    r00, r11 = rho[q, 0, lane] + 0j, rho[q, 1, lane] + 0j
    return _mul(m, _mul((r00, r01, r01.conjugate(), r11), _dag(m)))


@njit(**_JIT)
def fold_out(rho, prog, pc, mats, wc, zcoef, out, b0):
    """out[b0 + lane, j] = c_j0 + sum_q c_jq Tr(sigma_q Z)."""
    n = rho.shape[0]
    n_obs = zcoef.shape[0]
    for lane in range(wc):
        for j in range(n_obs):
            out[b0 + lane, j] = zcoef[j, 0]
        for q in range(n):
            s = _sigma(rho, q, lane, _chain_matrix(prog, pc, q, mats, lane))
            z = s[0].real - s[3].real
            for j in range(n_obs):
                out[b0 + lane, j] += zcoef[j, q + 1] * z


@njit(**_JIT)
def fold_backward(psi, rho, prog, pc, gates, mats, ang, wc, zcoef, g_out, b0, g, g_ang, nmat):
    """g [dim, 2, W] <- the adjoint before the folded layer; the layer's angle gradients added
    to ``g_ang``. ``nmat`` [n, 8, W] scratch."""
    n = rho.shape[0]
    dim = psi.shape[0]
    n_obs = zcoef.shape[0]
    rbuf = np.empty((8, g.shape[2]))
    for q in range(n):
        c_of = -1
        for c in range(prog[pc + 1]):
            if prog[pc + 2 + 3 * c] == q:
                c_of = c
        for lane in range(wc):
            h = 0.0
            for j in range(n_obs):
                h += g_out[b0 + lane, j] * zcoef[j, q + 1]
            m = (1 + 0j, 0j, 0j, 1 + 0j)
            if c_of >= 0:
                n_g, g0 = prog[pc + 3 + 3 * c_of], prog[pc + 4 + 3 * c_of]
                for gi in range(g0, g0 + n_g):
                    m = _mul(_get(mats, gi, lane), m)
            s = _sigma(rho, q, lane, m)
            rr = (2 * h * s[0], 2 * h * s[1], -2 * h * s[2], -2 * h * s[3])  # 2h Z sigma
            for e in range(4):
                rbuf[2 * e, lane] = rr[e].real
                rbuf[2 * e + 1, lane] = rr[e].imag
            nm = _mul(_dag(m), _mul((2 * h + 0j, 0j, 0j, -2 * h + 0j), m))
            for e in range(4):
                nmat[q, 2 * e, lane] = nm[e].real
                nmat[q, 2 * e + 1, lane] = nm[e].imag
        if c_of >= 0:
            n_g, g0 = prog[pc + 3 + 3 * c_of], prog[pc + 4 + 3 * c_of]
            chain_grads(gates, g0, n_g, mats, ang, rbuf, g_ang, wc)
    # g = sum_q N_q psi with N_q = [[d_q, o_q], [conj o_q, -d_q]]: the diagonal parts sum to
    # one diagonal (built bit by bit), the off-diagonal parts are one half-cost pass per qubit
    dd = np.empty((dim, g.shape[2]))
    for lane in range(wc):
        t = 0.0
        for q in range(n):
            t += nmat[q, 0, lane]
        dd[0, lane] = t
    size = 1
    for q in range(n):
        for i in range(size):
            for lane in range(wc):
                dd[i + size, lane] = dd[i, lane] - 2.0 * nmat[q, 0, lane]
        size *= 2
    for i in range(dim):
        for lane in range(wc):
            g[i, 0, lane] = dd[i, lane] * psi[i, 0, lane]
            g[i, 1, lane] = dd[i, lane] * psi[i, 1, lane]
    if wc < VEC_LANES:
        for lane in range(wc):
            for q in range(n):
                _add_offdiag_lane(psi, g, q, nmat[q, 2, lane], nmat[q, 3, lane], lane)
        return
    for q in range(n):
        stride = 1 << q
        for base in range(0, dim, 2 * stride):
            for i in range(base, base + stride):
                j = i + stride
                for lane in range(wc):
                    orr, oi = nmat[q, 2, lane], nmat[q, 3, lane]
                    ar, ai, br, bi = (
                        psi[i, 0, lane],
                        psi[i, 1, lane],
                        psi[j, 0, lane],
                        psi[j, 1, lane],
                    )
                    g[i, 0, lane] += orr * br - oi * bi  # o b
                    g[i, 1, lane] += orr * bi + oi * br
                    g[j, 0, lane] += orr * ar + oi * ai  # conj(o) a
                    g[j, 1, lane] += orr * ai - oi * ar


@njit(**_JIT)
def _add_offdiag_lane(psi, g, q, orr, oi, lane):
    """g += [[0, o], [conj o, 0]] (on qubit q) psi, one lane."""
    stride = 1 << q
    for base in range(0, psi.shape[0], 2 * stride):
        for i in range(base, base + stride):
            j = i + stride
            ar, ai, br, bi = psi[i, 0, lane], psi[i, 1, lane], psi[j, 0, lane], psi[j, 1, lane]
            g[i, 0, lane] += orr * br - oi * bi
            g[i, 1, lane] += orr * bi + oi * br
            g[j, 0, lane] += orr * ar + oi * ai
            g[j, 1, lane] += orr * ai - oi * ar


def z_coefficients(readout: np.ndarray) -> np.ndarray | None:
    """``C`` [n_obs, n + 1] with readout[j] == C[j, 0] + sum_q C[j, q + 1] Z_q (diagonals), or
    None if some observable has a term on two or more qubits."""
    n_obs, dim = readout.shape
    n = dim.bit_length() - 1
    k = np.arange(dim)
    signs = np.stack([np.ones(dim)] + [1.0 - 2.0 * ((k >> q) & 1) for q in range(n)])  # [n+1, dim]
    coef = readout @ signs.T / dim
    return coef if np.allclose(coef @ signs, readout, atol=1e-12, rtol=0) else None
