"""Dressed-VQC actor and critic (paper Fig. 1, Sec. V) and their classical twin.

Each network is ``Linear(obs_dim -> n_qubits) -> tanh -> core -> tanh -> Linear(n_qubits -> out)``
where ``core`` is the VQC (quantum model) or ``Linear(n_qubits -> n_qubits)`` (classical twin).
The tanh after the first layer and after the core follow the closest public QA3C code; the
twin uses the same tanh after its 8x8 layer so that the two models differ only in the core.

Actor and critic are separate networks with separate VQCs (96 quantum parameters in all).
All parameters of an :class:`ActorCritic` live in one flat float64 buffer (``flat``) with a
matching flat gradient buffer (``flat_grad``): pushing gradients and pulling parameters are
then one tensor copy each, and the shared Adam is a handful of vector ops.

Many actor-learners per process (:mod:`qa3c_qiskit.a3c`) evaluate the same architecture with a
*different* flat parameter vector per sample: :meth:`ActorCritic.batched_logits` and
:meth:`ActorCritic.batched_values` take ``theta`` of shape ``[B, n_params]`` (row ``b`` = the
parameters sample ``b`` is evaluated with) and are differentiable with respect to it, so one
backward pass through rows indexed from per-learner copies yields each learner's own gradient.
Every core module therefore has ``functional(x [B, n_qubits], rows [B, n_core])``.

:mod:`qa3c_qiskit.fused` repeats this forward in NumPy with a hand-written backward (the
actor-learners' hot path on the exact engine and for the twin); ``tests/test_fused.py`` holds
the two equal, so a change to the architecture here needs the same change there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODEL_KINDS = ("quantum", "classical")


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to build an actor-critic pair."""

    obs_dim: int
    n_actions: int
    model: str = "quantum"
    n_qubits: int = 8
    n_layers: int = 2
    entangler: str = "double_ring"
    backend: str = "statevector"
    shots: int | None = None  # overrides the backend profile's shot count


