"""``srdeploy train``: flags generated from TrainConfig, presets and overrides, resume,
and errors that reach the user as one line."""

import dataclasses
import json
import os
import signal
import shutil
import sys

import pytest
from click.testing import CliRunner
from test_ddp import ctrl_c_once_logged
from test_training import image_folder  # noqa: F401 (a fixture)

from srdeploy.cli import main
from srdeploy.io.files import TMP_SUFFIX
from srdeploy.training import cli as train_cli
from srdeploy.training import loop
from srdeploy.training.checkpoint import load_checkpoint
from srdeploy.training.config import SRGAN_FIELDS, TrainConfig, field_docs

TINY = ["--blocks", "1", "--channels", "8", "--patch", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(main, ["train", *args], env={"SRDEPLOY_NO_PROGRESS": "1"})


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig a command would train with (training itself is replaced)."""
    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, resume=False, started=None: seen.append(cfg) or cfg.out)
    return seen


def error_lines(result):
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error")]


def test_every_field_has_a_docstring_and_it_is_the_flag_help():
    docs = field_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert docs["num_blocks"] == "Residual blocks B in the generator (seed: 8, paper: 16)."
    for stage in ("srresnet", "srgan"):
        params = {p.name: p for p in getattr(train_cli, stage).params}
        generated = set(params) - {"resume"}
        expected = {f.name for f in dataclasses.fields(TrainConfig)} - train_cli.NO_FLAG
        assert generated == (expected if stage == "srgan" else expected - set(SRGAN_FIELDS))
        for name in generated:
            assert params[name].help.startswith(train_cli.as_flags(docs[name])), name
            assert params[name].default is None  # not given: the preset or the stage default decides
    srresnet = {p.name: p for p in train_cli.srresnet.params}
    assert srresnet["num_blocks"].opts == ["--blocks"] and srresnet["out"].opts == ["-o", "--out"]
    assert srresnet["preload"].secondary_opts == ["--no-preload"]
    assert srresnet["schedule"].type.choices == ("constant", "step", "cosine")  # from the Literal annotation


def test_help_reads_from_the_docstrings_with_the_stage_defaults():
    srresnet, srgan = (" ".join(invoke(stage, "--help").output.split()) for stage in ("srresnet", "srgan"))
    assert "--blocks INTEGER Residual blocks B in the generator (seed: 8, paper: 16). [default: 8]" in srresnet
    assert "selecting from --data." in srresnet  # a backticked field name in a docstring is printed as its flag
    assert "--adv-weight" not in srresnet and "--adv-weight" in srgan  # srgan-only flags
    assert "[default: runs/srgan]" in srgan and "[default: 32]" in srgan and "[default: runs/srresnet]" in srresnet


def test_a_preset_value_is_overridden_only_by_a_given_flag(captured, image_folder):  # noqa: F811
    assert invoke("srresnet", "--data", str(image_folder), "--preset", "paper").exit_code == 0
    assert invoke("srresnet", "--data", str(image_folder), "--preset", "paper", "--blocks", "4", "--lr", "3e-4",
                  "--preload").exit_code == 0
    assert invoke("srresnet", "--data", str(image_folder), "--no-preload").exit_code == 0
    paper, overridden, plain = captured
    assert (paper.num_blocks, paper.lr, paper.patch, paper.steps, paper.preload) == (16, 1e-4, 96, 1_000_000, False)
    assert (overridden.num_blocks, overridden.lr, overridden.patch, overridden.preload) == (4, 3e-4, 96, True)
    assert (plain.num_blocks, plain.lr, plain.patch, plain.epochs, plain.preset) == (8, 2e-4, None, 30, None)


def test_init_takes_every_shipped_model_name_and_stores_paths_absolute(captured, image_folder, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    for name in ("default", "srresnet", "srgan", "run/last.pt"):
        assert invoke("srgan", "--data", str(image_folder), "--init", name).exit_code == 0
    assert [cfg.init for cfg in captured] == ["default", "srresnet", "srgan", str(tmp_path / "run/last.pt")]


@pytest.mark.parametrize("flag, value", [("--log-every", "0"), ("--ckpt-every", "0"), ("--val-every", "0"),
                                         ("--steps", "0"), ("--max-minutes", "-1"), ("--batch-size", "1"),
                                         ("--patch", "30"), ("--lr", "0")])
def test_nonsensical_values_are_one_line_usage_errors(captured, image_folder, flag, value):  # noqa: F811
    result = invoke("srresnet", "--data", str(image_folder), flag, value)
    assert result.exit_code == 2 and not captured
    (line,) = error_lines(result)
    assert line.startswith(f"Error: {flag} must be")


def test_options_that_would_be_ignored_or_feed_the_run_its_own_figures_are_refused(captured, image_folder, tmp_path):  # noqa: F811
    result = invoke("srresnet", "--data", str(image_folder), "--lr-step", "5")
    assert result.exit_code == 2 and error_lines(result) == ["Error: --lr-step is used only with --schedule step; this run's schedule is constant"]
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(tmp_path / "r"), "--lr-step", "5", "--schedule", "step").exit_code == 0
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(tmp_path / "p"), "--preset", "paper", "--schedule", "cosine").exit_code == 0
    (tmp_path / "val").mkdir()
    for flag, folder in (("--data", image_folder), ("--val-data", tmp_path / "val")):
        result = invoke("srresnet", "--data", str(image_folder), "--val-data", str(tmp_path / "val"), "-o", str(folder / "run"))
        assert result.exit_code == 2 and error_lines(result)[0].startswith(f"Error: --out {folder / 'run'} is inside {flag} ")
        assert not (folder / "run").exists()
    assert len(captured) == 2


def test_run_errors_are_one_line(tmp_path, image_folder, monkeypatch):  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    # Refused before the first step: exit 2 like a usage error, the error the only line, no folder left.
    result = invoke("srresnet", "--data", str(empty), "-o", str(tmp_path / "run"), *TINY)
    (line,) = result.output.splitlines()
    assert result.exit_code == 2 and line.startswith("Error: no images") and line.endswith(f"under {empty}")
    result = invoke("srgan", "--data", str(image_folder), "--init", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "run2"), *TINY)
    assert result.exit_code == 2 and result.output.splitlines() == [f"Error: checkpoint not found: {tmp_path / 'nope.pt'}"]
    result = invoke("srgan", "--data", str(image_folder), "--init", "default", "--content", "mse+vgg", "--vgg-weights",
                    str(tmp_path / "vgg19.pth"), "-o", str(tmp_path / "run3"), *TINY[4:])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1 and str(tmp_path / "vgg19.pth") in result.output
    result = invoke("srresnet", "--data", str(image_folder), "-o", str(tmp_path / "run4"), *TINY[:-6], "--batch-size", "64", *TINY[-4:])
    assert result.exit_code == 2 and result.output.splitlines() == ["Error: 10 images cannot fill one batch of 64 per process; give --batch-size 10 or less"]
    assert not any((tmp_path / run).exists() for run in ("run", "run2", "run3", "run4"))  # refused before writing: no folder left
    assert invoke("srgan", "--data", str(image_folder)).exit_code == 2  # no --init

    def bug(cfg, resume=False, started=None):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(loop, "train", bug)
    result = invoke("srresnet", "--data", str(image_folder))
    (line,) = error_lines(result)
    assert result.exit_code == 1 and line.startswith("Error: internal error, TypeError at test_training_cli.py:")


def test_a_moved_run_folder_resumes_where_it_now_is(tmp_path, image_folder):  # noqa: F811
    before, after = tmp_path / "before", tmp_path / "after"
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(before), "--steps", "2", *TINY).exit_code == 0
    shutil.move(before, after)
    result = invoke("srresnet", "-o", str(after), "--resume", "--steps", "4", "--log-every", "1")
    assert result.exit_code == 0, result.output
    assert not before.exists()
    assert load_checkpoint(after / "last.pt")["step"] == 4
    assert json.loads((after / "config.json").read_text())["out"] == str(after)
    steps = [r["step"] for r in map(json.loads, (after / "metrics.jsonl").read_text().splitlines())]
    assert steps[-2:] == [3, 4]


def test_a_resume_with_another_process_count_is_refused(tmp_path, image_folder):  # noqa: F811
    """Steps and the epoch position count each process's batches: 2 processes' step 7 is not one process's."""
    import torch

    from srdeploy.training.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", *TINY).exit_code == 0
    state = load_checkpoint(run / "last.pt")
    assert state["processes"] == 1
    save_checkpoint({**state, "processes": 2}, run / "last.pt")  # as a torchrun --nproc-per-node 2 run writes it
    result = invoke("srresnet", "-o", str(run), "--resume", "--steps", "2")
    assert result.exit_code == 2 and error_lines(result)[0].startswith(f"Error: --resume: {run} was trained by 2 process(es) and this run has 1;")
    assert torch.equal(load_checkpoint(run / "last.pt")["generator"]["tail.bias"], state["generator"]["tail.bias"])  # untouched


def test_resume_keeps_the_recipe(tmp_path, image_folder):  # noqa: F811
    run = tmp_path / "run"
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", *TINY).exit_code == 0
    changed = invoke("srresnet", "-o", str(run), "--resume", "--lr", "1e-3")
    assert changed.exit_code == 2 and "--lr cannot change" in error_lines(changed)[0]
    # The first command again with --resume: its flags repeat the stored recipe, so it continues.
    again = invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "2", *TINY, "--resume")
    assert again.exit_code == 0, again.output
    assert load_checkpoint(run / "last.pt")["step"] == 2
    other_stage = invoke("srgan", "-o", str(run), "--resume")
    assert other_stage.exit_code == 2 and "is a srresnet run" in error_lines(other_stage)[0]
    nothing = invoke("srresnet", "-o", str(tmp_path / "elsewhere"), "--resume")
    assert nothing.exit_code == 2 and "holds no run to continue" in error_lines(nothing)[0]
    stored = json.loads((run / "config.json").read_text())
    for field, value, says in (("lr", "2e-4", "`lr` must be a number; got '2e-4'"),
                               ("num_blocks", None, "`num_blocks` must be an integer; got None")):
        (run / "config.json").write_text(json.dumps({**stored, field: value}))  # hand-edited
        edited = invoke("srresnet", "-o", str(run), "--resume")
        assert edited.exit_code == 2 and error_lines(edited) == [f"Error: --resume: {run / 'config.json'}: {says}"]
    (run / "config.json").write_text("[1, 2]")
    not_a_config = invoke("srresnet", "-o", str(run), "--resume")
    assert not_a_config.exit_code == 2 and "config.json holds a JSON list, not a training config" in error_lines(not_a_config)[0]


