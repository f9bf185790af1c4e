"""``python -m qa3c_qiskit.evaluate``: a saved policy evaluated on other backends, and videos."""

from __future__ import annotations

import builtins
import json
import shutil

import numpy as np
import pytest
import torch

from qa3c_qiskit import evaluate
from qa3c_qiskit.envs import env_info, make_env
from qa3c_qiskit.evaluate import (
    VideoOptions,
    evaluate_policy,
    load_model_run,
    main,
    record_video,
)
from qa3c_qiskit.models import ActorCritic, ModelSpec

MINIGRID = "MiniGrid-SimpleCrossingS9N1-v0"


def save_run(tmp_path, backend="statevector", env="CartPole-v1", name="run", **spec_kw):
    """A run directory as train.py writes it (model.pt with state dict, spec and config)."""
    torch.manual_seed(5)
    info = env_info(env)
    spec = ModelSpec(info.obs_dim, info.n_actions, backend=backend, **spec_kw)
    model = ActorCritic(spec)
    run = tmp_path / name
    run.mkdir()
    torch.save(
        {"model": model.state_dict(), "spec": spec.__dict__, "config": {"env": env}},
        run / "model.pt",
    )
    return run


def video_frames(path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)


def test_statevector_policy_gives_same_greedy_returns_on_aer_exact(tmp_path, capsys):
    run = save_run(tmp_path)
    spec, state, env_id = load_model_run(run)
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


