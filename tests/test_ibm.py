"""IBM Runtime path, offline: cost report, Runtime options, one backend per worker rank, seeds
per call, safe stops and the QPU usage meter (qiskit-ibm-runtime local testing mode)."""

from __future__ import annotations

import warnings

import pytest
import torch

from qa3c_qiskit import backends
from qa3c_qiskit.backends import cost, execution, quantum_layer_factory
from qa3c_qiskit.models import ModelSpec

LOCAL = (
    'kind = "ibm_runtime"\nshots = 64\nseed = 1\n[runtime]\nfake_backend = "FakeManilaV2"\n'
    "resilience_level = 0\n"
)


def profile(tmp_path, text: str, name: str = "rt") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def layer(name: str, n_qubits: int = 2):
    return quantum_layer_factory(ModelSpec(4, 2, backend=name, n_qubits=n_qubits, n_layers=1))()


def test_report_counts_match_the_counting_estimator_on_a_real_batch():
    """Circuits per update segment from the report == what CountingEstimator counts for a
    segment's 2S samples with gradients plus its forward-only bootstrap state (aer_shots,
    2 qubits, 1 layer)."""
    r = cost.report("aer_shots", n_qubits=2, n_layers=1, update_every=3, learners=2)
    lay = layer("aer_shots")
    c = lay.counter
    c.reset()
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    w = 0.1 * torch.randn(7, 6, dtype=torch.float64)
    lay.functional(x, w, n_grad=6).sum().backward()
    assert (c.calls, c.pubs) == (1, 1)
    assert c.circuits == r["per_update"]["circuits_per_segment"]
    assert r["per_action"] == {**r["per_action"], "calls": 1, "circuits": 2}
    lay.close()


