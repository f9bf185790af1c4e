"""``python -m qa3c_qiskit [COMMAND] [ARGS...]``: one entry point for the package's commands.

Without a command it lists them; ``python -m qa3c_qiskit CMD ARGS...`` is the same as
``python -m qa3c_qiskit.CMD ARGS...`` (``CMD --help`` for its options).

Exit codes (all commands): 0 ok, 1 a worker failed (training), 2 bad input (unknown
command, option, environment, backend, missing file or optional extra), 130 / 143 interrupted
by SIGINT (Ctrl-C) / SIGTERM.
"""

from __future__ import annotations

import importlib
import runpy
import sys

from . import __version__

#: command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("qa3c_qiskit.train", "train a QA3C (or classical) A3C agent (paper Algorithm 1)"),
    "evaluate": (
        "qa3c_qiskit.evaluate",
        "evaluate a trained policy on any backend; record videos (--video DIR)",
    ),
    "reproduce": (
        "qa3c_qiskit.reproduce",
        "the paper's quantum-vs-classical experiments, figures and tables in one command",
    ),
    "plot": ("qa3c_qiskit.plot", "learning curves (average of the last 100 returns) of runs"),
    "backends": ("qa3c_qiskit.backends", "list the backend registry's profiles and their status"),
    "circuit": ("qa3c_qiskit.circuit", "draw the variational circuit (paper Fig. 3)"),
}

EXIT_CODES = "exit codes: 0 ok, 1 worker failure, 2 bad input, 130/143 interrupted (SIGINT/SIGTERM)"


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        f"qa3c-qiskit {__version__}: quantum asynchronous advantage actor-critic on Qiskit",
        "",
        "usage: python -m qa3c_qiskit COMMAND [ARGS...]   (COMMAND --help for its options)",
        "",
        "commands:",
        *(f"  {name:{width}s}  {desc}" for name, (_, desc) in COMMANDS.items()),
        "",
        EXIT_CODES,
    ]
    return "\n".join(lines)


def dispatch(command: str, argv: list[str]) -> int:
    """Run ``command``'s ``main(argv)``; return its exit code."""
    module_name = COMMANDS[command][0]
    module = importlib.import_module(module_name)
    entry = getattr(module, "main", None)
    if entry is None:  # a module whose CLI lives only under `if __name__ == "__main__"`
        saved = sys.argv
        sys.argv = [f"python -m {module_name}", *argv]
        try:
            runpy.run_module(module_name, run_name="__main__", alter_sys=True)
        finally:
            sys.argv = saved
        return 0
    code = entry(argv)
    return 0 if code is None else int(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help" and argv[1] in COMMANDS:
            return dispatch(argv[1], ["--help"])
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"qa3c-qiskit {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)} "
            "(python -m qa3c_qiskit lists them)",
            file=sys.stderr,
        )
        return 2
    try:
        return dispatch(command, rest)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