class Dressed(nn.Module):
    """``Linear -> tanh -> core -> tanh -> Linear``; ``core`` maps [B, n_qubits] to [B, n_qubits]."""

    def __init__(self, obs_dim: int, out_dim: int, core: nn.Module, n_qubits: int):
        super().__init__()
        self.pre = nn.Linear(obs_dim, n_qubits, dtype=torch.float64)
        self.core = core
        self.post = nn.Linear(n_qubits, out_dim, dtype=torch.float64)
        for lin in (self.pre, self.post):
            nn.init.normal_(lin.weight, 0.0, 0.1)
            nn.init.zeros_(lin.bias)
        # where the layers sit in a row of per-sample parameters (plain ints: the hot path)
        self._n_pre = self.pre.weight.numel() + self.pre.bias.numel()
        self._n_pre_core = self._n_pre + sum(p.numel() for p in core.parameters())
        self._pre_shape = tuple(self.pre.weight.shape)
        self._post_shape = tuple(self.post.weight.shape)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.post(torch.tanh(self.core(torch.tanh(self.pre(obs)))))

    def functional(self, rows: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``forward`` with per-sample parameters: ``rows`` [B, n] holds, for each sample, this
        network's parameters flattened in ``self.parameters()`` order; returns [B, out]."""
        h, w_core = self.functional_pre(rows, obs)
        return self.functional_post(rows, self.core.functional(h, w_core))

    def functional_pre(self, rows, obs) -> tuple[torch.Tensor, torch.Tensor]:
        """(the core's inputs ``tanh(pre(obs))`` [B, n_qubits], the core's rows [B, n_core])."""
        h = torch.tanh(batched_linear(self._pre_shape, rows[:, : self._n_pre], obs))
        return h, rows[:, self._n_pre : self._n_pre_core]

    def functional_post(self, rows, core_out) -> torch.Tensor:
        """``post(tanh(core_out))`` with per-sample parameters: [B, out]."""
        return batched_linear(self._post_shape, rows[:, self._n_pre_core :], torch.tanh(core_out))


def batched_linear(shape: tuple[int, int], rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``Linear`` of weight shape ``shape`` = (out, in) applied to ``x`` [B, in], sample ``b``
    with weight and bias from ``rows[b]`` (weight, then bias, flattened as in
    ``Linear.parameters()``): [B, out]."""
    out_dim, in_dim = shape
    w = rows[:, : out_dim * in_dim].view(-1, out_dim, in_dim)
    return torch.matmul(w, x.unsqueeze(-1)).squeeze(-1) + rows[:, out_dim * in_dim :]


class LinearCore(nn.Linear):
    """The classical twin's core: ``Linear(n_qubits -> n_qubits)``, N(0, 0.1) weights, zero bias."""

    def __init__(self, n_qubits: int):
        super().__init__(n_qubits, n_qubits, dtype=torch.float64)
        nn.init.normal_(self.weight, 0.0, 0.1)
        nn.init.zeros_(self.bias)
        self._shape = (n_qubits, n_qubits)

    def functional(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return batched_linear(self._shape, rows, x)


def classical_core(n_qubits: int) -> nn.Module:
    return LinearCore(n_qubits)


class ActorCritic(nn.Module):
    """Separate actor (logits over actions) and critic (state value) networks."""

    def __init__(self, spec: ModelSpec, core_factory=None):
        super().__init__()
        if spec.model not in MODEL_KINDS:
            raise ValueError(
                f"unknown model {spec.model!r}; choose one of {', '.join(MODEL_KINDS)}"
            )
        self.spec = spec
        if core_factory is None:
            core_factory = default_core_factory(spec)
        self.actor = Dressed(spec.obs_dim, spec.n_actions, core_factory(), spec.n_qubits)
        self.critic = Dressed(spec.obs_dim, 1, core_factory(), spec.n_qubits)
        self.flat, self.flat_grad = flatten_parameters(self)
        self.n_actor = sum(p.numel() for p in self.actor.parameters())

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Action logits, [B, n_actions]."""
        return self.actor(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values, [B]."""
        return self.critic(obs).squeeze(-1)

    def batched_logits(self, theta: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Action logits [B, n_actions], sample ``b`` evaluated with parameters ``theta[b]``
        (``theta``: [B, n_params], flat layout of :attr:`flat`)."""
        return self.actor.functional(theta[:, : self.n_actor], obs)

    def batched_values(self, theta: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """State values [B], sample ``b`` evaluated with parameters ``theta[b]``."""
        return self.critic.functional(theta[:, self.n_actor :], obs).squeeze(-1)

    def batched_logits_values(
        self,
        theta_a: torch.Tensor,
        obs_a: torch.Tensor,
        theta_c: torch.Tensor,
        obs_c: torch.Tensor,
        n_value_only: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batched_logits(theta_a, obs_a), batched_values(theta_c, obs_c))`` with the actor's
        and the critic's VQC samples in ONE call of the quantum layer (same circuit, per-sample
        weights): one primitive call instead of two on the Qiskit backends, and one engine
        forward and backward instead of two on ``statevector``.

        The last ``n_value_only`` critic rows (e.g. bootstrap states) are forward-only: their
        values are returned detached, and a quantum core that supports it (``functional(...,
        n_grad=)``) runs no gradient circuits for them (1 circuit instead of ``1 + 2G``)."""
        h_a, w_a = self.actor.functional_pre(theta_a[:, : self.n_actor], obs_a)
        h_c, w_c = self.critic.functional_pre(theta_c[:, self.n_actor :], obs_c)
        x, w = torch.cat([h_a, h_c]), torch.cat([w_a, w_c])
        n_grad = x.shape[0] - n_value_only
        core = self.actor.core
        if n_value_only and getattr(core, "supports_n_grad", False):
            q = core.functional(x, w, n_grad=n_grad)
        else:
            q = core.functional(x, w)
        n = h_a.shape[0]
        logits = self.actor.functional_post(theta_a[:, : self.n_actor], q[:n])
        values = self.critic.functional_post(theta_c[:, self.n_actor :], q[n:]).squeeze(-1)
        if n_value_only:
            k = values.shape[0] - n_value_only
            values = torch.cat([values[:k], values[k:].detach()])
        return logits, values

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Sample an action from pi(.|obs) for a single observation."""
        probs = torch.softmax(self.actor(obs[None]), dim=-1)
        return int(torch.multinomial(probs[0], 1, generator=generator))

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> int:
        """The most probable action for a single observation."""
        return int(self.actor(obs[None]).argmax(-1))

    def close(self) -> None:
        """Release the cores' backends (e.g. IBM Runtime sessions); safe to call twice."""
        for net in (self.actor, self.critic):
            close = getattr(net.core, "close", None)
            if close is not None:
                close()


def default_core_factory(spec: ModelSpec):
    """A factory of VQC cores for ``spec``: the classical twin or the backend's quantum layer."""
    if spec.model == "classical":
        return lambda: classical_core(spec.n_qubits)
    from .backends import quantum_layer_factory

    return quantum_layer_factory(spec)


def flatten_parameters(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every parameter of ``module`` into one flat buffer; return (flat, flat_grad).

    Each parameter's ``.data`` becomes a view of ``flat`` and its ``.grad`` a view of
    ``flat_grad``; autograd accumulates into existing ``.grad`` tensors in place, so after
    ``flat_grad.zero_(); loss.backward()`` the whole gradient is in ``flat_grad``.
    """
    params = list(module.parameters())
    n = sum(p.numel() for p in params)
    flat = torch.zeros(n, dtype=torch.float64)
    flat_grad = torch.zeros(n, dtype=torch.float64)
    offset = 0
    for p in params:
        k = p.numel()
        flat[offset : offset + k].copy_(p.data.reshape(-1))
        p.data = flat[offset : offset + k].view_as(p)
        p.grad = flat_grad[offset : offset + k].view_as(p)
        offset += k
    return flat, flat_grad


def count_parameters(module: nn.Module) -> dict[str, int]:
    """{"classical": n, "quantum": n, "total": n}; quantum = the weights of VQC cores."""
    quantum = sum(
        p.numel()
        for name, p in module.named_parameters()
        if ".core." in f".{name}" and getattr(p, "is_quantum", False)
    )
    total = sum(p.numel() for p in module.parameters())
    return {"classical": total - quantum, "quantum": quantum, "total": total}


#: Paper Table I (actor + critic): classical part, quantum, QA3C total, classical twin total.
PAPER_TABLE1 = {
    "Acrobot-v1": (148, 96, 244, 292),
    "CartPole-v1": (107, 96, 203, 251),
    "MiniGrid-SimpleCrossingS9N1-v0": (2431, 96, 2527, 2575),
    "MiniGrid-SimpleCrossingS9N2-v0": (2431, 96, 2527, 2575),
    "MiniGrid-SimpleCrossingS9N3-v0": (2431, 96, 2527, 2575),
}


def parameter_table(env_specs: dict[str, tuple[int, int]], **kw) -> list[dict]:
    """Table I rows: per env, QA3C classical/quantum/total and the classical twin's total."""
    rows = []
    for env_id, (obs_dim, n_actions) in env_specs.items():
        q = count_parameters(ActorCritic(ModelSpec(obs_dim, n_actions, "quantum", **kw)))
        c = count_parameters(ActorCritic(ModelSpec(obs_dim, n_actions, "classical", **kw)))
        rows.append(
            {
                "env": env_id,
                "classical": q["classical"],
                "quantum": q["quantum"],
                "qa3c_total": q["total"],
                "classical_total": c["total"],
            }
        )
    return rows
