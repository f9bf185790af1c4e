"""Algorithm 1 (paper Appendix A): the actor-learners hosted by one process.

A process hosts K >= 1 **actor-learners** (the paper's "agents"; K = 1 is classic A3C with one
agent per process). Each learner owns its environment, its seed and generator, its local copy
``theta'`` of the global parameters and its S-step segment. The process talks to the global
shared model only through a *hub* (shared memory in :mod:`qa3c_qiskit.runners.local`, a Ray
parameter server in :mod:`qa3c_qiskit.runners.ray`):

* ``hub.claim_episode() -> bool``: take one episode of the global budget T_max (False: stop);
* ``hub.push_pull(grad, local_flat)``: one shared-Adam step of the global parameters with
  ``grad`` (the gradient of *one* learner's segment), then copy the global parameters into
  ``local_flat`` (that learner's ``theta'``);
* ``hub.push_pull_many(grads, thetas, slots)``: ``push_pull(grads[j], thetas[slots[j]])`` for
  each ``j`` in order (:class:`Hub`'s default); hubs override it to take their lock once (the
  local runner) or to make one round trip (Ray) for all the segments that closed together;
* ``hub.pull(local_flat)``: copy the global parameters into ``local_flat``;
* ``hub.add_steps(n) -> int``: count env steps, return the global total;
* ``hub.episodes_done(records: list[dict])``: report finished episodes (one message per env
  step, however many learners finished);
* ``hub.should_stop() -> bool``; ``hub.nonfinite()``: count a skipped update.

Semantics of K learners in one process (a legal interleaving of K asynchronous agents):

1. The learners step their environments in lockstep. At every env step one batched actor call
   evaluates pi(.|s_l; theta'_l) for every active learner ``l``, each with **its own**
   ``theta'_l`` (per-sample parameters, :meth:`ActorCritic.batched_logits`), and each learner
   samples its action with its own generator.
2. A learner's ``theta'_l`` is constant over its segment: it changes only at its own pull, right
   after its own push, exactly as in Algorithm 1 (so there is no policy lag as in GA3C: every
   gradient is taken at the parameters that chose the segment's actions).
3. When segments close at an env step (S steps, or the episode's end), one batched forward and
   backward pass computes **each closed learner's own gradient** of its own segment loss at its
   own ``theta'_l`` (per-learner parameter copies, never a sum over learners). Then, in learner
   order, each gradient is applied as its own shared-Adam step and immediately followed by that
   learner's pull. That is the sequence of shared-Adam steps K separate processes produce when
   their segments close at the same moment (one lock acquisition serves them all); learners
   that did not close keep their ``theta'``.
4. Episode claims are per learner (an episode is claimed before it starts, so exactly T_max
   episodes finish); a learner whose claim fails goes idle, the process ends when all are idle.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .envs import make_env
from .fused import FusedActorCritic
from .fused import supports as fused_supports
from .models import ActorCritic, ModelSpec
from .threads import limit_blas_threads


class Hub:
    """Base of the hub protocol above: the default :meth:`push_pull_many`."""

    def push_pull_many(self, grads: torch.Tensor, thetas: torch.Tensor, slots) -> None:
        """One :meth:`push_pull` per row of ``grads``, in order, learner ``j`` pulling into
        ``thetas[slots[j]]``."""
        for grad, slot in zip(grads, slots):
            self.push_pull(grad, thetas[slot])


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN/inf and ``on_nonfinite='raise'``."""


@dataclass(frozen=True)
class A3CSettings:
    """The learning hyperparameters a learner needs (paper defaults)."""

    gamma: float = 0.9
    update_every: int = 5
    entropy_coef: float = 0.0
    loss_reduction: str = "mean"
    on_nonfinite: str = "skip"


def n_step_returns(rewards: list[float], bootstrap: float, gamma: float) -> torch.Tensor:
    """R_i = r_i + gamma * R_{i+1}, seeded with R = bootstrap (0 at a terminal state)."""
    out = np.empty(len(rewards))
    ret = bootstrap
    for i in range(len(rewards) - 1, -1, -1):
        ret = rewards[i] + gamma * ret
        out[i] = ret
    return torch.from_numpy(out)


