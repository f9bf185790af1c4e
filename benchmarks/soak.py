"""Soak test: train for N minutes under random faults, then check that nothing was lost.

    python benchmarks/soak.py [--minutes 20] [--runner local|ray] [--model classical|quantum]
                              [--learners 6] [--workers 2] [--checkpoint-every 10]
                              [--fault-interval 12] [--seed 0] [--out DIR]

Not part of the test suite. Runs ``python -m qa3c_qiskit.train`` (CartPole-v1 by default,
``--learners`` actor-learners on ``--workers`` processes, a checkpoint every few episodes, an
episode budget far beyond reach) as real subprocesses, each in its own session, and every
``--fault-interval`` seconds (randomly 0.5-1.5x) injects one of these faults (weights 4:2:2:2;
the first fault of each session is a kill, so that every session also has to survive one in
place before it may be ended):

* ``worker_kill``: SIGKILL of a worker process (a child of the supervisor; with Ray, a
  ``RayWorker`` actor process below it), which the runner must restart;
* ``sigint``: SIGINT to the supervisor, which must stop, checkpoint and exit 130; the soak
  then continues the run with ``--resume``;
* ``ckpt_fault``: the supervisor's next ``checkpoint.pt`` write fails at the rename with ENOSPC
  (a ``sitecustomize`` hook on the trainer's PYTHONPATH, armed by a marker file named in
  ``QA3C_FAULT=ckptfail=PATH``, the variable tests/qa3c_faults.py reads; the previous
  checkpoint must survive); whatever the trainer does then (continue, or exit 1), the run must
  resume from its last good checkpoint;
* ``ps_kill`` (``--runner ray`` only): SIGKILL of the parameter-server actor's process, which
  the driver must replace from the last synced state.

Only processes this script started are signalled: each target is checked to be a descendant of
the supervisor it launched (walking ``/proc``), never looked up by name machine-wide.

When the time is up, the run is stopped with SIGINT and resumed with a small final budget
(``--tail`` more episodes) and no faults, which must complete (exit 0). Checks, any failure
-> exit code 1:

* ``metrics.csv`` holds episodes 1..budget exactly once, in order (episodes lost = 0, no
  duplicates), after every session as a prefix 1..R;
* the final checkpoint has ``episodes_done == budget``, ``final``, finite parameters and Adam
  moments; ``summary.json`` says complete with the budget's episodes; no process of any session
  outlives it;
* Adam steps: every episode of ``L`` steps makes ``ceil(L / S)`` updates (S = --update-every),
  so per session ``Δstep >= Σ ceil(L/S)`` over the episodes the session's checkpoint holds
  (with Ray, from the last parameter-server restart's rolled-back step on), at most
  ``100 x learners`` more per fault or stop (episodes cut short push updates too), and in the
  fault-free final session ``Δstep == Σ ceil(L/S)`` exactly.

Prints a table of faults by kind (injected, fired, survived), sessions, resumes, rows rolled
back, episodes lost, Adam accounting and wall time, and writes ``soak.json`` next to the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qa3c_qiskit.checkpoint import CHECKPOINT, EVENTS, CheckpointError, load_checkpoint  # noqa: E402

HUGE_BUDGET = 10**7
RESTARTS = 1000  # --max-restarts: faults come often; restarts are per worker and session

#: The trainer's sitecustomize: with ``ckptfail=PATH`` in QA3C_FAULT, the next rename onto
#: ``checkpoint.pt`` after PATH appears fails with ENOSPC (PATH is consumed: one fault per
#: arming). It wraps ``qa3c_qiskit.checkpoint.os`` only, right after that module is executed.
SITECUSTOMIZE = r"""
import os as _os
import sys as _sys


def _fault_marker():
    for item in filter(None, _os.environ.get("QA3C_FAULT", "").split(",")):
        key, _, value = item.replace("=", "@", 1).partition("@")
        if key == "ckptfail":
            return value
    return None


