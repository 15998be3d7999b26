"""``srdeploy train srresnet|srgan``: one flag per user-facing TrainConfig field.

The flags are generated from the dataclass: a field's annotation gives the flag's type
(``Literal`` -> a choice, ``bool`` -> ``--x/--no-x``) and its docstring the help text, so
config.py is the one place a knob is documented. What only the command line needs is
here: flag names that differ from the field's, which paths must exist, and the fields that
get no flag. Every option defaults to None, meaning "not given": the value then comes from
--preset, else from the stage's defaults (shown in ``--help``). Torch is imported only when
a command runs.

Errors reach the user as one line, ``Error: ...``: a bad value, or a run refused before its
first step (a missing file, a bad checkpoint, no VGG weights), exits 2 with nothing written;
a run that fails once started exits 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Iterator

import click

from srdeploy import EXIT_INTERRUPTED
from srdeploy.io.files import FolderBusy, folder_lock, temp_files_of
from srdeploy.io.folders import output_inside_images
from srdeploy.runtime import zoo
from srdeploy.training.config import SRGAN_FIELDS, ConfigError, TrainConfig, field_docs, literal_choices, resolve_config, stage_defaults

# Flag spellings that are not --field-name.
FLAG_NAMES = {"num_blocks": ("--blocks",), "out": ("-o", "--out")}
# Fields with no flag: the stage is the subcommand; the others are fixed by the recipe.
NO_FLAG = {"stage", "scale", "betas", "flip"}
# Path fields click checks before anything runs.
PATHS = {
    "data": click.Path(exists=True, file_okay=False),
    "data_list": click.Path(exists=True, dir_okay=False),
    "val_data": click.Path(exists=True, file_okay=False),
    "val_list": click.Path(exists=True, dir_okay=False),
    "out": click.Path(file_okay=False),
    "vgg_weights": click.Path(dir_okay=False),
}
# Path fields written to config.json (``init`` may also be the shipped model's name).
LOCK_NAME = ".srdeploy-train.lock"  # in the run folder, held by the run writing there
CHECKPOINTS = {"last.pt", "best.pt"}  # in the run folder (srdeploy.training.loop)
STORED_PATHS = {"data", "data_list", "val_data", "val_list", "vgg_weights", "init"}
# What --resume may change: the budget (a resume extends it), the run folder (it may have
# moved) and how the run is fed, logged and checkpointed. The rest is the stored config.
RESUME_MAY_CHANGE = ("out", "epochs", "steps", "max_minutes", "workers", "preload", "val_every", "log_every", "ckpt_every")


def flag_of(name: str) -> str:
    """The long flag of a field: ``num_blocks`` -> ``--blocks``."""
    return FLAG_NAMES.get(name, (f"--{name.replace('_', '-')}",))[-1]


def as_flags(text: str) -> str:
    """Config prose for the command line: a backticked field name becomes its flag (or
    its bare name when it has none)."""
    flagged = {f.name for f in dataclasses.fields(TrainConfig)} - NO_FLAG
    return re.sub(r"`(\w+)`", lambda m: flag_of(m[1]) if m[1] in flagged else m[1], text)


def _click_type(name: str, hint: Any) -> click.ParamType:
    if name in PATHS:
        return PATHS[name]
    choices = literal_choices(hint)
    if choices:
        return click.Choice(choices)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if typing.get_args(hint) else hint
    if base not in (int, float, str):
        raise TypeError(f"TrainConfig.{name}: no flag type for {hint}; give it one here or list it in NO_FLAG")
    return {int: click.INT, float: click.FLOAT, str: click.STRING}[base]


def _help(doc: str, default: Any) -> str:
    """The field's docstring as flag help, with the stage default when there is one."""
    if default is None or default == "":
        return as_flags(doc)
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    return f"{as_flags(doc)}  [default: {shown}]"


