"""Ways to host the Algorithm 1 worker loop (:func:`qa3c_qiskit.a3c.run_worker`).

A runner starts the workers and exposes the same small interface to the trainer
(:func:`qa3c_qiskit.train.train`), which owns the metrics file, the checkpoints, the events log
and the display:

* constructor keywords: ``flat, spec, env_id, settings, workers, seed, budget, lr, betas, eps``
  and, to continue from a checkpoint, ``done`` (episodes already finished: the episode claim
  counter starts there), ``env_steps``, ``adam_state``, ``nonfinite`` (skipped updates so far),
  plus ``max_restarts`` (per worker rank) and ``resume_count``; worker seeds come from
  :func:`qa3c_qiskit.checkpoint.worker_seed` (``seed + rank`` on a fresh run);
* ``start()``; ``poll(timeout) -> list[(kind, payload)]`` with kinds
  ``"episode"`` (a record dict: worker, return, length, time, env_steps),
  ``"restart"`` ({worker, restart, max_restarts, seed, pid, episodes_given_back, traceback}:
  a crashed or killed worker was replaced; the episodes it had claimed but not finished went
  back to the budget, so the run still ends with exactly ``budget`` episodes),
  ``"error"`` ({worker, traceback}: a worker failed for good — restarts used up, or a
  NonFiniteError with ``on_nonfinite='raise'``; the trainer then stops the run),
  ``"exit"`` ({worker}) and ``"event"`` ({text}: e.g. "worker 0 started pid=123 seed=0",
  written to the run's events.log; the reliability tests read the pid from it);
* ``alive() -> bool`` (True while any worker may still send messages or be restarted);
  ``global_state() -> (flat parameters, shared Adam state dict)`` (a consistent copy);
* counters ``nonfinite_count``, ``env_steps``, ``restarts`` and ``seed_log`` (a list of
  {worker, seed, pid, restart, resume} for every worker process started; saved in checkpoints);
* ``stop()`` (ask workers to finish after their current env step; must be safe to call from a
  signal handler: only set a flag); ``close(timeout)`` (join up to ``timeout`` s, then
  terminate/kill: no process left behind).
"""

RUNNERS = ("local", "ray")


def make_runner(name: str, **kwargs):
    """Build the runner called ``name`` (``local`` or ``ray``) with LocalRunner's arguments."""
    if name == "local":
        from .local import LocalRunner

        return LocalRunner(**kwargs)
    if name == "ray":
        from .ray import RayRunner  # raises a one-line error naming the [ray] extra if missing

        return RayRunner(**kwargs)
    raise ValueError(f"unknown runner {name!r}; choose one of {', '.join(RUNNERS)}")