def test_a_resume_takes_a_new_epoch_budget_and_finds_the_default_run_folder(tmp_path, image_folder, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    assert invoke("srresnet", "--data", str(image_folder), "--steps", "2", *TINY).exit_code == 0  # into runs/srresnet
    steps_per_epoch = json.loads((tmp_path / "runs/srresnet/data.json").read_text())["steps_per_epoch"]
    # No -o: the folder a run without one went to. --epochs: the budget, though the run began with --steps.
    resumed = invoke("srresnet", "--resume", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(tmp_path / "runs/srresnet/last.pt")["step"] == 2 * steps_per_epoch


def test_a_new_run_is_refused_in_a_folder_that_holds_one(tmp_path, image_folder):  # noqa: F811
    run = tmp_path / "run"
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", *TINY).exit_code == 0
    before = (run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text()
    again = invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", *TINY)
    assert again.exit_code == 2
    assert error_lines(again) == [f"Error: {run} already holds a run (last.pt): continue it with --resume, or give another --out"]
    assert ((run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text()) == before


def test_a_run_that_died_before_its_first_checkpoint_is_started_over_not_resumed(tmp_path, image_folder):  # noqa: F811
    # Killed in its first epoch (an OOM, a power cut), a run left config.json and no last.pt:
    # a new run was refused ("continue it with --resume") and --resume too ("no run to continue").
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 99.0}\n')
    resumed = invoke("srresnet", "-o", str(run), "--resume")
    assert resumed.exit_code == 2 and "stopped before its first checkpoint (last.pt)" in error_lines(resumed)[0]
    again = invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", "--log-every", "1", *TINY)
    assert again.exit_code == 0, again.output
    assert f"starting over in {run}" in again.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1] and records[0].get("loss") != 99.0


def test_a_second_run_into_a_live_runs_folder_is_refused(tmp_path, image_folder):  # noqa: F811
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".srdeploy-train.lock", "a+b") as held:  # what a live run holds
        fcntl.flock(held, fcntl.LOCK_EX)
        second = invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", *TINY)
    assert second.exit_code == 2 and error_lines(second) == [f"Error: another srdeploy train is running in {run}; wait for it, or give another --out"]
    assert not (run / "config.json").exists()


def test_a_killed_runs_half_written_checkpoint_is_removed_by_the_next_run(tmp_path, image_folder):  # noqa: F811
    from srdeploy.io.files import temp_path

    run = tmp_path / "run"
    run.mkdir()
    stale = temp_path(run / "last.pt")  # what kill -9 mid-save leaves
    stale.write_bytes(b"\0" * 1024)
    (run / "notes.txt").write_text("mine")
    assert invoke("srresnet", "--data", str(image_folder), "-o", str(run), "--steps", "1", *TINY).exit_code == 0
    assert not stale.exists() and (run / "notes.txt").read_text() == "mine"


def test_relative_paths_are_stored_absolute_so_a_resume_works_from_anywhere(tmp_path, image_folder, monkeypatch):  # noqa: F811
    monkeypatch.chdir(image_folder.parent)
    assert invoke("srresnet", "--data", image_folder.name, "-o", "run", "--steps", "1", *TINY).exit_code == 0
    assert json.loads((image_folder.parent / "run/config.json").read_text())["data"] == str(image_folder)
    monkeypatch.chdir(tmp_path.parent)
    result = invoke("srresnet", "-o", str(image_folder.parent / "run"), "--resume", "--steps", "2")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("signum, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_after_a_step_with_a_checkpoint_and_one_line(tmp_path, image_folder, signum, by):  # noqa: F811
    """SIGINT to the whole process group, as a terminal sends it: the DataLoader workers
    get it too, and must not fail the batch the trainer is waiting for. SIGTERM to the
    trainer, as a scheduler or `kill` sends it: a checkpoint, not a death mid-write."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "srdeploy.cli", "train", "srresnet", "--data", str(image_folder), "-o", str(run),
           "--steps", "100000", "--log-every", "1", *TINY[:-4], "--workers", "2", "--device", "cpu"]
    returncode, stderr = ctrl_c_once_logged(cmd, {**os.environ, "SRDEPLOY_NO_PROGRESS": "1"}, run / "metrics.jsonl", 2, signum=signum)
    assert returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    step = load_checkpoint(run / "last.pt")["step"]
    assert f"{by}: stopping after this step and writing last.pt" in stderr
    assert f"stopped by {by} at step {step}, saved in {run / 'last.pt'}; continue with" in stderr
    assert not list(run.glob(f"*{TMP_SUFFIX}"))
    assert json.loads((run / "end.json").read_text())["stopped_by"] == "interrupt"
    assert "Error" not in stderr and "DataLoader" not in stderr
