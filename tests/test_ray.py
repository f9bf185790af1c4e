"""Ray runner on a real local Ray cluster: accounting, a killed worker, the CLI, the missing extra."""

import csv
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from qa3c_qiskit.a3c import A3CSettings
from qa3c_qiskit.checkpoint import worker_seed
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.optim import SharedAdam

try:
    import ray

    from qa3c_qiskit.runners.ray import ParameterServer, RayRunner
except ImportError:  # only the missing-extra test runs without Ray
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="the [ray] extra is not installed")
SPEC = ModelSpec(4, 2, "classical")  # CartPole, classical twin: the fastest real agent


@pytest.fixture(scope="module")
def local_ray():
    """One 2-CPU local Ray instance for the in-process tests (the runner joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _runner(budget, max_restarts=3, seed=0):
    torch.manual_seed(seed)
    model = ActorCritic(SPEC)
    runner = RayRunner(
        flat=model.flat,
        spec=SPEC,
        env_id="CartPole-v1",
        settings=A3CSettings(),
        workers=2,
        seed=seed,
        budget=budget,
        lr=1e-3,
        betas=(0.92, 0.999),
        eps=1e-8,
        max_restarts=max_restarts,
    )
    return model, runner


def _drive(runner, kill_after=None, max_polls=3000):
    """Poll until the workers are gone; SIGKILL worker 0's process after ``kill_after`` episodes."""
    episodes, others = [], []
    killed = False
    for _ in range(max_polls):
        msgs = runner.poll(0.2)
        for kind, payload in msgs:
            (episodes if kind == "episode" else others).append((kind, payload))
            if kind == "error":
                runner.stop()
        if kill_after is not None and not killed and len(episodes) >= kill_after:
            os.kill(runner.worker_pid(0), signal.SIGKILL)
            killed = True
        if not msgs and not runner.alive():
            return [p for _, p in episodes], others
    raise AssertionError("the Ray run did not finish")


@needs_ray
def test_parameter_server_gives_back_the_claims_of_a_retired_worker(local_ray):
    flat = torch.zeros(3, dtype=torch.float64)
    ps = ParameterServer.remote(flat, 0.1, (0.9, 0.999), 1e-8, None, 3, 0, 0, 0)
    a, b = (0, 0), (1, 0)
    assert ray.get(ps.claim_episode.remote(a)) == (True, False)
    ray.get(ps.episode_done.remote(a, {"worker": 0, "return": 1.0}))
    assert ray.get(ps.claim_episode.remote(a)) == (True, False)  # a dies holding this one
    assert ray.get(ps.claim_episode.remote(b)) == (True, False)
    assert ray.get(ps.claim_episode.remote(b)) == (False, False)  # budget 3 used up
    assert ray.get(ps.retire.remote(a)) == 1
    ray.get(ps.episode_done.remote(a, {"worker": 0, "return": 2.0}))  # late: ignored
    assert ray.get(ps.claim_episode.remote(a)) == (False, False)  # retired for good
    assert ray.get(ps.claim_episode.remote(b)) == (True, False)  # the given-back episode
    params, stop, _ = ray.get(ps.push_pull.remote(np.ones(3)))
    assert params.tolist() == pytest.approx([-0.1] * 3)  # first Adam step: -lr * sign(g)
    ray.get(ps.add_steps.remote(7))
    ray.get(ps.episode_done.remote(b, {"worker": 1, "return": 3.0}))
    records = ray.get(ps.drain.remote())
    assert [r["return"] for r in records] == [1.0, 3.0]
    assert records[-1]["env_steps"] == 7
    state = ray.get(ps.state.remote())
    assert state["claimed"] == 3 and state["adam"]["step"] == 1
    ray.kill(ps)


