"""The notebooks run top to bottom (nbclient, real kernel) at tiny sizes set by env variables,
and are committed *with* their outputs (so they read on a code host without running), small.

Re-render the committed outputs (from the repository root, after ``make setup``; a few minutes)::

    .venv/bin/python -m qa3c_qiskit reproduce --env CartPole-v1 --episodes 300 --lr 0.005 \\
        --workers 2 --quiet --out runs/reproduce      # the runs notebook 03 draws
    .venv/bin/python tests/test_notebooks.py          # or: ... 01_quickstart.ipynb
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
IMAGE_TYPES = ("image/png", "image/gif", "image/jpeg")
MAX_IMAGE_BYTES = 200 * 1024
MAX_NOTEBOOK_BYTES = 600 * 1024
#: machine-specific paths that must not end up in committed outputs
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/home/|/root/|/Users/|[A-Z]:\\\\)")


def execute(name: str, timeout: int = 300) -> nbformat.NotebookNode:
    """Run ``notebooks/name`` in a fresh kernel with cwd ``notebooks/``; return it executed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        record_timing=False,  # no timestamps in the committed cells
    )
    client.execute()
    assert not problems(nb), problems(nb)
    return nb


def problems(nb) -> list[str]:
    """Error outputs and tracebacks on stderr: a notebook that runs clean has none."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {i}: {out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == "stderr":
                if "Traceback" in out.text or re.search(r"\bError\b", out.text):
                    found.append(f"cell {i} stderr: {out.text[:300]}")
    return found


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(json.dumps(out.get("data", {}).get("text/plain", "")))
            parts.append(json.dumps(out.get("data", {}).get("text/markdown", "")))
    return "\n".join(parts)


def images(nb) -> list[tuple[str, int]]:
    """(mime type, decoded size in bytes) of every image output."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for mime, data in out.get("data", {}).items():
                if mime in IMAGE_TYPES:
                    found.append((mime, len(base64.b64decode("".join(data)))))
    return found


def has_image(nb, mime: str = "image/png") -> bool:
    return any(m == mime for m, _ in images(nb))


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_committed_with_small_clean_outputs(name):
    """Every code cell was run, in order, without errors; images and the file are small."""
    path = NOTEBOOKS / name
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, (name, path.stat().st_size)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), name
    assert not problems(nb), problems(nb)
    found = images(nb)
    assert found, f"{name} has no figure"
    assert all(size < MAX_IMAGE_BYTES for _, size in found), (name, found)
    text = json.dumps([c.get("outputs", []) for c in code])
    assert not MACHINE_PATH.search(text), (name, MACHINE_PATH.search(text).group(0))


def test_01_quickstart(tmp_path, monkeypatch):
    monkeypatch.setenv("QA3C_NB_EPISODES", "6")
    monkeypatch.setenv("QA3C_NB_WORKERS", "1")
    monkeypatch.setenv("QA3C_NB_OUT", str(tmp_path))
    nb = execute("01_quickstart.ipynb")
    text = outputs_text(nb)
    assert "max |difference|" in text and "final_avg100" in text
    assert has_image(nb)  # the learning curve (and the circuit drawing)
    assert has_image(nb, "image/gif")  # the agent playing
    (run,) = list(tmp_path.glob("CartPole-v1__quantum__*"))
    assert (run / "summary.json").is_file()
    (gif,) = list((tmp_path / "videos").glob("CartPole-v1__*.gif"))
    assert gif.stat().st_size < MAX_IMAGE_BYTES


def test_02_compare_backends(tmp_path, monkeypatch):
    for key, value in {
        "EPISODES": "4",
        "WORKERS": "1",
        "SAMPLES": "6",
        "SHOTS": "64,4096",
        "ACTIONS": "2",
        "EVAL_EPISODES": "1",
        "EVAL_STEPS": "3",
        "SLOW_SAMPLES": "1",
        "SLOW_ACTIONS": "1",
        "OUT": str(tmp_path),
    }.items():
        monkeypatch.setenv(f"QA3C_NB_{key}", value)
    nb = execute("02_compare_backends.ipynb")
    text = outputs_text(nb)
    err = {
        m.group(1).strip(): float(m.group(2))
        for m in re.finditer(
            r"^(.+?)\s+mean \|error\| of <Z_i> = (\S+)(?: \(\d+ state\(s\)\))?$", text, re.M
        )
    }
    # Every backend of the registry that this notebook compares is available here.
    assert set(err) == {
        "aer_statevector",
        "aer_shots (64)",
        "aer_shots (4096)",
        "density_noisy",
        "aer_device",
        "ibm_runtime_local",
    }
    assert err["aer_statevector"] < 1e-6  # exact Aer agrees with the torch engine
    assert err["aer_shots (4096)"] < err["aer_shots (64)"]  # shot noise falls with shots
    assert err["density_noisy"] > 1e-3  # device noise is visible
    assert err["aer_device"] > 1e-3 and err["ibm_runtime_local"] > 1e-3
    assert text.count("ms / action") == 7 and has_image(nb)
    assert "QPU time" in text and "FakeBrisbane" in text and "FakeGuadalupeV2" in text  # reports
    assert "greedy return: skipped (slow backend)" in text and "closed 7 model(s)" in text


def test_03_paper_figures_from_reproduce_outputs(tmp_path, monkeypatch):
    from qa3c_qiskit.reproduce import main as reproduce_main

    argv = ["--env", "CartPole-v1", "--episodes", "4", "--workers", "1", "--quiet"]
    assert reproduce_main([*argv, "--out", str(tmp_path)]) == 0
    monkeypatch.setenv("QA3C_NB_RESULTS", str(tmp_path))
    nb = execute("03_paper_figures.ipynb")
    text = outputs_text(nb)
    assert "environments with results: CartPole-v1" in text
    assert "quantum vs classical" in text and "| CartPole-v1 | 107 | 96 | 203 | 251 |" in text
    assert has_image(nb)


def render(names: list[str]) -> None:
    """Execute ``names`` at their default sizes and write them back with their outputs."""
    for name in names:
        nb = execute(name, timeout=3600)
        nbformat.write(nb, NOTEBOOKS / name)
        sizes = [size // 1024 for _, size in images(nb)]
        size = (NOTEBOOKS / name).stat().st_size // 1024
        print(f"{name}: {size} KB, images (KB): {sizes}")


if __name__ == "__main__":
    render(sys.argv[1:] or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
