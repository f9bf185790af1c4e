"""``--eval-every N --eval-episodes M``: eval.csv rows, best_model.pt, exact budgets, resume."""

import csv
import json

import torch

from qa3c_qiskit.config import TrainConfig
from qa3c_qiskit.evaluate import evaluate_policy, load_model_run
from qa3c_qiskit.evaluate import main as evaluate_main
from qa3c_qiskit.periodic_eval import EVAL_FIELDS, EVAL_SEED_OFFSET, read_eval_rows
from qa3c_qiskit.train import resume_config, train


def _cfg(tmp_path, **kw):
    base = dict(
        env="CartPole-v1", model="classical", workers=1, learners=2, seed=7,
        out=str(tmp_path), run_name="r", quiet=True, eval_every=5, eval_episodes=2,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _metrics_episodes(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [int(r["episode"]) for r in csv.DictReader(fh)]


def _check_best(run, cfg):
    rows = read_eval_rows(run)
    best = max(r["greedy_mean"] for r in rows)
    spec, state, env_id = load_model_run(run, "best_model.pt")
    payload = torch.load(run / "best_model.pt", weights_only=False)
    assert set(payload) >= {"model", "spec", "config"}  # model.pt's format (+ "eval")
    assert payload["eval"]["greedy_mean"] == best
    # the file holds exactly the parameters that scored the best greedy mean
    again = evaluate_policy(
        spec, state, env_id, cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET, greedy=True
    )
    assert again["mean"] == best
    return rows


def test_eval_writes_rows_and_a_best_model_evaluate_loads(tmp_path, capsys):
    cfg = _cfg(tmp_path, episodes=20)
    run = train(cfg, show_table=False)
    assert _metrics_episodes(run) == list(range(1, 21))  # exactly the episode budget
    with open(run / "eval.csv", newline="") as fh:
        assert next(csv.reader(fh)) == EVAL_FIELDS
    rows = _check_best(run, cfg)
    summary = json.loads((run / "summary.json").read_text())
    # one evaluation falls due every 5 episodes; one still running when the next is due is skipped
    assert summary["evaluations"] == len(rows) >= 1
    assert summary["evaluations"] + summary["evaluations_skipped"] == 4
    assert all(r["episode"] in (5, 10, 15, 20) for r in rows)
    assert rows[-1]["episode"] == 20  # the evaluation due at the run's end is never skipped
    assert all(r["eval_seconds"] > 0 for r in rows)
    capsys.readouterr()
    assert evaluate_main([str(run), "--model-file", "best_model.pt", "--episodes", "2"]) == 0
    assert "return" in capsys.readouterr().out.lower()
    assert evaluate_main([str(run), "--episodes", "2"]) == 0  # model.pt as before


def test_resume_continues_eval_and_keeps_the_best(tmp_path):
    cfg = _cfg(tmp_path, episodes=10, checkpoint_every=5, tensorboard=True)
    run = train(cfg, show_table=False)
    first = read_eval_rows(run)
    best_before = max(r["greedy_mean"] for r in first)
    resumed = resume_config(str(run), {"episodes": 25, "resume": str(run)})
    assert resumed.eval_every == 5 and resumed.eval_episodes == 2  # kept from the run
    train(resumed, show_table=False)
    assert _metrics_episodes(run) == list(range(1, 26))
    rows = _check_best(run, cfg)
    assert rows[: len(first)] == first and len(rows) > len(first)
    assert max(r["greedy_mean"] for r in rows) >= best_before
    assert all(r["episode"] > 10 for r in rows[len(first) :])
    # TensorBoard: the resumed session appends to the run's event directory, same step axis
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("charts/episodic_return")]
    assert steps == list(range(1, 26))
    assert [e.step for e in acc.Scalars("eval/greedy_return")] == [r["episode"] for r in rows]


def test_eval_off_by_default_writes_nothing(tmp_path):
    run = train(_cfg(tmp_path, episodes=4, eval_every=0), show_table=False)
    assert not (run / "eval.csv").exists() and not (run / "best_model.pt").exists()
    assert not (run / "tensorboard").exists()
    assert "evaluations" not in json.loads((run / "summary.json").read_text())
