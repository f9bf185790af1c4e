"""Model structure and parameter counts (paper Table I)."""

import pytest
import torch

from qa3c_qiskit.envs import PAPER_ENVS, env_info
from qa3c_qiskit.models import ActorCritic, ModelSpec, count_parameters, parameter_table

# Table I of the paper: env -> (classical part, quantum, QA3C total, classical twin total)
TABLE_I = {
    "Acrobot-v1": (148, 96, 244, 292),
    "CartPole-v1": (107, 96, 203, 251),
    "MiniGrid-SimpleCrossingS9N1-v0": (2431, 96, 2527, 2575),
    "MiniGrid-SimpleCrossingS9N2-v0": (2431, 96, 2527, 2575),
    "MiniGrid-SimpleCrossingS9N3-v0": (2431, 96, 2527, 2575),
}


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


def test_quantum_actor_outputs_a_distribution():
    model = ActorCritic(ModelSpec(4, 2, "quantum"))
    obs = torch.randn(5, 4, dtype=torch.float64)
    probs = torch.softmax(model.logits(obs), -1)
    assert probs.shape == (5, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(5, dtype=torch.float64))
    assert model.value(obs).shape == (5,)
    assert model.act(obs[0]) in (0, 1)


def test_unknown_model_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'quantumm'.*quantum, classical"):
        ActorCritic(ModelSpec(4, 2, "quantumm"))
