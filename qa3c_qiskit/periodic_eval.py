"""``--eval-every N --eval-episodes M``: periodic evaluation during training and ``best_model.pt``.

Every ``N`` finished episodes the supervisor takes a copy of the global parameters (the runner's
``sync()``, the same consistent copy a checkpoint takes) and evaluates it in a **background
thread** of the supervisor process, so the supervisor loop (metrics rows, checkpoints, display)
keeps running: ``M`` episodes with the greedy policy (argmax action) and ``M`` with the sampled
policy, each on its own fresh environment. The evaluation envs are seeded apart from every
learner (episode ``i`` resets with ``seed + EVAL_SEED_OFFSET + i``, the same start states at every
evaluation, so successive evaluations compare policies, not luck), on the run's own backend.

Cost: the evaluation is one more CPU-bound actor besides the worker processes (on a 2-core
machine with 2 workers it takes part of a core while it runs: ``2 M`` episodes of single-sample
forward passes, about as costly as one learner playing ``2 M`` episodes without updates). At most
one evaluation runs at a time: one that falls due while the previous is still running is skipped
(logged to ``events.log`` and counted in ``summary.json``); choose ``N`` large enough.

Results go to ``RUN/eval.csv`` (one row per evaluation, :data:`EVAL_FIELDS`: ``episode`` = the
global episode count when the parameters were taken, greedy and sampled mean/std returns,
``eval_seconds`` = how long it took, ``wall_time`` = the run's wall time when the parameters were
taken), to TensorBoard with ``--tensorboard`` (``eval/greedy_return``, ``eval/sampled_return``),
and whenever the greedy mean beats every earlier evaluation of the run (resumed sessions
included) the evaluated parameters are written to ``RUN/best_model.pt`` (atomically, same format
as ``model.pt``: ``python -m qa3c_qiskit.evaluate RUN --model-file best_model.pt``).
"""

from __future__ import annotations

import csv
import math
import queue
import threading
import time
from pathlib import Path

import torch

from .metrics import MetricsWriter

EVAL_CSV = "eval.csv"
BEST_MODEL = "best_model.pt"
EVAL_FIELDS = [
    "episode",
    "greedy_mean",
    "greedy_std",
    "sampled_mean",
    "sampled_std",
    "eval_seconds",
    "wall_time",
]
#: evaluation env seeds start at ``seed + EVAL_SEED_OFFSET``: far from every learner seed
#: (``seed + learner + 1000 * resume + 100_000 * restart``)
EVAL_SEED_OFFSET = 900_000_000


def config_problems(cfg) -> list[str]:
    """The problems with the monitoring options of ``cfg`` (a TrainConfig)."""
    out = []
    every, episodes = getattr(cfg, "eval_every", 0), getattr(cfg, "eval_episodes", 0)
    if every < 0:
        out.append(f"--eval-every must be >= 0 (0: off), got {every}")
    if every and episodes <= 0:
        out.append(f"--eval-episodes must be > 0, got {episodes}")
    if every > 0 and getattr(cfg, "model", "") == "quantum":
        from .backends.registry import is_local, load_profile

        try:
            profile = load_profile(cfg.backend)
        except Exception:  # noqa: BLE001 - validate() reports an unknown or broken profile
            profile = None
        if profile is not None and profile.kind == "ibm_runtime" and not is_local(profile):
            out.append(
                "--eval-every on an IBM Quantum backend would run the evaluation episodes on the "
                "QPU too; evaluate the saved model afterwards instead "
                "(python -m qa3c_qiskit.evaluate RUN --backend ...)"
            )
    if getattr(cfg, "tensorboard", False):
        from .tensorboard import summary_writer_class

        try:
            summary_writer_class()
        except ValueError as exc:
            out.append(str(exc))
    return out


def read_eval_rows(run_dir) -> list[dict]:
    """The rows of ``RUN/eval.csv`` (floats; [] if there is none)."""
    path = Path(run_dir) / EVAL_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


