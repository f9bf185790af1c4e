"""Per-episode update statistics in the episode records, and ``--tensorboard`` event files."""

import math
import sys
from pathlib import Path

import pytest
import torch

from qa3c_qiskit.a3c import A3CSettings, Segment, run_learners, segment_gradients
from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.envs import env_info
from qa3c_qiskit.models import ActorCritic, ModelSpec

sys.path.insert(0, str(Path(__file__).parent))  # the tests' helpers (as in test_reliability)
from qa3c_hubs import SerialHub  # noqa: E402

STATS = ("loss_policy", "loss_value", "entropy", "grad_norm")
CHART_TAGS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/avg100",
    "charts/env_steps_per_s",
}
LOSS_TAGS = {"losses/policy", "losses/value", "losses/entropy", "losses/grad_norm"}


def _run(spec, episodes, k=2):
    torch.manual_seed(0)
    hub = SerialHub(ActorCritic(spec).flat, episodes, lr=1e-3)
    run_learners(0, [(i, 10 + i) for i in range(k)], "CartPole-v1", spec, A3CSettings(), hub)
    return hub.records


def test_segment_gradients_stats_add_up_to_the_loss():
    torch.manual_seed(1)
    model = ActorCritic(ModelSpec(4, 2, "classical"))
    gen = torch.Generator().manual_seed(0)
    segs = [
        Segment(
            list(torch.randn(n, 4, generator=gen, dtype=torch.float64)),
            [0, 1, 1, 0, 1][:n],
            [1.0] * n,
            torch.randn(4, generator=gen, dtype=torch.float64),
            n < 5,
        )
        for n in (5, 3)
    ]
    thetas = model.flat.detach().repeat(2, 1)
    for reduction in ("mean", "sum"):
        settings = A3CSettings(loss_reduction=reduction)
        grads, losses = segment_gradients(model, thetas, segs, settings)  # still a 2-tuple
        stats = segment_gradients(model, thetas, segs, settings).stats
        assert torch.allclose(stats["policy"] + stats["value"], losses)
        assert (stats["value"] >= 0).all()
        # entropy with entropy_coef = 0: mean over the segment's states, 0 < H <= log 2
        assert (stats["entropy"] > 0).all() and (stats["entropy"] <= math.log(2) + 1e-12).all()
    beta = 0.1
    res = segment_gradients(model, thetas, segs, A3CSettings(entropy_coef=beta))
    st = res.stats
    assert torch.allclose(st["policy"] + st["value"] - beta * st["entropy"], res[1])


def test_episode_records_carry_update_means_and_no_counters_off_qiskit():
    info = env_info("CartPole-v1")
    for kind in ("classical", "quantum"):  # quantum: the statevector engine (no estimator)
        records = _run(ModelSpec(info.obs_dim, info.n_actions, kind), episodes=4)
        assert len(records) == 4
        for r in records:
            # one update per S = 5 steps and one at the episode's end
            assert r["updates"] == math.ceil(r["length"] / 5)
            assert all(math.isfinite(r[k]) for k in STATS)
            assert r["entropy"] > 0 and r["grad_norm"] > 0 and r["loss_value"] >= 0
            assert not any(k.startswith("q_") for k in r)


@pytest.mark.timeout(300)
def test_episode_records_carry_estimator_counters_on_aer():
    info = env_info("CartPole-v1")
    spec = ModelSpec(info.obs_dim, info.n_actions, "quantum", backend="aer_shots", shots=64)
    records = _run(spec, episodes=2, k=1)
    assert len(records) == 2
    first, second = records
    for r in records:
        assert r["q_calls"] > 0 and r["q_circuits"] >= r["q_pubs"] > 0
        assert r["q_shots"] == 64 * r["q_circuits"]
    # cumulative per process: the second episode's counts include the first's
    assert second["q_calls"] > first["q_calls"]
    assert second["q_circuits"] > first["q_circuits"]


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return acc, set(acc.Tags()["scalars"])


def test_tensorboard_event_files_hold_the_tags(tmp_path):
    from qa3c_qiskit.train import train

    cfg = TrainConfig(
        env="CartPole-v1", model="classical", workers=1, learners=2, episodes=12, seed=3,
        out=str(tmp_path), run_name="r", quiet=True, tensorboard=True, eval_every=6,
        eval_episodes=2,
    )  # fmt: skip
    run = train(cfg, show_table=False)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc, tags = _scalars(run)
    assert CHART_TAGS | LOSS_TAGS | {"losses/updates"} <= tags
    assert {"eval/greedy_return", "eval/sampled_return"} <= tags
    assert not any(t.startswith("quantum/") for t in tags)  # classical: no estimator
    # step = global episode index, one event per finished episode
    assert [e.step for e in acc.Scalars("charts/episodic_return")] == list(range(1, 13))
    assert [e.step for e in acc.Scalars("eval/greedy_return")] == [6, 12]


def test_missing_tensorboard_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch):
    from qa3c_qiskit.periodic_eval import config_problems

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    problems = config_problems(TrainConfig(tensorboard=True))
    assert len(problems) == 1 and "qa3c-qiskit[tensorboard]" in problems[0]
    assert config_problems(TrainConfig()) == []


def test_eval_options_checked():
    from qa3c_qiskit.periodic_eval import config_problems

    assert config_problems(TrainConfig(eval_every=5, eval_episodes=3)) == []
    assert "--eval-every" in config_problems(TrainConfig(eval_every=-1))[0]
    assert "--eval-episodes" in config_problems(TrainConfig(eval_every=5, eval_episodes=0))[0]
    # never evaluate on a paid QPU behind the user's back
    (problem,) = config_problems(TrainConfig(eval_every=5, backend="ibm_runtime"))
    assert "QPU" in problem
    # local testing mode (fake backend) costs nothing
    assert config_problems(TrainConfig(eval_every=5, backend="ibm_runtime_local")) == []
