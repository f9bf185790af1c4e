"""Reliability: checkpoints/resume, Ctrl-C and SIGTERM, worker crashes and kills, NaN values,
bad input, determinism. Real worker processes and real signals; faults come from the test-only
environment in ``tests/qa3c_faults.py`` (configured by the QA3C_FAULT environment variable).

Every scenario ends with the same check: the run's ``metrics.csv`` holds episodes 1..N exactly
once, in order, and its checkpoint loads and agrees with it (nothing lost, nothing duplicated).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qa3c_qiskit import a3c
from qa3c_qiskit.a3c import A3CSettings, a3c_loss, local_gradient
from qa3c_qiskit.checkpoint import (
    CHECKPOINT,
    EVENTS,
    ROLLED_BACK,
    CheckpointError,
    count_metrics_rows,
    load_checkpoint,
    save_checkpoint,
)
from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.metrics import read_metrics
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.train import main, train, validate

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # spawned workers inherit sys.path and can import qa3c_faults
import qa3c_faults  # noqa: E402
from qa3c_faults import ENV_ID, TIME_LIMIT, TRUNCATING_ID  # noqa: E402
from qa3c_hubs import SerialHub  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def cfg_for(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(
        env="CartPole-v1",
        model="classical",
        workers=1,
        episodes=12,
        seed=0,
        out=str(tmp_path),
        run_name=name,
        checkpoint_every=5,
        quiet=True,
        lr=1e-3,
    )
    return TrainConfig(**{**base, **kw})


def cli(tmp_path, name, *args, fault="", **popen_kw) -> subprocess.Popen:
    """``python -m qa3c_qiskit.train`` as a real process in its own process group."""
    env = dict(os.environ, QA3C_FAULT=fault)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "qa3c_qiskit.train", "--model", "classical", "--quiet"]
    cmd += ["--out", str(tmp_path), "--run-name", name, *map(str, args)]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen_kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, err


def wait_rows(run: Path, n: int, proc: subprocess.Popen) -> int:
    """Block until ``run/metrics.csv`` has at least ``n`` episode rows."""
    path = run / "metrics.csv"
    while True:
        rows = count_metrics_rows(path) if path.exists() else 0
        if rows >= n:
            return rows
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)


def worker_pids(run: Path) -> list[int]:
    return [
        int(line.split("pid=")[1].split()[0])
        for line in (run / EVENTS).read_text().splitlines()
        if " started pid=" in line
    ]


def running(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def assert_intact(run: Path, episodes: int) -> dict:
    """metrics.csv holds episodes 1..episodes once each; the checkpoint agrees; params finite."""
    m = read_metrics(run)
    assert m["episode"].tolist() == list(range(1, episodes + 1))
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt["episodes_done"] == episodes
    assert torch.isfinite(ckpt["flat"]).all()
    assert int(m["env_steps"].max(initial=0)) <= ckpt["env_steps"]
    return ckpt


def with_fault(fault: str, fn, *args):
    """Call ``fn(*args)`` in this process with QA3C_FAULT set (inherited by spawned workers)."""
    os.environ["QA3C_FAULT"] = fault
    try:
        return fn(*args)
    finally:
        del os.environ["QA3C_FAULT"]


# 1. checkpoints --------------------------------------------------------------------------------


_CRASH_BEFORE_RENAME = """
import os, signal, sys
from pathlib import Path
import torch
from qa3c_qiskit import checkpoint

