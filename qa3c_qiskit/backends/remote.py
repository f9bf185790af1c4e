"""Workers that share a QPU, worker side: primitive calls sent to the supervisor's session.

Where several worker processes are bound to one IBM backend (``[runtime] backends[rank % n]``)
in ``session`` or ``batch`` mode, the supervisor owns that backend's single Session or Batch
(:class:`~qa3c_qiskit.backends.broker.SessionBroker`) and every such worker gets one end of a
pipe to it. The worker still builds everything else itself (backend object, transpiled circuit,
observables, parameter values, simulator seeds, the QPU meter): only ``EstimatorV2.run`` crosses
the pipe. :class:`RemoteEstimator` stands in for the Runtime estimator inside
:class:`~qa3c_qiskit.backends.execution.RuntimeEstimator`, so the in-process and the shared
path differ in nothing but where the job is submitted.

Protocol (pickled tuples, worker -> supervisor; each request answered in order):

* ``("open", layer, backend_name)`` -> ``("ok", layer, None)`` or ``("error", layer, text)``;
* ``("circuit", key, circuit)``: a circuit, sent once per connection (PUBs then name its key);
* ``("run", req, layer, pubs, precision, seed)`` with ``pubs`` = ``[(key, observables,
  parameter_values, precision)]`` -> ``("result", req, (PrimitiveResult, usage_s | None))``,
  ``("cancelled", req, None)`` or ``("error", req, text)``;
* ``("cancel", req)``: cancel that job if still running (also done on EOF: a worker that dies
  leaves nothing running);
* ``("close", layer)``: the layer is closed (the session stays open: the supervisor closes it).
"""

from __future__ import annotations

import threading

from qiskit.primitives import BaseEstimatorV2


class BrokerError(RuntimeError):
    """The supervisor's shared session failed the call, cancelled it, or is gone."""


class BrokerClient:
    """This worker process's end of the pipe to the supervisor's shared sessions."""

    def __init__(self, conn):
        self.conn = conn
        self._lock = threading.Lock()  # one request on the wire at a time
        self._next = 0
        self._circuits: dict[int, tuple[int, object]] = {}  # id(circuit) -> (key, circuit)
        self._replies: dict[int, tuple] = {}  # early replies of other requests

    def _id(self) -> int:
        self._next += 1
        return self._next

    def _send(self, msg) -> None:
        try:
            self.conn.send(msg)
        except (OSError, EOFError, ValueError) as exc:
            raise BrokerError(f"the supervisor's shared session is gone ({exc})") from None

    def _wait(self, req: int) -> tuple:
        while req not in self._replies:
            try:
                kind, rid, payload = self.conn.recv()
            except (OSError, EOFError, ValueError) as exc:
                raise BrokerError(f"the supervisor's shared session is gone ({exc!r})") from None
            self._replies[rid] = (kind, payload)
        kind, payload = self._replies.pop(req)
        if kind == "error":
            raise BrokerError(f"shared session: {payload}")
        return kind, payload

    def open_layer(self, backend_name: str) -> int:
        with self._lock:
            layer = self._id()
            self._send(("open", layer, backend_name))
            self._wait(layer)
            return layer

    def submit(self, layer: int, pubs, precision, seed) -> RemoteJob:
        from qiskit.primitives.containers.estimator_pub import EstimatorPub

        with self._lock:
            wire = []
            for pub in pubs:
                pub = EstimatorPub.coerce(pub, precision)
                ref = self._circuits.get(id(pub.circuit))
                if ref is None or ref[1] is not pub.circuit:
                    ref = self._circuits[id(pub.circuit)] = (self._id(), pub.circuit)
                    self._send(("circuit", ref[0], pub.circuit))
                wire.append((ref[0], pub.observables, pub.parameter_values, pub.precision))
            req = self._id()
            self._send(("run", req, layer, wire, precision, seed))
            return RemoteJob(self, req)

    def collect(self, req: int) -> tuple:
        with self._lock:
            return self._wait(req)

    def cancel(self, req: int) -> None:
        """Best effort, never raises (called from signal handlers through ``close_all``)."""
        try:
            self.conn.send(("cancel", req))
        except Exception:  # noqa: BLE001 - the pipe is gone: the supervisor cancels on EOF
            pass

    def close_layer(self, layer: int) -> None:
        try:
            self.conn.send(("close", layer))
        except Exception:  # noqa: BLE001 - nothing to release on a dead pipe
            pass


class RemoteJob:
    """A job running in the supervisor's session: ``result()`` waits for it, ``usage()`` is
    Runtime's reported QPU seconds (None where it reported none), ``cancel()`` asks for it to
    be cancelled."""

    def __init__(self, client: BrokerClient, req: int):
        self.client, self.req = client, req
        self._reply: tuple | None = None

    def _collect(self) -> tuple:
        if self._reply is None:
            self._reply = self.client.collect(self.req)
        return self._reply

    def result(self):
        kind, payload = self._collect()
        if kind == "cancelled":
            raise BrokerError(f"job {self.req} was cancelled by the supervisor")
        return payload[0]

    def usage(self) -> float | None:
        kind, payload = self._collect()
        return payload[1] if kind == "result" else None

    def done(self) -> bool:
        return self._reply is not None

    def cancel(self) -> None:
        if self._reply is None:
            self.client.cancel(self.req)


class RemoteEstimator(BaseEstimatorV2):
    """EstimatorV2 whose jobs run in the supervisor's shared session of ``backend_name``.

    ``options`` is a local copy of the Runtime estimator's options (the supervisor builds its
    estimator from the same profile); ``options.simulator.seed_simulator`` set before a call is
    sent with it (local testing mode: the same seeds as the in-process path)."""

    def __init__(self, client: BrokerClient, backend_name: str, options):
        self.client = client
        self._options = options
        self.layer = client.open_layer(backend_name)

    @property
    def options(self):
        return self._options

    def run(self, pubs, *, precision=None) -> RemoteJob:
        seed = getattr(getattr(self._options, "simulator", None), "seed_simulator", None)
        seed = seed if isinstance(seed, int) else None
        return self.client.submit(self.layer, list(pubs), precision, seed)

    def close(self) -> None:
        self.client.close_layer(self.layer)
