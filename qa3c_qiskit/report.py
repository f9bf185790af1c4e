"""Write the report of a results folder from its compact run folders alone.

Per env folder: ``curves.png``, ``results.md``/``.csv`` (and ``learners.png``/``.md`` with
several learner counts); for the whole folder: ``summary.md`` (one verdict line per env),
``grid.png``, ``fig9_minigrid.png`` and Table I (``table1.md``/``.csv``, our parameter counts
beside the paper's). The numbers come from :mod:`qa3c_qiskit.results`, the curves from
:mod:`qa3c_qiskit.plot`.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from .plot import CURVE_EVERY, PAPER_FIGURE, CompactRun, draw_groups, style_axes
from .results import (
    RESULT_FIELDS,
    _fmt,
    budget_text,
    env_data,
    load_results,
    main_learners,
)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


#: the words heading a result field in a table (other fields: their name, spaced)
HEADERS = {
    "solved": "seeds solved",
    "auc_avg100": "AUC",
    "wall_time_s": "wall time (s)",
    "env_steps_per_s": "env steps/s",
}
#: the digits a field's numbers are shown with (``_fmt``; fields not listed: as they are)
DIGITS = {
    "workers": 1,
    "final_avg100": 2,
    "last_avg100": 2,
    "best_avg100": 2,
    "episodes_to_threshold": 0,
    "auc_avg100": 2,
    "wall_time_s": 0,
    "env_steps": 1,
    "env_steps_per_s": 0,
}

#: results.md's per-run table: the RESULT_FIELDS but those the file states once (env, reward
#: threshold) or the episodes column tells (intended episodes, complete)
RUN_COLUMNS = [
    f
    for f in RESULT_FIELDS
    if f not in ("env", "intended_episodes", "complete", "reward_threshold")
]
#: the per-model table (:func:`qa3c_qiskit.results.aggregate`: mean ± std over seeds)
AGG_COLUMNS = [
    "model",
    "backend",
    "learners",
    "seeds",
    "episodes",
    "final_avg100",
    "best_avg100",
    "solved",
    "episodes_to_threshold",
    "auc_avg100",
    "wall_time_s",
    "env_steps_per_s",
]


def table_header(columns: list[str], **names: str) -> list[str]:
    """The header of a table of ``columns`` (``names``: headers other than :data:`HEADERS`)."""
    return [names.get(c) or HEADERS.get(c) or c.replace("_", " ") for c in columns]


def table_cell(row: dict, column: str):
    """The cell of ``column`` of a result row (or aggregate) in a table."""
    if column == "episodes":  # the budget reached, or of how many
        return budget_text(
            row["episodes"], row["intended_episodes"], row["complete"], row.get("episodes_max")
        )
    return _fmt(row[column], DIGITS[column]) if column in DIGITS else row[column]


def markdown_rows(columns: list[str], rows: list[dict], **names: str) -> str:
    """A markdown table of ``columns`` of result rows (or aggregates)."""
    return markdown_table(
        table_header(columns, **names), [[table_cell(r, c) for c in columns] for r in rows]
    )


def agg_table(agg: list[dict]) -> str:
    """The per-model table (mean ± std over seeds) of results.md and learners.md."""
    return markdown_rows(AGG_COLUMNS, agg, auc_avg100="AUC (mean avg100)")


NOTES = (
    "Score = average return of the last 100 episodes (avg100). ± = sample standard deviation "
    "over seeds. *Final* = at the last exported point at least as many episodes before the "
    "end of a complete run as it has learners (the last episodes to finish, in flight when "
    "the budget ran out, are a length-biased sample: the longer an episode, the likelier it "
    "is still running; the curves stop there too); *last* = over the last 100 episodes to "
    "finish, drain included (train's summary.json `final_avg100`); *best* = the highest "
    "avg100 of the run; "
    "*episodes to threshold* = first episode whose avg100 reaches the reward threshold, mean "
    "over the seeds that reached it; *AUC* = area under the avg100 curve (exported every "
    f"{CURVE_EVERY} episodes) divided by its episode span, i.e. the mean avg100 over training "
    "(compare it between runs of the same budget only); wall time and env steps/s are "
    "cumulative over all sessions of a resumed run. *episodes*: the budget every seed "
    "reached, or `reached N of M` when a run stopped short of its intended budget M. "
    "Verdict: Welch's unequal-variances t-test (two-sided) on the final avg100 over seeds, "
    "5% level (when the runs compared ended at different episodes: on the avg100 at the last "
    f"exported point every run reached, a multiple of {CURVE_EVERY}, as the line says); "
    "'consistent with the claim' means no significant difference, which with a few seeds is "
    "weak evidence of equality. Curves: mean over seeds with a band (min-max or 95% CI); a "
    "group whose seeds reached different episodes is cut at its shortest seed."
)


def results_markdown(env: str, rows: list[dict], agg: list[dict], verdicts: list[dict]) -> str:
    threshold = rows[0]["reward_threshold"] if rows else None
    commands = list(dict.fromkeys(c for r in rows for c in r.get("_commands", [])))
    text = [
        f"# {env}: quantum vs classical (cf. paper {PAPER_FIGURE.get(env, '')})\n",
        *(
            [f"- {v['line']}\n" for v in verdicts]
            or [
                "No verdict: the quantum agent and its classical twin need runs at the same "
                "learner count.\n"
            ]
        ),
        "![curves](curves.png)\n",
        f"{NOTES} Reward threshold: {threshold}.\n",
        "## Per model (mean ± std over seeds)\n",
        agg_table(agg),
        "## Per run\n",
        markdown_rows(RUN_COLUMNS, rows),
        "## Commands that produced these runs\n",
        "".join(f"    {c}\n" for c in commands) or "(not recorded)\n",
    ]
    return "\n".join(text)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def env_title(env: str, learners: int | None = None) -> str:
    fig = PAPER_FIGURE.get(env)
    title = f"{env} (cf. paper {fig})" if fig else env
    return title + (f", {learners} learners" if learners else "")


def write_env_report(folder: Path, env: str, runs: list[CompactRun], band: str = "minmax") -> dict:
    """curves.png, results.md/.csv (and learners.png/.md with several learner counts) of one
    env, from its compact runs alone; returns :func:`env_data`."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    data = env_data(env, runs)
    rows, agg, top = data["rows"], data["aggregate"], data["main_learners"]
    with open(folder / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (folder / "results.md").write_text(results_markdown(env, rows, agg, data["verdicts"]))
    threshold = next(
        (r["reward_threshold"] for r in rows if r["reward_threshold"] is not None), None
    )
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    draw_groups(ax, [r for r in runs if r.learners == top], band=band)
    style_axes(ax, env_title(env, top), threshold)
    fig.tight_layout()
    fig.savefig(folder / "curves.png")
    plt.close(fig)
    data["figure"] = folder / "curves.png"
    if data["learners"]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
        for ax, x, label in (
            (axes[0], "episode", "Episode #"),
            (axes[1], "wall_time_h", "Wall time (h)"),
        ):
            draw_groups(ax, runs, band=band, x=x, show_learners=True)
            style_axes(ax, f"{env}: learner counts", threshold, xlabel=label)
        fig.tight_layout()
        fig.savefig(folder / "learners.png")
        plt.close(fig)
        counts = " vs ".join(str(c) for c in sorted({r["learners"] for r in rows}))
        (folder / "learners.md").write_text(
            f"# {env}: {counts} actor-learners\n\n"
            + "".join(f"- {line}\n" for line in data["learners"])
            + "\n![learners](learners.png)\n\n"
            + agg_table(agg)
            + f"\n{NOTES}\n"
        )
    else:
        for name in ("learners.png", "learners.md"):
            (folder / name).unlink(missing_ok=True)
    return data


def table1_rows(envs: list[str], n_qubits: int = 8, n_layers: int = 2) -> list[dict]:
    """Our parameter counts (``models.parameter_table``) beside the paper's Table I."""
    from .envs import env_info
    from .models import PAPER_TABLE1, parameter_table

    specs = {e: (env_info(e).obs_dim, env_info(e).n_actions) for e in envs}
    rows = parameter_table(specs, n_qubits=n_qubits, n_layers=n_layers)
    for r in rows:
        paper = PAPER_TABLE1.get(r["env"])
        r["paper"] = "/".join(map(str, paper)) if paper else "-"
        r["matches_paper"] = paper == (
            r["classical"],
            r["quantum"],
            r["qa3c_total"],
            r["classical_total"],
        )
    return rows


TABLE1_KEYS = [
    "env",
    "classical",
    "quantum",
    "qa3c_total",
    "classical_total",
    "paper",
    "matches_paper",
]
TABLE1_HEADER = [
    "env",
    "QA3C classical",
    "QA3C quantum",
    "QA3C total",
    "classical twin total",
    "paper (same order)",
    "matches",
]


def write_table1(folder: Path, envs: list[str]) -> list[dict]:
    rows = table1_rows(envs)
    with open(folder / "table1.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TABLE1_KEYS)
        w.writeheader()
        w.writerows(rows)
    md = markdown_table(TABLE1_HEADER, [[r[k] for k in TABLE1_KEYS] for r in rows])
    (folder / "table1.md").write_text("# Table I: number of parameters (actor + critic)\n\n" + md)
    return rows


def plot_grid(out: Path, results: dict[str, list[CompactRun]], band: str = "minmax") -> Path | None:
    """Every env's main comparison in one grid (up to 3 panels a row)."""
    if not results:
        return None
    plt = _pyplot()
    n = len(results)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), dpi=110, squeeze=False)
    for ax, (env, runs) in zip(axes.flat, results.items()):
        top = main_learners(runs)
        draw_groups(ax, [r for r in runs if r.learners == top], band=band)
        threshold = next((r.summary.get("reward_threshold") for r in runs), None)
        style_axes(ax, env_title(env, top), threshold)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_minigrid_panels(
    out: Path, results: dict[str, list[CompactRun]], band: str = "minmax"
) -> Path | None:
    """Fig. 9 layout: the SimpleCrossing envs side by side (those that have runs)."""
    panels = {e: r for e, r in results.items() if e.startswith("MiniGrid-")}
    if not panels:
        Path(out).unlink(missing_ok=True)
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (env, runs) in zip(axes[0], panels.items()):
        top = main_learners(runs)
        draw_groups(ax, [r for r in runs if r.learners == top], band=band)
        threshold = next((r.summary.get("reward_threshold") for r in runs), None)
        style_axes(ax, f"{env.removeprefix('MiniGrid-')}, {top} learners", threshold)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def report(
    results_dir: Path, band: str = "minmax", envs: list[str] | None = None
) -> dict[str, dict]:
    """Rebuild every figure and table in ``results_dir`` from its compact run folders alone.

    ``envs``: the env folders to redraw (default all); the overview (summary.md, grid.png,
    fig9_minigrid.png, table1) always covers every env folder. Returns the reports by env.
    """
    results_dir = Path(results_dir)
    everything = load_results(results_dir)
    reports = {}
    for env, runs in everything.items():
        if envs is not None and env not in envs:
            continue
        reports[env] = write_env_report(results_dir / env, env, runs, band)
        print(f"wrote {results_dir / env}/curves.png, results.md, results.csv")
    if not everything:
        return reports
    all_reports = {env: reports.get(env) or env_data(env, runs) for env, runs in everything.items()}
    plot_grid(results_dir / "grid.png", everything, band)
    plot_minigrid_panels(results_dir / "fig9_minigrid.png", everything, band)
    table1 = ""
    try:
        write_table1(results_dir, list(everything))
        table1 = "Parameter counts: [table1.md](table1.md).\n"
    except Exception as exc:  # the model code is not needed for the results themselves
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"note: Table I not written ({type(exc).__name__}: {first})", file=sys.stderr)
    lines = [
        "# Results: quantum vs classical (paper Figs. 7-9)\n",
        "Rebuilt from the compact run folders alone by\n\n"
        f"    python -m qa3c_qiskit.reproduce --report-only --results {results_dir}\n",
        "## Verdicts against the paper's claim (quantum learns as well as or better than "
        "its classical twin)\n",
    ]
    for env, rep in all_reports.items():
        main = [v for v in rep["verdicts"] if v["learners"] == rep["main_learners"]]
        shown = main or rep["verdicts"]
        for v in shown:
            lines.append(f"- {v['line']} ([details]({env}/results.md))")
        if not shown:
            lines.append(
                f"- **{env}**: no verdict (both models at one learner count needed) "
                f"([details]({env}/results.md))"
            )
    others = [
        v
        for rep in all_reports.values()
        for v in rep["verdicts"]
        if v["learners"] != rep["main_learners"]
    ]
    if others:
        lines.append("\nAt other learner counts:\n")
        lines += [f"- {v['line']}" for v in others]
    comparisons = [(env, rep["learners"]) for env, rep in all_reports.items() if rep["learners"]]
    if comparisons:
        lines.append("\n## Learner counts\n")
        for env, comp in comparisons:
            lines += [f"- {c} ([details]({env}/learners.md))" for c in comp]
    lines.append("\n![all environments](grid.png)\n")
    if (results_dir / "fig9_minigrid.png").is_file():
        lines.append("![SimpleCrossing (Fig. 9)](fig9_minigrid.png)\n")
    lines.append(table1)
    lines.append(NOTES + "\n")
    (results_dir / "summary.md").write_text("\n".join(lines))
    print(f"wrote {results_dir}/summary.md, grid.png")
    return reports