def field_options(stage: str):
    """Decorator: the options of ``srdeploy train STAGE``, in the dataclass's field order,
    then --resume."""
    hints, docs, defaults = typing.get_type_hints(TrainConfig), field_docs(), stage_defaults(stage)

    def decorate(fn):
        fn = click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (the folder may have moved).")(fn)
        for f in reversed(dataclasses.fields(TrainConfig)):
            if f.name in NO_FLAG or (stage != "srgan" and f.name in SRGAN_FIELDS):
                continue
            flags = list(FLAG_NAMES.get(f.name, (flag_of(f.name),)))
            if hints[f.name] is bool:  # --preload/--no-preload: either may override a preset
                flags[-1], kind = f"{flags[-1]}/--no-{flags[-1][2:]}", {}
            else:
                kind = {"type": _click_type(f.name, hints[f.name])}
            fn = click.option(*flags, f.name, default=None, help=_help(docs.get(f.name, ""), defaults[f.name]), **kind)(fn)
        return fn
    return decorate


def resumed_config(stage: str, given: dict[str, Any]) -> TrainConfig:
    """The stored config of the run in --out, with what a resume may change."""
    out = given.setdefault("out", stage_defaults(stage)["out"])  # where a run without -o went
    saved, last = Path(out) / "config.json", Path(out) / "last.pt"
    if saved.is_file() and not last.exists():
        raise click.UsageError(f"--resume: the run in {out} stopped before its first checkpoint (last.pt), so there is nothing "
                               "to continue; start it again without --resume")
    if not (saved.is_file() and last.is_file()):
        raise click.UsageError(f"--resume: {out} holds no run to continue (config.json and last.pt)")
    try:
        stored = json.loads(saved.read_text())
    except (OSError, ValueError) as e:
        raise click.UsageError(f"--resume: cannot read {saved} ({e})") from None
    if not isinstance(stored, dict):
        raise click.UsageError(f"--resume: {saved} holds a JSON {type(stored).__name__}, not a training config")
    # The original command with --resume added must work: a flag that repeats the stored value changes nothing.
    fixed = sorted(k for k in set(given) - set(RESUME_MAY_CHANGE) if k not in stored or given[k] != stored[k])
    if fixed:
        raise click.UsageError(f"--resume continues the stored config; {', '.join(flag_of(k) for k in fixed)} cannot change "
                               f"(a resume may set {', '.join(flag_of(k) for k in RESUME_MAY_CHANGE)})")
    if stored.get("stage") != stage:
        raise click.UsageError(f"--resume: {out} is a {stored.get('stage')} run; continue it with srdeploy train {stored.get('stage')}")
    try:
        TrainConfig.from_dict(stored)
    except ConfigError as e:  # hand-edited or damaged: say which file, not a flag
        raise click.UsageError(f"--resume: {saved}: {e}") from None
    if "epochs" in given and "steps" not in given:  # --steps would replace the --epochs given
        stored["steps"] = None
    # --out is where the folder is now, whatever it was when the run started.
    return TrainConfig.from_dict({**stored, **given})


