"""The run's budget (srdeploy.training.budget) and how a run ends: one stop decision,
learning rates as a pure function of (step, total), logs and figures however it ends."""

import json

import pytest
import torch
from test_training import image_folder, tiny_config  # noqa: F401 (image_folder is a fixture)

from srdeploy.training.budget import Budget, lr_factor
from srdeploy.training.config import TrainConfig
from srdeploy.training.distributed import DistEnv
from srdeploy.training.loop import train


class FakeClock:
    def __init__(self):
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def budget(clock=None, minutes_before=0.0, **kw):
    cfg = TrainConfig(data="x", **{"epochs": None, **kw})
    return Budget(cfg, steps_per_epoch=4, minutes_before=minutes_before, env=DistEnv(), clock=clock or FakeClock())


def test_a_step_budget_is_a_fixed_total():
    assert budget(steps=7).total_steps(0) == 7
    b = budget(epochs=3)
    assert b.total_steps(5) == 12 and b.stopped_by is None  # 3 epochs of 4 steps
    assert b.total_steps(12) == 12 and b.stopped_by == "epochs"


def test_a_time_budget_projects_the_total_from_the_pace_and_stops_when_spent():
    clock = FakeClock()
    b = budget(clock, max_minutes=10)
    assert b.total_steps(0) == 1  # no pace yet: one more step
    clock.seconds += 60  # 10 steps in 1 of 10 minutes
    assert b.total_steps(10) == 100
    clock.seconds += 4 * 60  # slower: 40 steps in the next 4 minutes
    assert b.total_steps(50) == 100 and b.stopped_by is None
    clock.seconds += 5 * 60 - 1e-3  # just inside the budget: at least one more step
    assert b.total_steps(99) == 100
    clock.seconds += 1e-3
    assert b.total_steps(100) == 100 and b.stopped_by == "max_minutes"


def test_the_time_budget_spans_resumes_and_the_smaller_budget_binds():
    clock = FakeClock()
    b = budget(clock, minutes_before=5.0, max_minutes=10, steps=1000)
    assert b.total_steps(50) == 100  # 50 steps in the earlier session's 5 minutes
    b = budget(clock, minutes_before=5.0, max_minutes=10, steps=60)
    assert b.total_steps(50) == 60
    assert b.total_steps(60) == 60 and b.stopped_by == "steps"


def test_learning_rate_is_a_function_of_step_and_total():
    cosine = TrainConfig(data="x", schedule="cosine")
    assert lr_factor(cosine, 0, 100) == 1.0
    assert lr_factor(cosine, 50, 100) == pytest.approx(0.505)
    assert lr_factor(cosine, 100, 100) == pytest.approx(0.01)
    assert lr_factor(cosine, 50, 200) == lr_factor(cosine, 25, 100)
    step = TrainConfig(data="x", schedule="step", lr_step=3)
    assert [lr_factor(step, s, 10) for s in (2, 3)] == [1.0, 0.1]


@pytest.mark.parametrize("budget_kw", [{"steps": 3}, {"steps": None, "max_minutes": 0.02}])
def test_a_run_shorter_than_one_log_interval_still_logs_and_plots(tmp_path, image_folder, budget_kw):  # noqa: F811
    out = train(tiny_config(tmp_path, image_folder, log_every=10_000, **budget_kw))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    end = json.loads((out / "end.json").read_text())
    assert [r["step"] for r in records if r["split"] == "train"] == [end["step"]]
    assert end["stopped_by"] == ("steps" if budget_kw["steps"] else "max_minutes") and end["step"] >= 1
    assert (out / "loss_curves.png").stat().st_size > 0


def test_end_json_fingerprints_the_trained_weights(tmp_path, image_folder):  # noqa: F811
    out = train(tiny_config(tmp_path, image_folder, steps=2))
    (rank0,) = json.loads((out / "end.json").read_text())["ranks"]
    g = torch.load(out / "last.pt", weights_only=True)["generator"]
    params = [v for k, v in g.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert rank0["step"] == 2 and rank0["weight_sum"] == pytest.approx(float(sum(p.double().sum() for p in params)))
