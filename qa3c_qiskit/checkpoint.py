"""Run checkpoints, resume checks, the events log and the metrics roll-back on resume.

A checkpoint (``RUN/checkpoint.pt``) holds everything needed to continue a run: the global
flat parameters (actor + critic), the shared Adam state (moments and step), the counters
(finished episodes, env steps, skipped non-finite updates, worker restarts, resumes), the
supervisor's RNG states, every worker seed used so far, and the config.

File format: one ASCII header line ``QA3C-CHECKPOINT 1 <payload bytes> <sha256>`` followed by
a ``torch.save`` payload, so a truncated or corrupted file is detected (and named) before
unpickling. Writes are atomic: temp file in the same folder, fsync, ``os.replace``, fsync of
the folder; if anything fails the previous checkpoint is left untouched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
EVENTS = "events.log"
ROLLED_BACK = "metrics.rolled_back.csv"
MAGIC = b"QA3C-CHECKPOINT"
FORMAT = 1

#: Config fields that may differ when resuming (budget, parallelism, logging, fault policy);
#: every other field changes the model or the algorithm and must match the checkpoint.
RESUME_MUTABLE = {
    "episodes",
    "workers",
    "learners",
    "tensorboard",
    "eval_every",
    "eval_episodes",
    "max_qpu_seconds",
    "out",
    "run_name",
    "runner",
    "address",
    "checkpoint_every",
    "max_restarts",
    "on_nonfinite",
    "resume",
    "quiet",
}


class CheckpointError(ValueError):
    """A checkpoint (or the run folder around it) is missing, truncated, corrupt or foreign."""


def learner_seed(seed: int, learner: int, resume_count: int = 0, restart: int = 0) -> int:
    """Seed of actor-learner ``learner``: ``seed + learner`` on a fresh run (with one learner
    per process, learner = worker rank: the paper setup); each resume adds 1000 and each restart
    of its process within one session adds 100,000, so a resumed or restarted learner never
    replays the episodes of its predecessor."""
    return seed + learner + 1000 * resume_count + 100_000 * restart


@dataclass
class RunState:
    """Everything a run has done so far; saved as the checkpoint, restored on ``--resume``.

    The runner updates the counters, parameters, Adam state, seed log and restarts (its
    ``sync()`` and its process starts); the trainer counts ``episodes_done`` as it writes
    metrics rows and adds wall time.
    """

    flat: torch.Tensor
    adam: dict | None = None
    episodes_done: int = 0
    env_steps: int = 0
    nonfinite: int = 0  # skipped non-finite updates
    restarts: int = 0
    resume_count: int = 0
    wall_time_s: float = 0.0
    seed_log: list = field(default_factory=list)  # every process started: seeds, pid, restart

    def to_checkpoint(self, config: dict, spec: dict, final: bool) -> dict:
        return {
            "episodes_done": self.episodes_done,
            "env_steps": self.env_steps,
            "nonfinite_updates_skipped": self.nonfinite,
            "restarts": self.restarts,
            "resume_count": self.resume_count,
            "wall_time_s": self.wall_time_s,
            "flat": self.flat.clone(),
            "adam": self.adam,
            "rng": rng_states(),
            "worker_seeds": list(self.seed_log),
            "config": config,
            "spec": spec,
            "final": final,
        }

    @classmethod
    def resumed(cls, ckpt: dict) -> RunState:
        """The state to continue ``ckpt`` with (one more resume)."""
        return cls(
            flat=ckpt["flat"].clone(),
            adam=ckpt["adam"],
            episodes_done=ckpt["episodes_done"],
            env_steps=ckpt["env_steps"],
            nonfinite=ckpt["nonfinite_updates_skipped"],
            restarts=ckpt["restarts"],
            resume_count=ckpt["resume_count"] + 1,
            wall_time_s=ckpt["wall_time_s"],
            seed_log=list(ckpt["worker_seeds"]),
        )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file in the same folder, which is
    fsynced and renamed over ``path`` (then the folder is fsynced), so a crash or error mid-write
    leaves the previous file intact; the temp file is removed on an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: Path, state: dict) -> int:
    """Atomically write ``state`` to ``path``; return the file size in bytes."""
    buf = io.BytesIO()
    torch.save(state, buf)  # serialise first: a failure here never touches the folder
    payload = buf.getvalue()
    header = b"%s %d %d %s\n" % (
        MAGIC,
        FORMAT,
        len(payload),
        hashlib.sha256(payload).hexdigest().encode(),
    )

    def write(fh) -> None:
        fh.write(header)
        fh.write(payload)

    _write_atomic(path, write)
    return len(header) + len(payload)


def save_atomic(obj, path: Path) -> None:
    """``torch.save(obj, path)`` atomically: temp file in the same folder, fsync, rename, so a
    crash mid-write leaves the previous file intact (used for ``model.pt``)."""
    _write_atomic(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: Path) -> dict:
    """The state saved by :func:`save_checkpoint`; CheckpointError naming the file if it is
    missing, truncated or corrupt."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    head, sep, payload = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 4 or parts[0] != MAGIC:
        raise CheckpointError(f"checkpoint {path} is not a qa3c checkpoint (bad header)")
    if int(parts[1]) != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {parts[1].decode()}, expected {FORMAT}"
        )
    size = int(parts[2])
    if len(payload) != size:
        raise CheckpointError(
            f"checkpoint {path} is truncated ({len(payload)} of {size} payload bytes)"
        )
    if hashlib.sha256(payload).hexdigest().encode() != parts[3]:
        raise CheckpointError(f"checkpoint {path} is corrupt (sha256 mismatch)")
    # our own, checksummed file: it also holds numpy/python RNG states, so full unpickling
    return torch.load(io.BytesIO(payload), weights_only=False)