def _run(stage: str, resume: bool, given: dict[str, Any]) -> None:
    given = {k: v for k, v in given.items() if v is not None}
    # Stored absolute, so that a resume from another working folder finds the same files.
    given.update({k: os.path.abspath(v) for k, v in given.items() if k in STORED_PATHS and not (k == "init" and v in zoo.NAMES)})
    try:
        if resume:
            cfg = resumed_config(stage, given)
        else:
            cfg = resolve_config(stage, given.pop("preset", None), given)
    except ConfigError as e:
        raise click.UsageError(as_flags(str(e))) from None
    if stage == "srgan" and not resume and not cfg.init:
        raise click.UsageError("srgan needs --init (a pre-trained generator checkpoint, or 'default')")
    if "lr_step" in given and cfg.schedule != "step":  # a preset's lr_step stays quietly under another --schedule
        raise click.UsageError(f"--lr-step is used only with --schedule step; this run's schedule is {cfg.schedule}")
    inside = output_inside_images(cfg.out, {"--data": cfg.data, "--val-data": cfg.val_data})
    if inside:
        raise click.UsageError(f"--out {inside}")
    from srdeploy.training.loop import RunInterrupted, RunRefused, train as run_training  # torch: a missing one is said before anything else

    out = Path(cfg.out)
    with run_folder_lock(out):
        if not resume and (out / "last.pt").exists():  # a new run here would overwrite its checkpoints and mix its metrics in
            raise click.UsageError(f"{cfg.out} already holds a run (last.pt): continue it with --resume, or give another --out")

        def started() -> None:
            if not resume and (out / "config.json").exists():
                click.echo(f"starting over in {cfg.out}: the run there stopped before its first checkpoint", err=True)
            click.echo(f"srdeploy train {stage}: {json.dumps({k: v for k, v in cfg.to_dict().items() if v is not None})}", err=True)

        try:
            out_dir = run_training(cfg, resume=resume, started=started)
        except RunRefused as e:
            raise CouldNotStart(as_flags(str(e))) from None
        except RunInterrupted as e:
            click.echo(f"stopped by {e.by} at step {e.step}, saved in {e.checkpoint}; continue with "
                       f"srdeploy train {stage} --out {cfg.out} --resume", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            click.echo(f"stopped by a second Ctrl-C; {out / 'last.pt'} holds the last checkpoint, if one was written", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (OSError, ValueError, RuntimeError) as e:  # missing files, bad checkpoints, CUDA, DDP, corrupt images
            raise click.ClickException(as_flags(" ".join(str(e).split()) or type(e).__name__)) from None
        except Exception as e:  # a bug: one line still, with where it happened, for the report
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise click.ClickException(f"internal error, {type(e).__name__} at {Path(where.filename).name}:{where.lineno}: {e}") from None
    click.echo(f"run folder: {out_dir}", err=True)


class CouldNotStart(click.ClickException):
    """One line, exit 2 like a usage error, without the usage hint: the values were fine,
    what they point to is not."""
    exit_code = 2


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold OUT's lock for the whole run, so that a second run into OUT (a new one, or a
    resume of this one) is refused while this one is live instead of mixing checkpoints
    and metrics. Rank 0 holds it; the other ranks of a DDP run share its folder."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    made = not out.exists()
    try:
        with contextlib.ExitStack() as held:
            try:
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(folder_lock(out, LOCK_NAME, f"another srdeploy train is running in {out}; wait for it, or give another --out"))
                for stale in temp_files_of(out, CHECKPOINTS):  # a killed run's half-written checkpoint (-9, a power cut): no live run holds the lock
                    stale.unlink(missing_ok=True)
            except FolderBusy as e:
                raise click.UsageError(str(e)) from None
            except OSError as e:
                raise click.UsageError(f"cannot lock the run folder {out}: {LOCK_NAME} ({e.strerror or e})") from None
            yield
    finally:
        if made:  # a run refused before it wrote anything (a bad --data-list, --init) leaves no folder behind
            _remove_if_only_the_lock(out)


def _remove_if_only_the_lock(out: Path) -> None:
    try:
        if set(os.listdir(out)) <= {LOCK_NAME}:
            (out / LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()
    except OSError:  # gone already, or another run has just taken it: leave it
        pass


@click.group()
def train() -> None:
    """Train SRResNet (MSE) or fine-tune an SRGAN."""


@train.command()
@field_options("srresnet")
def srresnet(resume, **given):
    """MSE pre-training of the SRResNet generator (seed: Adam 2e-4, batch 64, 30 epochs)."""
    _run("srresnet", resume, given)


@train.command()
@field_options("srgan")
def srgan(resume, **given):
    """Adversarial fine-tuning from --init (seed: batch 32; 8 epochs mse, 6 epochs mse+vgg)."""
    _run("srgan", resume, given)