def test_report_ibm_runtime_qpu_seconds_from_device_timing(capsys):
    """The real target (no network): FakeBrisbane's timing, ~7-8 QPU minutes per 5-step update."""
    r = cost.report("ibm_runtime", episodes=10, learners=4, episode_length=100)
    t, q = r["timing"], r["qpu_seconds"]
    assert t["rep_delay_s"] == pytest.approx(250e-6)
    assert 20e-6 < t["circuit_duration_s"] < 200e-6
    assert r["per_update"]["circuits_per_segment"] == 10 * 129 + 1  # bootstrap forward-only
    assert 5 * 60 < q["per_update_segment"] < 10 * 60
    assert q["run"] == pytest.approx(q["per_episode"] * 10)
    assert r["circuit"]["two_qubit_gates"] > 50 and len(r["circuit"]["layout"]) == 8
    assert backends.main(["ibm_runtime_local", "--report", "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "QPU time" in out and "FakeBrisbane" in out and "local testing mode" in out


@pytest.mark.parametrize(
    "extra, needle",
    [
        ('mode = "sessions"\n', "mode = 'sessions' is not accepted; choose one of 'session'"),
        ("resilience_level = 3\n", "resilience_level = 3 is not accepted; choose one of 0, 1, 2"),
        ('dd_sequence = "XZ"\n', "'XX', 'XpXm', 'XY4'"),
        ("max_execution_time = -5\n", "max_execution_time = -5 is not accepted"),
        ('twirling_gates = "yes"\n', "twirling_gates = 'yes' is not accepted; expected true"),
        ("colour = 1\n", "unknown [runtime] key(s) colour"),
        ("fake_backends = []\n", "fake_backends must be a non-empty list"),
    ],
)
def test_bad_runtime_options_are_one_line_errors(tmp_path, extra, needle):
    with pytest.raises(ValueError) as exc:
        backends.check_backend(
            profile(tmp_path, LOCAL.replace("resilience_level = 0\n", "") + extra)
        )
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_runtime_options_reach_the_estimator_and_mode_objects(tmp_path):
    from qiskit_ibm_runtime import Batch

    path = profile(
        tmp_path,
        LOCAL + 'mode = "batch"\ndynamical_decoupling = true\ndd_sequence = "XY4"\n'
        "twirling_gates = true\nmax_execution_time = 300\nsession_max_time = 900\n",
    )
    lay = layer(path)
    try:
        est = lay.built.execution.estimator
        opts = est.options
        assert opts.resilience_level == 0 and opts.default_shots == 64
        assert opts.dynamical_decoupling.enable and opts.dynamical_decoupling.sequence_type == "XY4"
        assert opts.twirling.enable_gates is True and opts.max_execution_time == 300
        (entry,) = execution._SESSIONS.values()
        assert isinstance(entry[0], Batch)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with torch.no_grad():
                y = lay.functional(torch.randn(2, 2, dtype=torch.float64), 0.1 * torch.randn(2, 6))
        assert y.shape == (2, 2)
    finally:
        lay.close()
    assert not execution._SESSIONS


def test_job_mode_opens_no_session(tmp_path):
    lay = layer(profile(tmp_path, LOCAL + 'mode = "job"\n'))
    try:
        with torch.no_grad():
            lay.functional(torch.randn(1, 2, dtype=torch.float64), 0.1 * torch.randn(1, 6))
        (entry,) = execution._SESSIONS.values()
        assert entry[0] is None
    finally:
        lay.close()


def test_one_backend_per_worker_rank(tmp_path):
    path = profile(
        tmp_path,
        'kind = "ibm_runtime"\nshots = 64\n[runtime]\n'
        'fake_backends = ["FakeManilaV2", "FakeLimaV2"]\nresilience_level = 0\n',
    )
    p = backends.resolve(path)
    names = []
    try:
        for rank in range(3):
            execution.set_worker_rank(rank)
            lay = layer(path)
            names.append(lay.built.execution.circuit.metadata["device"])
            lay.close()
    finally:
        execution._RANK[0] = None
    assert names == ["fake_manila", "fake_lima", "fake_manila"]
    assert [backends.registry.backend_for_rank(p, r) for r in range(3)] == [
        "FakeManilaV2",
        "FakeLimaV2",
        "FakeManilaV2",
    ]


def test_local_mode_seed_differs_per_call_and_usage_is_metered(tmp_path):
    execution.reset_qpu_usage()
    lay = layer(profile(tmp_path, LOCAL))
    x = torch.randn(4, 2, dtype=torch.float64)
    w = 0.1 * torch.randn(4, 6, dtype=torch.float64)
    try:
        with torch.no_grad():
            y1, y2 = lay.functional(x, w), lay.functional(x, w)
        assert not torch.equal(y1, y2)  # shot noise is not bit-identical
        u = execution.qpu_usage()
        assert u["jobs"] == 2 and u["circuits"] == 8 and u["shots"] == 8 * 64
        assert u["qpu_seconds"] == pytest.approx(u["estimated_s"]) and u["qpu_seconds"] > 0
    finally:
        lay.close()


def test_close_all_cancels_in_flight_jobs_and_closes_sessions(tmp_path, monkeypatch):
    lay = layer(profile(tmp_path, LOCAL))
    assert lay.counter is not None  # builds: opens the session
    (entry,) = execution._SESSIONS.values()
    calls = []

    class Job:
        def cancel(self):
            calls.append("cancel")

    monkeypatch.setattr(entry[0], "close", lambda: calls.append("close"))
    execution._IN_FLIGHT.add(Job())
    assert execution.close_all() == {"cancelled": 1, "closed": 1}
    assert calls == ["cancel", "close"] and not execution._SESSIONS
    assert execution.close_all() == {"cancelled": 0, "closed": 0}  # idempotent
    lay.close()  # after close_all: nothing left, no error


def test_real_ibm_backend_requires_max_qpu_seconds_local_mode_does_not(tmp_path, monkeypatch):
    from qa3c_qiskit.config import TrainConfig
    from qa3c_qiskit.train import validate

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "dummy")  # credentials "present": no network used
    out = str(tmp_path / "runs")
    with pytest.raises(ValueError) as exc:
        validate(TrainConfig(backend="ibm_runtime", episodes=1, workers=1, out=out))
    msg = str(exc.value)
    assert "--max-qpu-seconds" in msg and "\n" not in msg and "ibm_runtime" in msg
    validate(TrainConfig(backend="ibm_runtime", episodes=1, workers=1, out=out, max_qpu_seconds=60))
    validate(TrainConfig(backend="ibm_runtime_local", episodes=1, workers=1, out=out))
    with pytest.raises(ValueError, match="--max-qpu-seconds must be > 0"):
        validate(TrainConfig(episodes=1, workers=1, out=out, max_qpu_seconds=0))


def test_stop_handler_closes_sessions_then_exits(tmp_path):
    import os
    import signal

    lay = layer(profile(tmp_path, LOCAL))
    assert lay.counter is not None and execution._SESSIONS
    old = signal.getsignal(signal.SIGTERM)
    try:
        execution.install_stop_handler([signal.SIGTERM])
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.1) if hasattr(signal, "sigtimedwait") else None
        assert exc.value.code == 128 + signal.SIGTERM
        assert not execution._SESSIONS
        assert set(execution.usage_counters()) == {
            "qpu_s",
            "qpu_measured_s",
            "qpu_estimated_s",
            "qpu_jobs",
        }
    finally:
        signal.signal(signal.SIGTERM, old)
        lay.close()


