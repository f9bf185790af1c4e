"""``python -m qa3c_qiskit.train``: train a QA3C (or classical twin) agent with Algorithm 1.

Writes a run directory: ``config.json``, ``metrics.csv`` (one row per finished episode),
``model.pt`` (final actor/critic), ``summary.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .a3c import A3CSettings
from .config import TrainConfig, build_parser, config_from_args
from .envs import PAPER_ENVS, env_info
from .metrics import MetricsWriter, Progress, read_metrics, summarize, write_json
from .models import ActorCritic, ModelSpec, count_parameters, parameter_table


def model_spec(cfg: TrainConfig) -> ModelSpec:
    info = env_info(cfg.env)
    return ModelSpec(
        obs_dim=info.obs_dim,
        n_actions=info.n_actions,
        model=cfg.model,
        n_qubits=cfg.n_qubits,
        n_layers=cfg.n_layers,
        entangler=cfg.entangler,
        backend=cfg.backend,
    )


def settings_of(cfg: TrainConfig) -> A3CSettings:
    return A3CSettings(
        gamma=cfg.gamma,
        update_every=cfg.update_every,
        entropy_coef=cfg.entropy_coef,
        loss_reduction=cfg.loss_reduction,
        on_nonfinite=cfg.on_nonfinite,
    )


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError listing every problem with ``cfg`` (before any worker starts)."""
    problems = []
    if cfg.episodes <= 0:
        problems.append(f"--episodes must be > 0, got {cfg.episodes}")
    if cfg.workers <= 0:
        problems.append(f"--workers must be > 0, got {cfg.workers}")
    if cfg.lr <= 0:
        problems.append(f"--lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        problems.append(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if cfg.update_every <= 0:
        problems.append(f"--update-every must be > 0, got {cfg.update_every}")
    if cfg.shots is not None and cfg.shots <= 0:
        problems.append(f"--shots must be > 0, got {cfg.shots}")
    if cfg.model not in ("quantum", "classical"):
        problems.append(f"unknown --model {cfg.model!r}; choose quantum or classical")
    try:
        env_info(cfg.env)
    except ValueError as exc:
        problems.append(str(exc))
    if cfg.model == "quantum":
        from .backends import check_backend

        try:
            check_backend(cfg.backend)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))


def print_parameter_table(cfg: TrainConfig) -> None:
    """Print Table I (parameter counts) for this run's env and the paper's envs."""
    from rich.console import Console
    from rich.table import Table

    envs = dict.fromkeys([cfg.env, *PAPER_ENVS])
    specs = {e: (env_info(e).obs_dim, env_info(e).n_actions) for e in envs}
    rows = parameter_table(
        specs, n_qubits=cfg.n_qubits, n_layers=cfg.n_layers, entangler=cfg.entangler
    )
    table = Table(title="Parameters (paper Table I: actor + critic)")
    for col in ("env", "classical part", "quantum", "QA3C total", "classical twin total"):
        table.add_column(col, justify="left" if col == "env" else "right", no_wrap=True)
    for r in rows:
        style = "bold" if r["env"] == cfg.env else None
        table.add_row(
            r["env"],
            str(r["classical"]),
            str(r["quantum"]),
            str(r["qa3c_total"]),
            str(r["classical_total"]),
            style=style,
        )
    Console(width=max(Console().width, 110)).print(table)


def run_dir_for(cfg: TrainConfig) -> Path:
    backend = Path(cfg.backend).stem if cfg.model == "quantum" else "none"
    name = (
        cfg.run_name
        or f"{cfg.env}__{cfg.model}__{backend}__s{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(cfg.out) / name


def train(cfg: TrainConfig, show_table: bool = True) -> Path:
    """Run one training job described by ``cfg``; return its run directory."""
    validate(cfg)
    spec = model_spec(cfg)
    info = env_info(cfg.env)
    if show_table:
        print_parameter_table(cfg)
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=False)
    torch.manual_seed(cfg.seed)
    global_model = ActorCritic(spec)
    counts = count_parameters(global_model)
    write_json(
        run_dir / "config.json",
        {
            **cfg.to_dict(),
            "worker_seeds": {r: cfg.seed + r for r in range(cfg.workers)},
            "parameters": counts,
        },
    )

    from .runners import make_runner

    runner = make_runner(
        cfg.runner,
        flat=global_model.flat,
        spec=spec,
        env_id=cfg.env,
        settings=settings_of(cfg),
        workers=cfg.workers,
        seed=cfg.seed,
        budget=cfg.episodes,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.adam_eps,
    )
    writer = MetricsWriter(run_dir / "metrics.csv")
    t0 = time.time()
    done = 0
    error = None
    title = f"{cfg.env} | {cfg.model} | {cfg.backend if cfg.model == 'quantum' else 'classical'} | {cfg.workers} workers"
    try:
        with Progress(title, cfg.episodes, quiet=cfg.quiet) as prog:
            runner.start()
            while True:
                msgs = runner.poll(0.2)
                for kind, payload in msgs:
                    if kind == "episode":
                        done += 1
                        row = {
                            **payload,
                            "episode": done,
                            "wall_time": round(payload["time"] - t0, 4),
                        }
                        writer.write(row)
                        prog.episode(payload["return"], payload["env_steps"])
                    elif kind == "error":
                        error = payload
                        prog.event(f"worker {payload['worker']} failed")
                        runner.stop()
                if not msgs and not runner.alive():
                    break
                prog.refresh()
    finally:
        runner.close()
        writer.close()
    flat, _ = runner.global_state()
    global_model.flat.copy_(flat)
    torch.save(
        {"model": global_model.state_dict(), "spec": spec.__dict__, "config": cfg.to_dict()},
        run_dir / "model.pt",
    )
    m = read_metrics(run_dir)
    elapsed = time.time() - t0
    steps = int(m["env_steps"].max()) if len(m["env_steps"]) else 0
    summary = {
        **summarize(m["return"], info.reward_threshold),
        "wall_time_s": elapsed,
        "env_steps": steps,
        "env_steps_per_s": steps / elapsed if elapsed else 0.0,
        "parameters": counts,
        "nonfinite_updates_skipped": runner.nonfinite_count,
    }
    write_json(run_dir / "summary.json", summary)
    if error is not None:
        raise RuntimeError(f"worker {error['worker']} failed:\n{error['traceback']}")
    print(f"run directory: {run_dir}")
    print(
        f"episodes {summary['episodes']}, final avg100 {summary['final_avg100']:.2f}, "
        f"best avg100 {summary['best_avg100']:.2f}, {summary['env_steps_per_s']:.0f} env steps/s, "
        f"{elapsed:.1f} s"
    )
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m qa3c_qiskit.train", "Train a QA3C agent (paper Algorithm 1).")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        train(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
