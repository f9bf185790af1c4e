"""``python -m qa3c_qiskit.evaluate RUN --backend density_noisy --episodes 20``: a trained policy
on any backend, and videos of it.

Loads ``RUN/model.pt`` (or ``--model-file best_model.pt``; both written by
:mod:`qa3c_qiskit.train`), rebuilds the actor-critic on the requested backend (the VQC weights
are backend-independent: train on the exact ``statevector`` engine, then see how the policy
fares with shots, noise or hardware) and prints the mean ± std return over ``--episodes``
episodes. The episodes are played side by side: each step is one batched forward pass (one
primitive call, one PUB, on the Qiskit backends) for all unfinished episodes. On a Qiskit
backend the header gives what executes and the evaluation's cost (for ``ibm_runtime*`` the QPU
time); a real IBM backend needs ``--max-qpu-seconds`` and stops when the usage reaches it.

``--video DIR`` also records the first ``--video-episodes`` of those episodes (the env rendered
as ``rgb_array``: CartPole, Acrobot, MiniGrid, any Gymnasium env that renders) to
``DIR/<env>__<backend>__seed<S>.mp4`` (or ``.gif`` with ``--video-format gif``). Writing
videos needs the optional ``video`` extra (``pip install 'qa3c-qiskit[video]'``: imageio, and
imageio-ffmpeg for MP4).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from .envs import make_env
from .models import ActorCritic, ModelSpec

#: The file ``evaluate`` loads from a run directory unless ``--model-file`` says otherwise.
MODEL_FILE = "model.pt"
VIDEO_FORMATS = ("mp4", "gif")
VIDEO_EXTRA = "pip install 'qa3c-qiskit[video]'"


def load_model_run(run: str | Path, model_file: str = MODEL_FILE) -> tuple[ModelSpec, dict, str]:
    """(spec, state_dict, env_id) of a trained model: ``run/model_file`` for a run directory
    (``model.pt``, or ``best_model.pt``), or the file ``run`` itself."""
    path = Path(run)
    if path.is_dir():
        path = path / model_file
        if not path.is_file():
            found = sorted(p.name for p in path.parent.glob("*.pt"))
            have = ", ".join(found) if found else "no *.pt files"
            raise ValueError(
                f"no {model_file} in run directory {str(path.parent)!r} (it has: {have})"
            )
    if not path.is_file():
        raise ValueError(f"no trained model at {str(path)!r} (expected RUN/{model_file})")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "model" not in payload or "spec" not in payload:
        raise ValueError(f"{str(path)!r} is not a model file written by qa3c_qiskit.train")
    known = {f.name for f in fields(ModelSpec)}
    spec = ModelSpec(**{k: v for k, v in payload["spec"].items() if k in known})
    env_id = payload.get("config", {}).get("env")
    if env_id is None:
        raise ValueError(f"{str(path)!r} records no environment id in its config")
    return spec, payload["model"], env_id


@dataclass(frozen=True)
class VideoOptions:
    """Where and how :func:`evaluate_policy` records episodes.

    ``episodes``: how many of the evaluated episodes (the first ones) are recorded;
    ``fps``: frames per second (default: the env's ``render_fps``, else 30);
    ``downscale``: shrink frames k times (k x k pixel blocks averaged; smaller files);
    ``frame_skip``: keep every k-th frame (smaller files; the fps is divided by k too);
    ``max_frames``: stop recording an episode after this many kept frames (the episode goes on).
    """

    out_dir: str | Path
    fmt: str = "mp4"
    episodes: int = 1
    fps: float | None = None
    downscale: int = 1
    frame_skip: int = 1
    max_frames: int | None = None

    def check(self) -> None:
        if self.fmt not in VIDEO_FORMATS:
            raise ValueError(f"unknown video format {self.fmt!r}; choose from {VIDEO_FORMATS}")
        for name in ("episodes", "downscale", "frame_skip"):
            if getattr(self, name) < 1:
                raise ValueError(f"video {name} must be >= 1, got {getattr(self, name)}")
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f"video max_frames must be >= 2, got {self.max_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"video fps must be > 0, got {self.fps}")
        video_writer(self.fmt)  # fail before the first episode if the extra is missing


def video_writer(fmt: str):
    """The function ``write(path, frames, fps)`` for ``fmt``; ValueError naming the ``video``
    extra if its packages are missing."""
    try:
        import imageio.v3 as iio
    except ImportError:
        raise ValueError(
            f"writing videos needs the optional 'video' extra: {VIDEO_EXTRA}"
        ) from None
    if fmt == "mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ValueError(
                f"writing MP4 needs imageio-ffmpeg (the optional 'video' extra): {VIDEO_EXTRA}; "
                "or use --video-format gif"
            ) from None

        def write(path: Path, frames: list[np.ndarray], fps: float) -> None:
            # frames have even sizes (see _Recorder.capture); no resizing to multiples of 16
            iio.imwrite(
                path,
                np.stack(frames),
                extension=".mp4",
                fps=fps,
                codec="libx264",
                macro_block_size=2,
            )

    else:

        def write(path: Path, frames: list[np.ndarray], fps: float) -> None:
            duration_ms = max(int(round(1000.0 / fps)), 20)  # browsers treat < 20 ms as 100 ms
            iio.imwrite(path, np.stack(frames), extension=".gif", duration=duration_ms, loop=0)

    return write


def shrink(frame: np.ndarray, k: int) -> np.ndarray:
    """``frame`` [H, W, 3] reduced k times by averaging k x k blocks (thin lines stay visible,
    unlike striding); rows/columns beyond a multiple of k are dropped."""
    if k == 1:
        return frame.astype(np.uint8, copy=False)
    h, w = frame.shape[0] // k * k, frame.shape[1] // k * k
    blocks = frame[:h, :w].reshape(h // k, k, w // k, k, frame.shape[2]).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


class _Recorder:
    """Frames of one episode at a time, written to one file per episode."""

    def __init__(self, opts: VideoOptions, env: object, env_id: str, label: str):
        self.opts = opts
        self.write = video_writer(opts.fmt)
        self.out_dir = Path(opts.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        base_fps = opts.fps or float(env.metadata.get("render_fps") or 30)
        self.fps = base_fps / opts.frame_skip
        self.env = env
        # a backend given as a profile path names the file by the profile's stem
        label = Path(label).stem if label.endswith(".toml") else label
        self.stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{env_id}__{label}")
        self.frames: list[np.ndarray] = []
        self.count = 0
        self.paths: list[Path] = []

    def start(self) -> None:
        self.frames, self.count = [], 0
        self.capture()

    def capture(self) -> None:
        keep = self.count % self.opts.frame_skip == 0
        self.count += 1
        if not keep or (self.opts.max_frames and len(self.frames) >= self.opts.max_frames):
            return
        frame = self.env.render()
        if frame is None:
            raise ValueError("the environment rendered no frame (render_mode='rgb_array')")
        frame = shrink(np.asarray(frame)[:, :, :3], self.opts.downscale)
        if self.opts.fmt == "mp4":  # H.264 in yuv420p needs even sizes: drop an odd last row/col
            frame = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
        self.frames.append(np.ascontiguousarray(frame))

    def finish(self, episode_seed: int) -> None:
        path = self.out_dir / f"{self.stem}__seed{episode_seed}.{self.opts.fmt}"
        self.write(path, self.frames, self.fps)
        self.paths.append(path)
        self.frames = []


def evaluate_policy(
    spec: ModelSpec,
    state_dict: dict | None,
    env_id: str,
    episodes: int = 20,
    seed: int = 0,
    greedy: bool = False,
    video: VideoOptions | None = None,
    max_qpu_seconds: float | None = None,
) -> dict:
    """Run ``episodes`` episodes of the policy side by side; return {"returns", "lengths",
    "mean", "std", "seconds", "videos", "calls", "qpu_seconds", "stopped"}.

    The episodes advance in lockstep: at every step ONE batched actor forward pass serves the
    actions of all unfinished episodes (on the Qiskit backends one primitive call of one PUB,
    ``calls`` = the number of lockstep steps = the longest episode). Episode ``i`` resets its
    own env with ``seed + i``; greedy actions are the argmax, sampled ones are drawn from one
    generator seeded with ``seed`` (one draw per unfinished episode and step, in episode
    order): the same distribution as playing the episodes one after another.
    ``state_dict=None`` evaluates a freshly initialised model (seeded with ``seed``).
    ``videos``: the files written when ``video`` is given. ``max_qpu_seconds``: stop when this
    process's IBM Runtime usage since the start reaches it (``stopped`` says so; only finished
    episodes are returned; sessions are closed either way).
    """
    if episodes <= 0:
        raise ValueError(f"--episodes must be > 0, got {episodes}")
    if video is not None:
        video.check()
        # rgb_array rendering needs no display; keep SDL (pygame) from looking for one
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    torch.manual_seed(seed)
    model = ActorCritic(spec)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    gen = torch.Generator().manual_seed(seed)
    usage = _qpu_meter(spec)
    used0 = usage()
    n_video = video.episodes if video is not None else 0
    label = spec.backend if spec.model == "quantum" else "classical"
    envs, recorders = [], []
    returns, lengths = [0.0] * episodes, [0] * episodes
    done = [False] * episodes
    calls, stopped = 0, None
    t0 = time.time()
    try:
        for ep in range(episodes):
            envs.append(make_env(env_id, render_mode="rgb_array" if ep < n_video else None))
            if ep < n_video:
                recorders.append(_Recorder(video, envs[ep], env_id, label))
        obs = []
        for ep, env in enumerate(envs):
            obs.append(env.reset(seed=seed + ep)[0])
            if ep < n_video:
                recorders[ep].start()
        while not all(done):
            active = [ep for ep in range(episodes) if not done[ep]]
            batch = torch.from_numpy(np.stack([obs[ep] for ep in active]))
            with torch.no_grad():  # one forward pass (one primitive call) for all of them
                logits = model.logits(batch)
            calls += 1
            if greedy:
                actions = logits.argmax(-1)
            else:
                probs = torch.softmax(logits, dim=-1)
                actions = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            for ep, action in zip(active, actions.tolist()):
                obs[ep], reward, terminated, truncated, _ = envs[ep].step(action)
                returns[ep] += float(reward)
                lengths[ep] += 1
                if ep < n_video:
                    recorders[ep].capture()
                if terminated or truncated:
                    done[ep] = True
                    if ep < n_video:
                        recorders[ep].finish(seed + ep)
            if max_qpu_seconds is not None and usage() - used0 >= max_qpu_seconds:
                if not all(done):
                    stopped = (
                        f"QPU usage {usage() - used0:.1f} s reached --max-qpu-seconds "
                        f"{max_qpu_seconds:g}: stopped with {sum(done)} of {episodes} "
                        "episodes finished"
                    )
                break
    finally:
        for env in envs:
            env.close()
        model.close()
    finished = [ep for ep in range(episodes) if done[ep]]
    r = np.asarray([returns[ep] for ep in finished])
    return {
        "returns": [returns[ep] for ep in finished],
        "lengths": [lengths[ep] for ep in finished],
        "mean": float(r.mean()) if len(r) else float("nan"),
        "std": float(r.std()) if len(r) else float("nan"),
        "seconds": time.time() - t0,
        "videos": [path for rec in recorders for path in rec.paths],
        "calls": calls,
        "qpu_seconds": usage() - used0,
        "stopped": stopped,
    }


def _qpu_meter(spec: ModelSpec):
    """A function returning this process's QPU seconds so far (0 off IBM Runtime)."""
    if spec.model != "quantum":
        return lambda: 0.0
    from .backends.execution import qpu_usage

    return lambda: float(qpu_usage()["qpu_seconds"])


