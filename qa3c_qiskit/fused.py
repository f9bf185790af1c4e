"""The actor-learners' hot path without autograd: the dressed actor-critic's per-sample forward
and its hand-written backward in NumPy, around the statevector engine's compiled executor.

The model (``Linear -> tanh -> core -> tanh -> Linear``, :mod:`qa3c_qiskit.models`) is small
enough that, per sample, torch's per-operator and autograd overhead costs more than the
arithmetic: at one learner per process :func:`qa3c_qiskit.a3c.segment_gradients` spent most of
its time in autograd bookkeeping. :class:`FusedActorCritic` computes the same quantities with a
handful of NumPy calls and one engine call each way:

* :meth:`~FusedActorCritic.logits` (acting): the actor's logits ``[B, A]`` with per-sample
  parameters, as :meth:`ActorCritic.batched_logits`;
* :meth:`~FusedActorCritic.segment_gradients`: each segment's own loss gradient at its own
  parameters, as :func:`qa3c_qiskit.a3c.segment_gradients` (the same returns, losses and
  ``stats``; tested equal to 1e-10). The critic's bootstrap states are evaluated without a
  tape: their value is detached, so they are never differentiated.

It applies to the classical twin and to the quantum model on the exact ``statevector`` backend
with the compiled (numba) executor (:func:`supports`); every other core (Qiskit backends, the
reference executor) takes the torch path. ``QA3C_FUSED=0`` forces the torch path everywhere.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def supports(model) -> bool:
    """True if :class:`FusedActorCritic` can run ``model`` (see the module docstring)."""
    if os.environ.get("QA3C_FUSED", "1") == "0":
        return False
    if model.spec.model == "classical":
        return True
    engine = getattr(model.actor.core, "engine", None)
    return engine is not None and hasattr(getattr(engine, "executor", None), "zcoef")


class _Net:
    """Where one dressed network's layers sit in a row of per-sample parameters."""

    def __init__(self, net, offset: int, quantum: bool):
        nq, d = net.pre.weight.shape
        out = net.post.weight.shape[0]
        self.nq, self.d, self.out = nq, d, out
        self.lo = offset
        self.pre_w = slice(offset, offset + nq * d)
        self.pre_b = slice(self.pre_w.stop, self.pre_w.stop + nq)
        n_core = sum(p.numel() for p in net.core.parameters())
        self.core = slice(self.pre_b.stop, self.pre_b.stop + n_core)
        self.post_w = slice(self.core.stop, self.core.stop + out * nq)
        self.post_b = slice(self.post_w.stop, self.post_w.stop + out)
        self.hi = self.post_b.stop
        self.quantum = quantum
        if not quantum:  # the twin's Linear(nq -> nq) core: weight, then bias
            self.core_w = slice(self.core.start, self.core.start + nq * nq)
            self.core_b = slice(self.core_w.stop, self.core.stop)

    def pre(self, rows: np.ndarray, obs: np.ndarray) -> np.ndarray:
        w = rows[:, self.pre_w].reshape(-1, self.nq, self.d)
        return np.tanh(np.matmul(w, obs[:, :, None])[:, :, 0] + rows[:, self.pre_b])

    def post(self, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        w = rows[:, self.post_w].reshape(-1, self.out, self.nq)
        return np.matmul(w, t[:, :, None])[:, :, 0] + rows[:, self.post_b]

    def linear_core(self, rows: np.ndarray, h: np.ndarray) -> np.ndarray:
        w = rows[:, self.core_w].reshape(-1, self.nq, self.nq)
        return np.matmul(w, h[:, :, None])[:, :, 0] + rows[:, self.core_b]

    def backward_post(self, rows, t, g_out, grad) -> np.ndarray:
        """Fill the post layer's gradient rows of ``grad``; return dL/d(core output)."""
        grad[:, self.post_w] = (g_out[:, :, None] * t[:, None, :]).reshape(len(t), -1)
        grad[:, self.post_b] = g_out
        w = rows[:, self.post_w].reshape(-1, self.out, self.nq)
        return np.matmul(g_out[:, None, :], w)[:, 0, :] * (1.0 - t * t)

    def backward_pre(self, h, g_h, grad) -> np.ndarray:
        """Fill the input layer's bias rows of ``grad``; return dL/d(pre-activation) ``g_z``
        (its weight gradient, ``g_z`` outer ``obs``, is summed per segment by the caller)."""
        g_z = g_h * (1.0 - h * h)
        grad[:, self.pre_b] = g_z
        return g_z


class FusedActorCritic:
    """NumPy forward/backward of an :class:`~qa3c_qiskit.models.ActorCritic` (see module doc)."""

    def __init__(self, model):
        self.model = model
        self.quantum = model.spec.model == "quantum"
        self.n_params = model.flat.numel()
        self.actor = _Net(model.actor, 0, self.quantum)
        self.critic = _Net(model.critic, model.n_actor, self.quantum)
        self.executor = model.actor.core.engine.executor if self.quantum else None
        if self.quantum:  # actor and critic share the circuit: one engine call serves both
            assert model.critic.core.engine.executor is self.executor

    # -- forward ---------------------------------------------------------------------------
    def _cores(self, h_a, rows_a, h_c, rows_c, keep: bool):
        """The actor's and the critic's core outputs (one engine call), and the tape."""
        if self.quantum:
            x = np.concatenate([h_a, h_c])
            w = np.concatenate([rows_a[:, self.actor.core], rows_c[:, self.critic.core]])
            q, tape = self.executor.forward(x, np.ascontiguousarray(w), keep)
            return q[: len(h_a)], q[len(h_a) :], tape
        return self.actor.linear_core(rows_a, h_a), self.critic.linear_core(rows_c, h_c), None

    def _core(self, net: _Net, rows, h) -> np.ndarray:
        if self.quantum:
            w = np.ascontiguousarray(rows[:, net.core])
            return self.executor.forward(h, w, False)[0]
        return net.linear_core(rows, h)

    def logits(self, thetas: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Action logits [B, A]: sample ``b`` with parameters ``thetas[b]`` (flat layout)."""
        h = self.actor.pre(thetas, obs)
        return self.actor.post(thetas, np.tanh(self._core(self.actor, thetas, h)))

    def values(self, thetas: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """State values [B]: sample ``b`` with parameters ``thetas[b]``."""
        h = self.critic.pre(thetas, obs)
        return self.critic.post(thetas, np.tanh(self._core(self.critic, thetas, h)))[:, 0]

    # -- the update ------------------------------------------------------------------------
    def segment_gradients(self, thetas: torch.Tensor, segments, settings):
        """As :func:`qa3c_qiskit.a3c.segment_gradients`: ``(grads [J, n], losses [J], stats)``,
        each row the gradient of its segment's loss alone at ``thetas[j]``."""
        th = thetas.detach().numpy()
        n_seg = len(segments)
        lens = np.array([len(s.obs) for s in segments])
        seg_of = np.repeat(np.arange(n_seg), lens)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        obs = np.stack([o for s in segments for o in s.obs])
        rows = th[seg_of]
        n = len(obs)

        # bootstrap values V(s_S): forward only (detached in the loss)
        boot = np.zeros(n_seg)
        live = [j for j, s in enumerate(segments) if not s.terminated]
        if live:
            boot_obs = np.stack([segments[j].next_obs for j in live])
            boot[live] = self.values(th[live], boot_obs)
        returns = np.empty(n)
        gamma = settings.gamma
        for j, s in enumerate(segments):  # R_i = r_i + gamma R_{i+1}, from the bootstrap
            ret = boot[j]
            for i in range(len(s.rewards) - 1, -1, -1):
                ret = s.rewards[i] + gamma * ret
                returns[starts[j] + i] = ret

        a, c = self.actor, self.critic
        h_a, h_c = a.pre(rows, obs), c.pre(rows, obs)
        q_a, q_c, tape = self._cores(h_a, rows, h_c, rows, keep=True)
        t_a, t_c = np.tanh(q_a), np.tanh(q_c)
        logits = a.post(rows, t_a)
        values = c.post(rows, t_c)[:, 0]

        # the loss per step and its gradient w.r.t. logits and values
        z = logits - logits.max(1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
        probs = np.exp(log_probs)
        actions = np.array([act for s in segments for act in s.actions])
        chosen = log_probs[np.arange(n), actions]
        entropy = -(probs * log_probs).sum(1)
        td = returns - values
        beta = settings.entropy_coef
        per_step = td * td - chosen * td
        if beta:
            per_step = per_step - beta * entropy
        mean = settings.loss_reduction == "mean"
        scale = (1.0 / lens[seg_of]) if mean else np.ones(n)
        g_values = -2.0 * td * scale
        g_logits = probs.copy()
        g_logits[np.arange(n), actions] -= 1.0
        g_logits *= (td * scale)[:, None]  # d(-log pi(a) td)/dz = td (p - onehot)
        if beta:
            g_logits += (beta * scale)[:, None] * probs * (log_probs + entropy[:, None])

        # backward through post -> tanh -> core -> tanh -> pre, per sample
        grad = np.zeros((n, self.n_params))
        g_qa = a.backward_post(rows, t_a, g_logits, grad)
        g_qc = c.backward_post(rows, t_c, g_values[:, None], grad)
        if self.quantum:
            g_x, g_w = self.executor.backward(tape, np.concatenate([g_qa, g_qc]), True)
            grad[:, a.core], grad[:, c.core] = g_w[:n], g_w[n:]
            g_ha, g_hc = g_x[:n], g_x[n:]
        else:
            g_ha = self._linear_core_backward(a, rows, h_a, g_qa, grad)
            g_hc = self._linear_core_backward(c, rows, h_c, g_qc, grad)
        g_za = a.backward_pre(h_a, g_ha, grad)
        g_zc = c.backward_pre(h_c, g_hc, grad)

        def per_seg(x, avg):
            out = np.add.reduceat(x, starts, axis=0)
            return out / (lens if x.ndim == 1 else lens[:, None]) if avg else out

        # per segment: every layer but the input weights from the per-sample rows; the input
        # weights (147 x 8 per net on MiniGrid: most of the parameters) as sum_t g_z(t) obs(t)^T,
        # one batched matmul over the segments padded to the longest, never per sample
        grads = np.empty((n_seg, self.n_params))
        for net in (a, c):
            grads[:, net.pre_b.start : net.hi] = per_seg(grad[:, net.pre_b.start : net.hi], False)
        pos = np.arange(n) - starts[seg_of]
        g_pad = np.zeros((n_seg, lens.max(), a.nq + c.nq))
        g_pad[seg_of, pos, : a.nq], g_pad[seg_of, pos, a.nq :] = g_za, g_zc
        o_pad = np.zeros((n_seg, lens.max(), a.d))
        o_pad[seg_of, pos] = obs
        w_in = np.matmul(g_pad.transpose(0, 2, 1), o_pad)  # [J, nq_actor + nq_critic, d]
        grads[:, a.pre_w] = w_in[:, : a.nq].reshape(n_seg, -1)
        grads[:, c.pre_w] = w_in[:, a.nq :].reshape(n_seg, -1)
        losses = per_seg(per_step, mean)
        stats = {
            "policy": torch.from_numpy(per_seg(-chosen * td, mean)),
            "value": torch.from_numpy(per_seg(td * td, mean)),
            "entropy": torch.from_numpy(per_seg(entropy, True)),
        }
        return torch.from_numpy(grads), torch.from_numpy(losses), stats

    @staticmethod
    def _linear_core_backward(net: _Net, rows, h, g_q, grad) -> np.ndarray:
        grad[:, net.core_w] = (g_q[:, :, None] * h[:, None, :]).reshape(len(h), -1)
        grad[:, net.core_b] = g_q
        w = rows[:, net.core_w].reshape(-1, net.nq, net.nq)
        return np.matmul(g_q[:, None, :], w)[:, 0, :]
