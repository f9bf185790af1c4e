"""Environments: Gymnasium classic control and MiniGrid SimpleCrossing, as flat float vectors.

* ``CartPole-v1``, ``Acrobot-v1`` and any Gymnasium env with a 1-D ``Box`` observation and a
  ``Discrete`` action space: observations unnormalised, as the paper's code.
* ``MiniGrid-*`` (the paper: ``SimpleCrossingS9N1/N2/N3-v0``): observation = the agent's
  7x7x3 view (``obs["image"]``), flattened to 147 raw integer codes as floats; the actor has 6
  outputs (paper Table I) so MiniGrid's 7th action ("done", a no-op here) is never chosen.
  MiniGrid's own reward is the paper's ``1 - 0.9 * steps / max_steps`` with
  ``max_steps = 4 * 9 * 9``.

MiniGrid builds each observation cell by cell in Python (``gen_obs``: slice, rotate, occlusion,
encode), ~10x the rest of a step. On grids that cannot change during an episode (walls, goal,
lava and floor only, nothing carried: every SimpleCrossing and LavaCrossing env)
:class:`FastView` replaces the env instance's ``gen_obs`` with NumPy slicing of the grid's
encoding and MiniGrid's occlusion rule in a numba loop: the same observation, bit for bit
(``tests/test_envs.py`` compares them step by step), and ``step`` compares actions with
plain ints instead of ``IntEnum`` members. Any other grid keeps MiniGrid's own ``gen_obs``;
``QA3C_FAST_MINIGRID=0`` turns both off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

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


#: MiniGrid objects no action can move, pick up, toggle or otherwise change
STATIC_OBJECTS = frozenset({"wall", "goal", "lava", "floor"})


@cache
def _view_kernel():
    """The agent's encoded view, compiled (built on first use): cells ``enc[x + ri, y + rj]``
    (the rotated window), MiniGrid's ``Grid.process_vis`` occlusion on their opacity, hidden
    cells zero, the agent's own cell ``empty``."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def view(enc, opaque, x, y, ri, rj, see_all, empty):
        w, h = ri.shape
        ax, ay = w // 2, h - 1
        mask = np.zeros((w, h), np.bool_)
        if see_all:
            mask[:, :] = True
        else:
            mask[ax, ay] = True
            for j in range(h - 1, -1, -1):
                for i in range(0, w - 1):
                    if not mask[i, j] or opaque[x + ri[i, j], y + rj[i, j]]:
                        continue
                    mask[i + 1, j] = True
                    if j > 0:
                        mask[i + 1, j - 1] = True
                        mask[i, j - 1] = True
                for i in range(w - 1, 0, -1):
                    if not mask[i, j] or opaque[x + ri[i, j], y + rj[i, j]]:
                        continue
                    mask[i - 1, j] = True
                    if j > 0:
                        mask[i - 1, j - 1] = True
                        mask[i, j - 1] = True
        image = np.zeros((w, h, 3), np.uint8)
        for i in range(w):
            for j in range(h):
                if mask[i, j]:
                    for c in range(3):
                        image[i, j, c] = enc[x + ri[i, j], y + rj[i, j], c]
        for c in range(3):
            image[ax, ay, c] = empty[c]
        return image

    return view


class _IntActions:
    """MiniGrid's ``Actions`` as plain ints: ``step`` compares the action with each of them, and
    an ``IntEnum`` member lookup costs more than the comparison (same values, same results)."""

    def __init__(self, actions):
        for a in actions:
            setattr(self, a.name, int(a))

    def __len__(self) -> int:
        return len(vars(self))


class FastView:
    """A MiniGrid env's ``gen_obs`` for grids of static objects (see the module docstring).

    Installed on the env instance (``env.gen_obs = FastView(env)``), so MiniGrid's own ``reset``
    and ``step`` call it. Each new grid (one per episode) is encoded once, padded with walls by
    the view size (MiniGrid's ``slice`` fills cells outside the grid with walls); a grid holding
    anything else, or an agent carrying something, falls back to MiniGrid's ``gen_obs``.
    """

    def __init__(self, env):
        from minigrid.core.constants import OBJECT_TO_IDX
        from minigrid.core.world_object import Wall

        self.env = env
        self.slow = type(env).gen_obs
        self.wall = np.array(Wall().encode(), dtype=np.uint8)
        self.empty = np.array([OBJECT_TO_IDX["empty"], 0, 0], dtype=np.uint8)
        self.grid, self.static, self.enc, self.opaque = None, False, None, None
        # MiniGrid rotates the window left agent_dir + 1 times: the index of every view cell
        v = env.agent_view_size
        i, j = np.meshgrid(np.arange(v), np.arange(v), indexing="ij")
        self.rot = [(np.rot90(i, -(d + 1)).copy(), np.rot90(j, -(d + 1)).copy()) for d in range(4)]

    def _encode(self, grid) -> None:
        self.grid = grid
        cells = grid.grid
        self.static = all(c is None or c.type in STATIC_OBJECTS for c in cells)
        if not self.static:
            return
        v = self.env.agent_view_size
        w, h = grid.width, grid.height
        enc = np.empty((w + 2 * v, h + 2 * v, 3), dtype=np.uint8)
        enc[:] = self.wall
        opaque = np.ones((w + 2 * v, h + 2 * v), dtype=np.bool_)
        for j in range(h):
            for i in range(w):
                c = cells[j * w + i]
                enc[v + i, v + j] = self.empty if c is None else c.encode()
                opaque[v + i, v + j] = c is not None and not c.see_behind()
        self.enc, self.opaque = enc, opaque

    def __call__(self):
        env = self.env
        if env.grid is not self.grid:
            self._encode(env.grid)
        if not self.static or env.carrying is not None:
            return self.slow(env)
        v = env.agent_view_size
        x, y, _, _ = env.get_view_exts(v)
        ri, rj = self.rot[env.agent_dir]
        image = _view_kernel()(
            self.enc, self.opaque, x + v, y + v, ri, rj, bool(env.see_through_walls), self.empty
        )
        return {"image": image, "direction": env.agent_dir, "mission": env.mission}


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
        if os.environ.get("QA3C_FAST_MINIGRID", "1") != "0":
            env.unwrapped.gen_obs = FastView(env.unwrapped)
            env.unwrapped.actions = _IntActions(env.unwrapped.actions)
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
