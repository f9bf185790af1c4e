"""Model structure and parameter counts (paper Table I)."""

import pytest
import torch

from qa3c_qiskit.envs import PAPER_ENVS, env_info
from qa3c_qiskit.models import (
    PAPER_TABLE1,
    ActorCritic,
    ModelSpec,
    count_parameters,
    parameter_table,
)

# Table I of the paper: env -> (classical part, quantum, QA3C total, classical twin total)
TABLE_I = PAPER_TABLE1


@pytest.mark.parametrize("env_id", PAPER_ENVS)
def test_parameter_counts_match_table_one(env_id):
    info = env_info(env_id)
    row = parameter_table({env_id: (info.obs_dim, info.n_actions)})[0]
    assert (row["classical"], row["quantum"], row["qa3c_total"], row["classical_total"]) == (
        TABLE_I[env_id]
    )


def test_env_dimensions_are_the_papers():
    assert (env_info("CartPole-v1").obs_dim, env_info("CartPole-v1").n_actions) == (4, 2)
    assert (env_info("Acrobot-v1").obs_dim, env_info("Acrobot-v1").n_actions) == (6, 3)
    crossing = env_info("MiniGrid-SimpleCrossingS9N2-v0")
    assert (crossing.obs_dim, crossing.n_actions) == (147, 6)


def test_flat_buffers_alias_parameters_and_gradients():
    model = ActorCritic(ModelSpec(4, 2, "classical"))
    assert model.flat.numel() == count_parameters(model)["total"] == 251
    first = next(model.parameters())
    model.flat[0] = 123.0
    assert first.view(-1)[0].item() == 123.0
    loss = (
        model.value(torch.randn(3, 4, dtype=torch.float64)).sum()
        + model.logits(torch.randn(3, 4, dtype=torch.float64)).sum()
    )
    model.flat_grad.zero_()
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.equal(grads, model.flat_grad)
    assert model.flat_grad.abs().sum() > 0


def test_quantum_actor_depends_on_the_observation_and_acts_greedily():
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec(4, 2, "quantum"))
    obs = torch.randn(5, 4, dtype=torch.float64)
    logits = model.logits(obs)
    assert logits.shape == (5, 2) and model.value(obs).shape == (5,)
    # the observation reaches the logits through the VQC: different inputs, different outputs
    assert (logits[1:] - logits[:1]).abs().max() > 1e-6
    assert [model.greedy(o) for o in obs] == logits.argmax(-1).tolist()


def test_unknown_model_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'quantumm'.*quantum, classical"):
        ActorCritic(ModelSpec(4, 2, "quantumm"))


def test_batched_forward_with_per_sample_parameters_matches_each_model():
    """Row b of batched_logits/values equals a model whose flat parameters are theta[b]."""
    for kind in ("classical", "quantum"):
        spec = ModelSpec(6, 3, kind)
        model, twin = ActorCritic(spec), ActorCritic(spec)
        thetas = model.flat.detach() + 0.05 * torch.randn(
            4, model.flat.numel(), dtype=torch.float64
        )
        obs = torch.randn(4, 6, dtype=torch.float64)
        logits, values = model.batched_logits(thetas, obs), model.batched_values(thetas, obs)
        for b in range(4):
            twin.flat.copy_(thetas[b])
            assert torch.allclose(logits[b], twin.logits(obs[b : b + 1])[0], atol=1e-12)
            assert torch.allclose(values[b], twin.value(obs[b : b + 1])[0], atol=1e-12)
