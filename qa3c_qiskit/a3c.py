"""Algorithm 1 (paper Appendix A): one actor-learner's loop, independent of how it is hosted.

A worker owns a local :class:`~qa3c_qiskit.models.ActorCritic`, its own environment, seed and
quantum backend. It talks to the global shared model only through a *hub* (local shared memory
in :mod:`qa3c_qiskit.runners.local`, a Ray parameter server in :mod:`qa3c_qiskit.runners.ray`):

* ``hub.claim_episode() -> bool``: take one episode of the global budget T_max (False: stop);
* ``hub.push_pull(grad, local_flat) -> None``: apply ``grad`` (the local gradient of *this*
  update) to the global parameters with the shared Adam, then copy the global parameters into
  ``local_flat``;
* ``hub.pull(local_flat)``: copy the global parameters into ``local_flat``;
* ``hub.add_steps(n) -> int``: count env steps, return the global total;
* ``hub.episode_done(record: dict)``: report one finished episode;
* ``hub.should_stop() -> bool``; ``hub.nonfinite()``: count a skipped update.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from .engine import limit_blas_threads
from .envs import make_env
from .models import ActorCritic, ModelSpec


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN/inf and ``on_nonfinite='raise'``."""


@dataclass(frozen=True)
class A3CSettings:
    """The learning hyperparameters a worker needs (paper defaults)."""

    gamma: float = 0.9
    update_every: int = 5
    entropy_coef: float = 0.0
    loss_reduction: str = "mean"
    on_nonfinite: str = "skip"


def n_step_returns(rewards: list[float], bootstrap: float, gamma: float) -> torch.Tensor:
    """R_i = r_i + gamma * R_{i+1}, seeded with R = bootstrap (0 at a terminal state)."""
    out = np.empty(len(rewards))
    ret = bootstrap
    for i in range(len(rewards) - 1, -1, -1):
        ret = rewards[i] + gamma * ret
        out[i] = ret
    return torch.from_numpy(out)


def a3c_loss(
    model: ActorCritic,
    obs: torch.Tensor,
    actions: torch.Tensor,
    rewards: list[float],
    next_obs: torch.Tensor,
    terminated: bool,
    settings: A3CSettings,
) -> torch.Tensor:
    """The actor-critic loss of one segment of up to S steps.

    ``sum_i [(R_i - V(s_i))^2 - log pi(a_i|s_i) (R_i - V(s_i)).detach() - beta H(pi(.|s_i))]``,
    averaged over the segment when ``loss_reduction == 'mean'`` (the public QA3C code). The
    critic evaluates the segment's states and the bootstrap state in one batched call; the
    bootstrap value is 0 if the segment ended in a terminal state (not on time-limit truncation).
    """
    values = model.value(torch.cat([obs, next_obs[None]]))
    bootstrap = 0.0 if terminated else float(values[-1].detach())
    returns = n_step_returns(rewards, bootstrap, settings.gamma)
    td = returns - values[:-1]
    log_probs = torch.log_softmax(model.logits(obs), dim=-1)
    chosen = log_probs.gather(1, actions[:, None]).squeeze(1)
    per_step = td.square() - chosen * td.detach()
    if settings.entropy_coef:
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        per_step = per_step - settings.entropy_coef * entropy
    return per_step.mean() if settings.loss_reduction == "mean" else per_step.sum()


def local_gradient(model: ActorCritic, loss: torch.Tensor) -> torch.Tensor:
    """Backpropagate ``loss`` into a freshly zeroed ``model.flat_grad`` and return it."""
    model.flat_grad.zero_()
    loss.backward()
    return model.flat_grad


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def run_worker(rank: int, seed: int, env_id: str, spec: ModelSpec, settings: A3CSettings, hub):
    """Algorithm 1 for one actor-learner until the global episode budget is used up."""
    torch.set_num_threads(1)
    limit_blas_threads(1)  # numpy's BLAS too (the statevector engine's fast path)
    gen = seed_everything(seed)
    env = make_env(env_id)
    model = ActorCritic(spec)
    hub.pull(model.flat)
    first_reset = True
    try:
        while not hub.should_stop() and hub.claim_episode():
            obs_np, _ = env.reset(seed=seed if first_reset else None)
            first_reset = False
            obs = torch.from_numpy(obs_np)
            ep_return, ep_len = 0.0, 0
            buf_obs, buf_act, buf_rew = [], [], []
            while True:
                action = model.act(obs, gen)  # < spec.n_actions (6 on MiniGrid: "done" never)
                obs_np, reward, terminated, truncated, _ = env.step(action)
                next_obs = torch.from_numpy(obs_np)
                ep_return += float(reward)
                ep_len += 1
                buf_obs.append(obs)
                buf_act.append(action)
                buf_rew.append(float(reward))
                done = terminated or truncated
                if len(buf_obs) == settings.update_every or done:
                    _update(model, hub, settings, buf_obs, buf_act, buf_rew, next_obs, terminated)
                    env_steps = hub.add_steps(len(buf_obs))
                    buf_obs, buf_act, buf_rew = [], [], []
                obs = next_obs
                if done:
                    break
                if hub.should_stop():
                    return
            hub.episode_done(
                {
                    "worker": rank,
                    "return": ep_return,
                    "length": ep_len,
                    "time": time.time(),
                    "env_steps": env_steps,
                }
            )
    finally:
        env.close()
        model.close()


def _update(model, hub, settings, buf_obs, buf_act, buf_rew, next_obs, terminated):
    loss = a3c_loss(
        model,
        torch.stack(buf_obs),
        torch.tensor(buf_act, dtype=torch.long),
        buf_rew,
        next_obs,
        terminated,
        settings,
    )
    grad = local_gradient(model, loss)
    if not bool(torch.isfinite(grad).all()) or not bool(torch.isfinite(loss)):
        if settings.on_nonfinite == "raise":
            raise NonFiniteError(f"non-finite loss or gradient (loss={float(loss)})")
        hub.nonfinite()
        hub.pull(model.flat)
        return
    hub.push_pull(grad, model.flat)
