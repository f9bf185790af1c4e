"""Env steps/s of the local runner vs the Ray runner, same workers, same machine, one run.

    python benchmarks/runners.py [--workers 2] [--learners 2] [--episodes 400]
                                 [--models classical quantum]

For each model and runner: CartPole-v1, a fixed episode budget, ``--learners`` actor-learners
spread over ``--workers`` processes (default: one per process), the runner driven the way the
trainer drives it. Prints a table:

* ``startup s``: from ``start()`` to the first finished episode (process / actor start-up,
  imports, first backend build); Ray's own ``ray.init`` is timed once, separately;
* ``steady steps/s``: global env steps per second between the first and the last finished
  episode (the number that matters for long runs);
* ``overall steps/s``: all env steps over the whole ``start()`` .. last episode span.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from qa3c_qiskit.a3c import A3CSettings
from qa3c_qiskit.checkpoint import RunState
from qa3c_qiskit.models import ActorCritic, ModelSpec
from qa3c_qiskit.runners import Episode, Failure, RunPlan, make_runner


def measure(
    runner_name: str, model: str, workers: int, episodes: int, env=None, learners=None
) -> dict:
    """Run one budget; return startup (s), steady and overall env steps/s, episodes seen.

    ``env``: environment variables set while the workers start (spawned processes inherit them).
    """
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return _measure(runner_name, model, workers, learners or workers, episodes)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _measure(runner_name: str, model: str, workers: int, learners: int, episodes: int) -> dict:
    torch.manual_seed(0)
    spec = ModelSpec(4, 2, model)
    plan = RunPlan(
        spec=spec,
        env_id="CartPole-v1",
        settings=A3CSettings(),
        workers=workers,
        learners=learners,
        seed=0,
        budget=episodes,
        lr=1e-4,
        betas=(0.92, 0.999),
        eps=1e-8,
    )
    runner = make_runner(runner_name, plan, RunState(flat=ActorCritic(spec).flat.detach().clone()))
    t0 = time.time()
    runner.start()
    first = last = None
    n = 0
    try:
        while True:
            msgs = runner.poll(0.2)
            for msg in msgs:
                if isinstance(msg, Episode):
                    n += 1
                    point = (msg.record["time"], msg.record["env_steps"])
                    first = first or point
                    last = point
                elif isinstance(msg, Failure):
                    raise RuntimeError(msg.traceback)
            if not msgs and not runner.alive():
                break
    finally:
        runner.close()
    (t_first, s_first), (t_last, s_last) = first, last
    return {
        "startup_s": t_first - t0,
        "steady": (s_last - s_first) / max(t_last - t_first, 1e-9),
        "overall": s_last / max(t_last - t0, 1e-9),
        "episodes": n,
        "steps": s_last,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--learners", type=int, default=None, help="in all (default: --workers)")
    p.add_argument("--episodes", type=int, default=400)
    p.add_argument("--models", nargs="+", default=["classical", "quantum"])
    args = p.parse_args()

    import ray

    t = time.time()
    ray.init(num_cpus=max(os.cpu_count() or 1, args.workers), include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    ray_init = time.time() - t

    # Ray starts each worker actor with OMP_NUM_THREADS=1 (num_cpus=1); the local runner's
    # processes inherit the caller's environment, so it is measured both ways.
    variants = [("local", None), ("local", {"OMP_NUM_THREADS": "1"}), ("ray", None)]
    rows = []
    for model in args.models:
        for name, env in variants:
            r = measure(name, model, args.workers, args.episodes, env, args.learners)
            label = name + (" OMP_NUM_THREADS=1" if env else "")
            rows.append((model, label, r))
            print(f"  done: {model:9s} {label:24s} {r['steady']:.0f} steps/s", flush=True)
    ray.shutdown()

    print(
        f"\nCartPole-v1, {args.learners or args.workers} learners on {args.workers} workers, "
        f"{args.episodes} episodes per run, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}); "
        f"ray.init (local cluster): {ray_init:.1f} s\n"
    )
    head = ("model", "runner", "startup s", "steady steps/s", "overall steps/s", "env steps")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model, name, r in rows:
        cells = (model, name, f"{r['startup_s']:.1f}", f"{r['steady']:.0f}")
        cells += (f"{r['overall']:.0f}", str(r["steps"]))
        print("| " + " | ".join(cells) + " |")
    for model in args.models:
        local, local1, rayr = (r for m, _, r in rows if m == model)
        print(
            f"\n{model}: Ray / local steady-state throughput = "
            f"{rayr['steady'] / local['steady']:.2f} (vs local OMP_NUM_THREADS=1: "
            f"{rayr['steady'] / local1['steady']:.2f})"
        )


if __name__ == "__main__":
    main()
