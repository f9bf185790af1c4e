"""``python -m qa3c_qiskit.evaluate RUN --backend aer_noisy --episodes 20``: a trained policy on
any backend.

Loads ``RUN/model.pt`` (written by :mod:`qa3c_qiskit.train`), rebuilds the actor-critic on the
requested backend (the VQC weights are backend-independent: train on the exact ``statevector``
engine, then see how the policy fares with shots, noise or hardware) and prints the mean ± std
return over ``--episodes`` episodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from .envs import env_info, make_env
from .models import ActorCritic, ModelSpec


def load_run(run: str | Path) -> tuple[ModelSpec, dict, str]:
    """(spec, state_dict, env_id) of the trained model in run directory ``run`` (or a model.pt)."""
    path = Path(run)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ValueError(f"no trained model at {str(path)!r} (expected RUN/model.pt)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    known = {f.name for f in fields(ModelSpec)}
    spec = ModelSpec(**{k: v for k, v in payload["spec"].items() if k in known})
    env_id = payload.get("config", {}).get("env")
    if env_id is None:
        raise ValueError(f"{str(path)!r} records no environment id in its config")
    return spec, payload["model"], env_id


def evaluate_policy(
    spec: ModelSpec,
    state_dict: dict | None,
    env_id: str,
    episodes: int = 20,
    seed: int = 0,
    greedy: bool = False,
) -> dict:
    """Run ``episodes`` episodes of the policy; return {"returns", "lengths", "mean", "std", "seconds"}.

    ``state_dict=None`` evaluates a freshly initialised model (seeded with ``seed``).
    """
    if episodes <= 0:
        raise ValueError(f"--episodes must be > 0, got {episodes}")
    torch.manual_seed(seed)
    model = ActorCritic(spec)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    gen = torch.Generator().manual_seed(seed)
    env = make_env(env_id)
    clamp = env_info(env_id).n_actions if env_id.startswith("MiniGrid-") else None
    returns, lengths = [], []
    t0 = time.time()
    try:
        for ep in range(episodes):
            obs_np, _ = env.reset(seed=seed + ep)
            total, steps, done = 0.0, 0, False
            while not done:
                obs = torch.from_numpy(obs_np)
                action = model.greedy(obs) if greedy else model.act(obs, gen)
                if clamp is not None:
                    action = min(action, clamp - 1)
                obs_np, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(steps)
    finally:
        env.close()
        model.close()
    r = np.asarray(returns)
    return {
        "returns": returns,
        "lengths": lengths,
        "mean": float(r.mean()),
        "std": float(r.std()),
        "seconds": time.time() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.evaluate",
        description="Evaluate a trained QA3C policy on any backend; prints mean ± std return.",
    )
    parser.add_argument("run", help="run directory written by qa3c_qiskit.train (or its model.pt)")
    parser.add_argument(
        "--backend",
        default=None,
        help="backend name or profile TOML (python -m qa3c_qiskit.backends); default: the run's",
    )
    parser.add_argument("--shots", type=int, default=None, help="override the profile's shots")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="episode i resets the env with seed+i")
    parser.add_argument("--greedy", action="store_true", help="argmax action instead of sampling")
    args = parser.parse_args(argv)
    try:
        spec, state, env_id = load_run(args.run)
        if spec.model == "quantum":
            spec = replace(
                spec,
                backend=args.backend or spec.backend,
                shots=args.shots if args.shots is not None else spec.shots,
            )
        res = evaluate_policy(spec, state, env_id, args.episodes, args.seed, args.greedy)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = spec.backend if spec.model == "quantum" else "classical"
    print(
        f"{env_id} | {backend} | {args.episodes} episodes: return {res['mean']:.2f} ± "
        f"{res['std']:.2f} (mean ± std), mean length {np.mean(res['lengths']):.1f}, "
        f"{res['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
