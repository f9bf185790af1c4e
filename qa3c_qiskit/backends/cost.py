"""What a backend executes and what it costs: the circuit, primitive calls, circuits and shots per
action and per update, and for ``ibm_runtime*`` the QPU seconds per action, update, episode and
run (from the device's own timing data, :mod:`~qa3c_qiskit.backends.timing`).

``report(name, ...) -> dict`` (no network, no session opened) and ``format_report(dict) -> str``;
``python -m qa3c_qiskit.backends NAME --report [--episodes N --learners K ...]`` prints it.
``evaluation_report(name, episodes, ...)`` / ``format_evaluation`` give the same for
``python -m qa3c_qiskit.evaluate`` (episodes side by side: one call per step, no gradients).
``print_header`` prints either above a training run or an evaluation.

Counting follows the code path of :mod:`~qa3c_qiskit.backends.gradient`: an action is one
primitive call of one PUB holding one circuit per acting learner; an update is one call of one
PUB for all closed segments, each segment of ``S`` steps contributing ``2 S`` differentiated
samples (actor ``S``, critic ``S``), each ``1 + 2 G`` circuits with the parameter-shift gradient
(the unshifted circuit and the two shifts of each of the ``G`` parameterized gates of the
executed circuit) or 3 with SPSA (the value and ``theta +- c Delta``), plus the critic's
bootstrap state, forward-only (1 circuit: its value is detached, so it is not differentiated).
The report gives the update cost of both gradients (``per_update["circuits_per_segment_by_gradient"]``).
"""

from __future__ import annotations

import math
from dataclasses import replace

from .registry import (
    GRADIENTS,
    Profile,
    _credential_problems,
    is_local,
    load_profile,
    profile_problems,
    runtime_targets,
)

#: the env's time limit where nothing else is given: the mean episode length is then an upper
#: bound (CartPole-v1 500, Acrobot-v1 500, SimpleCrossing 4 * 9 * 9 = 324)
DEFAULT_EPISODE_LENGTH = {"CartPole-v1": 500, "Acrobot-v1": 500}
MINIGRID_EPISODE_LENGTH = 324


def executes(p: Profile) -> str:
    """What runs the circuits of profile ``p``, in words."""
    if p.kind == "statevector":
        return "in-package exact torch statevector engine (no primitive calls)"
    if p.kind == "torch_density":
        src = f" with {p.noise_source} noise" if p.noise_source else ""
        return f"in-package torch density-matrix engine{src} (not Aer)"
    if p.kind == "aer":
        src = f" with {p.noise_source} noise on the logical qubits" if p.noise_source else ""
        return f"Aer ({'sampled' if p.shots else 'exact'}){src}"
    if p.kind == "aer_device":
        return f"Aer with {p.noise_source}'s noise model and coupling map (routed)"
    names = ", ".join(runtime_targets(p))
    if is_local(p):
        return f"IBM Runtime local testing mode on {names} (simulated, no QPU)"
    return f"IBM Runtime on the real QPU(s) {names} (billed)"


def _timing_backend(p: Profile, n_qubits: int):
    """The backend whose timing is used without network: the fake backend (local mode), else the
    fake snapshot of the same device (``ibm_brisbane`` -> ``FakeBrisbane``), else FakeBrisbane."""
    from . import noise

    name = runtime_targets(p)[0]
    if is_local(p):
        return noise.fake_backend_window(name, n_qubits), f"{name} (fake backend)"
    fake = "Fake" + name.removeprefix("ibm_").capitalize()
    try:
        return noise.fake_backend(fake), f"{fake} snapshot of {name}"
    except ValueError:
        return noise.fake_backend("FakeBrisbane"), f"FakeBrisbane snapshot (no snapshot of {name})"


def executed_circuit(p: Profile, n_qubits: int = 8, n_layers: int = 2, entangler="double_ring"):
    """(circuit as executed, backend used for timing or None, note) for profile ``p``."""
    from ..circuit import build_vqc

    vqc = build_vqc(n_qubits, n_layers, entangler)
    if p.kind in ("statevector",) or (p.kind in ("aer", "torch_density") and not p.noise_source):
        return vqc.circuit, None, "logical circuit"
    from . import execution, noise

    if p.kind in ("aer", "torch_density"):
        _, circuit = execution._logical_device_circuit(p, vqc)
        return circuit, None, f"{p.noise_source} basis gates, logical qubits (no routing)"
    if p.kind == "aer_device":
        device = noise.fake_backend(p.noise_source)
        return execution.device_circuit(p, device, vqc.circuit), device, p.noise_source
    backend, note = _timing_backend(p, n_qubits)
    return execution.device_circuit(p, backend, vqc.circuit), backend, note


