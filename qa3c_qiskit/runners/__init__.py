"""Ways to host the actor-learners of a run (:func:`qa3c_qiskit.a3c.run_learners`).

* :mod:`.base`: the run plan, typed messages and the supervision policy every runner shares;
* :mod:`.local`: worker processes on this machine around shared-memory parameters;
* :mod:`.ray`: Ray actors around a parameter-server actor (one machine or a cluster).

To add a runner, subclass :class:`.base.Runner` and implement its transport (``_launch``,
``poll``, ``sync``, ``close``), then name it here.
"""

from .base import Episode, Event, Failure, Restart, Runner, RunPlan

RUNNERS = ("local", "ray")

__all__ = ["RUNNERS", "Episode", "Event", "Failure", "Restart", "RunPlan", "Runner", "make_runner"]


def make_runner(name: str, plan: RunPlan, state, address: str | None = None) -> Runner:
    """Build the runner called ``name`` (``local`` or ``ray``) for ``plan`` from ``state``."""
    if name == "local":
        from .local import LocalRunner

        return LocalRunner(plan, state)
    if name == "ray":
        from .ray import RayRunner  # raises a one-line error naming the [ray] extra if missing

        return RayRunner(plan, state, address=address)
    raise ValueError(f"unknown runner {name!r}; choose one of {', '.join(RUNNERS)}")