def _per_step_loss(logits, values, actions, returns, entropy_coef):
    """``(R - V)^2 - log pi(a|s) (R - V).detach() - beta H`` per step."""
    td = returns - values
    log_probs = torch.log_softmax(logits, dim=-1)
    chosen = log_probs.gather(1, actions[:, None]).squeeze(1)
    per_step = td.square() - chosen * td.detach()
    if entropy_coef:
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        per_step = per_step - entropy_coef * entropy
    return per_step


def a3c_loss(
    model: ActorCritic,
    obs: torch.Tensor,
    actions: torch.Tensor,
    rewards: list[float],
    next_obs: torch.Tensor,
    terminated: bool,
    settings: A3CSettings,
) -> torch.Tensor:
    """The actor-critic loss of one segment of up to S steps, with the model's own parameters.

    ``sum_i [(R_i - V(s_i))^2 - log pi(a_i|s_i) (R_i - V(s_i)).detach() - beta H(pi(.|s_i))]``,
    averaged over the segment when ``loss_reduction == 'mean'`` (the public QA3C code). The
    bootstrap value is 0 if the segment ended in a terminal state (not on time-limit
    truncation). The reference for :func:`segment_gradients` (tested equal).
    """
    values = model.value(torch.cat([obs, next_obs[None]]))
    bootstrap = 0.0 if terminated else float(values[-1].detach())
    returns = n_step_returns(rewards, bootstrap, settings.gamma)
    per_step = _per_step_loss(
        model.logits(obs), values[:-1], actions, returns, settings.entropy_coef
    )
    return per_step.mean() if settings.loss_reduction == "mean" else per_step.sum()


def local_gradient(model: ActorCritic, loss: torch.Tensor) -> torch.Tensor:
    """Backpropagate ``loss`` into a freshly zeroed ``model.flat_grad`` and return it."""
    model.flat_grad.zero_()
    loss.backward()
    return model.flat_grad


@dataclass
class Segment:
    """One learner's closed segment: up to S transitions and where it ended."""

    obs: list[np.ndarray]  # (torch tensors are accepted too)
    actions: list[int]
    rewards: list[float]
    next_obs: np.ndarray
    terminated: bool


class SegmentGradients(tuple):
    """``(gradients, losses)``, as :func:`segment_gradients` always returned, plus ``stats``:
    per-segment loss terms ``{"policy", "value", "entropy"}`` (tensors [J], detached).

    ``policy`` = reduced ``-log pi(a|s) (R - V).detach()``, ``value`` = reduced ``(R - V)^2``
    (reduced like the loss: mean or sum over the segment's steps), ``entropy`` = the mean
    policy entropy over the segment's states (computed even when ``entropy_coef`` is 0).
    """

    stats: dict

    def __new__(cls, grads: torch.Tensor, losses: torch.Tensor, stats: dict):
        obj = super().__new__(cls, (grads, losses))
        obj.stats = stats
        return obj


def fused_model(model: ActorCritic):
    """The model's :class:`~qa3c_qiskit.fused.FusedActorCritic` (built once), or None where the
    torch path runs (Qiskit backends, the reference executor, ``QA3C_FUSED=0``)."""
    cached = getattr(model, "_fused_cache", None)
    if cached is None:
        cached = FusedActorCritic(model) if fused_supports(model) else False
        model._fused_cache = cached
    return cached or None


