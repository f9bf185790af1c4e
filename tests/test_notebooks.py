"""The notebooks run top to bottom (nbclient, real kernel) at tiny sizes set by env variables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from qa3c_qiskit.reproduce import main as reproduce_main

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    """Run ``notebooks/name`` in a fresh kernel with cwd ``notebooks/``; return it executed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(json.dumps(out.get("data", {}).get("text/plain", "")))
            parts.append(json.dumps(out.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


def has_image(nb) -> bool:
    return any(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_outputs_are_stripped_in_git(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name


def test_01_quickstart(tmp_path, monkeypatch):
    monkeypatch.setenv("QA3C_NB_EPISODES", "6")
    monkeypatch.setenv("QA3C_NB_WORKERS", "1")
    monkeypatch.setenv("QA3C_NB_OUT", str(tmp_path))
    nb = execute("01_quickstart.ipynb", tmp_path)
    text = outputs_text(nb)
    assert "max |difference|" in text and "final_avg100" in text
    assert has_image(nb)  # the learning curve
    (run,) = list(tmp_path.glob("CartPole-v1__quantum__*"))
    assert (run / "summary.json").is_file()


def test_02_compare_backends(tmp_path, monkeypatch):
    for key, value in {
        "EPISODES": "4",
        "WORKERS": "1",
        "SAMPLES": "6",
        "SHOTS": "64,4096",
        "ACTIONS": "2",
        "EVAL_EPISODES": "1",
        "EVAL_STEPS": "3",
        "OUT": str(tmp_path),
    }.items():
        monkeypatch.setenv(f"QA3C_NB_{key}", value)
    nb = execute("02_compare_backends.ipynb", tmp_path)
    text = outputs_text(nb)
    err = {
        m.group(1).strip(): float(m.group(2))
        for m in re.finditer(r"^(.+?)\s+mean \|error\| of <Z_i> = (\S+)$", text, re.M)
    }
    # Every backend of the registry that this notebook compares is available here.
    assert set(err) == {"aer_statevector", "aer_shots (64)", "aer_shots (4096)", "aer_noisy"}
    assert err["aer_statevector"] < 1e-6  # exact Aer agrees with the torch engine
    assert err["aer_shots (4096)"] < err["aer_shots (64)"]  # shot noise falls with shots
    assert err["aer_noisy"] > 1e-3  # device noise is visible
    assert text.count("ms / action") == 5 and has_image(nb)


def test_03_paper_figures_from_reproduce_outputs(tmp_path, monkeypatch):
    argv = ["--env", "CartPole-v1", "--episodes", "4", "--workers", "1", "--quiet"]
    assert reproduce_main([*argv, "--out", str(tmp_path)]) == 0
    monkeypatch.setenv("QA3C_NB_RESULTS", str(tmp_path))
    nb = execute("03_paper_figures.ipynb", tmp_path)
    text = outputs_text(nb)
    assert "environments with results: CartPole-v1" in text
    assert "quantum vs classical" in text and "| CartPole-v1 | 107 | 96 | 203 | 251 |" in text
    assert has_image(nb)