def test_model_file_choice_and_missing_file_lists_what_exists(tmp_path, capsys):
    run = save_run(tmp_path)
    assert main([str(run), "--model-file", "best_model.pt", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no best_model.pt" in err and "it has: model.pt" in err
    shutil.copy(run / "model.pt", run / "best_model.pt")
    args = [str(run), "--episodes", "2", "--greedy"]
    assert main(args) == 0
    final = capsys.readouterr().out
    assert main([*args, "--model-file", "best_model.pt"]) == 0
    best = capsys.readouterr().out
    assert final.split("return ")[1].split(" (")[0] == best.split("return ")[1].split(" (")[0]
    # a .pt file given directly
    assert main([str(run / "best_model.pt"), "--episodes", "1"]) == 0
    capsys.readouterr()
    torch.save({"weights": 1}, run / "junk.pt")
    assert main([str(run), "--model-file", "junk.pt", "--episodes", "1"]) == 2
    assert "not a model file" in capsys.readouterr().err


def test_video_of_a_trained_cartpole_run(tmp_path, capsys):
    """A real 5-episode training run; its model.pt and a copy as best_model.pt recorded to MP4."""
    from qa3c_qiskit.config import TrainConfig
    from qa3c_qiskit.train import train

    cfg = TrainConfig(
        env="CartPole-v1", episodes=5, workers=1, out=str(tmp_path), run_name="r", quiet=True
    )
    run = train(cfg, show_table=False)
    shutil.copy(run / "model.pt", run / "best_model.pt")
    videos = tmp_path / "videos"
    argv = [str(run), "--model-file", "best_model.pt", "--episodes", "2", "--video", str(videos)]
    assert main([*argv, "--video-episodes", "2"]) == 0
    out = capsys.readouterr().out
    files = sorted(videos.glob("*.mp4"))
    assert [f.name for f in files] == [
        "CartPole-v1__statevector__seed0.mp4",
        "CartPole-v1__statevector__seed1.mp4",
    ]
    assert all(f"video: {f}" in out for f in files)
    frames = video_frames(files[0])
    assert frames.ndim == 4 and frames.shape[0] > 1 and frames.shape[1:] == (400, 600, 3)
    assert frames.std() > 0  # not a blank picture


@pytest.mark.parametrize("fmt, downscale, side", [("gif", 2, 144), ("mp4", 5, 56)])
def test_video_of_minigrid(tmp_path, fmt, downscale, side):
    """9 x 32 px tiles = 288 px; 5 x 5 blocks: 57 px, MP4 crops to even 56."""
    run = save_run(tmp_path, env=MINIGRID)
    (path,) = record_video(run, tmp_path / "v", fmt=fmt, downscale=downscale, max_frames=12)
    assert path.name == f"{MINIGRID}__statevector__seed0.{fmt}" and path.stat().st_size > 0
    frames = video_frames(path)
    assert frames.shape[0] > 1 and frames.shape[1:3] == (side, side)


def test_video_of_acrobot_gif_frame_skip(tmp_path):
    run = save_run(tmp_path, env="Acrobot-v1")
    (path,) = record_video(
        run, tmp_path, fmt="gif", greedy=False, downscale=5, frame_skip=10, max_frames=8
    )
    frames = video_frames(path)
    assert 1 < frames.shape[0] <= 8 and frames.shape[1:3] == (100, 100)


def test_video_bad_options_and_missing_extra(tmp_path, capsys, monkeypatch):
    run = save_run(tmp_path)
    assert (
        main([str(run), "--episodes", "1", "--video", str(tmp_path), "--video-downscale", "0"]) == 2
    )
    assert "downscale must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown video format"):
        VideoOptions(tmp_path, fmt="avi").check()

    real_import = builtins.__import__

    def no_imageio(name, *args, **kw):
        if name.startswith("imageio"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_imageio)
    assert main([str(run), "--episodes", "1", "--video", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'video' extra" in err and "qa3c-qiskit[video]" in err
    assert not (tmp_path / "v").exists()  # failed before running anything


def sequential_greedy(spec, state, env_id, episodes, seed=0):
    """The evaluation as it was: episode after episode, one action per forward pass."""
    model = ActorCritic(spec)
    model.load_state_dict(state)
    returns = []
    for ep in range(episodes):
        env = make_env(env_id)
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(model.greedy(torch.from_numpy(obs)))
            total += float(reward)
            done = terminated or truncated
        env.close()
        returns.append(total)
    return returns


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1"])
def test_side_by_side_greedy_equals_sequential_on_the_exact_engine(tmp_path, env_id):
    run = save_run(tmp_path, env=env_id)
    spec, state, _ = load_model_run(run)
    # a different policy per env; small perturbations make episodes end at different steps
    res = evaluate_policy(spec, state, env_id, episodes=4, seed=3, greedy=True)
    assert res["returns"] == sequential_greedy(spec, state, env_id, 4, seed=3)
    assert res["calls"] == max(res["lengths"]) and res["stopped"] is None


class Recording(ActorCritic):
    """Reads the actor layer's counter when evaluate closes the model."""

    seen: dict = {}

    def close(self):
        c = self.actor.core.counter
        Recording.seen = {"calls": c.calls, "pubs": c.pubs, "circuits": c.circuits}
        Recording.seen["critic_built"] = self.critic.core._built is not None
        super().close()


def test_side_by_side_is_one_call_and_one_pub_per_step(tmp_path, monkeypatch):
    """aer_shots, 3 sampled episodes: primitive calls == lockstep steps == the longest episode,
    one PUB each, one circuit per unfinished episode and step (sum of the lengths)."""
    run = save_run(tmp_path, n_qubits=2, n_layers=1)
    spec, state, env_id = load_model_run(run)
    spec = evaluate.replace(spec, backend="aer_shots", shots=64)
    monkeypatch.setattr(evaluate, "ActorCritic", Recording)
    res = evaluate_policy(spec, state, env_id, episodes=3, seed=1)
    seen = Recording.seen
    assert len(res["returns"]) == 3 and len(set(res["lengths"])) > 1  # episodes end apart
    assert seen["calls"] == seen["pubs"] == res["calls"] == max(res["lengths"])
    assert seen["circuits"] == sum(res["lengths"]) and not seen["critic_built"]


LOCAL = (
    'kind = "ibm_runtime"\nshots = 64\nseed = 1\n[runtime]\nfake_backend = "FakeManilaV2"\n'
    "resilience_level = 0\n"
)


def test_ibm_runtime_local_header_cap_and_sessions_closed(tmp_path, capsys, monkeypatch):
    """Runtime local testing mode: the header gives the evaluation's QPU time; a tiny
    --max-qpu-seconds stops after the first step with the session closed."""
    from qa3c_qiskit.backends import execution

    log = tmp_path / "sessions.jsonl"
    monkeypatch.setenv("QA3C_SESSION_LOG", str(log))
    profile = tmp_path / "rt.toml"
    profile.write_text(LOCAL)
    run = save_run(tmp_path, n_qubits=2, n_layers=1)
    args = [str(run), "--backend", str(profile), "--episodes", "3", "--greedy"]
    assert main([*args, "--max-qpu-seconds", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "local testing mode" in out and "QPU time <=" in out and "side by side" in out
    assert "reached --max-qpu-seconds" in out and "1 primitive call(s)" in out
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in rows] == ["open", "close"] and not rows[-1]["active"]
    assert not execution._SESSIONS


def test_real_ibm_backend_needs_a_qpu_cap(tmp_path, capsys, monkeypatch):
    from qa3c_qiskit.backends import registry

    monkeypatch.setattr(registry, "_credential_problems", lambda p: [])
    run = save_run(tmp_path, n_qubits=2, n_layers=1)
    assert main([str(run), "--backend", "ibm_runtime", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "--max-qpu-seconds" in err and "real IBM QPU" in err