def incompatible_fields(saved: dict, cfg) -> list[str]:
    """The config fields of ``cfg`` (a TrainConfig) that differ from the checkpoint's config,
    each as ``"name: given X, run has Y"``."""
    out = []
    for f in fields(cfg):
        if f.name in RESUME_MUTABLE or f.name not in saved:
            continue
        given, have = getattr(cfg, f.name), saved[f.name]
        if given != have:
            out.append(f"{f.name}: given {given!r}, run has {have!r}")
    return out


def rng_states() -> dict:
    """The supervisor's python/numpy/torch RNG states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def count_metrics_rows(path: Path) -> int:
    """Data rows (episodes) in a metrics CSV."""
    with open(path, newline="") as fh:
        return max(sum(1 for _ in csv.reader(fh)) - 1, 0)


def reconcile_metrics(run_dir: Path, episodes: int) -> int:
    """Cut ``metrics.csv`` back to its first ``episodes`` rows (the checkpoint's count).

    Rows after the last checkpoint belong to episodes whose parameter updates the checkpoint
    does not hold (the run was killed hard); they are re-run after resuming, so the episode
    column stays contiguous with no duplicate. The cut rows are appended to
    ``metrics.rolled_back.csv`` (nothing is deleted). Returns the number of rows moved.
    """
    path = Path(run_dir) / "metrics.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    if len(body) < episodes:
        raise CheckpointError(
            f"{path} has {len(body)} episode rows but the checkpoint has {episodes}"
        )
    for i, row in enumerate(body[:episodes]):
        if int(float(row[0])) != i + 1:
            raise CheckpointError(f"{path} row {i + 2}: episode {row[0]}, expected {i + 1}")
    extra = body[episodes:]
    if not extra:
        return 0
    side = Path(run_dir) / ROLLED_BACK
    new_side = not side.exists()
    with open(side, "a", newline="") as fh:
        w = csv.writer(fh)
        if new_side:
            w.writerow(header)
        w.writerows(extra)
        fh.flush()
        os.fsync(fh.fileno())
    tmp = path.with_name(".metrics.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(body[:episodes])
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(extra)


class EventLog:
    """``RUN/events.log``: one timestamped line per run event (start, restart, checkpoint...)."""

    def __init__(self, path: Path):
        self.fh = open(path, "a", buffering=1)

    def __call__(self, text: str) -> None:
        if not self.fh.closed:
            self.fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    def close(self) -> None:
        self.fh.close()