def test_supervisor_stops_the_run_at_the_qpu_cap_and_counts_restarted_workers():
    """The trainer sums the workers' cumulative QPU seconds (a restarted process starts again
    from 0) and asks the runner to stop once --max-qpu-seconds is reached."""
    import types

    from qa3c_qiskit.supervise import _Supervisor

    stops, events = [], []
    run = types.SimpleNamespace(
        cfg=types.SimpleNamespace(max_qpu_seconds=100.0),
        events=events.append,
        state=types.SimpleNamespace(wall_time_s=0.0, episodes_done=0),
    )
    runner = types.SimpleNamespace(stop=lambda: stops.append(1))
    prog = types.SimpleNamespace(event=events.append)
    sup = _Supervisor(run, runner, None, prog)
    sup._meter_qpu({"worker": 0, "qpu_s": 30.0})
    sup._meter_qpu({"worker": 1, "qpu_s": 40.0})
    sup._meter_qpu({"worker": 0, "qpu_s": 5.0})  # worker 0 restarted: 30 + 5
    assert sup.qpu_seconds == 75.0 and not stops
    sup._meter_qpu({"worker": 1, "qpu_s": 66.0})  # 30 + 5 + 66 = 101 >= 100
    assert sup.qpu_seconds == 101.0 and stops == [1] and sup.qpu_capped
    assert any("--max-qpu-seconds" in e for e in events)
    sup._meter_qpu({"worker": 1, "qpu_s": 70.0})
    assert stops == [1]  # asked once


# -- workers that share a QPU share the supervisor's one Session/Batch ------------------------
def test_shared_ranks_only_for_runtime_session_or_batch(tmp_path):
    from qa3c_qiskit.backends import broker

    two = (
        'kind = "ibm_runtime"\nshots = 64\n[runtime]\n'
        'fake_backends = ["FakeManilaV2", "FakeLimaV2"]\nresilience_level = 0\n'
    )
    p = backends.resolve(profile(tmp_path, two))
    assert broker.shared_ranks(p, 2) == {}  # one backend per worker: in-process sessions
    assert broker.shared_ranks(p, 5) == {"FakeManilaV2": [0, 2, 4], "FakeLimaV2": [1, 3]}
    p1 = backends.resolve(profile(tmp_path, LOCAL + 'mode = "batch"\n', "b"))
    assert broker.shared_ranks(p1, 1) == {} and broker.shared_ranks(p1, 2) == {
        "FakeManilaV2": [0, 1]
    }
    job = backends.resolve(profile(tmp_path, LOCAL + 'mode = "job"\n', "j"))
    assert broker.shared_ranks(job, 4) == {}  # jobs mode: nothing to share
    for name in ("statevector", "aer_shots", "density_noisy"):  # no proxy, no Runtime import
        assert broker.broker_for(ModelSpec(4, 2, backend=name), 4) is None


def _layer_outputs(spec, conn, rank=1):
    """One layer's values and gradients with the worker seed fixed, through the supervisor's
    session (``conn``) or an in-process one (None)."""
    execution.ExecutionBuilder._count = 0
    torch.manual_seed(3)
    execution.set_broker(conn)
    execution.set_worker_rank(rank)
    execution.reset_qpu_usage()
    lay = quantum_layer_factory(spec)()
    try:
        x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2).requires_grad_()
        w = (0.1 * torch.arange(18, dtype=torch.float64).reshape(3, 6)).requires_grad_()
        y = lay.functional(x, w, n_grad=2)
        y.sum().backward()
        return y.detach(), x.grad, w.grad, execution.qpu_usage()
    finally:
        lay.close()
        execution.set_broker(None)
        execution._RANK[0] = None


def test_shared_session_gives_the_in_process_numbers_exactly(tmp_path, monkeypatch):
    """A worker submitting through the supervisor's session gets the same values and gradients
    as with its own session (same simulator seeds: bit-identical), and meters the same usage;
    one session is opened for the shared backend and closed by the broker."""
    import json

    from qa3c_qiskit.backends import broker

    log = tmp_path / "sessions.jsonl"
    monkeypatch.setenv("QA3C_SESSION_LOG", str(log))
    spec = ModelSpec(4, 2, backend=profile(tmp_path, LOCAL), n_qubits=2, n_layers=1)
    b = broker.broker_for(spec, 2)
    assert b.shared == {"FakeManilaV2": [0, 1]} and b.connect(5) is None
    try:
        shared = _layer_outputs(spec, b.connect(1))
    finally:
        stats = b.close()
    own = _layer_outputs(spec, None)
    for a, c in zip(shared[:3], own[:3]):
        assert torch.equal(a, c)
    assert shared[3] == own[3] and shared[3]["jobs"] == 1 and shared[3]["circuits"] == 2 * 21 + 1
    assert stats == {"opened": 1, "closed": 1, "cancelled": 0} and b.calls == {1: 1}
    events = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [e for e in events if e.get("shared")]
    assert [e["event"] for e in mine] == ["open", "close"] and mine[1]["calls"] == {"1": 1}
    assert b.close() is stats  # idempotent


