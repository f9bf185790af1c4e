"""Learning is real: both agents improve on CartPole with 2 workers and a fixed seed.

The budget is small, so the learning rate is raised from the paper's 1e-4 to 1e-2.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from qa3c_qiskit.metrics import read_metrics


@pytest.mark.parametrize("model, episodes", [("classical", 200), ("quantum", 200)])
def test_agent_learns_cartpole(tmp_path, model, episodes):
    cmd = [
        sys.executable, "-m", "qa3c_qiskit.train", "--env", "CartPole-v1", "--model", model,
        "--workers", "2", "--episodes", str(episodes), "--seed", "0", "--lr", "0.01",
        "--out", str(tmp_path), "--run-name", "run", "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    returns = read_metrics(tmp_path / "run")["return"]
    assert len(returns) == episodes
    first, last = returns[:20].mean(), returns[-20:].mean()
    assert last > 2 * first and last - first > 40, (first, last)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["episodes"] == episodes
    assert np.isclose(summary["final_avg100"], returns[-100:].mean())
