"""The angle program of :mod:`.compile` as a numba kernel: every angle and its forward-mode
derivatives with respect to its free parameters, the samples (lanes) innermost."""

from __future__ import annotations

import numpy as np
from numba import njit

from .compile import A_ADD, A_CONST, A_MUL, A_PARAM, A_POW

_JIT = {"cache": True, "nogil": True}


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
def _angles_chunk(x, w, b0, wc, aprog, aconst, ang, dang, keep, vals, grads):
    """ang [n_slots, W] (and dang [n_slots, k_max, W] if keep) for lanes b0..b0+wc."""
    n_in = x.shape[1]
    shared = w.shape[0] == 1
    n_slots = aprog[0]
    pc = 3
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
                for lane in range(wc):
                    b = b0 + lane
                    if p < n_in:
                        vals[sp, lane] = x[b, p]
                    else:
                        vals[sp, lane] = w[0 if shared else b, p - n_in]
                if keep:
                    for t in range(k):
                        for lane in range(wc):
                            grads[sp, t, lane] = 1.0 if t == j else 0.0
                sp += 1
                pc += 2
            elif op == A_CONST:
                cv = aconst[aprog[pc + 1]]
                for lane in range(wc):
                    vals[sp, lane] = cv
                if keep:
                    for t in range(k):
                        for lane in range(wc):
                            grads[sp, t, lane] = 0.0
                sp += 1
                pc += 2
            elif op == A_ADD or op == A_MUL:
                n = aprog[pc + 1]
                base = sp - n
                for i in range(1, n):
                    for lane in range(wc):
                        a, c = vals[base, lane], vals[base + i, lane]
                        if keep:
                            for t in range(k):
                                if op == A_ADD:
                                    grads[base, t, lane] += grads[base + i, t, lane]
                                else:
                                    grads[base, t, lane] = (
                                        grads[base, t, lane] * c + a * grads[base + i, t, lane]
                                    )
                        vals[base, lane] = a + c if op == A_ADD else a * c
                sp = base + 1
                pc += 2
            elif op == A_POW:
                for lane in range(wc):
                    a, e = vals[sp - 2, lane], vals[sp - 1, lane]
                    v = a**e
                    if keep:
                        for t in range(k):
                            d = 0.0
                            if grads[sp - 2, t, lane] != 0.0:
                                d += e * a ** (e - 1.0) * grads[sp - 2, t, lane]
                            if grads[sp - 1, t, lane] != 0.0:
                                d += v * np.log(a) * grads[sp - 1, t, lane]
                            grads[sp - 2, t, lane] = d
                    vals[sp - 2, lane] = v
                sp -= 1
                pc += 1
            else:  # A_FUNC
                f = aprog[pc + 1]
                for lane in range(wc):
                    v, dv = _func(f, vals[sp - 1, lane])
                    vals[sp - 1, lane] = v
                    if keep:
                        for t in range(k):
                            grads[sp - 1, t, lane] *= dv
                pc += 2
        for lane in range(wc):
            ang[s, lane] = vals[0, lane]
        if keep:
            for t in range(k):
                for lane in range(wc):
                    dang[s, t, lane] = grads[0, t, lane]


@njit(**_JIT)
def angles(x, w, aprog, aconst, keep):
    """(angles [B, n_slots], d angle / d its j-th free parameter [B, n_slots, k_max]) from
    inputs ``x`` [B, n_in] and weights ``w`` [1 or B, n_w] (theta = [x, w])."""
    b_rows = x.shape[0]
    n_slots, k_max, depth = aprog[0], aprog[1], aprog[2]
    wd = 16
    ang = np.empty((n_slots, wd))
    dang = np.zeros((n_slots, k_max, wd))
    vals = np.empty((depth, wd))
    grads = np.zeros((depth, k_max, wd))
    out = np.empty((b_rows, n_slots))
    dout = np.zeros((b_rows, n_slots, k_max))
    for b0 in range(0, b_rows, wd):
        wc = min(wd, b_rows - b0)
        _angles_chunk(x, w, b0, wc, aprog, aconst, ang, dang, keep, vals, grads)
        for lane in range(wc):
            out[b0 + lane] = ang[:, lane]
            if keep:
                dout[b0 + lane] = dang[:, :, lane]
    return out, dout
