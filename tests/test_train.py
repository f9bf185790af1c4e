"""The training CLI end to end: run directory contents, options, errors."""

import csv
import json
import subprocess
import sys

import torch

from qa3c_qiskit.models import ActorCritic, ModelSpec


def _train(tmp_path, *args, timeout=600):
    cmd = [sys.executable, "-m", "qa3c_qiskit.train", "--out", str(tmp_path), "--quiet", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_run_directory_contents(tmp_path):
    proc = _train(
        tmp_path, "--model", "quantum", "--workers", "2", "--episodes", "12", "--seed", "5",
        "--run-name", "r",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Table I" in proc.stdout and "203" in proc.stdout and "2527" in proc.stdout
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["env"] == "CartPole-v1" and config["lr"] == 1e-4 and config["gamma"] == 0.9
    assert config["beta1"] == 0.92 and config["update_every"] == 5
    assert {int(k): v for k, v in config["learner_seeds"].items()} == {0: 5, 1: 6}
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["episode"]) for r in rows] == list(range(1, 13))
    assert set(rows[0]) >= {
        "episode",
        "worker",
        "learner",
        "return",
        "length",
        "wall_time",
        "env_steps",
    }
    steps = [int(r["env_steps"]) for r in rows]
    assert steps[-1] >= sum(int(r["length"]) for r in rows) - 10 and min(steps) > 0
    saved = torch.load(run / "model.pt", weights_only=False)
    model = ActorCritic(ModelSpec(**saved["spec"]))
    model.load_state_dict(saved["model"])
    assert sum(p.numel() for p in model.parameters()) == 203
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] == 12 and summary["parameters"]["quantum"] == 96


def test_help_lists_paper_options():
    proc = subprocess.run(
        [sys.executable, "-m", "qa3c_qiskit.train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for flag in ("--env", "--model", "--backend", "--workers", "--episodes", "--seed", "--out"):
        assert flag in proc.stdout
    assert "0.0001" in proc.stdout and "0.92" in proc.stdout


def test_bad_input_is_one_line_error(tmp_path):
    proc = _train(tmp_path, "--env", "NoSuchEnv-v0", "--episodes", "0")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "NoSuchEnv-v0" in err and "--episodes" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_config_carries_every_model_and_learning_option():
    """ModelSpec and A3CSettings are built from the config's fields of the same names: a field
    renamed on one side would silently fall back to its default, so every one must match."""
    from dataclasses import fields

    from qa3c_qiskit.a3c import A3CSettings
    from qa3c_qiskit.config import TrainConfig
    from qa3c_qiskit.supervise import settings_of
    from qa3c_qiskit.train import model_spec

    names = {f.name for f in fields(TrainConfig)}
    assert {f.name for f in fields(A3CSettings)} <= names
    assert {f.name for f in fields(ModelSpec)} - names == {"obs_dim", "n_actions"}
    cfg = TrainConfig(
        env="Acrobot-v1", model="classical", backend="aer_shots", shots=64, n_qubits=4,
        n_layers=3, entangler="ring", gamma=0.5, update_every=7, entropy_coef=0.01,
        loss_reduction="sum", on_nonfinite="raise",
    )  # fmt: skip
    assert model_spec(cfg) == ModelSpec(6, 3, "classical", 4, 3, "ring", "aer_shots", 64)
    assert settings_of(cfg) == A3CSettings(0.5, 7, 0.01, "sum", "raise")
