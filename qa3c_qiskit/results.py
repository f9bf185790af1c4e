"""The numbers of a results folder, from its compact run folders alone.

Per run: a result row (final/best avg-100, episodes to the reward threshold, area under the
curve, wall time, env steps/s, budget reached); per (env, model, backend, learners): the mean
and sample std over seeds (:func:`aggregate`); per env: the verdicts quantum vs classical
(:func:`verdict`, Welch's t-test from :mod:`qa3c_qiskit.stats`) and the learner-count
comparison, all in :func:`env_data`. :mod:`qa3c_qiskit.report` writes them out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .envs import PAPER_ENVS
from .plot import CURVE_EVERY, CURVE_FILE, CompactRun, load_compact
from .stats import welch_t_test

MODELS = ("quantum", "classical")
SIGNIFICANCE = 0.05

RESULT_FIELDS = [
    "env",
    "model",
    "backend",
    "learners",
    "workers",
    "seed",
    "episodes",
    "intended_episodes",
    "complete",
    "status",
    "final_avg100",
    "last_avg100",
    "best_avg100",
    "reward_threshold",
    "episodes_to_threshold",
    "auc_avg100",
    "wall_time_s",
    "env_steps",
    "env_steps_per_s",
]


def load_results(results: Path, envs: list[str] | None = None) -> dict[str, list[CompactRun]]:
    """Compact runs per env folder of ``results`` (only ``envs`` if given)."""
    out: dict[str, list[CompactRun]] = {}
    if not Path(results).is_dir():
        return out
    for env_dir in sorted(Path(results).iterdir()):
        if not env_dir.is_dir() or (envs is not None and env_dir.name not in envs):
            continue
        runs = [
            load_compact(d)
            for d in sorted(env_dir.iterdir())
            if d.is_dir() and (d / CURVE_FILE).is_file()
        ]
        runs = [r for r in runs if r.n]  # a run exported before its first episode: no data
        if runs:
            out[env_dir.name] = runs
    order = {e: i for i, e in enumerate(PAPER_ENVS)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def curve_auc(run: CompactRun, upto: int | None = None) -> float:
    """Area under the avg-100 curve per episode: the trapezoid integral over the exported
    points (up to episode ``upto``) divided by their episode span (= the mean avg-100 score
    over training)."""
    x, y = run.curve["episode"], run.curve["avg100"]
    if upto is not None:
        x, y = x[x <= upto], y[x <= upto]
    if len(x) == 0:
        return math.nan
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0 / (x[-1] - x[0]))


def avg100_at(run: CompactRun, episode: int) -> float:
    """The avg-100 of ``run`` at ``episode`` (an exported point; interpolated otherwise)."""
    x, y = run.curve["episode"], run.curve["avg100"]
    hit = np.nonzero(x == episode)[0]
    return float(y[hit[0]]) if len(hit) else float(np.interp(episode, x, y))


def common_scores(rows: list[dict]) -> tuple[list[float], list[float], int | None]:
    """Final avg-100 and AUC of ``rows`` compared at one episode: their final values when every
    run ended at the same episode, else the values at the last exported point every run
    reached (returned as the third item; None when the finals are used)."""
    ends = {r["episodes"] for r in rows}
    if len(ends) == 1 or any("_run" not in r for r in rows):
        return [r["final_avg100"] for r in rows], [r["auc_avg100"] for r in rows], None
    common = min(ends)
    at = (common // CURVE_EVERY) * CURVE_EVERY or common
    finals = [avg100_at(r["_run"], at) for r in rows]
    return finals, [curve_auc(r["_run"], at) for r in rows], at


def result_row(run: CompactRun) -> dict:
    s = run.summary
    episodes, intended = run.episodes, run.intended_episodes
    last = _float(s.get("final_avg100"))
    at = run.drain_free_end
    final = avg100_at(run, at) if at is not None and len(run.curve) else last
    return {
        "env": run.env,
        "model": run.model,
        "backend": run.backend,
        "learners": run.learners,
        "workers": run.config.get("workers"),
        "seed": run.seed,
        "episodes": episodes,
        "intended_episodes": intended,
        "complete": run.complete,
        "status": s.get("status", "?"),
        "final_avg100": final,
        "last_avg100": last,
        "best_avg100": _float(s.get("best_avg100")),
        "reward_threshold": s.get("reward_threshold"),
        "episodes_to_threshold": s.get("episodes_to_threshold"),
        "auc_avg100": curve_auc(run),
        "wall_time_s": _float(s.get("wall_time_s")),
        "env_steps": s.get("env_steps"),
        "env_steps_per_s": _float(s.get("env_steps_per_s")),
    }


def _float(x) -> float:
    return math.nan if x is None else float(x)


def _mean_sd(values) -> tuple[float, float]:
    v = np.array([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def group_key(r: dict) -> tuple:
    return (r["env"], r["model"], r["backend"], r["learners"])


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (env, model, backend, learners): mean and sample std (n - 1) over seeds, solved
    count, and the budget the seeds reached."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    out = []
    for (env, model, backend, learners), rs in groups.items():
        solved = [r["episodes_to_threshold"] for r in rs if r["episodes_to_threshold"] is not None]
        reached = [r["episodes"] for r in rs]
        intended = max(r["intended_episodes"] for r in rs)
        out.append(
            {
                "env": env,
                "model": model,
                "backend": backend,
                "learners": learners,
                "seeds": len(rs),
                "episodes": min(reached),
                "episodes_max": max(reached),
                "intended_episodes": intended,
                "complete": all(r["complete"] for r in rs),
                "final_avg100": _mean_sd(r["final_avg100"] for r in rs),
                "best_avg100": _mean_sd(r["best_avg100"] for r in rs),
                "solved": f"{len(solved)}/{len(rs)}",
                "episodes_to_threshold": _mean_sd(solved) if solved else None,
                "auc_avg100": _mean_sd(r["auc_avg100"] for r in rs),
                "wall_time_s": _mean_sd(r["wall_time_s"] for r in rs),
                "env_steps_per_s": _mean_sd(r["env_steps_per_s"] for r in rs),
            }
        )
    order = {m: i for i, m in enumerate(MODELS)}
    out.sort(key=lambda a: (a["env"], -a["learners"], order.get(a["model"], 9), a["backend"]))
    return out


def budget_text(
    episodes: int, intended: int, complete: bool, episodes_max: int | None = None
) -> str:
    """``100,000`` or ``reached 37,400 of 100,000`` (a range over seeds when they differ)."""
    if complete:
        return f"{intended:,}"
    span = f"{episodes:,}" if episodes_max in (None, episodes) else f"{episodes:,}-{episodes_max:,}"
    return f"reached {span} of {intended:,}"


def _fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, tuple):
        mean, sd = x
        if not math.isfinite(mean):
            return "-"
        return (
            _fmt(mean, digits)
            if not math.isfinite(sd)
            else f"{mean:,.{digits}f} ± {sd:,.{digits}f}"
        )
    if isinstance(x, float):
        return "-" if not math.isfinite(x) else f"{x:,.{digits}f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def _p(p: float) -> str:
    """``p = 0.069``, ``p < 0.001`` or ``p n/a``."""
    if not math.isfinite(p):
        return "p n/a"
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def verdict(env: str, rows: list[dict], learners: int, backend: str = "statevector") -> dict | None:
    """Quantum (``backend``) vs classical at ``learners`` learners: Welch's t-test on the final
    average-100 over seeds, and a one-line verdict against the paper's claim (the quantum
    agent learns as well as or better than its classical twin). None without both models."""
    q = [
        r
        for r in rows
        if r["model"] == "quantum" and r["backend"] == backend and r["learners"] == learners
    ]
    c = [r for r in rows if r["model"] == "classical" and r["learners"] == learners]
    if not q or not c:
        return None
    both = q + c
    finals, aucs, at = common_scores(both)
    test = welch_t_test(finals[: len(q)], finals[len(q) :])
    auc = welch_t_test(aucs[: len(q)], aucs[len(q) :])
    score = "final avg-100" if at is None else f"avg-100 at episode {at:,} (reached by all)"
    intended = max(r["intended_episodes"] for r in both)
    reached = [r["episodes"] for r in both]
    complete = all(r["complete"] for r in both)
    budget = budget_text(min(reached), intended, complete, max(reached))
    if test["n1"] < 2 or test["n2"] < 2:
        outcome = "not testable (needs >= 2 seeds per model)"
        better = "quantum" if test["mean1"] >= test["mean2"] else "classical"
        outcome += f"; {better} higher on these seeds"
    elif test["p"] < SIGNIFICANCE and test["mean1"] > test["mean2"]:
        outcome = "supports the claim: quantum significantly better"
    elif test["p"] < SIGNIFICANCE:
        outcome = "contradicts the claim: classical significantly better"
    else:
        higher = "quantum" if test["mean1"] >= test["mean2"] else "classical"
        outcome = (
            "consistent with the claim (as well as): no significant difference at the 5% "
            f"level ({higher} mean higher)"
        )
    stat = (
        f"Welch t = {test['t']:.2f}, df = {test['df']:.1f}, {_p(test['p'])}"
        if math.isfinite(test["p"])
        else "Welch's t-test n/a"
    )
    line = (
        f"**{env}** ({learners} learners, {backend} vs classical, {test['n1']} vs "
        f"{test['n2']} seeds, episodes: {budget}): {score}: quantum "
        f"{_fmt((test['mean1'], test['sd1']), 2)} vs classical "
        f"{_fmt((test['mean2'], test['sd2']), 2)}; {stat}; AUC {_p(auc['p'])} "
        f"-> **{outcome}**" + ("" if complete else " (**budget not reached**)")
    )
    return {
        "env": env,
        "learners": learners,
        "backend": backend,
        "test": test,
        "auc_test": auc,
        "outcome": outcome,
        "complete": complete,
        "line": line,
    }


def env_verdicts(env: str, rows: list[dict]) -> list[dict]:
    """Verdicts per (learner count, quantum backend), the largest learner count first."""
    out = []
    for learners in sorted({r["learners"] for r in rows}, reverse=True):
        backends = sorted({r["backend"] for r in rows if r["model"] == "quantum"})
        for backend in sorted(backends, key=lambda b: b != "statevector"):
            v = verdict(env, rows, learners, backend)
            if v:
                out.append(v)
    return out


def learners_comparison(env: str, rows: list[dict], agg: list[dict]) -> list[str]:
    """Per model: the largest vs the smallest learner count (Welch on the final avg100)."""
    lines = []
    counts = sorted({r["learners"] for r in rows})
    if len(counts) < 2:
        return lines
    lo, hi = counts[0], counts[-1]
    for model in MODELS:
        for backend in sorted({r["backend"] for r in rows if r["model"] == model}):
            a = [
                r for r in rows if (r["model"], r["backend"], r["learners"]) == (model, backend, hi)
            ]
            b = [
                r for r in rows if (r["model"], r["backend"], r["learners"]) == (model, backend, lo)
            ]
            if not a or not b:
                continue
            finals, _, at = common_scores(a + b)
            t = welch_t_test(finals[: len(a)], finals[len(a) :])
            score = "final avg-100" if at is None else f"avg-100 at episode {at:,}"
            speed = [_mean_sd(r["env_steps_per_s"] for r in x)[0] for x in (a, b)]
            wall = [_mean_sd(r["wall_time_s"] for r in x)[0] for x in (a, b)]
            budget = [
                budget_text(
                    min(r["episodes"] for r in x),
                    max(r["intended_episodes"] for r in x),
                    all(r["complete"] for r in x),
                    max(r["episodes"] for r in x),
                )
                for x in (a, b)
            ]
            lines.append(
                f"**{env}, {model}" + (f" ({backend})" if model == "quantum" else "") + f"**: "
                f"{hi} learners {_fmt((t['mean1'], t['sd1']), 2)} ({t['n1']} seeds, episodes "
                f"{budget[0]}) vs {lo} learners {_fmt((t['mean2'], t['sd2']), 2)} ({t['n2']} "
                f"seeds, episodes {budget[1]}) {score}; Welch {_p(t['p'])}; wall time "
                f"{_fmt(wall[0], 0)} s vs {_fmt(wall[1], 0)} s; env steps/s {_fmt(speed[0], 0)} "
                f"vs {_fmt(speed[1], 0)}"
            )
    return lines


def main_learners(runs: list[CompactRun]) -> int:
    """The learner count an env's main figure and verdict use: the largest one present."""
    return max(r.learners for r in runs)


def env_data(env: str, runs: list[CompactRun]) -> dict:
    """The numbers of one env's report: per-run rows, per-model aggregates, verdicts, the
    learner-count comparison and the learner count of the main figure."""
    rows = []
    for run in runs:
        row = result_row(run)
        row["_run"] = run
        row["_commands"] = [c["command"] for c in run.info.get("commands", []) if c.get("command")]
        rows.append(row)
    rows.sort(
        key=lambda r: (
            -r["learners"],
            MODELS.index(r["model"]) if r["model"] in MODELS else 9,
            r["backend"],
            r["seed"] if r["seed"] is not None else 0,
        )
    )
    agg = aggregate(rows)
    return {
        "rows": rows,
        "aggregate": agg,
        "verdicts": env_verdicts(env, rows),
        "learners": learners_comparison(env, rows, agg),
        "main_learners": main_learners(runs),
        "figure": None,
    }
