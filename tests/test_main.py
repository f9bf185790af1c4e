"""``python -m qa3c_qiskit``: lists the commands and dispatches ``CMD ARGS...`` to their mains."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from qa3c_qiskit.__main__ import COMMANDS, main

EXPECTED = ("train", "evaluate", "reproduce", "plot", "backends", "circuit")


def run(*args, timeout=300):
    cmd = [sys.executable, "-m", "qa3c_qiskit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_lists_every_command_with_one_line_each():
    proc = run()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in EXPECTED:
        (line,) = [ln for ln in lines if ln.strip().startswith(name + " ")]
        assert len(line.split(None, 1)[1]) > 10  # a description on the same line
    assert "exit codes" in proc.stdout and "130" in proc.stdout
    assert main(["--help"]) == 0 and main([]) == 0


@pytest.mark.parametrize("name", EXPECTED)
def test_every_command_has_a_main(name):
    assert name in COMMANDS
    assert callable(importlib.import_module(COMMANDS[name][0]).main)


def test_unknown_command_is_a_one_line_error_with_exit_2():
    proc = run("nope")
    assert proc.returncode == 2 and proc.stdout == ""
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "train" in err


def test_dispatch_passes_arguments_and_exit_codes(capsys, tmp_path):
    assert main(["circuit", "--qubits", "2", "--layers", "1"]) == 0
    assert "q_1" in capsys.readouterr().out  # the text drawing of a 2-qubit circuit
    assert main(["backends"]) == 0
    assert "aer_shots" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing"), "--episodes", "1"]) == 2
    assert "no trained model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own --help, as python -m qa3c_qiskit.CMD
        main(["plot", "--help"])
    assert exc.value.code == 0 and "python -m qa3c_qiskit.plot" in capsys.readouterr().out


def test_train_through_the_entry_point(tmp_path):
    bad = run("train", "--env", "NoSuchEnv-v0", "--out", str(tmp_path))
    assert bad.returncode == 2 and "NoSuchEnv-v0" in bad.stderr
    ok = run(
        "train", "--episodes", "3", "--workers", "1", "--quiet", "--out", str(tmp_path),
        "--run-name", "r",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "r" / "model.pt").is_file()
