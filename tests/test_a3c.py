"""Algorithm 1 pieces: n-step returns, loss, shared Adam, and the gradient hand-off."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from qa3c_qiskit.a3c import A3CSettings, Segment, _update, a3c_loss, local_gradient, n_step_returns
from qa3c_qiskit.checkpoint import RunState
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.optim import SharedAdam
from qa3c_qiskit.runners.base import Episode, Failure, RunPlan
from qa3c_qiskit.runners.local import LocalHub, LocalRunner

SETTINGS = A3CSettings()


def test_n_step_returns_bootstrap_and_terminal():
    r = n_step_returns([1.0, 1.0, 1.0], bootstrap=10.0, gamma=0.9)
    assert r.tolist() == pytest.approx([1 + 0.9 + 0.81 + 0.729 * 10, 1 + 0.9 + 0.81 * 10, 1 + 9])
    assert n_step_returns([1.0, 2.0], 0.0, 0.5).tolist() == pytest.approx([2.0, 2.0])


def _segment(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 4, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 2, (n,), generator=g)
    rewards = [1.0] * n
    next_obs = torch.randn(4, generator=g, dtype=torch.float64)
    return obs, actions, rewards, next_obs


def test_loss_bootstraps_on_truncation_not_on_termination():
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec(4, 2, "classical"))
    obs, actions, rewards, next_obs = _segment()
    with torch.no_grad():
        v = model.value(obs)
        v_next = float(model.value(next_obs[None])[0])
        logp = torch.log_softmax(model.logits(obs), -1).gather(1, actions[:, None]).squeeze(1)
    for terminated, boot in [(True, 0.0), (False, v_next)]:
        ret = n_step_returns(rewards, boot, 0.9)
        td = ret - v
        expected = (td.square() - logp * td).mean()
        loss = a3c_loss(model, obs, actions, rewards, next_obs, terminated, SETTINGS)
        assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-12)


def test_shared_adam_equals_torch_adam():
    torch.manual_seed(1)
    p0 = torch.randn(7, dtype=torch.float64)
    shared = SharedAdam(p0.clone(), lr=1e-2, betas=(0.92, 0.999))
    ref_param = torch.nn.Parameter(p0.clone())
    ref = torch.optim.Adam([ref_param], lr=1e-2, betas=(0.92, 0.999), eps=1e-8)
    for _ in range(20):
        g = torch.randn(7, dtype=torch.float64)
        shared.step(g)
        ref_param.grad = g.clone()
        ref.step()
    assert torch.allclose(shared.params, ref_param.detach(), atol=1e-14)
    assert int(shared.step_count) == 20


def test_shared_adam_step_many_is_step_after_step():
    """J steps in one call: bit-identical parameters, moments and step count to J calls of
    step(), and row j of the output holds the parameters right after step j."""
    torch.manual_seed(3)
    p0 = torch.randn(9, dtype=torch.float64)
    one, many = SharedAdam(p0.clone(), lr=1e-2), SharedAdam(p0.clone(), lr=1e-2)
    grads = torch.randn(4, 5, 9, dtype=torch.float64)
    for batch in grads:  # 4 batches of 5 steps: bias corrections continue across calls
        after = []
        for g in batch:
            one.step(g)
            after.append(one.params.clone())
        out = torch.zeros(7, 9, dtype=torch.float64)
        rows = [6, 0, 3, 2, 5]
        many.step_many(batch, out, rows)
        for j, row in enumerate(rows):
            assert torch.equal(out[row], after[j])
        assert torch.equal(out[1], torch.zeros(9))  # rows not named stay untouched
    for a, b in zip(one.state_dict().values(), many.state_dict().values()):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    assert torch.equal(one.params, many.params) and int(many.step_count) == 20
    assert not many.in_progress()
    assert all(torch.equal(x, y) for x, y in zip(many._backup_tensors, many._live()))


class RecordingHub(LocalHub):
    """A real LocalHub that also keeps a copy of every gradient it applies."""

    applied: list

    def push_pull(self, grad, local_flat):
        self.applied.append(grad.clone())
        super().push_pull(grad, local_flat)

    def push_pull_many(self, grads, thetas, slots):
        self.applied.extend(g.clone() for g in grads)
        super().push_pull_many(grads, thetas, slots)


def test_gradient_handoff_applies_exactly_this_updates_gradient():
    torch.manual_seed(2)
    model = ActorCritic(ModelSpec(4, 2, "classical"))
    adam = SharedAdam(model.flat.clone(), lr=1e-2)
    hub = RecordingHub(mp.get_context("spawn"), adam, budget=10, done=0, env_steps=0)
    hub.applied = []
    thetas = model.flat.detach().clone()[None]  # one learner's theta'
    hub.pull(thetas[0])
    learner = SimpleNamespace(slot=0)
    grads = []
    for seed in (10, 11, 12):
        obs, actions, rewards, next_obs = _segment(seed)
        # reference: the gradient of this segment's loss at the current local parameters
        twin = ActorCritic(ModelSpec(4, 2, "classical"))
        twin.flat.copy_(thetas[0])
        g_ref = local_gradient(
            twin, a3c_loss(twin, obs, actions, rewards, next_obs, False, SETTINGS)
        ).clone()
        seg = Segment(list(obs), actions.tolist(), rewards, next_obs, False)
        _update(model, thetas, [(learner, seg)], SETTINGS, hub)
        grads.append(g_ref)
        assert torch.allclose(hub.applied[-1], g_ref, atol=1e-14)
        # the local copy now equals the global parameters (pull after push)
        assert torch.equal(thetas[0], adam.params)
    # the shared Adam's first moment is exactly the EMA of the three applied gradients, so no
    # update applied a sum with an earlier gradient
    b1 = 0.92
    m = torch.zeros_like(grads[0])
    for g in grads:
        m = b1 * m + (1 - b1) * g
    assert torch.allclose(adam.exp_avg, m, atol=1e-14)
    assert int(adam.step_count) == 3


def test_local_runner_shares_adam_step_and_exact_episode_budget():
    """Two real worker processes: one Adam step per update, counted across processes."""
    torch.manual_seed(3)
    spec = ModelSpec(4, 2, "classical")
    model = ActorCritic(spec)
    plan = RunPlan(spec, "CartPole-v1", SETTINGS, workers=2, learners=2, seed=0, budget=12, lr=1e-3)
    runner = LocalRunner(plan, RunState(flat=model.flat.detach().clone()))
    records = []
    runner.start()
    try:
        while runner.alive() or records == []:
            for msg in runner.poll(0.5):
                assert not isinstance(msg, Failure), msg
                if isinstance(msg, Episode):
                    records.append(msg.record)
    finally:
        runner.close()
    for msg in runner.poll(0.5):
        if isinstance(msg, Episode):
            records.append(msg.record)
    assert len(records) == 12
    # one learner per process: learner id = worker rank; both processes were started
    assert all(r["learner"] == r["worker"] and r["worker"] in (0, 1) for r in records)
    assert sorted(e["worker"] for e in runner.state.seed_log) == [0, 1]
    state = runner.sync()
    expected_updates = sum(math.ceil(r["length"] / 5) for r in records)
    assert state.adam["step"] == expected_updates
    assert not torch.equal(state.flat, model.flat)
    assert max(r["env_steps"] for r in records) == sum(r["length"] for r in records)
    assert state.env_steps == sum(r["length"] for r in records)
