"""The fused NumPy hot path (qa3c_qiskit/fused.py) against the autograd path it replaces."""

import pytest
import torch

from qa3c_qiskit import a3c
from qa3c_qiskit.a3c import A3CSettings, Segment, torch_segment_gradients
from qa3c_qiskit.fused import FusedActorCritic, supports
from qa3c_qiskit.models import ActorCritic, ModelSpec


def _segments(d: int, n_actions: int, n_seg: int, gen: torch.Generator) -> list[Segment]:
    segs = []
    for j in range(n_seg):
        length = 1 + j % 5
        segs.append(
            Segment(
                [torch.randn(d, dtype=torch.float64, generator=gen) for _ in range(length)],
                torch.randint(0, n_actions, (length,), generator=gen).tolist(),
                torch.randn(length, dtype=torch.float64, generator=gen).tolist(),
                torch.randn(d, dtype=torch.float64, generator=gen),
                j % 3 == 0,  # some terminal (bootstrap 0), some not (bootstrap V(s'))
            )
        )
    return segs


@pytest.mark.parametrize(
    "kind, d, n_actions", [("quantum", 4, 2), ("classical", 6, 3), ("quantum", 147, 6)]
)
@pytest.mark.parametrize(
    "settings",
    [A3CSettings(), A3CSettings(entropy_coef=0.05, loss_reduction="sum", gamma=0.99)],
    ids=["paper", "entropy-sum"],
)
def test_fused_segment_gradients_equal_autograd(kind, d, n_actions, settings):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec(d, n_actions, kind))
    assert supports(model)
    n_seg = 7
    noise = torch.randn(n_seg, model.flat.numel(), dtype=torch.float64, generator=gen)
    thetas = model.flat.detach().repeat(n_seg, 1) + 0.3 * noise  # a different theta per row
    segs = _segments(d, n_actions, n_seg, gen)

    grads, losses, stats = FusedActorCritic(model).segment_gradients(thetas, segs, settings)
    ref = torch_segment_gradients(model, thetas, segs, settings)
    assert grads.shape == (n_seg, model.flat.numel())
    assert ref[0].abs().max() > 1e-3  # a real gradient, not zeros on both sides
    torch.testing.assert_close(grads, ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(losses, ref[1], rtol=0, atol=1e-12)
    for key in ("policy", "value", "entropy"):
        torch.testing.assert_close(stats[key], ref.stats[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["quantum", "classical"])
def test_fused_logits_equal_the_models_batched_logits(kind):
    torch.manual_seed(1)
    model = ActorCritic(ModelSpec(4, 2, kind))
    thetas = model.flat.detach().repeat(5, 1) + 0.2 * torch.randn(5, model.flat.numel())
    obs = torch.randn(5, 4, dtype=torch.float64)
    got = FusedActorCritic(model).logits(thetas.numpy(), obs.numpy())
    torch.testing.assert_close(
        torch.from_numpy(got), model.batched_logits(thetas, obs).detach(), rtol=0, atol=1e-13
    )
    values = FusedActorCritic(model).values(thetas.numpy(), obs.numpy())
    torch.testing.assert_close(
        torch.from_numpy(values), model.batched_values(thetas, obs).detach(), rtol=0, atol=1e-13
    )


def test_the_torch_path_runs_where_fused_does_not_apply(monkeypatch):
    torch.manual_seed(0)
    model = ActorCritic(ModelSpec(4, 2, "classical"))
    monkeypatch.setenv("QA3C_FUSED", "0")
    assert not supports(model)
    assert a3c.fused_model(model) is None
    monkeypatch.delenv("QA3C_FUSED")
    assert a3c.fused_model(ActorCritic(ModelSpec(4, 2, "quantum"))) is not None
    qiskit_core = ActorCritic(ModelSpec(4, 2, "quantum", backend="aer_statevector"))
    assert not supports(qiskit_core)  # TorchConnector(EstimatorQNN): autograd path