def report(
    name: str,
    *,
    episodes: int = 1,
    learners: int = 1,
    episode_length: float | None = None,
    env: str = "CartPole-v1",
    update_every: int = 5,
    shots: int | None = None,
    n_qubits: int = 8,
    n_layers: int = 2,
    entangler: str = "double_ring",
) -> dict:
    """The cost report of backend ``name`` for a run of ``episodes`` episodes with ``learners``
    actor-learners (no network, nothing opened). ``episode_length``: assumed mean episode length
    (default: the env's time limit, an upper bound)."""
    from . import timing
    from .gradient import GateShiftPlan, circuits_per_sample

    p = load_profile(name)
    if shots is not None:
        p = replace(p, shots=shots)
    # the report needs no account: every problem but missing credentials is an error
    no_account = set(_credential_problems(p)) if p.kind == "ibm_runtime" else set()
    problems = [x for x in profile_problems(p, n_qubits) if x not in no_account]
    if problems:
        raise ValueError("; ".join(problems))
    if episode_length is None:
        episode_length = DEFAULT_EPISODE_LENGTH.get(
            env, MINIGRID_EPISODE_LENGTH if env.startswith("MiniGrid-") else 500
        )
    circuit, backend, note = executed_circuit(p, n_qubits, n_layers, entangler)
    used = set()
    two_q = 0
    for inst in circuit.data:
        if inst.operation.name == "barrier":
            continue
        qs = [circuit.find_bit(q).index for q in inst.qubits]
        used.update(qs)
        two_q += len(qs) == 2
    layout = (circuit.metadata or {}).get("layout")
    g = GateShiftPlan(circuit).num_gates
    grad = p.gradient_options()
    per_sample = circuits_per_sample(grad["gradient"], g)
    s = update_every
    grad_samples = 2 * s  # differentiated samples per segment; + 1 forward-only bootstrap

    def per_segment(n_circuits: int) -> int:
        return grad_samples * n_circuits + 1

    length = float(episode_length)
    # per episode (one learner): L actions; ceil(L / S) segments: 2 L differentiated samples
    # and ceil(L / S) forward-only bootstrap states
    n_seg = math.ceil(length / s)
    precision = p.runtime.get("precision") if p.kind == "ibm_runtime" else None
    shots_c = timing.shots_for(p.shots, precision)
    quantum = p.kind != "statevector"
    out = {
        "backend": p.name,
        "kind": p.kind,
        "executes": executes(p),
        "circuit": {
            "note": note,
            "width": circuit.num_qubits,
            "qubits_used": len(used),
            "depth": circuit.depth(),
            "two_qubit_gates": two_q,
            "ops": dict(circuit.count_ops()),
            "layout": layout,
            "parameterized_gates": g,
        },
        "shots_per_circuit": shots_c or None,
        "assumptions": {
            "episodes": episodes,
            "learners": learners,
            "mean_episode_length": length,
            "update_every": s,
            "env": env,
        },
        "per_action": {
            "calls": 1 if quantum else 0,
            "circuits": learners if quantum else 0,
            "note": f"one call for the {learners} acting learner(s) of a process, one PUB",
        },
        "gradient": grad if quantum else {"gradient": "exact (adjoint)"},
        "per_update": {
            "calls": 1 if quantum else 0,
            "circuits_per_segment": per_segment(per_sample) if quantum else 0,
            "circuits_per_segment_by_gradient": {
                name: per_segment(circuits_per_sample(name, g)) if quantum else 0
                for name in GRADIENTS
            },
            "note": f"one call for all closed segments; a {s}-step segment = {grad_samples} "
            f"samples x {per_sample} circuits + 1 forward-only bootstrap state",
        },
        "per_episode": {
            "circuits": (length + 2 * length * per_sample + n_seg) if quantum else 0,
            "calls_upper_bound": (length + n_seg) if quantum else 0,
        },
    }
    for key in ("per_action", "per_update", "per_episode"):
        out[key]["shots"] = (
            out[key].get("circuits", out[key].get("circuits_per_segment", 0)) * shots_c
        )
    run_circuits = out["per_episode"]["circuits"] * episodes
    out["run"] = {
        "circuits": run_circuits,
        "shots": run_circuits * shots_c,
        "calls_estimate": math.ceil(out["per_episode"]["calls_upper_bound"] * episodes / learners),
    }
    if backend is not None and p.kind == "ibm_runtime":
        rep = timing.rep_delay(backend)
        dur = timing.circuit_duration(circuit, backend)
        sec = shots_c * (rep + dur)  # one circuit
        out["timing"] = {
            "source": note,
            "rep_delay_s": rep,
            "circuit_duration_s": dur,
            "seconds_per_shot": rep + dur,
            "seconds_per_circuit": sec,
            "note": "QPU seconds of the circuits alone (lower bound): excludes Runtime's per-job "
            "overhead and error-mitigation circuits (resilience_level >= 1)",
        }
        out["qpu_seconds"] = {
            "per_action": learners * sec,
            "per_update_segment": per_segment(per_sample) * sec,
            "per_update_segment_by_gradient": {
                name: n * sec
                for name, n in out["per_update"]["circuits_per_segment_by_gradient"].items()
            },
            "per_episode": out["per_episode"]["circuits"] * sec,
            "run": run_circuits * sec,
        }
    return out