def record_video(
    run: str | Path,
    out_dir: str | Path,
    episodes: int = 1,
    fmt: str = "gif",
    model_file: str = MODEL_FILE,
    seed: int = 0,
    greedy: bool = True,
    **video_kw,
) -> list[Path]:
    """Record ``episodes`` episodes of the trained policy in ``run`` to ``out_dir``; return the
    files. ``video_kw``: the other fields of :class:`VideoOptions` (fps, downscale, ...)."""
    spec, state, env_id = load_model_run(run, model_file)
    opts = VideoOptions(out_dir, fmt=fmt, episodes=episodes, **video_kw)
    return evaluate_policy(spec, state, env_id, episodes, seed, greedy, video=opts)["videos"]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input or missing extra)."""
    parser = argparse.ArgumentParser(
        prog="python -m qa3c_qiskit.evaluate",
        description="Evaluate a trained QA3C policy on any backend; prints mean ± std return "
        "and optionally records videos.",
    )
    parser.add_argument("run", help="run directory written by qa3c_qiskit.train (or a .pt file)")
    parser.add_argument(
        "--model-file",
        default=MODEL_FILE,
        help="which model of the run directory: model.pt (final) or best_model.pt (best "
        "periodic evaluation); default: %(default)s",
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="backend name or profile TOML (python -m qa3c_qiskit.backends); default: the run's",
    )
    parser.add_argument("--shots", type=int, default=None, help="override the profile's shots")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="episode i resets the env with seed+i")
    parser.add_argument("--greedy", action="store_true", help="argmax action instead of sampling")
    parser.add_argument(
        "--max-qpu-seconds",
        type=float,
        default=None,
        help="QPU-time budget in seconds (required on a real IBM backend): stop when this "
        "evaluation's Runtime usage reaches it",
    )
    vid = parser.add_argument_group("videos (need the optional 'video' extra)")
    vid.add_argument("--video", metavar="DIR", default=None, help="record episodes into DIR")
    vid.add_argument("--video-format", choices=VIDEO_FORMATS, default="mp4")
    vid.add_argument(
        "--video-episodes", type=int, default=1, help="record the first N episodes (default 1)"
    )
    vid.add_argument("--video-fps", type=float, default=None, help="default: the env's")
    vid.add_argument(
        "--video-downscale", type=int, default=1, help="shrink frames k times (smaller files)"
    )
    vid.add_argument(
        "--video-frame-skip", type=int, default=1, help="keep every k-th frame (smaller files)"
    )
    vid.add_argument("--video-max-frames", type=int, default=None, help="frames per video at most")
    args = parser.parse_args(argv)
    video = None
    if args.video is not None:
        video = VideoOptions(
            args.video,
            fmt=args.video_format,
            episodes=min(args.video_episodes, args.episodes),
            fps=args.video_fps,
            downscale=args.video_downscale,
            frame_skip=args.video_frame_skip,
            max_frames=args.video_max_frames,
        )
    restore = None
    try:
        spec, state, env_id = load_model_run(args.run, args.model_file)
        if spec.model == "quantum":
            spec = replace(
                spec,
                backend=args.backend or spec.backend,
                shots=args.shots if args.shots is not None else spec.shots,
            )
            restore = _check_backend(spec, env_id, args.episodes, args.max_qpu_seconds)
        res = evaluate_policy(
            spec,
            state,
            env_id,
            args.episodes,
            args.seed,
            args.greedy,
            video,
            max_qpu_seconds=args.max_qpu_seconds,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if restore is not None:
            restore()
    backend = spec.backend if spec.model == "quantum" else "classical"
    if res["stopped"]:
        print(res["stopped"])
    print(
        f"{env_id} | {backend} | {len(res['returns'])} episodes: return {res['mean']:.2f} ± "
        f"{res['std']:.2f} (mean ± std), mean length "
        f"{np.mean(res['lengths']) if res['lengths'] else float('nan'):.1f}, "
        f"{res['seconds']:.1f} s, {res['calls']} primitive call(s)"
        + (f", QPU {res['qpu_seconds']:.1f} s" if res["qpu_seconds"] else "")
    )
    for path in res["videos"]:
        print(f"video: {path}")
    return 0


def _check_backend(spec: ModelSpec, env_id: str, episodes: int, cap: float | None):
    """Validate the backend (a real IBM QPU needs ``cap``), print the cost header, and on IBM
    Runtime install the stop handler (SIGTERM/SIGINT cancel jobs and close sessions); returns
    a function restoring the previous signal handlers (or None)."""
    from .backends import resolve
    from .backends.cost import print_header
    from .config import qpu_cap_problems

    profile = resolve(spec.backend, spec.shots, spec.n_qubits)
    problems = qpu_cap_problems(profile, spec.backend, cap)
    if problems:
        raise ValueError("; ".join(problems))
    print_header(spec, env_id, episodes, cap)
    if profile.kind != "ibm_runtime":
        return None
    import signal

    from .backends.execution import install_stop_handler

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    install_stop_handler()

    def restore():
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


if __name__ == "__main__":
    sys.exit(main())