class PeriodicEvaluator:
    """Runs the evaluations in a background thread; the supervisor calls :meth:`maybe_start`
    per finished episode and :meth:`poll` in its loop, which writes the finished evaluations."""

    def __init__(self, run_dir: Path, spec, cfg, payload_extra: dict, tb=None, events=None):
        self.run_dir, self.spec, self.cfg = Path(run_dir), spec, cfg
        self.every, self.episodes = cfg.eval_every, cfg.eval_episodes
        self.seed = cfg.seed + EVAL_SEED_OFFSET
        self.payload_extra = payload_extra  # {"spec": ..., "config": ...} as in model.pt
        self.tb, self.events = tb, events
        self.path = self.run_dir / EVAL_CSV
        rows = read_eval_rows(self.run_dir)
        have_best = (self.run_dir / BEST_MODEL).is_file()
        self.best = max((r["greedy_mean"] for r in rows), default=-math.inf)
        if not have_best:
            self.best = -math.inf
        self.skipped = 0
        self.completed = 0
        self.thread: threading.Thread | None = None
        self.running_episode: int | None = None
        #: the latest evaluation skipped while another ran: (episode, state dict, wall time);
        #: :meth:`finish` runs it if nothing later started, so the run's last due one is done
        self.pending: tuple | None = None
        self.results: queue.Queue = queue.Queue()
        self.log = MetricsWriter(self.path, EVAL_FIELDS)

    def due(self, episode: int) -> bool:
        return self.every > 0 and episode % self.every == 0

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def maybe_start(self, episode: int, get_state_dict, wall_time: float) -> bool:
        """Start the evaluation due at ``episode`` (``get_state_dict()``: a detached copy of the
        global parameters as a model state dict); False if skipped (previous one still busy)."""
        if not self.due(episode):
            return False
        if self.busy():
            self.skipped += 1
            self.pending = (episode, get_state_dict(), wall_time)
            if self.events is not None:
                self.events(
                    f"evaluation at episode {episode} skipped: the one of episode "
                    f"{self.running_episode} is still running"
                )
            return False
        state_dict = get_state_dict()
        self.running_episode, self.pending = episode, None
        self.thread = threading.Thread(
            target=self._work,
            args=(episode, state_dict, wall_time),
            name=f"qa3c-eval-{episode}",
            daemon=True,
        )
        self.thread.start()
        return True

    def _work(self, episode: int, state_dict: dict, wall_time: float) -> None:
        from .evaluate import evaluate_policy

        t0 = time.time()
        try:
            # evaluate_policy seeds torch's global RNG: keep the supervisor's own state intact
            with torch.random.fork_rng(devices=[]):
                greedy = evaluate_policy(
                    self.spec, state_dict, self.cfg.env, self.episodes, self.seed, greedy=True
                )
                sampled = evaluate_policy(
                    self.spec, state_dict, self.cfg.env, self.episodes, self.seed, greedy=False
                )
        except Exception as exc:  # noqa: BLE001 - reported, training goes on
            self.results.put({"episode": episode, "error": f"{type(exc).__name__}: {exc}"})
            return
        self.results.put(
            {
                "episode": episode,
                "greedy_mean": greedy["mean"],
                "greedy_std": greedy["std"],
                "sampled_mean": sampled["mean"],
                "sampled_std": sampled["std"],
                "eval_seconds": round(time.time() - t0, 3),
                "wall_time": round(wall_time, 4),
                "state_dict": state_dict,
            }
        )

    def poll(self) -> list[dict]:
        """Write the evaluations finished since the last call (eval.csv, TensorBoard,
        best_model.pt); return their rows."""
        from .checkpoint import save_atomic

        done = []
        while True:
            try:
                res = self.results.get_nowait()
            except queue.Empty:
                break
            if "error" in res:
                if self.events is not None:
                    self.events(f"evaluation at episode {res['episode']} failed: {res['error']}")
                continue
            state_dict = res.pop("state_dict")
            self.log.write(res)
            self.log.fh.flush()
            self.completed += 1
            if self.tb is not None:
                self.tb.evaluation(res["episode"], res)
            if res["greedy_mean"] > self.best:
                self.best = res["greedy_mean"]
                save_atomic(
                    {"model": state_dict, **self.payload_extra, "eval": dict(res)},
                    self.run_dir / BEST_MODEL,
                )
                if self.events is not None:
                    self.events(
                        f"best_model.pt: episode {res['episode']}, greedy mean return "
                        f"{res['greedy_mean']:.3f}"
                    )
            done.append(res)
        return done

    def finish(self, wait: bool = True) -> None:
        """Wait for the running evaluation (if ``wait``), then run the last skipped one if no
        later one started (the evaluation due at the run's end is never lost to a busy
        evaluator), write what finished, close eval.csv."""
        if wait and self.thread is not None:
            self.thread.join()
        if wait and self.pending is not None:
            self.skipped -= 1
            self.running_episode = self.pending[0]
            self._work(*self.pending)  # in this thread: the run is over
            self.pending = None
        self.poll()
        self.log.close()

    def summary(self) -> dict:
        return {
            "evaluations": self.completed,
            "evaluations_skipped": self.skipped,
            "best_eval_greedy_mean": self.best if math.isfinite(self.best) else None,
        }
