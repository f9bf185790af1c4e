"""Many actor-learners per process (issue: the paper's 80 agents on two cores).

* one learner per process reproduces the loop before this change (a recorded golden trace);
* with K learners in one process, every applied gradient is that learner's own segment
  gradient at its own parameters (checked against the single-segment reference loss), each is
  one shared-Adam step, and each learner's next segment starts from the global parameters
  right after its own step (a legal interleaving of K asynchronous agents);
* budgets stay exact and runs stay deterministic with learners in real processes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qa3c_qiskit import a3c
from qa3c_qiskit.a3c import A3CSettings, a3c_loss, local_gradient, run_learners
from qa3c_qiskit.checkpoint import CHECKPOINT, load_checkpoint
from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.envs import env_info
from qa3c_qiskit.metrics import read_metrics
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.train import train

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # the tests' helpers (as in test_reliability)
from qa3c_hubs import SerialHub  # noqa: E402

GOLDEN = TESTS / "data" / "k1_golden.pt"


def _spec(env_id: str, model: str) -> ModelSpec:
    info = env_info(env_id)
    return ModelSpec(info.obs_dim, info.n_actions, model)


@pytest.mark.parametrize(
    "key",
    ["classical/CartPole-v1", "quantum/CartPole-v1", "classical/MiniGrid-SimpleCrossingS9N1-v0"],
)
def test_one_learner_per_process_reproduces_the_loop_before_learners(key):
    gold = torch.load(GOLDEN)[key]
    model_kind, env_id = key.split("/")
    spec = _spec(env_id, model_kind)
    torch.manual_seed(gold["seed"])
    model = ActorCritic(spec)
    assert torch.equal(model.flat, gold["init"])
    hub = SerialHub(model.flat, gold["episodes"])
    run_learners(0, [(0, gold["seed"])], env_id, spec, A3CSettings(), hub)
    assert [r["return"] for r in hub.records] == gold["returns"]
    assert [r["length"] for r in hub.records] == gold["lengths"]
    assert [r["env_steps"] for r in hub.records] == gold["env_steps"]
    assert int(hub.adam.step_count) == gold["step"]
    assert torch.allclose(hub.adam.params, gold["final"], atol=1e-9, rtol=0)


@pytest.mark.parametrize("model_kind, episodes", [("classical", 14), ("quantum", 8)])
def test_each_learner_applies_its_own_segment_gradient_as_its_own_adam_step(
    monkeypatch, model_kind, episodes
):
    k = 5
    spec = _spec("CartPole-v1", model_kind)
    torch.manual_seed(0)
    model = ActorCritic(spec)
    hub = SerialHub(model.flat, budget=episodes)
    batches = []
    real = a3c.segment_gradients

    def recording(model_, thetas, segments, settings):
        grads, losses = real(model_, thetas, segments, settings)
        batches.append((thetas.clone(), segments, grads.clone()))
        return grads, losses

    monkeypatch.setattr(a3c, "segment_gradients", recording)
    run_learners(0, [(i, 100 + i) for i in range(k)], "CartPole-v1", spec, A3CSettings(), hub)

    # every finished episode is reported once, by its learner; all K learners took part
    assert len(hub.records) == episodes
    assert {r["learner"] for r in hub.records} == set(range(k))
    # one Adam step per segment, segments = ceil(length / S) per episode
    n_segments = sum(len(segs) for _, segs, _ in batches)
    assert int(hub.adam.step_count) == len(hub.pushes) == n_segments
    assert n_segments == sum(math.ceil(r["length"] / 5) for r in hub.records)
    assert any(len(segs) > 1 for _, segs, _ in batches)  # several learners closed together

    # each batched row is exactly that segment's gradient computed alone at its parameters
    twin = ActorCritic(spec)
    applied = iter(hub.pushes)
    for thetas, segments, grads in batches:
        for j, seg in enumerate(segments):
            twin.flat.copy_(thetas[j])
            loss = a3c_loss(
                twin,
                torch.from_numpy(np.stack(seg.obs)),
                torch.tensor(seg.actions),
                seg.rewards,
                torch.from_numpy(seg.next_obs),
                seg.terminated,
                A3CSettings(),
            )
            ref = local_gradient(twin, loss)
            assert torch.allclose(grads[j], ref, atol=1e-10, rtol=0)
            _, before, grad, _ = next(applied)
            assert torch.equal(grad, grads[j])  # pushed as is: never summed with another
            assert torch.equal(before, thetas[j])

    # a learner's next segment starts from the global parameters right after its own step
    last: dict[int, torch.Tensor] = {}
    for learner, before, _, after in hub.pushes:
        if learner in last:
            assert torch.equal(before, last[learner])
        else:
            assert torch.equal(before, model.flat)  # its first segment: the initial pull
        last[learner] = after
    assert len(last) == k


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    base = dict(
        env="CartPole-v1",
        model="classical",
        workers=3,
        learners=5,
        episodes=97,
        seed=0,
        out=str(tmp_path),
        run_name=name,
        quiet=True,
        lr=1e-3,
        checkpoint_every=20,
    )
    return TrainConfig(**{**base, **kw})


def test_exact_budget_with_learners_in_processes(tmp_path):
    run = train(_cfg(tmp_path, "budget", learners=15), show_table=False)
    m = read_metrics(run)
    assert m["episode"].tolist() == list(range(1, 98))  # 97 rows, each episode once
    assert set(m["learner"].astype(int)) == set(range(15))
    assert (m["worker"].astype(int) == m["learner"].astype(int) % 3).all()
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt["episodes_done"] == 97
    assert ckpt["env_steps"] == int(m["length"].sum())  # no step counted twice or lost
    segments = sum(math.ceil(n / 5) for n in m["length"])
    assert ckpt["adam"]["step"] == segments  # one Adam step per learner segment


def test_resume_with_learners_continues_exactly(tmp_path):
    from qa3c_qiskit.train import main

    run = train(_cfg(tmp_path, "res", workers=2, learners=6, episodes=30), show_table=False)
    assert main(["--resume", str(run), "--episodes", "50", "--quiet"]) == 0
    m = read_metrics(run)
    assert m["episode"].tolist() == list(range(1, 51))
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt["episodes_done"] == 50 and ckpt["resume_count"] == 1
    resumed = {
        int(lid): seed for e in ckpt["worker_seeds"] if e["resume"] == 1
        for lid, seed in e["learners"].items()
    }  # fmt: skip
    assert resumed == {i: 1000 + i for i in range(6)}
    assert ckpt["env_steps"] == int(m["length"].sum())


@pytest.mark.parametrize("model_kind", ["quantum", "classical"])
def test_one_worker_with_learners_is_deterministic(tmp_path, model_kind):
    kw = dict(workers=1, learners=4, episodes=12, model=model_kind)
    a = train(_cfg(tmp_path, "a", **kw), show_table=False)
    b = train(_cfg(tmp_path, "b", **kw), show_table=False)
    ma, mb = read_metrics(a), read_metrics(b)
    for col in ("learner", "return", "length", "env_steps"):
        assert (ma[col] == mb[col]).all(), col
    ca, cb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
    assert torch.equal(ca["flat"], cb["flat"])
    c = train(_cfg(tmp_path, "c", **{**kw, "seed": 1}), show_table=False)
    assert not torch.equal(ca["flat"], load_checkpoint(c / CHECKPOINT)["flat"])


def test_vectorised_sampling_draws_what_multinomial_draws():
    probs = torch.softmax(torch.randn(300, 3, dtype=torch.float64), -1)
    gens = [torch.Generator().manual_seed(i) for i in range(300)]
    twins = [torch.Generator().manual_seed(i) for i in range(300)]
    for _ in range(3):  # also the generators' later draws
        got = a3c.sample_actions(probs, gens)
        want = [int(torch.multinomial(probs[j], 1, generator=twins[j])) for j in range(300)]
        assert got == want
    assert set(got) == {0, 1, 2}


def test_qiskit_backend_one_primitive_call_per_env_step_and_per_update(monkeypatch):
    """aer_shots, 3 learners in one process: every batched env step is ONE estimator call (one
    PUB) for all learners' actions, and every update of all closed segments is ONE call."""
    models_built = []

    class Recording(a3c.ActorCritic):
        def __init__(self, spec):
            super().__init__(spec)
            models_built.append(self)

        def close(self):  # the layers drop their Qiskit objects on close: read the counts first
            c = self.actor.core.counter
            self.seen = {"calls": c.calls, "pubs": c.pubs, "critic": self.critic.core._built}
            super().close()

    counts = {"act": 0, "update": 0}
    real_sample, real_grads = a3c.sample_actions, a3c.segment_gradients

    def sample(probs, gens):
        counts["act"] += 1
        return real_sample(probs, gens)

    def grads(*args):
        counts["update"] += 1
        return real_grads(*args)

    monkeypatch.setattr(a3c, "ActorCritic", Recording)
    monkeypatch.setattr(a3c, "sample_actions", sample)
    monkeypatch.setattr(a3c, "segment_gradients", grads)
    info = env_info("CartPole-v1")
    spec = ModelSpec(info.obs_dim, info.n_actions, "quantum", backend="aer_shots", shots=64)
    torch.manual_seed(0)
    hub = SerialHub(ActorCritic(spec).flat, budget=3)
    run_learners(0, [(i, i) for i in range(3)], "CartPole-v1", spec, A3CSettings(), hub)
    assert len(hub.records) == 3 and counts["update"] > 0
    seen = models_built[0].seen
    assert seen["calls"] == counts["act"] + counts["update"]
    assert seen["pubs"] == seen["calls"]  # one PUB per call
    assert seen["critic"] is None  # the critic's samples went through the actor core's call
