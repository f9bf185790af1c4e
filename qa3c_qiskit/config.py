"""Training configuration: one dataclass, one help string per field; the CLI is built from it."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, asdict, dataclass, field, fields


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a training run needs; paper values (Sec. VI.B, Appendix A) as defaults."""

    env: str = _opt(
        "CartPole-v1",
        "environment id (CartPole-v1, Acrobot-v1, MiniGrid-SimpleCrossingS9N{1,2,3}-v0, ...)",
    )
    model: str = _opt(
        "quantum",
        "quantum (dressed VQC) or classical (VQC replaced by Linear(8, 8))",
        choices=("quantum", "classical"),
    )
    backend: str = _opt(
        "statevector",
        "quantum backend name or path to a profile TOML (python -m qa3c_qiskit.backends lists them)",
    )
    workers: int = _opt(
        os.cpu_count() or 1, "number of worker processes (units of CPU); default: number of cores"
    )
    learners: int | None = _opt(
        None,
        "actor-learners in all (Algorithm 1's agents; paper: 80), spread over the --workers "
        "processes; default: one per worker",
    )
    episodes: int = _opt(100_000, "global episode budget T_max (paper: 100,000)")
    seed: int = _opt(0, "base seed; actor-learner `i` uses seed + i")
    out: str = _opt("runs", "parent folder of the run directory")
    run_name: str | None = _opt(
        None, "run directory name (default: {env}__{model}__{backend}__s{seed}__{time})"
    )
    lr: float = _opt(1e-4, "shared Adam learning rate (paper: 1e-4)")
    beta1: float = _opt(0.92, "shared Adam beta1 (paper: 0.92)")
    beta2: float = _opt(0.999, "shared Adam beta2 (paper: 0.999)")
    adam_eps: float = _opt(1e-8, "shared Adam epsilon")
    gamma: float = _opt(0.9, "discount factor (paper: 0.9)")
    update_every: int = _opt(
        5, "S: push gradients / pull parameters every S steps or at episode end (paper: 5)"
    )
    n_qubits: int = _opt(8, "qubits per VQC (paper: 8)")
    n_layers: int = _opt(2, "variational layers per VQC (paper: 2)")
    entangler: str = _opt(
        "double_ring",
        "CNOT pattern of each variational layer",
        choices=("double_ring", "ring", "chain"),
    )
    entropy_coef: float = _opt(0.0, "entropy bonus coefficient (paper code: 0, none)")
    loss_reduction: str = _opt(
        "mean",
        "reduce the per-step loss of a segment by mean (paper code) or sum (Algorithm 1's accumulation)",
        choices=("mean", "sum"),
    )
    shots: int | None = _opt(None, "override the backend profile's shot count")
    max_qpu_seconds: float | None = _opt(
        None,
        "QPU-time budget in seconds for a real IBM backend (required there; the run stops "
        "cleanly when Runtime's measured usage, or else the estimate, reaches it); see the cost "
        "with python -m qa3c_qiskit.backends NAME --report",
    )
    runner: str = _opt("local", "local (torch.multiprocessing) or ray", choices=("local", "ray"))
    address: str | None = _opt(
        None, "Ray cluster address for --runner ray (default: start a local cluster)"
    )
    checkpoint_every: int = _opt(
        1000, "write a checkpoint every N finished episodes (and at the end)"
    )
    max_restarts: int = _opt(3, "restarts allowed per worker after a crash before the run fails")
    on_nonfinite: str = _opt(
        "skip",
        "a NaN/inf loss or gradient: skip that update and count it, or raise",
        choices=("skip", "raise"),
    )
    resume: str | None = _opt(
        None, "resume the run in this directory (other options must match its config)"
    )
    quiet: bool = _opt(False, "no live display; print a progress line every few seconds instead")
    tensorboard: bool = _opt(
        False,
        "also write TensorBoard event files to RUN/tensorboard/ (step = global episode index; "
        "needs the 'tensorboard' extra: pip install 'qa3c-qiskit[tensorboard]')",
    )
    eval_every: int = _opt(
        0,
        "every N finished episodes, evaluate the global parameters (greedy and sampled policy) on "
        "separately seeded envs in a background thread; log RUN/eval.csv, keep RUN/best_model.pt "
        "(0: off)",
    )
    eval_episodes: int = _opt(10, "episodes per policy (greedy, sampled) of each --eval-every run")

    def to_dict(self) -> dict:
        return asdict(self)

    def options_for(self, cls) -> dict:
        """This config's values of the fields dataclass ``cls`` shares with it (``ModelSpec``,
        ``A3CSettings``), by name: no keyword list to keep in step with either."""
        return {f.name: getattr(self, f.name) for f in fields(cls) if hasattr(self, f.name)}


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one ``--option`` per TrainConfig field."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        kw = {"default": default, "help": f.metadata["help"]}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=kw["help"])
            continue
        typ = {"int": int, "float": float, "float | None": float}.get(str(f.type), None)
        if str(f.type).startswith("int |") or str(f.type) == "int | None":
            typ = int
        kw["type"] = typ or str
        parser.add_argument(flag, **kw)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def qpu_cap_problems(profile, backend: str, cap: float | None) -> list[str]:
    """What is wrong with the QPU budget ``cap`` (``--max-qpu-seconds`` of train and evaluate)
    for ``profile``, the resolved backend ``backend`` (None: no quantum backend): it must be
    > 0, and a real IBM QPU (billed) needs one."""
    if cap is not None and not cap > 0:
        return [f"--max-qpu-seconds must be > 0, got {cap}"]
    if cap is None and profile is not None:
        from .backends import needs_qpu_cap  # loaded for a quantum model only

        if needs_qpu_cap(profile):
            return [
                f"backend {profile.name!r} runs on a real IBM QPU (billed): set "
                f"--max-qpu-seconds (see python -m qa3c_qiskit.backends {backend} --report)"
            ]
    return []