def evaluation_report(
    name: str,
    episodes: int,
    *,
    env: str = "CartPole-v1",
    episode_length: float | None = None,
    shots: int | None = None,
    n_qubits: int = 8,
    n_layers: int = 2,
    entangler: str = "double_ring",
) -> dict:
    """The cost of evaluating ``episodes`` episodes side by side on backend ``name``: the
    training report's circuit and timing, plus ``evaluation`` = one primitive call (one PUB)
    per lockstep step serving every unfinished episode, no gradients; upper bounds from the
    episode length (default: the env's time limit)."""
    r = report(
        name,
        episodes=episodes,
        learners=episodes,
        episode_length=episode_length,
        env=env,
        shots=shots,
        n_qubits=n_qubits,
        n_layers=n_layers,
        entangler=entangler,
    )
    length = r["assumptions"]["mean_episode_length"]
    quantum = r["per_action"]["calls"] > 0
    circuits = episodes * length if quantum else 0
    ev = {
        "episodes": episodes,
        "episode_length": length,
        "calls_upper_bound": math.ceil(length) if quantum else 0,
        "circuits_upper_bound": circuits,
        "shots_upper_bound": circuits * (r["shots_per_circuit"] or 0),
    }
    if "timing" in r:
        ev["qpu_seconds_upper_bound"] = circuits * r["timing"]["seconds_per_circuit"]
    r["evaluation"] = ev
    return r


def _backend_lines(r: dict, parameterized_gates: bool = False) -> list[str]:
    """A report's first lines: the backend, what executes it, the executed circuit."""
    c = r["circuit"]
    gates = f", {c['parameterized_gates']} parameterized gates" if parameterized_gates else ""
    return [
        f"backend {r['backend']} (kind {r['kind']}): {r['executes']}",
        f"  executed circuit ({c['note']}): {c['qubits_used']} qubits used of {c['width']}, "
        f"depth {c['depth']}, {c['two_qubit_gates']} two-qubit gates{gates}"
        + (f", layout {c['layout']}" if c["layout"] else ""),
    ]


def format_evaluation(r: dict) -> str:
    """:func:`evaluation_report` as plain text lines (the ``evaluate`` header)."""
    e = r["evaluation"]
    lines = _backend_lines(r)
    if not e["calls_upper_bound"]:
        lines.append("  no primitive calls: the in-package exact engine")
        return "\n".join(lines)
    lines.append(
        f"  evaluation: {e['episodes']} episodes side by side, 1 call (1 PUB) per step for all "
        f"unfinished episodes: <= {e['calls_upper_bound']:,} calls, "
        f"<= {e['circuits_upper_bound']:,.0f} circuits, "
        f"<= {e['shots_upper_bound']:,.0f} shots (episode length <= {e['episode_length']:g})"
    )
    if "qpu_seconds_upper_bound" in e:
        t = r["timing"]
        lines.append(
            f"  QPU time <= {_fmt_s(e['qpu_seconds_upper_bound'])} "
            f"({t['seconds_per_circuit']:.3g} s per circuit, {t['source']}; {t['note']})"
        )
    return "\n".join(lines)


