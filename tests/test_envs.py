"""Environment factory: flat observations, action counts, errors, truncation flags."""

import numpy as np
import pytest

from qa3c_qiskit.envs import env_info, make_env


def test_minigrid_observation_is_flattened_view():
    env = make_env("MiniGrid-SimpleCrossingS9N1-v0")
    obs, _ = env.reset(seed=3)
    assert obs.shape == (147,) and obs.dtype == np.float64
    image = env.unwrapped.gen_obs()["image"]
    np.testing.assert_array_equal(obs, image.reshape(-1).astype(np.float64))
    assert env.unwrapped.max_steps == 4 * 9 * 9
    assert env_info("MiniGrid-SimpleCrossingS9N1-v0").reward_threshold == 0.9


def test_minigrid_reward_is_papers_formula():
    env = make_env("MiniGrid-SimpleCrossingS9N1-v0")
    env.reset(seed=0)
    base = env.unwrapped
    base.step_count = 10
    assert base._reward() == pytest.approx(1 - 0.9 * 10 / 324)


def test_cartpole_truncates_at_time_limit():
    import gymnasium as gym

    env = make_env("CartPole-v1")
    env.reset(seed=0)
    limit = env
    while not isinstance(limit, gym.wrappers.TimeLimit):
        limit = limit.env
    assert limit._max_episode_steps == 500
    limit._elapsed_steps = 499
    _, _, terminated, truncated, _ = env.step(0)
    assert truncated and not terminated


@pytest.mark.parametrize(
    "env_id, fragment",
    [("Pendulum-v1", "action space"), ("NoSuchEnv-v0", "not a registered environment")],
)
def test_unsupported_env_is_one_line_error(env_id, fragment):
    with pytest.raises(ValueError) as err:
        make_env(env_id)
    msg = str(err.value)
    assert fragment in msg and env_id in msg and "CartPole-v1" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "env_id",
    [
        "MiniGrid-SimpleCrossingS9N1-v0",
        "MiniGrid-SimpleCrossingS9N2-v0",
        "MiniGrid-SimpleCrossingS9N3-v0",
        "MiniGrid-LavaCrossingS9N2-v0",
        "MiniGrid-SimpleCrossingS11N5-v0",
    ],
)
def test_fast_minigrid_view_equals_minigrids_own_observation(env_id, monkeypatch):
    """FastView is installed and gives MiniGrid's gen_obs bit for bit, at every step of random
    episodes (all four directions, walls at the view's edge, goal and lava in view)."""
    monkeypatch.delenv("QA3C_FAST_MINIGRID", raising=False)
    from minigrid.minigrid_env import MiniGridEnv

    from qa3c_qiskit.envs import FastView

    env = make_env(env_id)
    base = env.unwrapped
    assert isinstance(base.gen_obs, FastView)
    rng = np.random.default_rng(0)
    dirs, steps, walls_cut = set(), 0, 0
    for episode in range(200):
        if steps >= 600:
            break
        obs, _ = env.reset(seed=episode)
        for _ in range(150):
            ref = MiniGridEnv.gen_obs(base)
            fast = base.gen_obs()
            assert fast["image"].dtype == ref["image"].dtype == np.uint8
            np.testing.assert_array_equal(fast["image"], ref["image"])
            assert fast["direction"] == ref["direction"] and fast["mission"] == ref["mission"]
            np.testing.assert_array_equal(obs, ref["image"].reshape(-1).astype(np.float64))
            dirs.add(base.agent_dir)
            walls_cut += int((ref["image"][:, :, 0] == 0).any())  # something occluded
            # mostly forward, so the agent reaches walls, the goal and lava
            obs, _, terminated, truncated, _ = env.step(int(rng.choice([0, 1, 2, 2, 2])))
            steps += 1
            if terminated or truncated:
                break
    assert dirs == {0, 1, 2, 3} and steps >= 600 and walls_cut > 50


def test_fast_minigrid_view_falls_back_on_changing_grids(monkeypatch):
    """Doors and keys can change: MiniGrid's own gen_obs is used; QA3C_FAST_MINIGRID=0 and
    see-through walls are honoured."""
    monkeypatch.delenv("QA3C_FAST_MINIGRID", raising=False)
    from minigrid.minigrid_env import MiniGridEnv

    env = make_env("MiniGrid-DoorKey-5x5-v0")
    env.reset(seed=1)
    view = env.unwrapped.gen_obs
    assert view.static is False
    np.testing.assert_array_equal(view()["image"], MiniGridEnv.gen_obs(env.unwrapped)["image"])

    env = make_env("MiniGrid-SimpleCrossingS9N1-v0")
    env.reset(seed=2)
    env.unwrapped.see_through_walls = True
    for action in (2, 2, 1, 2, 0, 2):
        env.step(action)
        np.testing.assert_array_equal(
            env.unwrapped.gen_obs()["image"], MiniGridEnv.gen_obs(env.unwrapped)["image"]
        )

    monkeypatch.setenv("QA3C_FAST_MINIGRID", "0")
    assert "gen_obs" not in vars(make_env("MiniGrid-SimpleCrossingS9N1-v0").unwrapped)


def test_fast_minigrid_env_plays_exactly_like_minigrid(monkeypatch):
    """Same seeds, same actions: the fast env (FastView, int actions) and MiniGrid's own give
    the same observations, rewards and episode ends, over resets, for all 7 actions."""
    fast = make_env("MiniGrid-SimpleCrossingS9N2-v0")
    monkeypatch.setenv("QA3C_FAST_MINIGRID", "0")
    slow = make_env("MiniGrid-SimpleCrossingS9N2-v0")
    from minigrid.core.actions import Actions

    assert slow.unwrapped.actions is Actions and fast.unwrapped.actions is not Actions
    rng = np.random.default_rng(1)
    ends = 0
    for episode in range(6):
        a, _ = fast.reset(seed=10 + episode)
        b, _ = slow.reset(seed=10 + episode)
        np.testing.assert_array_equal(a, b)
        for _ in range(400):
            action = int(rng.choice(7, p=[0.15, 0.15, 0.6, 0.025, 0.025, 0.025, 0.025]))
            out_a, out_b = fast.step(action), slow.step(action)
            np.testing.assert_array_equal(out_a[0], out_b[0])
            assert out_a[1:4] == out_b[1:4]
            if out_a[2] or out_a[3]:
                ends += 1
                break
    assert ends == 6
