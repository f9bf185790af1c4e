"""Statistics over seeds with :mod:`math` alone (no scipy): Welch's t-test and Student's t.

The regularised incomplete beta function (continued fraction) gives Student's t two-sided
p-values and, by bisection, its quantiles (the 95% CI bands of :mod:`qa3c_qiskit.plot`);
:func:`welch_t_test` compares two models' scores over seeds (the verdicts of
:mod:`qa3c_qiskit.results`). The tests check them against ``scipy.stats``.
"""

from __future__ import annotations

import math

import numpy as np


def betainc_reg(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) (continued fraction, modified Lentz;
    Numerical Recipes 6.4), to ~1e-14."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - betainc_reg(b, a, 1.0 - x)
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return math.exp(log_front) * h / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (real) degrees of freedom."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0
    return betainc_reg(df / 2.0, 0.5, df / (df + t * t))


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (``q`` in (0, 1)), by bisection on :func:`t_two_sided_p`."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    target = 2.0 * min(q, 1.0 - q)  # two-sided tail mass of |T| >= t
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    t = 0.5 * (lo + hi)
    return t if q > 0.5 else -t


def welch_t_test(a, b) -> dict:
    """Welch's unequal-variances t-test of mean(a) vs mean(b), two-sided.

    Returns ``t``, ``df`` (Welch-Satterthwaite), ``p`` and the samples' ``n``, ``mean``, ``sd``
    (sample standard deviation, n - 1). With fewer than 2 values on a side t, df and p are NaN;
    with zero variance on both sides p is 1 for equal means and 0 otherwise.
    """
    a = np.asarray([v for v in a if np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if np.isfinite(v)], dtype=float)
    out = {
        "n1": len(a),
        "n2": len(b),
        "mean1": float(a.mean()) if len(a) else math.nan,
        "mean2": float(b.mean()) if len(b) else math.nan,
        "sd1": float(a.std(ddof=1)) if len(a) > 1 else math.nan,
        "sd2": float(b.std(ddof=1)) if len(b) > 1 else math.nan,
        "t": math.nan,
        "df": math.nan,
        "p": math.nan,
    }
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = out["sd1"] ** 2 / len(a), out["sd2"] ** 2 / len(b)
    diff = out["mean1"] - out["mean2"]
    if va + vb == 0.0:
        out.update(t=0.0 if diff == 0 else math.copysign(math.inf, diff))
        out.update(p=1.0 if diff == 0 else 0.0)
        return out
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    out.update(t=t, df=df, p=t_two_sided_p(t, df))
    return out