def test_broker_close_cancels_in_flight_jobs_and_closes_the_session(tmp_path, monkeypatch):
    import threading

    from qa3c_qiskit.backends import broker, remote

    class Job:
        def __init__(self):
            self.cancelled = threading.Event()

        def done(self):
            return self.cancelled.is_set()

        def cancel(self):
            self.cancelled.set()

    jobs, closed = [], []

    class Estimator:
        options = None

        def run(self, pubs, precision=None):
            jobs.append(Job())
            return jobs[-1]

    spec = ModelSpec(4, 2, backend=profile(tmp_path, LOCAL), n_qubits=2, n_layers=1)
    b = broker.broker_for(spec, 2)
    monkeypatch.setattr(execution, "_runtime_estimator", lambda mode, opts: Estimator())
    client = remote.BrokerClient(b.connect(0))
    est = remote.RemoteEstimator(client, "FakeManilaV2", None)
    ((mode, _),) = b._sessions.values()
    monkeypatch.setattr(mode, "close", lambda: closed.append(1))
    lay = layer(spec.backend)
    circuit = lay.built.execution.circuit
    job = est.run([(circuit, lay.built.execution.observables[0], [0.0] * circuit.num_parameters)])
    for _ in range(200):  # the broker thread submits it
        if jobs:
            break
        threading.Event().wait(0.01)
    assert b.close() == {"opened": 1, "closed": 1, "cancelled": 1}
    assert jobs[0].cancelled.is_set() and closed == [1]
    with pytest.raises(remote.BrokerError, match="cancelled"):
        job.result()
    lay.close()
    # a worker's own cancel (SIGTERM in the worker: close_all) reaches the broker too
    b2 = broker.broker_for(spec, 2)
    client2 = remote.BrokerClient(b2.connect(1))
    est2 = remote.RemoteEstimator(client2, "FakeManilaV2", None)
    job2 = est2.run([(circuit, lay.built.execution.observables[0], [0.0] * circuit.num_parameters)])
    job2.cancel()
    with pytest.raises(remote.BrokerError, match="cancelled"):
        job2.result()
    assert b2.close()["cancelled"] == 1
    lay.close()


def _train_cli(tmp_path, *args, env=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "qa3c_qiskit.train", "--quiet", "--out", str(tmp_path)]
    cmd += ["--model", "quantum", "--n-qubits", "2", "--n-layers", "1"]
    cmd += ["--env", "qa3c_faults:Truncating-v0", *map(str, args)]  # 7-step episodes
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stop", [None, "SIGTERM", pytest.param("cap", marks=pytest.mark.slow)])
def test_two_workers_on_one_backend_share_one_session_end_to_end(tmp_path, stop):
    """``train --workers 2`` on one local-mode backend: the supervisor opens exactly one session,
    both workers' calls go through it, and it is closed at the end, on SIGTERM and at the QPU
    cap (its usage metered in summary.json; slow: the cap stops it like SIGTERM, through
    ``runner.stop()``)."""
    import json
    import signal
    import time

    log = tmp_path / "sessions.jsonl"
    path = profile(tmp_path, LOCAL)
    extra = {"SIGTERM": ["--episodes", "1000"], "cap": ["--episodes", "1000"]}.get(
        stop, ["--episodes", "4"]
    )
    if stop == "cap":
        extra += ["--max-qpu-seconds", "2"]
    proc = _train_cli(
        tmp_path, "--backend", path, "--workers", "2", "--run-name", "r", *extra,
        env={"QA3C_SESSION_LOG": str(log)},
    )  # fmt: skip
    metrics = tmp_path / "r" / "metrics.csv"
    if stop == "SIGTERM":
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            rows = metrics.read_text().splitlines()[1:] if metrics.exists() else []
            if len({r.split(",")[1] for r in rows}) == 2:  # an episode of each worker
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == (0 if stop != "SIGTERM" else 128 + signal.SIGTERM) or (
        stop == "SIGTERM" and proc.returncode != 0
    ), err[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["open", "close"], events
    assert {e["pid"] for e in events} == {proc.pid} and all(e["shared"] for e in events)
    calls = events[1]["calls"]
    assert set(calls) == {"0", "1"} and min(calls.values()) > 0, calls
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["qpu_seconds_used"] > 0
    if stop == "cap":
        assert summary["qpu_seconds_used"] >= 2 and summary["episodes"] < 1000
