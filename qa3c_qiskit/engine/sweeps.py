"""The two whole-program kernels of the compiled executor: :func:`forward` (angles, gates,
states, readout) and :func:`backward` (the adjoint sweep, then the angles' chain rule), each over
the whole batch in one call. The program format and the lane layout are described in
:mod:`.kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .angles import _angles_chunk
from .compile import K_CONST, OP_LOCAL, OP_MONO, OP_ZFOLD
from .fold import fold_backward, fold_out, fold_rho
from .kernels import (
    _JIT,
    _apply1,
    _apply_dense_lane,
    _build_gates,
    _chain,
    _dense_lane,
    _dense_offsets,
    _permute,
    _product_factors,
    _product_state,
    _reduced1,
    chain_grads,
)
from .product import product_reduced


@njit(**_JIT)
def forward(x, w, aprog, aconst, ops, prog, gates, perm, cplx, readout, zcoef, wd, keep):
    """(outputs [B, n_obs], tape, ang, dang, mats) for inputs ``x`` [B, n_in] and weights ``w``
    [1 or B, n_w], lanes of width ``wd``. With ``keep``, per chunk: ``tape`` [C, n_rec, dim, 2,
    W] (the recorded states), ``ang`` [C, n_slots, W], ``dang`` [C, n_slots, k_max, W], ``mats``
    [C, n_gates, 8, W], ``rho`` [C, n, 4, W] (what :func:`backward` needs); else scratch.
    ``zcoef`` [n_obs, n + 1]: the readout as Z_q coefficients, used by an OP_ZFOLD op."""
    b_rows = x.shape[0]
    n_obs, dim = readout.shape
    n = 0
    while (1 << n) < dim:
        n += 1
    n_chunks = max((b_rows + wd - 1) // wd, 1)
    wd = max((b_rows + n_chunks - 1) // n_chunks, 1)  # equal chunks of at most wd lanes
    n_slots, k_max, depth = aprog[0], aprog[1], aprog[2]
    n_ops = ops.shape[0]
    n_rec = 0
    for o in range(n_ops):
        n_rec = max(n_rec, ops[o, 1] + 1)
    kc = n_chunks if keep else 1
    ang = np.empty((kc, n_slots, wd))
    dang = np.zeros((kc if keep else 1, n_slots, k_max, wd))
    mats = np.empty((kc, max(gates.shape[0], 1), 8, wd))
    tape = np.empty((n_chunks if keep else 0, n_rec, dim, 2, wd))
    vals = np.empty((depth, wd))
    grads = np.zeros((depth, k_max, wd))
    psi = np.empty((dim, 2, wd))
    tmp = np.empty((dim, 2, wd))
    v = np.empty((n, 4, wd))
    chain = np.empty((8, wd))
    acc = np.empty((n_obs, wd))
    rho = np.empty((kc, n, 4, wd))
    out = np.zeros((b_rows, n_obs))
    no_gate = np.full(6, -1, dtype=np.int64)
    shared = w.shape[0] == 1
    for ci in range(n_chunks):
        b0 = ci * wd
        wc = min(wd, b_rows - b0)
        k = ci if keep else 0
        _angles_chunk(x, w, b0, wc, aprog, aconst, ang[k], dang[k], keep, vals, grads)
        _build_gates(gates, ang[k], wc, cplx, shared, mats[k])
        for i in range(dim):
            for lane in range(wc):
                psi[i, 0, lane] = 0.0
                psi[i, 1, lane] = 0.0
        for lane in range(wc):
            psi[0, 0, lane] = 1.0
        folded = False
        for o in range(n_ops):
            pc = ops[o, 0]
            op = prog[pc]
            if op == OP_ZFOLD:
                fold_rho(psi, n, wc, rho[k])
                fold_out(rho[k], prog, pc, mats[k], wc, zcoef, out, b0)
                folded = True
            elif op == OP_LOCAL and o == 0:
                _product_state(prog, mats[k], wc, psi, v)
            elif op == OP_LOCAL:
                for c in range(prog[pc + 1]):
                    q, n_g, g0 = prog[pc + 2 + 3 * c], prog[pc + 3 + 3 * c], prog[pc + 4 + 3 * c]
                    _chain(mats[k], g0, n_g, wc, False, chain)
                    _apply1(psi, q, chain, wc)
            elif op == OP_MONO:
                _permute(psi, tmp, perm[2 * prog[pc + 1]], cplx, prog[pc + 2], False, wc)
                psi, tmp = tmp, psi
            else:  # OP_DENSE
                kq = prog[pc + 1]
                g, c_off = prog[pc + 2 + kq], prog[pc + 3 + kq]
                mask, offs = _dense_offsets(prog, pc + 2, kq)
                for lane in range(wc):
                    u, _ = _dense_lane(
                        gates[g] if g >= 0 else no_gate, ang[k], lane, cplx, c_off, 1 << kq
                    )
                    _apply_dense_lane(psi, lane, u, mask, offs, False)
            rec = ops[o, 1]
            if keep and rec >= 0:
                t_rec = tape[ci, rec]
                for i in range(dim):
                    for lane in range(wc):
                        t_rec[i, 0, lane] = psi[i, 0, lane]
                        t_rec[i, 1, lane] = psi[i, 1, lane]
        if folded:
            continue
        for j in range(n_obs):
            for lane in range(wc):
                acc[j, lane] = 0.0
        for i in range(dim):
            for j in range(n_obs):
                rj = readout[j, i]
                if rj != 0.0:
                    for lane in range(wc):
                        pr, pi = psi[i, 0, lane], psi[i, 1, lane]
                        acc[j, lane] += rj * (pr * pr + pi * pi)
        for lane in range(wc):
            for j in range(n_obs):
                out[b0 + lane, j] = acc[j, lane]
    return out, tape, ang, dang, mats, rho


@njit(**_JIT)
def backward(
    x,
    w,
    aprog,
    ops,
    prog,
    gates,
    perm,
    cplx,
    readout,
    zcoef,
    tape,
    ang,
    dang,
    mats,
    rho,
    g_out,
    per_sample,
):
    """(dL/dx [B, n_in], dL/dw [B, n_w] if ``per_sample`` else [1, n_w]) from dL/d outputs
    ``g_out`` [B, n_obs] and :func:`forward`'s ``tape``, ``ang``, ``dang``, ``mats``."""
    b_rows, n_in = x.shape
    n_w = w.shape[1]
    n_obs, dim = readout.shape
    n_slots = aprog[0]
    n_ops = ops.shape[0]
    wd = tape.shape[-1]
    gx = np.zeros((b_rows, n_in))
    gw = np.zeros((b_rows if per_sample else 1, n_w))
    g = np.empty((dim, 2, wd))
    tmp = np.empty((dim, 2, wd))
    r = np.empty((8, wd))
    chain = np.empty((8, wd))
    gsum = np.empty(wd)
    g_ang = np.empty((n_slots, wd))
    no_gate = np.full(6, -1, dtype=np.int64)
    nmat = np.empty((rho.shape[1], 8, wd))
    vq = np.empty((rho.shape[1], 4, wd))
    rprod = np.empty((rho.shape[1], 8, wd))
    last = n_ops - 1
    for ci in range(tape.shape[0]):
        b0 = ci * wd
        wc = min(wd, b_rows - b0)
        a_c, m_c = ang[ci], mats[ci]
        for s in range(n_slots):
            for lane in range(wc):
                g_ang[s, lane] = 0.0
        if prog[ops[last, 0]] == OP_ZFOLD:
            before = tape[ci, ops[last - 1, 1]]
            fold_backward(
                before, rho[ci], prog, ops[last, 0], gates, m_c, a_c, wc, zcoef, g_out, b0, g,
                g_ang, nmat,
            )  # fmt: skip
            start = last - 1
        else:
            final = tape[ci, ops[last, 1]]
            for i in range(dim):
                for lane in range(wc):
                    s = 0.0
                    for j in range(n_obs):
                        s += readout[j, i] * g_out[b0 + lane, j]
                    gsum[lane] = 2.0 * s
                for lane in range(wc):
                    g[i, 0, lane] = gsum[lane] * final[i, 0, lane]
                    g[i, 1, lane] = gsum[lane] * final[i, 1, lane]
            start = last
        for o in range(start, -1, -1):
            pc = ops[o, 0]
            op = prog[pc]
            if op == OP_LOCAL:
                psi = tape[ci, ops[o, 1]]
                if o == 0:  # the product state: every qubit's r from two contractions
                    _product_factors(prog, m_c, wc, vq)
                    product_reduced(g, vq, wc, rprod)
                for c in range(prog[pc + 1]):
                    q, n_g, g0 = prog[pc + 2 + 3 * c], prog[pc + 3 + 3 * c], prog[pc + 4 + 3 * c]
                    any_angle = False
                    for gi in range(g0, g0 + n_g):
                        any_angle = any_angle or gates[gi, 0] != K_CONST
                    if not any_angle:
                        continue
                    if o == 0:
                        r[:, :wc] = rprod[q, :, :wc]
                    else:
                        _reduced1(g, psi, q, wc, r, False)
                    chain_grads(gates, g0, n_g, m_c, a_c, r, g_ang, wc)
                if o:  # nothing before the first op: no need to carry g further
                    for c in range(prog[pc + 1]):
                        q, n_g, g0 = (
                            prog[pc + 2 + 3 * c],
                            prog[pc + 3 + 3 * c],
                            prog[pc + 4 + 3 * c],
                        )
                        _chain(m_c, g0, n_g, wc, True, chain)
                        _apply1(g, q, chain, wc)
            elif op == OP_MONO:
                _permute(g, tmp, perm[2 * prog[pc + 1] + 1], cplx, prog[pc + 2], True, wc)
                g, tmp = tmp, g
            else:  # OP_DENSE
                kq = prog[pc + 1]
                gi, c_off = prog[pc + 2 + kq], prog[pc + 3 + kq]
                d = 1 << kq
                mask, offs = _dense_offsets(prog, pc + 2, kq)
                psi = tape[ci, ops[o, 1]]
                for lane in range(wc):
                    u, gen = _dense_lane(
                        gates[gi] if gi >= 0 else no_gate, a_c, lane, cplx, c_off, d
                    )
                    if gi >= 0:
                        acc = 0.0
                        for base in range(dim):
                            if base & mask:
                                continue
                            for a in range(d):
                                ia = base + offs[a]
                                ga = complex(g[ia, 0, lane], g[ia, 1, lane])
                                for cc in range(d):
                                    if gen[a, cc] != 0:
                                        ic = base + offs[cc]
                                        pcj = complex(psi[ic, 0, lane], -psi[ic, 1, lane])
                                        acc += ((ga * pcj).conjugate() * gen[a, cc]).real
                        g_ang[gates[gi, 1], lane] += acc
                    if o:
                        _apply_dense_lane(g, lane, u, mask, offs, True)
        # chain rule through the angle expressions
        pc = 3
        for s in range(n_slots):
            k = aprog[pc]
            for j in range(k):
                p = aprog[pc + 1 + j]
                for lane in range(wc):
                    v = g_ang[s, lane] * dang[ci, s, j, lane]
                    if p < n_in:
                        gx[b0 + lane, p] += v
                    else:
                        gw[b0 + lane if per_sample else 0, p - n_in] += v
            pc += 1 + k
            pc += 1 + aprog[pc]
    return gx, gw