@needs_ray
def test_killed_worker_is_restarted_and_the_run_ends_with_the_exact_budget(local_ray):
    budget = 60
    model, runner = _runner(budget)
    runner.start()
    try:
        episodes, others = _drive(runner, kill_after=3)
        final = ray.get(runner.ps.state.remote())
    finally:
        runner.close()
    restarts = [p for k, p in others if k == "restart"]
    assert not [p for k, p in others if k == "error"]
    assert len(restarts) == 1 and restarts[0]["worker"] == 0, others
    assert restarts[0]["restart"] == 1 and restarts[0]["max_restarts"] == 3
    assert restarts[0]["episodes_given_back"] in (0, 1)  # 0 only if killed between episodes
    assert "ActorDiedError" in restarts[0]["traceback"]
    started = [p["text"] for k, p in others if k == "event" and "started" in p["text"]]
    assert len(started) == 3  # two workers, then worker 0's replacement
    assert runner.restarts == 1 and [e["worker"] for e in runner.seed_log] == [0, 1, 0]
    assert runner.seed_log[2]["seed"] not in {e["seed"] for e in runner.seed_log[:2]}
    assert len(episodes) == budget and final["claimed"] == budget
    assert {r["worker"] for r in episodes} <= {0, 1}
    steps = [r["env_steps"] for r in episodes]
    assert steps == sorted(steps) and steps[-1] == final["env_steps"] >= sum(
        r["length"] for r in episodes
    )
    flat, adam = runner.global_state()  # still available after close()
    assert adam["step"] > 0 and not torch.equal(flat, model.flat)
    assert runner.nonfinite_count == 0


@needs_ray
def test_resumed_runner_runs_only_the_remaining_budget_from_the_saved_state(local_ray):
    torch.manual_seed(0)
    model = ActorCritic(SPEC)
    adam = SharedAdam(model.flat.clone(), lr=1e-3)
    for _ in range(7):
        adam.step(torch.ones_like(model.flat))
    runner = RayRunner(
        flat=adam.params,
        spec=SPEC,
        env_id="CartPole-v1",
        settings=A3CSettings(),
        workers=2,
        seed=0,
        budget=30,
        lr=1e-3,
        betas=(0.92, 0.999),
        eps=1e-8,
        done=25,
        env_steps=1000,
        adam_state=adam.state_dict(),
        nonfinite=2,
        resume_count=1,
    )
    runner.start()
    try:
        episodes, _ = _drive(runner)
    finally:
        runner.close()
    assert len(episodes) == 5 and episodes[0]["env_steps"] > 1000
    assert runner.global_state()[1]["step"] > 7 and runner.nonfinite_count == 2
    assert runner.env_steps == 1000 + sum(r["length"] for r in episodes)
    assert [e["seed"] for e in runner.seed_log] == [worker_seed(0, r, 1) for r in (0, 1)]


@needs_ray
def test_worker_that_dies_past_max_restarts_fails_the_run(local_ray):
    _, runner = _runner(budget=10_000, max_restarts=0)
    runner.start()
    try:
        episodes, others = _drive(runner, kill_after=2)
    finally:
        runner.close()
    errors = [p for k, p in others if k == "error"]
    assert len(errors) == 1 and errors[0]["worker"] == 0
    assert "restarts used: 0/0" in errors[0]["traceback"] and not errors[0]["fatal"]
    assert not [p for k, p in others if k == "restart"]
    assert 2 <= len(episodes) < 10_000  # stopped early, after the failure


@needs_ray
def test_train_cli_with_ray_runner_writes_the_same_outputs(tmp_path):
    """Starts (and shuts down) its own local Ray cluster, as a user's first run would."""
    cmd = [sys.executable, "-m", "qa3c_qiskit.train", "--runner", "ray", "--workers", "2"]
    cmd += ["--episodes", "30", "--model", "classical", "--quiet", "--out", str(tmp_path)]
    cmd += ["--run-name", "r"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "r"
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and [int(r["episode"]) for r in rows] == list(range(1, 31))
    assert (run / "model.pt").exists() and (run / "summary.json").exists()
    ckpt = torch.load(run / "model.pt", weights_only=False)
    assert ckpt["config"]["runner"] == "ray"
    assert "Traceback" not in proc.stderr + proc.stdout  # clean shutdown of the Ray workers


def test_missing_ray_gives_one_line_error_naming_the_extra(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from qa3c_qiskit.train import main
        sys.exit(main(["--runner", "ray", "--workers", "1", "--episodes", "2",
                       "--model", "classical", "--out", {str(tmp_path)!r}]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "qa3c-qiskit[ray]" in err and "pip install" in err
