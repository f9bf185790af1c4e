"""``python -m qa3c_qiskit.backends``: the table of known backends (what each runs on, its
shots, gradient, device, what it needs, whether it loads) and ``NAME --report``, the cost
report of one backend (:mod:`.cost`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .registry import (
    ALIASES,
    Profile,
    backend_dirs,
    gradient_problems,
    known_backends,
    load_profile,
    profile_problems,
    runtime_targets,
)


def table_rows() -> list[dict]:
    """One row per known backend and per deprecated alias: name, kind, runs on (what executes:
    exact engine, Aer, in-package density-matrix engine, Runtime local mode, real QPU), shots,
    gradient, device, needs, status, description."""
    known = known_backends()
    rows = [_row(name, path) for name, path in sorted(known.items())]
    for alias, target in ALIASES.items():
        if alias not in known and target in known:
            row = _row(target, known[target])
            rows.append({**row, "name": alias, "status": f"deprecated name of {target}"})
    return sorted(rows, key=lambda r: r["name"])


def _row(name: str, path: Path) -> dict:
    try:
        p = load_profile(name if str(path) == "<built-in>" else str(path))
        problems = profile_problems(p)
        status = "ok" if not problems else problems[0]
    except ValueError as exc:
        p, status = Profile(name=name, kind="?"), str(exc)
    targets = ", ".join(runtime_targets(p)) if p.kind == "ibm_runtime" else ""
    if p.kind == "statevector":
        grad = "exact (adjoint)"
    elif p.gradient == "spsa" and not gradient_problems(p):
        grad = f"spsa (c = {p.gradient_options()['spsa_perturbation']:g})"
    else:
        grad = str(p.gradient)
    return {
        "name": name,
        "kind": p.kind,
        "runs on": p.engine(),
        "shots": "exact" if p.shots is None else str(p.shots),
        "gradient": grad,
        "device": p.noise_source or targets or "-",
        "needs": p.needs(),
        "status": status,
        "description": p.description,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m qa3c_qiskit.backends``: print the table of known backends."""
    parser = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.backends",
        description="List the known quantum backends (built-in profiles, ./backends/ and "
        "$QA3C_BACKENDS_DIR).",
    )
    parser.add_argument("name", nargs="?", help="a backend name or profile path (with --report)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print NAME's executed circuit, calls/circuits/shots per action, update, episode "
        "and run, and for ibm_runtime* the estimated QPU seconds",
    )
    parser.add_argument("--episodes", type=int, default=1, help="episodes of the run (report)")
    parser.add_argument("--learners", type=int, default=1, help="actor-learners (report)")
    parser.add_argument(
        "--episode-length",
        type=float,
        default=None,
        help="assumed mean episode length (default: the env's time limit, an upper bound)",
    )
    parser.add_argument("--env", default="CartPole-v1", help="environment id (report)")
    parser.add_argument("--update-every", type=int, default=5, help="S (report)")
    parser.add_argument("--shots", type=int, default=None, help="override the shots (report)")
    parser.add_argument("--n-qubits", type=int, default=8)
    parser.add_argument("--n-layers", type=int, default=2)
    options = vars(parser.parse_args(argv))
    name, show_report = options.pop("name"), options.pop("report")
    if name or show_report:
        if not name:
            parser.error("--report needs a backend NAME")
        from .cost import format_report, report

        try:
            r = report(name, **options)  # the other options are cost.report's keywords
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        print(format_report(r))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = table_rows()
    cols = ("name", "kind", "runs on", "shots", "gradient", "device", "needs", "status")
    cols += ("description",)
    dirs = ", ".join(str(d) for d in backend_dirs() if d.is_dir())
    table = Table(title=f"Backends (profiles in {dirs})")
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(escape(r[c]) for c in cols))
    Console(width=max(Console().width, 200)).print(table)
    return 0