def crash(src, dst):  # the temp file is written and synced: tear it, then die before the rename
    with open(src, "r+b") as fh:
        fh.truncate(os.path.getsize(src) // 2)
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint.os.replace = crash
path = Path(sys.argv[1])
if sys.argv[2] == "checkpoint":
    checkpoint.save_checkpoint(path, {"episodes_done": 2, "x": torch.arange(9.0)})
else:
    checkpoint.save_atomic({"model": torch.arange(9.0)}, path)
"""


@pytest.mark.parametrize("kind", ["checkpoint", "model"])
def test_write_is_atomic_the_old_file_survives_a_fault_before_the_rename(
    tmp_path, monkeypatch, kind
):
    """A fault after the new bytes are written but before they replace the old file (an error,
    then a torn temp file and SIGKILL in a real process) leaves the old file byte for byte.

    Shown able to fail: with a non-atomic writer (``torch.save`` straight into the path, as
    ``model.pt`` was written before) the file is changed/torn and the fault never even hits
    the rename (checked with such a writer patched in)."""
    from qa3c_qiskit import checkpoint

    path = tmp_path / (CHECKPOINT if kind == "checkpoint" else "model.pt")

    def save(value):
        if kind == "checkpoint":
            return checkpoint.save_checkpoint(
                path, {"episodes_done": value, "x": torch.arange(5.0)}
            )
        return checkpoint.save_atomic({"model": torch.arange(float(value))}, path)

    save(1)
    before = path.read_bytes()
    renames = []

    def failing_replace(src, dst):
        renames.append((Path(src), Path(src).read_bytes()))
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        save(2)
    monkeypatch.undo()
    # the fault hit the rename of a fully written temp file, which never became the file
    assert len(renames) == 1 and renames[0][0] != path and renames[0][0].parent == path.parent
    assert len(renames[0][1]) > 0 and renames[0][1] != before
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # temp file removed
    # a real crash (no clean-up runs): temp file torn, process SIGKILLed before the rename
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_BEFORE_RENAME, str(path), kind], env=env, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    if kind == "checkpoint":
        assert load_checkpoint(path)["episodes_done"] == 1
    else:
        assert torch.equal(torch.load(path)["model"], torch.arange(1.0))
    save(3)  # the next write goes through over the stale temp file
    assert path.read_bytes() != before


def test_checkpoint_damage_is_named(tmp_path):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"episodes_done": 1, "x": torch.arange(5.0)})
    before = path.read_bytes()
    path.write_bytes(before[:-10])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated"):
        load_checkpoint(path)
    damaged = bytearray(before)
    damaged[-3] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 12-episode run (1 worker, checkpoint every 5)."""
    tmp = tmp_path_factory.mktemp("done")
    return train(cfg_for(tmp, "done"), show_table=False)


def test_checkpoint_contents(done_run):
    ckpt = assert_intact(done_run, 12)
    assert ckpt["final"] is True
    assert ckpt["adam"]["step"] > 0 and ckpt["adam"]["exp_avg"].abs().sum() > 0
    assert set(ckpt["rng"]) == {"python", "numpy", "torch"}
    assert ckpt["config"]["episodes"] == 12 and ckpt["resume_count"] == 0
    assert [(s["worker"], s["seed"]) for s in ckpt["worker_seeds"]] == [(0, 0)]
    saved = torch.load(done_run / "model.pt", weights_only=False)["model"]
    flat = torch.cat([v.reshape(-1) for v in saved.values()])
    assert torch.equal(flat, ckpt["flat"])


# 2. Ctrl-C / SIGTERM, then resume --------------------------------------------------------------


@pytest.mark.parametrize(
    "sig, code, learners",
    [(signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 2), (signal.SIGINT, 130, 6)],
)
def test_signal_stops_everything_checkpoints_and_resumes(tmp_path, sig, code, learners):
    run = tmp_path / "sig"
    proc = cli(tmp_path, "sig", "--env", ENV_ID, "--workers", 2, "--learners", learners,
               "--episodes", 100_000, "--checkpoint-every", 7, fault="slow@3")  # fmt: skip
    wait_rows(run, 8, proc)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole process group
    else:
        os.kill(proc.pid, sig)
    rc, err = finish(proc)
    assert rc == code, err
    assert f"--resume {run}" in err
    assert not [pid for pid in worker_pids(run) if running(pid)]
    done = load_checkpoint(run / CHECKPOINT)["episodes_done"]
    assert done >= 8 and count_metrics_rows(run / "metrics.csv") == done  # all rows flushed
    assert_intact(run, done)
    if sig == signal.SIGTERM:
        return  # resuming is the same as after SIGINT
    # resume: --resume alone keeps the run's config; a bigger budget continues it
    total = done + 10
    argv = ["--resume", str(run), "--episodes", str(total), "--out", str(tmp_path)]
    assert main([*argv, "--run-name", "ignored"]) == 0  # in-process: saves an interpreter start
    ckpt = assert_intact(run, total)
    assert ckpt["resume_count"] == 1
    resumed = [s for s in ckpt["worker_seeds"] if s["resume"] == 1]
    # fresh, recorded seeds for every learner
    resumed_seeds = sorted(int(v) for s in resumed for v in s["learners"].values())
    assert resumed_seeds == [1000 + i for i in range(learners)]
    assert not (tmp_path / "ignored").exists()


def test_second_ctrl_c_forces_exit_and_resume_rolls_back(tmp_path):
    run, hang = tmp_path / "force", tmp_path / "hang"
    proc = cli(tmp_path, "force", "--env", ENV_ID, "--workers", 2, "--episodes", 100_000,
               "--checkpoint-every", 1000, fault=f"hang={hang}")  # fmt: skip
    wait_rows(run, 5, proc)
    hang.touch()  # from now on every worker step blocks for 60 s: the graceful stop stalls
    time.sleep(1)
    rows = count_metrics_rows(run / "metrics.csv")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130, err
    assert "forced exit" in err
    assert not [pid for pid in worker_pids(run) if running(pid)]
    assert load_checkpoint(run / CHECKPOINT)["episodes_done"] == 0  # the last checkpoint kept
    assert count_metrics_rows(run / "metrics.csv") >= rows
    hang.unlink()
    assert main(["--resume", str(run), "--episodes", "15", "--quiet"]) == 0
    assert_intact(run, 15)
    # rows past the checkpoint were moved aside (not deleted), then re-run
    assert count_metrics_rows(run / ROLLED_BACK) >= rows


def test_supervisor_sigkill_leaves_no_worker_and_run_resumable(tmp_path):
    run = tmp_path / "hard"
    proc = cli(tmp_path, "hard", "--env", ENV_ID, "--workers", 2, "--episodes", 100_000,
               "--checkpoint-every", 4, fault="slow@3")  # fmt: skip
    wait_rows(run, 6, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 60  # a bounded wait, not a speed assertion
    while [pid for pid in worker_pids(run) if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in worker_pids(run) if running(pid)]
    ckpt = load_checkpoint(run / CHECKPOINT)  # the last periodic checkpoint is intact
    assert ckpt["episodes_done"] >= 4
    assert count_metrics_rows(run / "metrics.csv") >= ckpt["episodes_done"]
    cfg = TrainConfig(**{**ckpt["config"], "resume": str(run), "episodes": 100_001})
    assert validate(cfg)["episodes_done"] == ckpt["episodes_done"]  # resumable


# 3. worker faults ------------------------------------------------------------------------------


def test_worker_exception_is_restarted_and_budget_exact(tmp_path):
    marker = tmp_path / "crashed"
    cfg = cfg_for(tmp_path, env=ENV_ID, workers=2, episodes=30, max_restarts=2)
    run = with_fault(f"raise@3,once={marker}", train, cfg, False)
    ckpt = assert_intact(run, 30)
    assert marker.exists() and ckpt["restarts"] == 1
    log = (run / EVENTS).read_text()
    assert "restart 1/2" in log and "RuntimeError: injected fault" in log
    assert "1 claimed episode(s) given back" in log
    assert len([s for s in ckpt["worker_seeds"] if s["restart"] == 1]) == 1


def test_worker_sigkill_is_restarted_and_budget_exact(tmp_path):
    run = tmp_path / "kill"
    proc = cli(tmp_path, "kill", "--env", ENV_ID, "--workers", 2, "--episodes", 80,
               fault="slow@4")  # fmt: skip
    wait_rows(run, 5, proc)
    victim = worker_pids(run)[0]
    os.kill(victim, signal.SIGKILL)
    rc, err = finish(proc)
    assert rc == 0, err
    ckpt = assert_intact(run, 80)
    assert ckpt["restarts"] == 1
    assert "died: signal SIGKILL" in (run / EVENTS).read_text()
    assert not [pid for pid in worker_pids(run) if running(pid)]


def test_restarts_exhausted_fails_with_traceback_and_keeps_checkpoint(tmp_path, capsys):
    argv = ["--env", ENV_ID, "--model", "classical", "--workers", "1", "--episodes", "50",
            "--max-restarts", "1", "--checkpoint-every", "1", "--out", str(tmp_path),
            "--run-name", "exh", "--quiet"]  # fmt: skip
    assert with_fault("raise@2", main, argv) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: injected fault" in err and "restarts used: 1/1" in err
    # each of the 2 processes finished one episode before crashing: both rows kept
    ckpt = assert_intact(tmp_path / "exh", 2)
    assert ckpt["restarts"] == 1


def test_worker_killed_inside_the_shared_adam_step_is_rolled_back_and_run_exact(
    tmp_path, monkeypatch
):
    """A worker SIGKILLs itself halfway through the 25th shared-Adam step (moments written,
    parameters not): the next lock holder rolls the optimizer back to step 24, the supervisor
    logs it and restarts the worker, and the run ends exact. Shown able to fail: with
    ``SharedAdam.recover`` doing nothing, the 'rolled back' event is missing (and the state is
    the half-updated one, see tests/test_hub.py)."""
    from qa3c_qiskit.runners import local

    monkeypatch.setattr(local, "SharedAdam", qa3c_faults.FaultyAdam)  # pickled into workers
    marker = tmp_path / "killed"
    cfg = cfg_for(tmp_path, env=ENV_ID, workers=2, episodes=24, max_restarts=1)
    run = with_fault(f"killstep@25,once={marker}", train, cfg, False)
    ckpt = assert_intact(run, 24)
    assert marker.exists() and ckpt["restarts"] == 1
    log = (run / EVENTS).read_text()
    assert "died: signal SIGKILL" in log
    assert "rolled back to step 24 (the last completed one)" in log
    assert torch.isfinite(ckpt["adam"]["exp_avg_sq"]).all()


# 4. non-finite values --------------------------------------------------------------------------


def test_nan_updates_are_skipped_and_counted(tmp_path):
    cfg = cfg_for(tmp_path, env=ENV_ID, episodes=20)
    run = with_fault("nan@7", train, cfg, False)
    ckpt = assert_intact(run, 20)
    steps = int(read_metrics(run)["length"].sum())
    # every 7th step has a NaN reward; S=5 so each poisons exactly one update
    assert ckpt["nonfinite_updates_skipped"] == steps // 7 > 0
    import json

    assert json.loads((run / "summary.json").read_text())["nonfinite_updates_skipped"] == steps // 7
    assert torch.isfinite(ckpt["adam"]["exp_avg"]).all()
    assert torch.isfinite(ckpt["adam"]["exp_avg_sq"]).all()


def test_nan_with_raise_aborts(tmp_path, capsys):
    argv = ["--env", ENV_ID, "--model", "classical", "--workers", "1", "--episodes", "50",
            "--on-nonfinite", "raise", "--max-restarts", "3", "--out", str(tmp_path),
            "--run-name", "nanr", "--quiet"]  # fmt: skip
    assert with_fault("nan@7", main, argv) == 1
    assert "NonFiniteError" in capsys.readouterr().err
    assert "restart" not in (tmp_path / "nanr" / EVENTS).read_text()  # fatal: not restarted
    ckpt = load_checkpoint(tmp_path / "nanr" / CHECKPOINT)
    assert_intact(tmp_path / "nanr", ckpt["episodes_done"])
    assert ckpt["episodes_done"] < 50


# 5. bad input ----------------------------------------------------------------------------------


def test_all_bad_values_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["--episodes", "0", "--workers", "0", "--lr", "0", "--gamma", "1.5", "--shots", "0",
            "--env", "Nope-v0", "--backend", "nope", "--out", str(blocker / "runs")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for text in ("--episodes", "--workers", "--lr", "--gamma", "--shots", "Nope-v0", "nope",
                 "cannot be written"):  # fmt: skip
        assert text in err, text
    with pytest.raises(ValueError, match="unknown --model 'nope'"):
        validate(cfg_for(tmp_path, model="nope"))
    with pytest.raises(ValueError, match="gamma must be in"):
        validate(cfg_for(tmp_path, gamma=0.0))


def test_existing_run_is_never_overwritten(done_run, capsys):
    before = {p.name: p.read_bytes() for p in done_run.iterdir() if p.is_file()}
    argv = ["--model", "classical", "--out", str(done_run.parent), "--run-name", done_run.name]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in done_run.iterdir() if p.is_file()} == before


def test_resume_incompatible_config_names_the_field(done_run, capsys):
    assert main(["--resume", str(done_run), "--episodes", "20", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "incompatible config" in err and "lr: given 0.5" in err
    with pytest.raises(ValueError, match="n_layers: given 3"):
        validate(replace(cfg_for(done_run.parent), resume=str(done_run), episodes=20, n_layers=3))
    assert main(["--resume", str(done_run), "--episodes", "12"]) == 2
    assert "already has 12 episodes" in capsys.readouterr().err


def test_resume_damaged_checkpoint_names_the_file(done_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(done_run, run)
    data = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(data[: len(data) // 2])
    assert main(["--resume", str(run), "--episodes", "20"]) == 2
    err = capsys.readouterr().err
    assert str(run / CHECKPOINT) in err and "truncated" in err
    cfg = replace(cfg_for(tmp_path), resume=str(run), episodes=20)
    with pytest.raises(ValueError, match="truncated"):
        validate(cfg)


# 6. determinism --------------------------------------------------------------------------------


def test_one_worker_fixed_seed_is_deterministic(tmp_path, done_run):
    again = train(cfg_for(tmp_path, "again"), show_table=False)
    a, b = read_metrics(done_run), read_metrics(again)
    for col in ("episode", "worker", "return", "length", "env_steps"):
        assert np.array_equal(a[col], b[col]), col
    ca, cb = load_checkpoint(done_run / CHECKPOINT), load_checkpoint(again / CHECKPOINT)
    assert torch.equal(ca["flat"], cb["flat"])
    assert torch.equal(ca["adam"]["exp_avg_sq"], cb["adam"]["exp_avg_sq"])
    other = train(cfg_for(tmp_path, "other", seed=1), show_table=False)
    assert not torch.equal(ca["flat"], load_checkpoint(other / CHECKPOINT)["flat"])


def test_worker_seeds_are_seed_plus_rank_and_recorded(tmp_path):
    import json

    run = train(cfg_for(tmp_path, workers=2, seed=7, episodes=6), show_table=False)
    assert json.loads((run / "config.json").read_text())["learner_seeds"] == {"0": 7, "1": 8}
    ckpt = assert_intact(run, 6)
    assert sorted(s["seed"] for s in ckpt["worker_seeds"]) == [7, 8]


def test_learner_seeds_are_seed_plus_learner_and_recorded(tmp_path):
    import json

    run = train(cfg_for(tmp_path, workers=2, learners=5, seed=7, episodes=9), show_table=False)
    config = json.loads((run / "config.json").read_text())
    assert config["learner_seeds"] == {str(i): 7 + i for i in range(5)}
    assert config["learners_per_worker"] == {"0": [0, 2, 4], "1": [1, 3]}
    ckpt = assert_intact(run, 9)
    logged = {int(k): v for e in ckpt["worker_seeds"] for k, v in e["learners"].items()}
    assert logged == {i: 7 + i for i in range(5)}
    # (was: "the returns are not NaN", true of any run) each row names a learner of the
    # process that reported it, and CartPole's return is its length (reward 1 per step)
    m = read_metrics(run)
    assert (m["worker"].astype(int) == m["learner"].astype(int) % 2).all()
    assert (m["return"] == m["length"]).all()


# 7. time-limit truncation ----------------------------------------------------------------------


@pytest.mark.parametrize("learners", [1, 3])
def test_time_limit_truncation_bootstraps_with_the_value_of_the_next_state(monkeypatch, learners):
    """The real learner loop on an env that never terminates and is cut by its time limit:
    every applied gradient (also of the segment the time limit cut) is the reference loss's
    with ``terminated=False``, i.e. the return bootstrapped with V(s'), and is not the one with
    R = 0. Shown able to fail: with ``done`` passed to the Segment instead of ``terminated``
    in a3c._loop, the cut segments' gradients equal the terminated=True reference instead."""
    spec = ModelSpec(4, 2, "classical")
    torch.manual_seed(0)
    hub = SerialHub(ActorCritic(spec).flat, budget=2 * learners, lr=1e-2)
    batches = []
    real = a3c.segment_gradients

    def recording(model_, thetas, segments, settings):
        grads, losses = real(model_, thetas, segments, settings)
        batches.append((thetas.clone(), segments, grads.clone(), losses.clone()))
        return grads, losses

    monkeypatch.setattr(a3c, "segment_gradients", recording)
    seeds = [(i, 40 + i) for i in range(learners)]
    a3c.run_learners(0, seeds, TRUNCATING_ID, spec, A3CSettings(), hub)
    assert [r["length"] for r in hub.records] == [TIME_LIMIT] * 2 * learners  # all truncated
    twin, cut = ActorCritic(spec), 0
    for thetas, segments, grads, losses in batches:
        for j, seg in enumerate(segments):
            twin.flat.copy_(thetas[j])
            args = (
                twin,
                torch.from_numpy(np.stack(seg.obs)),
                torch.tensor(seg.actions),
                seg.rewards,
                torch.from_numpy(seg.next_obs),
            )
            loss = a3c_loss(*args, False, A3CSettings())
            ref = local_gradient(twin, loss).clone()
            assert float(losses[j]) == pytest.approx(float(loss.detach()), rel=1e-12)
            assert torch.allclose(grads[j], ref, atol=1e-12, rtol=0)
            if len(seg.obs) == TIME_LIMIT % 5:  # the segment closed by the time limit
                cut += 1
                r0 = local_gradient(twin, a3c_loss(*args, True, A3CSettings()))
                assert not torch.allclose(grads[j], r0, atol=1e-6, rtol=0)  # distinguishable
    assert cut == 2 * learners


def test_a_failed_periodic_checkpoint_write_keeps_the_old_one_and_the_run_goes_on(
    tmp_path, monkeypatch, capsys
):
    """Disk full at a periodic checkpoint: logged, the previous checkpoint kept, training goes
    on and the next checkpoint succeeds; a failed *final* write exits 1 with one line naming
    the kept checkpoint and the resume command, the rows and the old checkpoint intact."""
    import errno

    from qa3c_qiskit import supervise

    real = supervise.save_checkpoint
    calls = {"n": 0, "fail": {3}}  # writes: episode 0, 5, 10 (fails), final

    def flaky(path, state):
        calls["n"] += 1
        if calls["n"] in calls["fail"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, state)

    monkeypatch.setattr(supervise, "save_checkpoint", flaky)
    argv = ["--env", "CartPole-v1", "--model", "classical", "--workers", "1", "--episodes", "12",
            "--checkpoint-every", "5", "--out", str(tmp_path), "--run-name", "full", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    events = (tmp_path / "full" / "events.log").read_text()
    assert "checkpoint at episode 10 not written (No space left on device)" in events
    assert "the one at episode 5 is kept" in events
    assert_intact(tmp_path / "full", 12)  # the final checkpoint was written after the failure

    calls.update(n=0, fail={2})  # resumed run's writes: episode 15, then the final one fails
    argv_resume = ["--resume", str(tmp_path / "full"), "--episodes", "18", "--quiet"]
    before = (tmp_path / "full" / CHECKPOINT).read_bytes()
    capsys.readouterr()
    code = main(argv_resume)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "could not write the checkpoint at episode 18" in err[0]
    assert f"--resume {tmp_path / 'full'}" in err[0]
    assert read_metrics(tmp_path / "full")["episode"].tolist() == list(range(1, 19))
    kept = load_checkpoint(tmp_path / "full" / CHECKPOINT)
    assert kept["episodes_done"] == 15 and (tmp_path / "full" / CHECKPOINT).read_bytes() != before