def _patch(module, marker):
    import errno
    import types

    real = module.os

    class _OS(types.ModuleType):
        def __getattr__(self, name):
            return getattr(real, name)

    def replace(src, dst):
        if real.path.basename(dst) == module.CHECKPOINT:
            try:
                real.unlink(marker)  # claim the armed fault (once)
            except FileNotFoundError:
                pass
            else:
                raise OSError(errno.ENOSPC, "No space left on device (injected by soak.py)")
        return real.replace(src, dst)

    shim = _OS("os")
    shim.replace = replace
    module.os = shim


class _Finder:
    def __init__(self, marker):
        self.marker = marker

    def find_spec(self, name, path=None, target=None):
        if name != "qa3c_qiskit.checkpoint":
            return None
        _sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        marker = self.marker

        def exec_module(module):
            run(module)
            _patch(module, marker)

        spec.loader.exec_module = exec_module
        return spec


_marker = _fault_marker()
if _marker:
    _sys.meta_path.insert(0, _Finder(_marker))
"""


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process below ``root`` (not ``root`` itself)."""
    children: dict[int, list[int]] = {}
    starts = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] not in ("Z", "X"):
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[2]
    out, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out[child] = starts[child]
                todo.append(child)
    return out


def alive(pid: int, start: int | None = None) -> bool:
    """``pid`` is a live (not zombie) process (the same one, if its start time is given)."""
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X") and (start is None or st[2] == start)


# -- run files ---------------------------------------------------------------------------------


def read_rows(run: Path) -> list[tuple[int, int]]:
    """(episode, length) of every metrics.csv row, in file order."""
    with open(run / "metrics.csv", newline="") as fh:
        return [(int(float(r["episode"])), int(float(r["length"]))) for r in csv.DictReader(fh)]


def ckpt_info(run: Path) -> dict:
    c = load_checkpoint(run / CHECKPOINT)
    adam = c["adam"] or {}
    return {
        "episodes": int(c["episodes_done"]),
        "step": int(adam.get("step", 0)),
        "nonfinite": int(c["nonfinite_updates_skipped"]),
        "final": bool(c["final"]),
        "finite": bool(
            torch.isfinite(c["flat"]).all()
            and all(torch.isfinite(adam[k]).all() for k in ("exp_avg", "exp_avg_sq") if k in adam)
        ),
        "restarts": int(c["restarts"]),
        "resumes": int(c["resume_count"]),
    }


