"""Ways to host the Algorithm 1 worker loop (:func:`qa3c_qiskit.a3c.run_worker`).

A runner starts the workers and exposes the same small interface to the trainer
(:func:`qa3c_qiskit.train.train`), which owns the metrics file, the checkpoints and the display:

* ``start()``; ``poll(timeout) -> list[(kind, payload)]`` with kinds ``"episode"`` (a record
  dict: worker, return, length, time, env_steps), ``"error"`` ({worker, traceback}),
  ``"exit"`` ({worker}) and ``"event"`` ({text}, e.g. a worker restart);
* ``alive() -> bool``; ``global_state() -> (flat parameters, shared Adam state dict)``;
* ``nonfinite_count``; ``stop()`` (ask workers to finish); ``close()`` (join, then terminate).
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