def segment_gradients(
    model: ActorCritic, thetas: torch.Tensor, segments: list[Segment], settings: A3CSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each segment's own loss gradient at its own parameters, in one batched pass.

    Runs :mod:`qa3c_qiskit.fused` (NumPy, hand-written backward) where it applies, else
    :func:`torch_segment_gradients` (autograd); the two agree to 1e-12 (tested).
    """
    fused = fused_model(model)
    if fused is not None:
        return SegmentGradients(*fused.segment_gradients(thetas, segments, settings))
    return torch_segment_gradients(model, thetas, segments, settings)


def torch_segment_gradients(
    model: ActorCritic, thetas: torch.Tensor, segments: list[Segment], settings: A3CSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`segment_gradients` by autograd, for every kind of core.

    ``thetas`` [J, n_params]: segment ``j``'s parameters. Returns (gradients [J, n_params],
    losses [J]) as a :class:`SegmentGradients` (a 2-tuple with the per-segment loss terms in
    ``.stats``). Every sample is evaluated with its segment's row of a per-segment copy of
    ``thetas``, so the backward pass of the summed losses leaves in row ``j`` the gradient of
    segment ``j``'s loss alone (its loss does not depend on the other rows).
    """
    n_seg = len(segments)
    theta = thetas.detach().clone().requires_grad_(True)
    lens = torch.tensor([len(s.obs) for s in segments])
    seg_of_step = torch.repeat_interleave(torch.arange(n_seg), lens)
    obs = torch.from_numpy(np.stack([o for s in segments for o in s.obs]))
    boot_obs = torch.from_numpy(np.stack([s.next_obs for s in segments]))
    # one call of the quantum layer for the actor's and the critic's samples; the bootstrap
    # states (the last n_seg critic rows, whose values are detached) are forward-only
    logits, values = model.batched_logits_values(
        theta[seg_of_step],
        obs,
        theta[torch.cat([seg_of_step, torch.arange(n_seg)])],
        torch.cat([obs, boot_obs]),
        n_value_only=n_seg,
    )
    n = obs.shape[0]
    boot = values[n:].detach()
    returns = torch.cat(
        [
            n_step_returns(s.rewards, 0.0 if s.terminated else float(boot[j]), settings.gamma)
            for j, s in enumerate(segments)
        ]
    )
    actions = torch.tensor([a for s in segments for a in s.actions], dtype=torch.long)
    per_step = _per_step_loss(logits, values[:n], actions, returns, settings.entropy_coef)
    losses = torch.zeros(n_seg, dtype=per_step.dtype).index_add(0, seg_of_step, per_step)
    if settings.loss_reduction == "mean":
        losses = losses / lens
    losses.sum().backward()
    with torch.no_grad():  # the loss terms for logging: a few vector ops on [n] tensors
        td = returns - values[:n]
        log_probs = torch.log_softmax(logits, dim=-1)
        chosen = log_probs.gather(1, actions[:, None]).squeeze(1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)

        def per_seg(x, mean):
            out = torch.zeros(n_seg, dtype=x.dtype).index_add(0, seg_of_step, x)
            return out / lens if mean else out

        mean = settings.loss_reduction == "mean"
        stats = {
            "policy": per_seg(-chosen * td, mean),
            "value": per_seg(td.square(), mean),
            "entropy": per_seg(entropy, True),
        }
    return SegmentGradients(theta.grad, losses.detach(), stats)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class Learner:
    """One actor-learner's state inside a process."""

    lid: int  # global learner id (0 .. N-1)
    seed: int
    env: object
    gen: torch.Generator
    slot: int  # its row in the process's parameter table
    first_reset: bool = True
    obs: np.ndarray | None = None
    ep_return: float = 0.0
    ep_len: int = 0
    buf_obs: list = field(default_factory=list)
    buf_act: list = field(default_factory=list)
    buf_rew: list = field(default_factory=list)
    #: sums over the current episode's updates: policy, value, entropy, grad_norm (+ count)
    upd_sums: list = field(default_factory=lambda: [0.0] * 4)
    upd_count: int = 0

    def start_episode(self) -> None:
        obs_np, _ = self.env.reset(seed=self.seed if self.first_reset else None)
        self.first_reset = False
        self.obs = obs_np
        self.ep_return, self.ep_len = 0.0, 0
        self.upd_sums, self.upd_count = [0.0] * 4, 0

    def update_stats(self) -> dict:
        """The episode's update statistics for its record: means over its updates."""
        out: dict = {"updates": self.upd_count}
        if self.upd_count:
            for key, total in zip(UPDATE_STATS, self.upd_sums):
                out[key] = total / self.upd_count
        return out


#: Keys of the per-episode means of the update statistics in an episode record.
UPDATE_STATS = ("loss_policy", "loss_value", "entropy", "grad_norm")
#: Keys of the process's cumulative estimator counters (Qiskit backends only).
QUANTUM_COUNTERS = ("calls", "pubs", "circuits")


def quantum_counters(model) -> dict:
    """The process's cumulative primitive counters ``{"q_calls", "q_pubs", "q_circuits"}``
    (and ``"q_shots"`` when the profile's shot count is known) summed over the model's built
    Qiskit layers; ``{}`` on the statevector engine and the classical twin."""
    counters = []
    for net in (getattr(model, "actor", None), getattr(model, "critic", None)):
        core = getattr(net, "core", None)
        if core is None or getattr(core, "_built", None) is None:  # never build one here
            continue
        try:
            c = core.counter
        except Exception:  # noqa: BLE001 - a core without counters
            continue
        if c is not None and all(hasattr(c, k) for k in QUANTUM_COUNTERS):
            if all(c is not other for other in counters):
                counters.append(c)
    if not counters:
        return {}
    out = {f"q_{k}": sum(int(getattr(c, k)) for c in counters) for k in QUANTUM_COUNTERS}
    execution = sys.modules.get("qa3c_qiskit.backends.execution")
    if execution is not None and execution.qpu_usage()["jobs"]:  # IBM Runtime jobs were sent
        out.update(execution.usage_counters())  # qpu_s etc., cumulative in this process
    shots = getattr(model, "shots_per_circuit", None)
    if shots:
        out["q_shots"] = out["q_circuits"] * int(shots)
    return out


def run_learners(
    rank: int,
    learners: list[tuple[int, int]],
    env_id: str,
    spec: ModelSpec,
    settings: A3CSettings,
    hub,
) -> None:
    """Algorithm 1 for the ``learners`` [(learner id, seed), ...] of process ``rank`` until the
    global episode budget is used up or the hub says stop."""
    torch.set_num_threads(1)
    limit_blas_threads(1)  # numpy's BLAS too (the statevector engine's fast path)
    qiskit_backend = spec.model == "quantum" and spec.backend != "statevector"
    if qiskit_backend:  # a profile may give each worker rank its own QPU
        from .backends import execution

        execution.set_worker_rank(rank)
    gen = seed_everything(learners[0][1])
    model = ActorCritic(spec)
    if spec.model == "quantum":  # shots per circuit for the records' q_shots (None: exact)
        try:
            from .backends import resolve

            model.shots_per_circuit = resolve(spec.backend, spec.shots, spec.n_qubits).shots
        except Exception:  # noqa: BLE001 - only a logging detail
            model.shots_per_circuit = None
    hub.pull(model.flat)
    thetas = model.flat.detach().repeat(len(learners), 1)  # row l: learner l's theta'
    group = []
    for slot, (lid, seed) in enumerate(learners):
        g = gen if slot == 0 else torch.Generator().manual_seed(seed)
        group.append(Learner(lid, seed, make_env(env_id), g, slot))
    try:
        _loop(rank, group, thetas, model, settings, hub)
    finally:
        for learner in group:
            learner.env.close()
        model.close()
        if qiskit_backend:
            execution.close_all()  # cancel in-flight Runtime jobs, close sessions/batches


def sample_actions(probs: torch.Tensor, gens: list[torch.Generator]) -> list[np.int64]:
    """One action per row of ``probs`` [K, A], row ``j`` drawn with generator ``gens[j]``.

    Exactly ``torch.multinomial(probs[j], 1, generator=gens[j])`` for every row (PyTorch's own
    one-sample path: ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn from the row's generator; the
    same draws, tested), ~10x cheaper per learner than one multinomial call each. The actions
    are NumPy int64: Gymnasium's ``Discrete.contains`` checks them ~2x faster than Python ints.
    """
    q = torch.empty_like(probs)
    for j, gen in enumerate(gens):
        q[j].exponential_(1, generator=gen)
    return list((probs / q).argmax(1).numpy())


def _claim_and_start(learner: Learner, hub) -> bool:
    if hub.should_stop() or not hub.claim_episode():
        return False
    learner.start_episode()
    return True


def _loop(rank, group, thetas, model, settings, hub) -> None:
    fused = fused_model(model)
    active = [learner for learner in group if _claim_and_start(learner, hub)]
    env_steps = 0
    while active:
        slots = [learner.slot for learner in active]
        obs = np.stack([learner.obs for learner in active])
        if fused is not None:
            logits = torch.from_numpy(fused.logits(thetas.numpy()[slots], obs))
        else:
            with torch.no_grad():
                logits = model.batched_logits(thetas[slots], torch.from_numpy(obs))
        probs = torch.softmax(logits, dim=-1)
        # < spec.n_actions (6 on MiniGrid: "done" is never chosen)
        actions = sample_actions(probs, [learner.gen for learner in active])
        closed: list[tuple[Learner, Segment]] = []
        finished: list[Learner] = []
        for learner, action in zip(active, actions):
            next_obs, reward, terminated, truncated, _ = learner.env.step(action)
            learner.ep_return += float(reward)
            learner.ep_len += 1
            learner.buf_obs.append(learner.obs)
            learner.buf_act.append(action)
            learner.buf_rew.append(float(reward))
            done = terminated or truncated
            if len(learner.buf_obs) == settings.update_every or done:
                seg = Segment(
                    learner.buf_obs, learner.buf_act, learner.buf_rew, next_obs, terminated
                )
                closed.append((learner, seg))
                learner.buf_obs, learner.buf_act, learner.buf_rew = [], [], []
            learner.obs = next_obs
            if done:
                finished.append(learner)
        if closed:
            _update(model, thetas, closed, settings, hub)
            env_steps = hub.add_steps(sum(len(seg.obs) for _, seg in closed))
        if finished:
            now = time.time()
            counters = quantum_counters(model)
            hub.episodes_done(
                [
                    {
                        "worker": rank,
                        "learner": learner.lid,
                        "return": learner.ep_return,
                        "length": learner.ep_len,
                        "time": now,
                        "env_steps": env_steps,
                        **learner.update_stats(),
                        **counters,
                    }
                    for learner in finished
                ]
            )
            done_ids = {id(learner) for learner in finished}
            active = [
                learner
                for learner in active
                if id(learner) not in done_ids or _claim_and_start(learner, hub)
            ]
        elif hub.should_stop():
            return


def _update(model, thetas, closed, settings, hub) -> None:
    """Each closed learner's own gradient, then per learner: one shared-Adam step + its pull."""
    slots = [learner.slot for learner, _ in closed]
    result = segment_gradients(model, thetas[slots], [seg for _, seg in closed], settings)
    grads, losses = result
    finite = (torch.isfinite(grads).all(1) & torch.isfinite(losses)).tolist()
    stats = getattr(result, "stats", None)
    if stats is not None:  # one [J, 4] table, one .tolist(): cheap next to the update itself
        rows = torch.stack(
            [stats["policy"], stats["value"], stats["entropy"], grads.norm(dim=1)], 1
        ).tolist()
    pushed = []
    for j, slot in enumerate(slots):
        if not finite[j]:
            if settings.on_nonfinite == "raise":
                raise NonFiniteError(f"non-finite loss or gradient (loss={float(losses[j])})")
            hub.nonfinite()
            hub.pull(thetas[slot])
            continue
        pushed.append(j)
        if stats is not None:
            learner = closed[j][0]
            sums = getattr(learner, "upd_sums", None) or [0.0] * len(rows[j])
            learner.upd_sums = [a + b for a, b in zip(sums, rows[j])]
            learner.upd_count = getattr(learner, "upd_count", 0) + 1
    if pushed:
        if len(pushed) < len(slots):
            grads, slots = grads[pushed], [slots[j] for j in pushed]
        hub.push_pull_many(grads, thetas, slots)