PS_RESTART = re.compile(
    r"parameter server died .*rolled back to Adam step (\d+) .*reset to the (\d+) episodes"
)


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.out = Path(args.out or tempfile.mkdtemp(prefix="qa3c-soak-")).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.run = self.out / f"soak-{args.runner}-{args.model}-s{args.seed}"
        if self.run.exists():
            raise SystemExit(f"{self.run} exists; choose another --out or --seed")
        self.hooks = self.out / "hooks"
        self.hooks.mkdir(exist_ok=True)
        (self.hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.marker = self.out / f"ckptfail-{args.runner}.armed"
        self.marker.unlink(missing_ok=True)
        self.env = dict(os.environ, QA3C_FAULT=f"ckptfail={self.marker}")
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(self.hooks), str(ROOT), os.environ.get("PYTHONPATH", "")] if p
        )
        self.kinds = ["worker_kill", "sigint", "ckpt_fault"]
        self.kills = ["worker_kill"]
        if args.runner == "ray":
            self.kinds.append("ps_kill")
            self.kills.append("ps_kill")
        self.weights = {"worker_kill": 4, "sigint": 2, "ckpt_fault": 2, "ps_kill": 2}
        import gymnasium as gym

        # updates an episode cut short can have pushed: < its time limit (CartPole-v1: 500) / S
        limit = gym.spec(args.env).max_episode_steps or 10**6
        self.max_cut = math.ceil(limit / args.update_every)
        self.faults: list[dict] = []
        self.sessions: list[dict] = []
        self.problems: list[str] = []
        self.command = ""

    # -- sessions --------------------------------------------------------------------------
    def _launch(self, kind: str, budget: int | None) -> dict:
        a = self.args
        cmd = [sys.executable, "-m", "qa3c_qiskit.train", "--quiet"]
        if kind == "fresh":
            cmd += ["--env", a.env, "--model", a.model, "--workers", a.workers,
                    "--learners", a.learners, "--episodes", HUGE_BUDGET, "--seed", a.seed,
                    "--lr", a.lr, "--checkpoint-every", a.checkpoint_every,
                    "--max-restarts", RESTARTS, "--runner", a.runner,
                    "--update-every", a.update_every,
                    "--out", self.out, "--run-name", self.run.name]  # fmt: skip
            if a.model == "quantum":
                cmd += ["--backend", a.backend]
            self.command = " ".join(map(str, cmd[1:]))
        else:
            cmd += ["--resume", self.run]
            if budget is not None:
                cmd += ["--episodes", budget]
        start = (
            ckpt_info(self.run) if kind != "fresh" else {"episodes": 0, "step": 0, "nonfinite": 0}
        )
        n = len(self.sessions)
        events = self.run / EVENTS
        s = {
            "index": n,
            "kind": kind,
            "t0": time.monotonic(),
            "start": start,
            "rows0": len(read_rows(self.run)) if kind != "fresh" else 0,
            "events_at": events.stat().st_size if events.exists() else 0,
            "faults": [],
            "seen": {},  # pid -> start time of every process seen below the supervisor
            "stdout": self.out / f"session{n}.out",
            "stderr": self.out / f"session{n}.err",
        }
        with open(s["stdout"], "w") as so, open(s["stderr"], "w") as se:
            s["proc"] = subprocess.Popen(
                list(map(str, cmd)),
                cwd=ROOT,
                env=self.env,
                stdout=so,
                stderr=se,
                start_new_session=True,
            )
        self.sessions.append(s)
        return s

    def _warm(self, s: dict) -> bool:
        """The session has finished an episode (its workers are up, its checkpoint exists)."""
        path = self.run / "metrics.csv"
        if not path.exists() or not (self.run / CHECKPOINT).exists():
            return False
        with open(path, "rb") as fh:
            return sum(1 for _ in fh) - 1 > s["rows0"]

    def _events(self, s: dict) -> str:
        with open(self.run / EVENTS, "rb") as fh:
            fh.seek(s["events_at"])
            return fh.read().decode(errors="replace")

    # -- faults ----------------------------------------------------------------------------
    def _inject(self, s: dict, kind: str) -> dict | None:
        sup = s["proc"].pid
        below = descendants(sup)
        s["seen"].update(below)
        f = {"kind": kind, "session": s["index"], "t": round(time.monotonic() - self.t0, 1)}
        if kind == "worker_kill":
            if self.args.runner == "local":
                started = re.findall(r"worker (\d+) started pid=(\d+)", self._events(s))
                latest = {int(r): int(p) for r, p in started}
                pids = [p for p in latest.values() if p in below and (_stat(p) or [0])[0] == sup]
            else:
                pids = [p for p in below if _cmdline(p).startswith("ray::RayWorker")]
            if not pids:
                return None
            f["pid"] = self.rng.choice(sorted(pids))
            os.kill(f["pid"], signal.SIGKILL)
        elif kind == "ps_kill":
            pids = [p for p in below if _cmdline(p).startswith("ray::ParameterServer")]
            if len(pids) != 1:
                return None
            f["pid"] = pids[0]
            os.kill(f["pid"], signal.SIGKILL)
        elif kind == "sigint":
            os.kill(sup, signal.SIGINT)
            s["sigint"] = True
        elif kind == "ckpt_fault":
            if self.marker.exists():
                return None  # one armed at a time
            self.marker.touch()
            s["armed"] = True
        s["faults"].append(f)
        self.faults.append(f)
        return f

    # -- end of a session --------------------------------------------------------------------
    def _finish(self, s: dict, rc: int) -> None:
        before = len(self.problems)
        try:
            self._check_session(s, rc)
        finally:
            s["ok"] = len(self.problems) == before

    def _check_session(self, s: dict, rc: int) -> None:
        s["rc"] = rc
        s["wall_s"] = round(time.monotonic() - s["t0"], 1)
        err = Path(s["stderr"]).read_text(errors="replace")
        fired = [f for f in self.faults if f["kind"] == "ckpt_fault" and "fired_in" not in f]
        if fired and not self.marker.exists():  # the armed fault was consumed by this session
            fired[0]["fired_in"] = s["index"]
            s["ckpt_fault_fired"] = True
        allowed = {0} if s["kind"] == "tail" else set()
        if s.get("sigint"):
            allowed.add(130)
        if s.get("ckpt_fault_fired"):
            # the write error ends the session (exit 1) unless the trainer carries on; a SIGINT
            # that lands while it is already unwinding may end it by the signal itself
            allowed |= {1, 130, -signal.SIGINT} if s.get("sigint") else {1}
        if rc not in allowed:
            tail = "\n".join(err.strip().splitlines()[-15:])
            self.problems.append(
                f"session {s['index']} ({s['kind']}) exit code {rc}, expected one of "
                f"{sorted(allowed) or 'none (it should not have ended)'}:\n{tail}"
            )
        if rc == 1 and s.get("ckpt_fault_fired") and "injected by soak.py" not in err:
            self.problems.append(f"session {s['index']} exit 1 not caused by the injected fault")
        s["stderr_tail"] = err.strip().splitlines()[-3:]
        # nothing started by this session may outlive it (a short grace for Ray's shutdown)
        deadline = time.monotonic() + 20
        while True:
            left = [p for p, t in s["seen"].items() if alive(p, t)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if left:
            names = {p: _cmdline(p)[:60] for p in left}
            self.problems.append(f"session {s['index']}: processes left running: {names}")
        events = self._events(s)
        s["restarts_logged"] = events.count(" crashed; restart ")
        s["ps_restarts"] = [tuple(map(int, m)) for m in PS_RESTART.findall(events)]
        cut = re.search(r"; (\d+) metrics rows after the checkpoint moved", events)
        s["rows_rolled_back"] = int(cut.group(1)) if cut else 0
        try:
            end = ckpt_info(self.run)
        except CheckpointError as exc:
            self.problems.append(f"session {s['index']}: checkpoint unreadable: {exc}")
            raise SystemExit(self.report()) from None
        s["end"] = end
        if not end["finite"]:
            self.problems.append(f"session {s['index']}: non-finite parameters or Adam moments")
        rows = read_rows(self.run)
        if [e for e, _ in rows] != list(range(1, len(rows) + 1)):
            self.problems.append(
                f"session {s['index']}: metrics.csv is not episodes 1..{len(rows)}"
            )
        if len(rows) < end["episodes"]:
            self.problems.append(
                f"session {s['index']}: {len(rows)} rows < checkpoint's {end['episodes']}"
            )
        self._adam_check(s, rows)

    def _adam_check(self, s: dict, rows: list) -> None:
        """Adam steps of the session vs. the updates of the episodes its checkpoint holds."""
        S = self.args.update_every
        e0, e1 = s["start"]["episodes"], s["end"]["episodes"]
        step0, step1 = s["start"]["step"], s["end"]["step"]
        anchor = [(x, d) for x, d in s["ps_restarts"] if d <= e1]
        if anchor:  # Ray: the server restarted from (Adam step x, d episodes); count from there
            step0, e0 = anchor[-1]
        need = sum(math.ceil(n / S) for _, n in rows[e0:e1])
        need -= s["end"]["nonfinite"] - s["start"]["nonfinite"]
        made = step1 - step0
        s["adam"] = {"updates_of_episodes": need, "adam_steps": made}
        cuts = 1 + len(s["faults"])  # episodes cut short: at each fault, and at the stop
        slack = self.max_cut * self.args.learners * cuts
        ok = need <= made <= need + slack
        if s["kind"] == "tail" and not s["faults"] and not anchor:
            ok = made == need  # nothing cut short: exact
            s["adam"]["exact"] = True
        s["adam"]["ok"] = ok
        if not ok:
            self.problems.append(
                f"session {s['index']}: Adam made {made} steps for episodes {e0 + 1}..{e1}, "
                f"whose updates are {need}" + ("" if s["kind"] == "tail" else f" (+ <= {slack})")
            )

    # -- main loop -------------------------------------------------------------------------
    def go(self) -> int:
        a = self.args
        self.t0 = time.monotonic()
        deadline = self.t0 + a.minutes * 60
        s = self._launch("fresh", None)
        next_fault = None
        final_stop = False
        while True:
            rc = s["proc"].poll()
            if rc is None:
                s["seen"].update(descendants(s["proc"].pid))
                now = time.monotonic()
                if s["kind"] == "tail":
                    if now - s["t0"] > a.tail_timeout:
                        self.problems.append("the final session did not finish in time")
                        os.killpg(s["proc"].pid, signal.SIGKILL)
                elif s.get("armed") and not self.marker.exists():
                    s["armed"] = False  # the armed write fault fired: no more faults here
                    s["crashing"] = now  # (unless the trainer is still running a minute later)
                elif s.get("crashing") and now - s["crashing"] > 60:
                    s["crashing"] = None
                elif (
                    now >= deadline
                    and not s.get("sigint")
                    and not s.get("crashing")
                    and self._warm(s)
                ):
                    os.kill(s["proc"].pid, signal.SIGINT)  # time is up: stop, then the tail
                    s["sigint"] = final_stop = True
                    s["final_stop"] = True
                elif (
                    not final_stop
                    and not s.get("sigint")
                    and not s.get("crashing")
                    and self._warm(s)
                ):
                    if next_fault is None:
                        next_fault = now + a.fault_interval * self.rng.uniform(0.5, 1.5)
                    elif now >= next_fault:
                        # a session's first fault is a kill it must survive in place; a
                        # session-ending one (sigint, ckpt_fault) may follow
                        kinds = self.kinds if s["faults"] else self.kills
                        kind = self.rng.choices(kinds, [self.weights[k] for k in kinds])[0]
                        if self._inject(s, kind) is not None:
                            print(f"[{now - self.t0:6.1f} s] session {s['index']}: {kind}")
                        next_fault = None
                time.sleep(0.2)
                continue
            self._finish(s, rc)
            print(
                f"[{time.monotonic() - self.t0:6.1f} s] session {s['index']} ({s['kind']}) "
                f"exit {rc}, checkpoint at episode {s['end']['episodes']}"
            )
            if s["kind"] == "tail":
                break
            if rc == 2 or len(self.problems) > 20:
                break  # the resume was refused, or too much went wrong: report
            if time.monotonic() >= deadline or final_stop:
                if self.marker.exists():  # armed but never fired: disarm for the tail
                    self.marker.unlink()
                    for f in self.faults:
                        if f["kind"] == "ckpt_fault" and "fired_in" not in f:
                            f["fired_in"] = None
                budget = s["end"]["episodes"] + a.tail
                s = self._launch("tail", budget)
                s["budget"] = budget
            else:
                s = self._launch("resume", None)
            next_fault = None
        return self.final_checks()

    def final_checks(self) -> int:
        before = len(self.problems)
        self._final_checks()
        self.final_ok = len(self.problems) == before and all(s.get("ok") for s in self.sessions)
        return self.report()

    def _final_checks(self) -> None:
        s = self.sessions[-1]
        budget = s.get("budget")
        rows = read_rows(self.run)
        eps = [e for e, _ in rows]
        self.result = {
            "budget": budget,
            "rows": len(rows),
            "lost": len(set(range(1, (budget or 0) + 1)) - set(eps)),
            "duplicates": len(eps) - len(set(eps)),
        }
        if budget is None or s.get("rc") != 0:
            self.problems.append("the run did not complete its final budget")
        else:
            if eps != list(range(1, budget + 1)):
                self.problems.append(
                    f"metrics.csv: {len(rows)} rows, not episodes 1..{budget} "
                    f"({self.result['lost']} lost, {self.result['duplicates']} duplicates)"
                )
            end = s["end"]
            if end["episodes"] != budget or not end["final"]:
                self.problems.append(f"final checkpoint: {end}")
            summary = json.loads((self.run / "summary.json").read_text())
            if summary.get("status") != "complete" or summary.get("episodes") != budget:
                self.problems.append(
                    f"summary.json: status {summary.get('status')}, episodes "
                    f"{summary.get('episodes')}"
                )
        S = self.args.update_every
        final = self.sessions[-1].get("end", {})
        self.result["adam_steps"] = final.get("step")
        self.result["updates_of_recorded_episodes"] = sum(math.ceil(n / S) for _, n in rows)

    def report(self) -> int:
        a = self.args
        wall = time.monotonic() - self.t0
        table = [
            "| fault | injected | fired | survived |",
            "|---|---:|---:|---:|",
        ]
        # survived: the session it hit ended as expected and passed its checks, and the run
        # then completed its final budget with every final check passed
        final_ok = getattr(self, "final_ok", False)
        for kind in self.kinds:
            fs = [f for f in self.faults if f["kind"] == kind]
            fired = [f for f in fs if kind != "ckpt_fault" or f.get("fired_in") is not None]
            hit = [self.sessions[f.get("fired_in", f["session"])] for f in fired]
            survived = sum(1 for s in hit if s.get("ok") and final_ok)
            table.append(f"| {kind} | {len(fs)} | {len(fired)} | {survived} |")
        res = getattr(self, "result", {})
        resumes = len(self.sessions) - 1
        restarts = sum(s.get("restarts_logged", 0) for s in self.sessions)
        ps_restarts = sum(len(s.get("ps_restarts", [])) for s in self.sessions)
        rolled = sum(s.get("rows_rolled_back", 0) for s in self.sessions)
        lines = [
            f"soak: --runner {a.runner}, {a.model}, {a.env}, {a.learners} learners on "
            f"{a.workers} workers, checkpoint every {a.checkpoint_every}, seed {a.seed}",
            f"command: python {self.command} (+ --resume {self.run})",
            "",
            *table,
            "",
            "| sessions | resumes | worker restarts | PS restarts | rows rolled back | "
            "budget | episodes lost | duplicates | Adam steps | updates of episodes | wall min |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {len(self.sessions)} | {resumes} | {restarts} | {ps_restarts} | {rolled} | "
            f"{res.get('budget')} | {res.get('lost')} | {res.get('duplicates')} | "
            f"{res.get('adam_steps')} | {res.get('updates_of_recorded_episodes')} | "
            f"{wall / 60:.1f} |",
            "",
            "per session: kind, exit, episodes (start -> checkpoint), Adam steps vs updates of "
            "its episodes",
        ]
        for s in self.sessions:
            ad = s.get("adam", {})
            lines.append(
                f"  {s['index']:3d} {s['kind']:6s} exit {s.get('rc')!s:4s} "
                f"{s['start']['episodes']:7d} -> {s.get('end', {}).get('episodes', '?')!s:7s} "
                f"faults {','.join(f['kind'] for f in s['faults']) or '-':28s} "
                f"adam {ad.get('adam_steps')} vs {ad.get('updates_of_episodes')}"
                f"{' (exact)' if ad.get('exact') else ''} {'ok' if ad.get('ok') else 'FAIL'}"
            )
        lines.append("")
        lines.append("PASS" if not self.problems else "FAIL:\n  " + "\n  ".join(self.problems))
        text = "\n".join(lines)
        print(text)
        out = {
            "args": {k: v for k, v in vars(a).items()},
            "run": str(self.run),
            "command": self.command,
            "faults": self.faults,
            "sessions": [
                {k: v for k, v in s.items() if k not in ("proc", "seen")} for s in self.sessions
            ],
            "result": res,
            "wall_s": wall,
            "problems": self.problems,
        }
        (self.out / f"soak-{a.runner}.json").write_text(json.dumps(out, indent=2, default=str))
        return 1 if self.problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="time under faults")
    p.add_argument("--runner", choices=["local", "ray"], default="local")
    p.add_argument("--model", choices=["classical", "quantum"], default="classical")
    p.add_argument("--backend", default="statevector", help="quantum backend (--model quantum)")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--learners", type=int, default=6)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--update-every", type=int, default=5, help="the trainer's default S")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fault-interval", type=float, default=12.0, help="mean seconds per fault")
    p.add_argument("--tail", type=int, default=60, help="episodes of the fault-free last session")
    p.add_argument("--tail-timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the run (default: a temp folder)")
    args = p.parse_args(argv)
    return Soak(args).go()


if __name__ == "__main__":
    sys.exit(main())
