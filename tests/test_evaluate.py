"""``python -m qa3c_qiskit.evaluate``: a saved policy evaluated on other backends."""

from __future__ import annotations

import torch

from qa3c_qiskit.evaluate import load_run, main
from qa3c_qiskit.models import ActorCritic, ModelSpec


def save_run(tmp_path, backend="statevector"):
    """A run directory as train.py writes it (model.pt with state dict, spec and config)."""
    torch.manual_seed(5)
    spec = ModelSpec(4, 2, backend=backend)
    model = ActorCritic(spec)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(
        {"model": model.state_dict(), "spec": spec.__dict__, "config": {"env": "CartPole-v1"}},
        run / "model.pt",
    )
    return run


def test_statevector_policy_gives_same_greedy_returns_on_aer_exact(tmp_path, capsys):
    run = save_run(tmp_path)
    spec, state, env_id = load_run(run)
    assert env_id == "CartPole-v1" and spec.backend == "statevector"
    args = [str(run), "--episodes", "2", "--greedy"]
    assert main(args) == 0
    exact = capsys.readouterr().out
    assert main([*args, "--backend", "aer_statevector"]) == 0
    aer = capsys.readouterr().out
    assert "±" in exact and "aer_statevector" in aer
    # greedy actions from agreeing expectation values: identical returns
    assert exact.split("return ")[1].split(" (")[0] == aer.split("return ")[1].split(" (")[0]


def test_evaluate_on_shots_and_bad_inputs(tmp_path, capsys):
    run = save_run(tmp_path)
    assert main([str(run), "--backend", "aer_shots", "--shots", "256", "--episodes", "1"]) == 0
    assert "aer_shots" in capsys.readouterr().out
    assert main([str(run), "--backend", "nope", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'nope'" in err and "aer_shots" in err
    assert main([str(tmp_path / "missing"), "--episodes", "1"]) == 2
    assert "no trained model" in capsys.readouterr().err
