"""The local runner's hub: the lock really serialises the shared-Adam steps of many processes,
and a process killed inside the critical section (anywhere: before it records itself as holder,
inside the Adam step) neither blocks anyone nor leaves a half-updated optimizer behind.

Real spawned processes and real SIGKILLs; their targets live in ``tests/qa3c_faults.py``.

How each test was shown able to fail (by temporarily breaking the code, then restoring it):
* lock test: ``LocalHub.push_pull`` without ``with self.locked()`` -> step count short of
  the pushes and/or parameters != the serial replay (failed in every one of several runs);
* dead-holder tests: ``HubLock`` replaced by the former ``ctx.Lock()`` (kept by a killed holder)
  -> ``locked(timeout)`` raises TimeoutError instead of acquiring;
* killed-in-step test: ``SharedAdam.recover`` returning None without restoring -> the moments
  differ from the replay of the completed steps; ``step`` without the version counter -> the
  interruption is not detected (same failure).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from qa3c_qiskit.optim import SharedAdam
from qa3c_qiskit.runners.local import FREE, LocalHub

sys.path.insert(0, str(Path(__file__).parent))  # spawned processes import qa3c_faults too
import qa3c_faults  # noqa: E402

pytestmark = pytest.mark.timeout(120)
CTX = mp.get_context("spawn")
DIM = 64
LR = 1e-2


def _hub(adam: SharedAdam) -> LocalHub:
    adam.share_memory()
    return LocalHub(CTX, adam, budget=10, done=0, env_steps=0)


def _start(target, *args) -> mp.Process:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _wait_inside(inside, procs, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while inside.value == 0:
        assert time.monotonic() < deadline and all(p.is_alive() for p in procs)
        time.sleep(0.01)


def _replay(grads) -> SharedAdam:
    ref = SharedAdam(torch.zeros(DIM, dtype=torch.float64), lr=LR)
    for g in grads:
        ref.step(g)
    return ref


def test_lock_serialises_every_step_of_many_processes():
    n_proc, n_push = 3, 1000
    log = torch.full((n_proc * n_push, DIM), float("nan"), dtype=torch.float64).share_memory_()
    adam = qa3c_faults.RecordingAdam(torch.zeros(DIM, dtype=torch.float64), log, lr=LR)
    hub = _hub(adam)
    gate = CTX.RawArray("b", n_proc + 1)
    procs = [_start(qa3c_faults.push_many, hub, r, n_push, gate) for r in range(n_proc)]
    deadline = time.monotonic() + 60
    while not all(gate[:n_proc]):  # all imported and ready: start them together
        assert time.monotonic() < deadline and all(p.is_alive() for p in procs)
        time.sleep(0.01)
    gate[n_proc] = 1
    for p in procs:
        p.join(90)
        assert p.exitcode == 0
    # one step per pushed gradient, none lost (an unlocked ``step_count += 1`` loses some)
    assert int(adam.step_count) == n_proc * n_push
    # the log holds every pushed gradient exactly once (no row overwritten or skipped)
    pushed = torch.cat([qa3c_faults.grads_of(r, n_push, DIM) for r in range(n_proc)])
    assert torch.equal(torch.sort(log, 0).values, torch.sort(pushed, 0).values)
    assert {tuple(r) for r in log.tolist()} == {tuple(r) for r in pushed.tolist()}
    # the result is exactly Adam over the gradients in their applied order: no step interleaved
    # with another (bit for bit: the same ops in the same order)
    ref = _replay(log)
    assert torch.equal(adam.params, ref.params)
    assert torch.equal(adam.exp_avg_sq, ref.exp_avg_sq)
    # and the processes really interleaved (otherwise the test proves nothing)
    origin = {
        tuple(g): r for r in range(n_proc) for g in qa3c_faults.grads_of(r, n_push, DIM).tolist()
    }
    ranks = [origin[tuple(g)] for g in log.tolist()]
    assert sum(a != b for a, b in zip(ranks, ranks[1:])) >= 10 * n_proc


@pytest.mark.parametrize(
    "record_owner", [False, True], ids=["before-owner-recorded", "owner-recorded"]
)
def test_holder_killed_inside_the_lock_does_not_block_the_supervisor(record_owner):
    hub = _hub(SharedAdam(torch.zeros(DIM, dtype=torch.float64), lr=LR))
    inside = CTX.RawValue("i", 0)
    proc = _start(qa3c_faults.hold_lock, hub, inside, record_owner)
    _wait_inside(inside, [proc])
    assert not hub.lock.acquire(timeout=0.2)  # really held
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    t0 = time.monotonic()
    with hub.locked(timeout=5):  # untimed in the old design: blocked forever
        assert hub.owner.value == os.getpid()
    assert time.monotonic() - t0 < 5
    assert hub.owner.value == FREE
    # a dead holder that had recorded itself is reported; the (consistent) state is untouched
    assert len(hub.recovered) == int(record_owner)
    if record_owner:
        assert f"pid {proc.pid} died holding it" in hub.recovered[0]
    assert int(hub.adam.step_count) == 0 and not hub.adam.in_progress()
    # and the lock still excludes: a second holder blocks while we hold it
    with hub.locked(timeout=1):
        other = _start(qa3c_faults.hold_lock, hub, inside := CTX.RawValue("i", 0), True)
        time.sleep(1.5)
        assert inside.value == 0 and other.is_alive()
    _wait_inside(inside, [other])
    other.kill()
    other.join(10)


def test_worker_killed_inside_the_adam_step_is_rolled_back():
    k = 7  # killed inside its 7th step: moments written, parameters not
    adam = qa3c_faults.FaultyAdam(torch.zeros(DIM, dtype=torch.float64), kill_at=k, lr=LR)
    adam.inside = CTX.RawValue("i", 0)
    hub = _hub(adam)
    proc = _start(qa3c_faults.push_many, hub, 0, k)
    _wait_inside(adam.inside, [proc])
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert adam.in_progress()  # the version counter says: interrupted
    assert int(adam.step_count) == k  # half-updated, as left by the dead process
    done = qa3c_faults.grads_of(0, k - 1, DIM)
    ref = _replay(done)
    assert not torch.equal(adam.exp_avg, ref.exp_avg)
    with hub.locked(timeout=5):  # the supervisor (or any next holder) repairs first
        pass
    assert not adam.in_progress()
    assert "rolled back to step 6" in hub.recovered[0]
    # exactly the state after the k-1 completed steps: params, moments and step
    assert int(adam.step_count) == k - 1
    for got, want in [
        (adam.params, ref.params),
        (adam.exp_avg, ref.exp_avg),
        (adam.exp_avg_sq, ref.exp_avg_sq),
    ]:
        assert torch.equal(got, want)
    # and training continues from there as if the dead push never happened
    adam.kill_at, adam.inside = None, None  # (this process is not the one to kill)
    g = qa3c_faults.grads_of(0, k, DIM)[-1]
    local = torch.empty(DIM, dtype=torch.float64)
    hub.push_pull(g, local)
    ref.step(g)
    assert torch.equal(local, ref.params) and int(adam.step_count) == k


def test_worker_killed_inside_a_batch_of_adam_steps_rolls_the_whole_batch_back():
    """The learner loop pushes the segments that closed together as one batch
    (``push_pull_many``: one lock, one version bracket, one backup). Killed at the 2nd step of
    the 2nd batch of 4, the optimizer goes back to the end of the 1st batch: step 4, exactly.
    Shown able to fail: with ``SharedAdam.recover`` doing nothing, step 6's half-written state
    stays."""
    adam = qa3c_faults.FaultyAdam(torch.zeros(DIM, dtype=torch.float64), kill_at=6, lr=LR)
    adam.inside = CTX.RawValue("i", 0)
    hub = _hub(adam)
    proc = _start(qa3c_faults.push_batches, hub, 0, 8, 4)
    _wait_inside(adam.inside, [proc])
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert adam.in_progress() and int(adam.step_count) == 6
    with hub.locked(timeout=5):
        pass
    assert "rolled back to step 4" in hub.recovered[0]
    ref = _replay(qa3c_faults.grads_of(0, 4, DIM))
    assert int(adam.step_count) == 4
    for got, want in [
        (adam.params, ref.params),
        (adam.exp_avg, ref.exp_avg),
        (adam.exp_avg_sq, ref.exp_avg_sq),
    ]:
        assert torch.equal(got, want)


def test_interrupted_backup_is_redone_from_the_live_state():
    adam = SharedAdam(torch.zeros(DIM, dtype=torch.float64), lr=LR)
    for g in qa3c_faults.grads_of(0, 3, DIM):
        adam.step(g)
    live = [t.clone() for t in (adam.params, adam.exp_avg, adam.exp_avg_sq)]
    adam.version[1] += 1  # a writer died while copying the backup (live state complete)
    adam._backup_tensors[1].fill_(float("nan"))
    assert adam.in_progress()
    assert "backup was redone" in adam.recover()
    assert not adam.in_progress()
    for t, want in zip((adam.params, adam.exp_avg, adam.exp_avg_sq), live):
        assert torch.equal(t, want)
    adam.version[0] += 1  # a later interrupted step now restores the redone backup
    adam.params.fill_(float("nan"))
    adam.recover()
    assert torch.equal(adam.params, live[0]) and int(adam.step_count) == 3


def test_shared_adam_equals_torch_adam_with_backup_and_reload():
    p0 = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shared = SharedAdam(p0.clone(), lr=1e-2, betas=(0.92, 0.999))
    ref_param = torch.nn.Parameter(p0.clone())
    ref = torch.optim.Adam([ref_param], lr=1e-2, betas=(0.92, 0.999), eps=1e-8)
    for i in range(20):
        g = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        shared.step(g)
        ref_param.grad = g.clone()
        ref.step()
        if i == 9:  # a checkpoint round trip in the middle changes nothing
            again = SharedAdam(shared.params.clone(), lr=1e-2, betas=(0.92, 0.999))
            again.load_state_dict(shared.state_dict())
            shared = again
    assert torch.allclose(shared.params, ref_param.detach(), atol=1e-14, rtol=0)
    assert int(shared.step_count) == 20 and not shared.in_progress()