def _fmt_s(x: float) -> str:
    if x < 120:
        return f"{x:.3g} s"
    if x < 7200:
        return f"{x / 60:.3g} min"
    return f"{x / 3600:.3g} h"


def _fmt_gradient(grad: dict) -> str:
    if grad["gradient"] == "spsa":
        return (
            f"spsa (c = {grad['spsa_perturbation']:g} rad, spsa_seed {grad['spsa_seed']}; "
            f"unbiased up to O(c^2), more variance)"
        )
    return f"{grad['gradient']} (exact in expectation)"


def format_report(r: dict) -> str:
    """The report as plain text lines (for the CLI and the train header)."""
    a = r["assumptions"]
    lines = _backend_lines(r, parameterized_gates=True)
    if r["per_action"]["calls"] == 0:
        lines.append("  no primitive calls: autograd on the in-package engine")
        return "\n".join(lines)
    shots = r["shots_per_circuit"] or 0
    lines += [
        f"  shots per circuit: {shots or 'exact'}",
        f"  per action: 1 call, {r['per_action']['circuits']} circuit(s) "
        f"({a['learners']} learner(s))",
        f"  per update: 1 call, {r['per_update']['circuits_per_segment']:,} circuits per closed "
        f"{a['update_every']}-step segment ({r['per_update']['note'].split('; ')[1]})",
        f"  gradient {_fmt_gradient(r['gradient'])}; circuits per update segment: "
        + ", ".join(
            f"{name} {n:,}"
            for name, n in r["per_update"]["circuits_per_segment_by_gradient"].items()
        ),
        f"  per episode (mean length {a['mean_episode_length']:g} steps assumed): "
        f"{r['per_episode']['circuits']:,.0f} circuits",
        f"  run ({a['episodes']} episodes, {a['learners']} learner(s)): "
        f"{r['run']['circuits']:,.0f} circuits, {r['run']['shots']:,.0f} shots, "
        f"~{r['run']['calls_estimate']:,} primitive calls",
    ]
    if "qpu_seconds" in r:
        t, q = r["timing"], r["qpu_seconds"]
        lines += [
            f"  timing ({t['source']}): rep_delay {t['rep_delay_s'] * 1e6:.0f} us + circuit "
            f"{t['circuit_duration_s'] * 1e6:.1f} us per shot = "
            f"{t['seconds_per_circuit']:.3g} s per circuit",
            f"  QPU time: per action {_fmt_s(q['per_action'])}, per update segment "
            f"{_fmt_s(q['per_update_segment'])}, per episode {_fmt_s(q['per_episode'])}, "
            f"run {_fmt_s(q['run'])}",
            "  QPU time per update segment by gradient: "
            + ", ".join(
                f"{name} {_fmt_s(v)}" for name, v in q["per_update_segment_by_gradient"].items()
            ),
            f"  ({t['note']})",
        ]
    return "\n".join(lines)


def print_header(spec, env: str, episodes: int, cap: float | None, **training) -> None:
    """Print the cost report of ``spec``'s backend (a ``ModelSpec``: its circuit and shots)
    above a training run (``training``: its ``learners`` and ``update_every``) or, without
    ``training``, an evaluation of ``episodes`` episodes; with the QPU budget ``cap``
    (``--max-qpu-seconds``) where QPU time is estimated. A report that fails is said, not
    raised: the header must not stop a valid run."""
    circuit = {k: getattr(spec, k) for k in ("shots", "n_qubits", "n_layers", "entangler")}
    try:
        if training:
            r = report(spec.backend, episodes=episodes, env=env, **training, **circuit)
        else:
            r = evaluation_report(spec.backend, episodes, env=env, **circuit)
    except Exception as exc:  # noqa: BLE001 - see above
        print(f"cost report unavailable: {exc}")
        return
    print(format_report(r) if training else format_evaluation(r))
    if cap is not None and "timing" in r:  # the QPU seconds are estimated from the timing
        print(f"  QPU budget (--max-qpu-seconds): {cap:g} s")
