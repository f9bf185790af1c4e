"""Ray runner on a real local Ray cluster: accounting, actor-learners, a killed worker, a killed
parameter server, resume, the CLI, the missing extra."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from qa3c_qiskit.a3c import A3CSettings
from qa3c_qiskit.checkpoint import RunState, learner_seed
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.optim import SharedAdam
from qa3c_qiskit.runners.base import Episode, Event, Failure, Restart, RunPlan

try:
    import ray

    from qa3c_qiskit.runners.ray import PARAMETER_SERVER, ParameterServer, RayRunner
except ImportError:  # only the missing-extra test runs without Ray
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="the [ray] extra is not installed")
SPEC = ModelSpec(4, 2, "classical")  # CartPole, classical twin: the fastest real agent
S = A3CSettings().update_every


@pytest.fixture(scope="module")
def local_ray():
    """One 2-CPU local Ray instance for the in-process tests (the runner joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _plan(budget, workers=2, learners=None, max_restarts=3, seed=0, resume_count=0):
    return RunPlan(
        spec=SPEC,
        env_id="CartPole-v1",
        settings=A3CSettings(),
        workers=workers,
        learners=learners or workers,
        seed=seed,
        budget=budget,
        lr=1e-3,
        max_restarts=max_restarts,
        resume_count=resume_count,
    )


def _runner(budget, **kw):
    torch.manual_seed(0)
    state = RunState(flat=ActorCritic(SPEC).flat.detach().clone())
    return RayRunner(_plan(budget, **kw), state)


def _drive(runner, hook=None, max_polls=3000):
    """Poll until the workers are gone, as the trainer does; ``hook(n_episodes)`` after every
    poll. Returns (episode records, other messages, every message in order)."""
    episodes, others, seq = [], [], []
    for _ in range(max_polls):
        msgs = runner.poll(0.2)
        for m in msgs:
            seq.append(m)
            if isinstance(m, Episode):
                episodes.append(m.record)
            else:
                others.append(m)
                if isinstance(m, Failure):
                    runner.stop()
        if hook is not None:
            hook(len(episodes))
        if not msgs and not runner.alive():
            return episodes, others, seq
    raise AssertionError("the Ray run did not finish")


def _segments(records) -> int:
    """Shared-Adam steps the episodes' updates make: one per S-step segment."""
    return sum(math.ceil(r["length"] / S) for r in records)


def _of(msgs, kind):
    return [m for m in msgs if isinstance(m, kind)]


# The two subprocess tests come first: they run before the module's Ray instance starts (two
# local clusters at once would share the 2 CPUs).


@needs_ray
def test_train_cli_with_ray_runner_writes_the_same_outputs(tmp_path):
    """Starts (and shuts down) its own local Ray cluster, as a user's first run would."""
    cmd = [sys.executable, "-m", "qa3c_qiskit.train", "--runner", "ray", "--workers", "2"]
    cmd += ["--learners", "4", "--episodes", "30", "--model", "classical", "--quiet"]
    cmd += ["--out", str(tmp_path), "--run-name", "r"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "r"
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and [int(r["episode"]) for r in rows] == list(range(1, 31))
    # learner i lives in worker i % 2 (with a 30-episode budget a Ray worker that starts late
    # may play none: coverage of every learner is tested with start(gate=True) below)
    assert {int(r["learner"]) for r in rows} <= {0, 1, 2, 3}
    assert all(int(r["worker"]) == int(r["learner"]) % 2 for r in rows)
    config = json.loads((run / "config.json").read_text())
    assert config["learners_per_worker"] == {"0": [0, 2], "1": [1, 3]}
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


@needs_ray
def test_parameter_server_gives_back_the_claims_of_a_retired_worker(local_ray):
    flat = torch.zeros(3, dtype=torch.float64)
    ps = ParameterServer.remote(flat, 0.1, (0.9, 0.999), 1e-8, None, 3, 0, 0, 0)
    a, b = (0, 0), (1, 0)
    assert ray.get(ps.claim_episode.remote(a)) == (True, False)
    ray.get(ps.episodes_done.remote(a, [{"worker": 0, "return": 1.0}]))
    assert ray.get(ps.claim_episode.remote(a)) == (True, False)  # a dies holding this one
    assert ray.get(ps.claim_episode.remote(b)) == (True, False)
    assert ray.get(ps.claim_episode.remote(b)) == (False, False)  # budget 3 used up
    assert ray.get(ps.retire.remote(a)) == 1
    ray.get(ps.episodes_done.remote(a, [{"worker": 0, "return": 2.0}]))  # late: ignored
    assert ray.get(ps.claim_episode.remote(a)) == (False, False)  # retired for good
    assert ray.get(ps.claim_episode.remote(b)) == (True, False)  # the given-back episode
    assert ray.get(ps.claim_episode.remote(b)) == (False, False)
    params, stop, _ = ray.get(ps.push_pull.remote(np.ones(3)))
    assert params.tolist() == pytest.approx([-0.1] * 3)  # first Adam step: -lr * sign(g)
    ray.get(ps.add_steps.remote(7))
    # one message, two learners' episodes; b's claims are all reported (retiring gives none back)
    ray.get(
        ps.episodes_done.remote(b, [{"worker": 1, "return": 3.0}, {"worker": 1, "return": 4.0}])
    )
    records = ray.get(ps.drain.remote())
    assert [r["return"] for r in records] == [1.0, 3.0, 4.0]
    assert [r["env_steps"] for r in records] == [0, 7, 7]
    assert ray.get(ps.drain.remote()) == []
    state = ray.get(ps.state.remote())
    assert state["claimed"] == 3 and state["adam"]["step"] == 1 and state["env_steps"] == 7
    assert ray.get(ps.retire.remote(b)) == 0 and ray.get(ps.state.remote())["claimed"] == 3
    ray.kill(ps)


@needs_ray
def test_learners_on_ray_workers_end_with_the_exact_budget_and_one_adam_step_per_segment(
    local_ray,
):
    budget = 37
    runner = _runner(budget, workers=2, learners=8)
    runner.start(gate=True)  # both workers up before the first claim: all 8 learners play
    try:
        episodes, others, _ = _drive(runner)
    finally:
        runner.close()
    assert not _of(others, Failure) and not _of(others, Restart), others
    assert len(episodes) == budget
    assert {r["learner"] for r in episodes} == set(range(8))
    assert all(r["worker"] == r["learner"] % 2 for r in episodes)
    state = runner.sync()  # after close(): the final state
    assert runner.final["claimed"] == budget
    assert state.adam["step"] == _segments(episodes)  # each segment its own shared-Adam step
    assert state.env_steps == sum(r["length"] for r in episodes)
    assert [e["learners"] for e in state.seed_log] == [
        {lid: learner_seed(0, lid) for lid in (0, 2, 4, 6)},
        {lid: learner_seed(0, lid) for lid in (1, 3, 5, 7)},
    ]
    started = [m.text for m in _of(others, Event) if " started pid=" in m.text]
    assert len(started) == 2 and all("learners=4" in t for t in started)


@needs_ray
def test_resumed_runner_runs_only_the_remaining_budget_from_the_saved_state(local_ray):
    torch.manual_seed(0)
    adam = SharedAdam(ActorCritic(SPEC).flat.detach().clone(), lr=1e-3)
    for _ in range(7):
        adam.step(torch.ones_like(adam.params))
    state = RunState(
        flat=adam.params.clone(),
        adam=adam.state_dict(),
        episodes_done=25,
        env_steps=1000,
        nonfinite=2,
        resume_count=1,
    )
    # one process with two learners (one actor to start: faster than two)
    runner = RayRunner(_plan(30, workers=1, learners=2, resume_count=1), state)
    runner.start()
    try:
        episodes, _, _ = _drive(runner)
    finally:
        runner.close()
    assert len(episodes) == 5 and episodes[0]["env_steps"] > 1000
    assert runner.sync() is state
    assert state.adam["step"] == 7 + _segments(episodes) and state.nonfinite == 2
    assert state.env_steps == 1000 + sum(r["length"] for r in episodes)
    assert runner.final["claimed"] == 30
    assert [e["learners"] for e in state.seed_log] == [
        {lid: learner_seed(0, lid, 1) for lid in (0, 1)}
    ]


@needs_ray
def test_worker_that_dies_past_max_restarts_fails_the_run(local_ray):
    runner = _runner(budget=10_000, workers=1, max_restarts=0)  # one actor: a faster start
    runner.start()
    done = []

    def kill(n):
        if n >= 2 and not done:
            done.append(os.kill(runner.pid(0), signal.SIGKILL))

    try:
        episodes, others, _ = _drive(runner, kill)
    finally:
        runner.close()
    errors = _of(others, Failure)
    assert len(errors) == 1 and errors[0].worker == 0
    assert "restarts used: 0/0" in errors[0].traceback and not errors[0].fatal
    assert not _of(others, Restart)
    assert 2 <= len(episodes) < 10_000  # stopped early, after the failure


@needs_ray
def test_killed_worker_then_killed_parameter_server_the_run_ends_with_the_exact_budget(
    local_ray,
):
    """Worker 0's process is SIGKILLed (restarted, its claim given back); then, after a sync
    (as the trainer does at a checkpoint), the parameter server's actor is killed: it restarts
    from the synced state and the run still ends with exactly the budget."""
    budget = 150  # worker 1 alone must not finish it before both faults are injected
    runner = _runner(budget, max_restarts=2)
    flat0 = runner.state.flat.clone()
    runner.start(gate=True)
    f = {}

    def faults(n):
        if n >= 3 and "worker" not in f:
            f["worker"] = runner.pid(0)
            os.kill(f["worker"], signal.SIGKILL)
        elif runner.state.restarts == 1 and "synced" not in f:  # the Restart was handled
            f["synced"] = runner.sync().adam["step"]
        elif "synced" in f and "ps" not in f:
            f["ps"] = n
            ray.kill(runner.ps)  # the parameter server's actor dies

    try:
        episodes, others, seq = _drive(runner, faults)
    finally:
        runner.close()
    assert not _of(others, Failure), others
    assert len(episodes) == budget and runner.final["claimed"] == budget
    assert {r["worker"] for r in episodes} == {0, 1}

    (restart,) = _of(others, Restart)  # the worker
    assert restart.worker == 0 and restart.restart == 1 and restart.max_restarts == 2
    assert restart.episodes_given_back in (0, 1)  # 0 only if killed between episodes
    assert "ActorDiedError" in restart.traceback

    (event,) = [m for m in _of(others, Event) if "parameter server died" in m.text]
    assert "restart 1/2" in event.text and f"Adam step {f['synced']}" in event.text
    assert runner.ps_restarts == 1
    cut = seq.index(event)
    before = [m.record for m in seq[:cut] if isinstance(m, Episode)]
    after = [m.record for m in seq[cut:] if isinstance(m, Episode)]
    assert len(before) >= f["ps"] and f"reset to the {len(before)} episodes delivered" in event.text
    state = runner.sync()
    # the new server started at the synced Adam step; every later update is one segment of an
    # episode delivered after the restart (the lost server's later updates are rolled back)
    assert state.adam["step"] == f["synced"] + _segments(after)
    assert not torch.equal(state.flat, flat0) and state.nonfinite == 0
    steps = [r["env_steps"] for r in episodes]
    assert steps == sorted(steps) and steps[-1] == state.env_steps

    # seed log: both workers, worker 0's replacement, then both again on the new server, each
    # with fresh seeds; only the worker's crash counts as a worker restart
    log = [(e["worker"], e["restart"], e.get("ps_restart", 0), e["seed"]) for e in state.seed_log]
    assert log == [
        (0, 0, 0, learner_seed(0, 0)),
        (1, 0, 0, learner_seed(0, 1)),
        (0, 1, 0, learner_seed(0, 0, 0, 1)),
        (0, 1, 1, learner_seed(0, 0, 0, 2)),
        (1, 0, 1, learner_seed(0, 1, 0, 1)),
    ]
    assert state.restarts == 1
    pids = [e["pid"] for e in state.seed_log]
    assert pids[0] == f["worker"] and None not in pids and pids[2] != pids[0]
    assert pids[3:] == [pids[2], pids[1]]  # the new runs reuse the worker actors


@needs_ray
def test_parameter_server_lost_past_max_restarts_fails_the_run_and_keeps_the_synced_state(
    local_ray,
):
    runner = _runner(budget=10_000, workers=1, max_restarts=0)
    flat0 = runner.state.flat.clone()
    runner.start()
    os.kill(runner.ps_pid(), signal.SIGKILL)  # its process, this time (the worker may be starting)
    try:
        episodes, others, _ = _drive(runner)
    finally:
        runner.close()
    (failure,) = _of(others, Failure)
    assert failure.worker == PARAMETER_SERVER and not failure.fatal
    assert "parameter server died" in failure.traceback
    assert "restarts used: 0/0" in failure.traceback
    assert len(episodes) < 10_000 and not runner.alive()
    state = runner.sync()  # never synced: the initial state, not an exception
    assert torch.equal(state.flat, flat0) and runner.final["claimed"] == len(episodes)
