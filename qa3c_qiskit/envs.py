"""Environments: Gymnasium classic control and MiniGrid SimpleCrossing, as flat float vectors.

* ``CartPole-v1``, ``Acrobot-v1`` and any Gymnasium env with a 1-D ``Box`` observation and a
  ``Discrete`` action space: observations unnormalised, as the paper's code.
* ``MiniGrid-*`` (the paper: ``SimpleCrossingS9N1/N2/N3-v0``): observation = the agent's
  7x7x3 view (``obs["image"]``), flattened to 147 raw integer codes as floats; the actor has 6
  outputs (paper Table I) so MiniGrid's 7th action ("done", a no-op here) is never chosen.
  MiniGrid's own reward is the paper's ``1 - 0.9 * steps / max_steps`` with
  ``max_steps = 4 * 9 * 9``.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

#: The paper's environments (Sec. VI.A).
PAPER_ENVS = (
    "CartPole-v1",
    "Acrobot-v1",
    "MiniGrid-SimpleCrossingS9N1-v0",
    "MiniGrid-SimpleCrossingS9N2-v0",
    "MiniGrid-SimpleCrossingS9N3-v0",
)
MINIGRID_ACTIONS = 6
#: MiniGrid defines no reward threshold; an episode scoring >= 0.9 reached the goal within
#: about 11% of the step budget (36 of 324 steps), close to the shortest path.
MINIGRID_REWARD_THRESHOLD = 0.9


@dataclass(frozen=True)
class EnvInfo:
    env_id: str
    obs_dim: int
    n_actions: int
    reward_threshold: float | None


def _register_minigrid() -> None:
    import minigrid  # noqa: F401  (registers MiniGrid-* ids with gymnasium)


class FlatImage(gym.ObservationWrapper):
    """MiniGrid dict observation -> the flattened 7x7x3 ``image`` as float64."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        shape = env.observation_space["image"].shape
        self.observation_space = gym.spaces.Box(0, 255, (int(np.prod(shape)),), np.float64)

    def observation(self, obs):
        return np.asarray(obs["image"], dtype=np.float64).reshape(-1)


def unsupported(env_id: str, why: str) -> ValueError:
    return ValueError(
        f"unsupported env {env_id!r}: {why}; supported: {', '.join(PAPER_ENVS)}, other MiniGrid-* "
        "envs, or any Gymnasium env with a 1-D Box observation and a Discrete action space"
    )


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """Build ``env_id`` with flat float64 observations; raise ValueError if unsupported."""
    if env_id.startswith("MiniGrid-"):
        _register_minigrid()
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except gym.error.Error as exc:
        raise unsupported(env_id, f"not a registered environment ({type(exc).__name__})") from None
    if env_id.startswith("MiniGrid-"):
        return FlatImage(env)
    obs, act = env.observation_space, env.action_space
    if not isinstance(act, gym.spaces.Discrete):
        env.close()
        raise unsupported(env_id, f"action space {act} is not Discrete")
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        env.close()
        raise unsupported(env_id, f"observation space {obs} is not a 1-D Box")
    return gym.wrappers.TransformObservation(env, lambda o: np.asarray(o, dtype=np.float64), obs)


def env_info(env_id: str) -> EnvInfo:
    """Observation size, number of actor outputs and reward threshold of ``env_id``."""
    env = make_env(env_id)
    try:
        obs_dim = env.observation_space.shape[0]
        n_actions = int(env.action_space.n)
        threshold = env.spec.reward_threshold if env.spec is not None else None
        if env_id.startswith("MiniGrid-"):
            n_actions = min(n_actions, MINIGRID_ACTIONS)
            threshold = MINIGRID_REWARD_THRESHOLD
        return EnvInfo(env_id, obs_dim, n_actions, threshold)
    finally:
        env.close()
