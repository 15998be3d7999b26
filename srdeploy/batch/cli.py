"""``srdeploy upscale``: 4x images from files and folders, on CPU or GPU.

Exit status: 0 when every input is ok or skipped, 1 when any failed or the journal could
not be written midway (the batch stops there), 2 when the run could not start (model,
provider, options or cluster), 130 when Ctrl-C stopped it.
Heavy imports happen inside the command; Ray only with ``--ray`` (srdeploy.batch.ray_run).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections import Counter

import click

from srdeploy import EXIT_INTERRUPTED
from srdeploy.batch.journal import JournalError
from srdeploy.io import imaging
from srdeploy.io.files import display
from srdeploy.io.imaging import DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION
from srdeploy.runtime import engines, zoo
from srdeploy.runtime.upscaler import DEFAULT_TILE


@click.command("upscale")
# Paths stay text until srdeploy.batch.stores.as_local: a Path would fold s3://b into s3:/b.
# readable=False: an input we may not read fails alone, in the batch, like any other bad file.
@click.argument("inputs", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (or, with --ray, an s3:// or gs:// prefix); input folders are mirrored inside it.")
@click.option("--model", default="default", show_default=True, help=f"{' | '.join(zoo.NAMES)} | PATH.onnx | PATH.engine")
@click.option("--provider", type=click.Choice(engines.PROVIDERS), default="auto", show_default=True, help="Engine: cpu (ONNX Runtime), openvino, cuda, tensorrt; auto = cuda if usable, else the fastest CPU engine for this CPU (printed).")
@click.option("--precision", type=click.Choice(engines.PRECISIONS), default="auto", show_default=True, help="fp32, or bf16 (OpenVINO on CPUs with bf16 units); int8 models (export --int8) run in int8. auto = the fastest within 0.02 dB of fp32.")
@click.option("--tile", type=click.IntRange(min=0), default=DEFAULT_TILE, show_default=True, help="LR tile side in pixels (tiles overlap by the model's receptive radius, so the output equals untiled); 0 = whole image (CPU only).")
@click.option("--format", "fmt", type=click.Choice([*imaging.OUTPUT_CHOICES, "jpeg"], case_sensitive=False), default="same", show_default=True,
              callback=lambda ctx, param, value: {"jpeg": "jpg"}.get(value.lower(), value.lower()),  # the server's spelling too
              help="Output format; alpha and 16-bit inputs are written as PNG when the format cannot hold them.")
@click.option("--quality", type=click.IntRange(1, 100), default=None, help=f"JPEG/WebP quality [default: {imaging.QUALITY_DEFAULTS_TEXT}]; PNG/TIFF/BMP are lossless.")
@click.option("--png-compression", type=click.IntRange(0, 9), default=DEFAULT_PNG_COMPRESSION, show_default=True, help="PNG compression, 0-9; the pixels are the same at every level. 0 stores, 1-3 are fast (one filter, ISA-L deflate), 4-9 smaller and slower (Pillow's filter search, zlib).")
@click.option("-r", "--recursive", is_flag=True, help="Descend into subfolders.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs this tool did not make from the same input.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-file lines; failures still go to stderr.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, help="Refuse inputs with more pixels (checked before decoding).")
@click.option("--ray", "ray_address", metavar="ADDRESS", default=None, help="Run on a Ray cluster: local (one started on this machine for the run), auto (the one this machine belongs to) or its address. Inputs and -o may then be s3:// or gs:// URIs.")
@click.option("--actors", type=click.IntRange(min=1), default=None, help="With --ray: actors, each holding one engine [default: one per GPU for cuda/tensorrt, else one per --cpus-per-actor CPUs of the cluster].")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=None, help="With --ray: logical CPUs (and engine threads) per actor [default: 1].")
def upscale(inputs, out_dir, model, provider, precision, tile, fmt, quality, png_compression, recursive, overwrite, quiet, max_pixels, ray_address, actors, cpus_per_actor):
    """Upscale INPUT images and folders 4x into OUTPUT.

    Every input ends ok, skipped or failed with a reason, also appended to
    OUTPUT/upscale-journal.jsonl. Running the same command again resumes: outputs already
    made from the same input, model and settings are skipped.
    """
    from tqdm import tqdm

    from srdeploy.batch.jobs import Result, Settings
    from srdeploy.batch.stores import as_local

    # An empty argument would be Path(""), the current folder: never what was meant.
    if not out_dir.strip():
        _fail("-o/--output is empty; name the output folder")
    if not all(text.strip() for text in inputs):
        _fail("an INPUT argument is empty; name a file or folder")
    try:
        sources, out = [as_local(text) for text in inputs], as_local(out_dir)
    except ValueError as e:  # a file:// URI of another host
        _fail(str(e))
    if ray_address is None and (actors is not None or cpus_per_actor is not None):
        _fail("--actors and --cpus-per-actor go with --ray")
    if ray_address is None and any(isinstance(x, str) for x in (*sources, out)):
        _fail(f"{next(x for x in (*sources, out) if isinstance(x, str))}: object-store URIs need --ray (for example --ray local)")

    reported: Counter[str] = Counter()  # by status: what a batch stopped midway had done

    def report(result: Result) -> None:  # a reader that leaves (`| head`) costs lines, not the batch: srdeploy.io.streams.PipeSafe
        reported[result.status] += 1
        arrow = f" -> {result.output}" if result.status == "ok" else ""
        line = one_line(f"{result.status:<7} {result.input}{arrow}: {result.reason}")
        if result.status == "failed":
            tqdm.write(line, file=sys.stderr)
        elif not quiet:
            tqdm.write(line, file=sys.stdout)

    settings = Settings(format=fmt, quality=quality, png_compression=png_compression, recursive=recursive, overwrite=overwrite, max_pixels=max_pixels)
    try:
        if ray_address is not None:
            summary = _on_ray(ray_address, actors, cpus_per_actor, model, provider, precision, tile, sources, out, settings, report, quiet)
        else:
            summary = _here(model, provider, precision, tile, sources, out, settings, report, quiet)
    except KeyboardInterrupt:  # the batch has committed or removed every output it began
        click.echo("\ninterrupted: every output written so far is whole and journalled; the same command resumes", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except JournalError as e:  # the disk filled up, or the folder went read-only, mid-batch
        if not reported:
            _fail(str(e))  # nothing done: as any run that could not start
        done = ", ".join(f"{reported[status]} {status}" for status in ("ok", "skipped", "failed"))
        click.echo(f"stopped: {e}, after {done}; the inputs after those were not reached. Every output in place is whole and "
                   "journalled: once the journal can be written, the same command resumes", err=True)
        sys.exit(1)
    if not quiet:
        if summary.unentered_dirs:
            click.echo(f"{summary.unentered_dirs} subfolder(s) not searched; add --recursive to include them", err=True)
        click.echo(summary.line(), err=True)
    sys.exit(1 if summary.failed else 0)


def _bar_shown(quiet: bool) -> bool:
    """The progress bar redraws a line in place: for a terminal, not for a log file or a pipe,
    where each redraw would stay as text between the result lines."""
    return not quiet and sys.stderr.isatty()


def _here(model, provider, precision, tile, sources, out, settings, report, quiet):
    """The batch in this process (srdeploy.batch.run)."""
    from srdeploy.batch.run import run_batch
    from srdeploy.io import imaging
    from srdeploy.io.imaging import ImageError
    from srdeploy.runtime.upscaler import ProviderError, Upscaler
    from srdeploy.runtime.zoo import ModelError

    imaging.allow_pixels(settings.max_pixels)
    try:
        upscaler = Upscaler(model, provider=provider, tile=tile, precision=precision)
    except (ModelError, ProviderError, ImageError, ValueError, ImportError) as e:
        _fail(str(e))
    if not quiet:
        click.echo(_engine_line(upscaler.describe(), upscaler.engine_why), err=True)
    try:
        return run_batch(upscaler, sources, out, settings, report=report, progress=_bar_shown(quiet))
    except JournalError:
        raise  # upscale() says how far the batch got
    except (ValueError, RuntimeError, OSError) as e:  # OUT unusable (an input, locked, not writable)
        _fail(str(e))


def _on_ray(address, actors, cpus_per_actor, model, provider, precision, tile, sources, out, settings, report, quiet):
    """The batch on a Ray cluster (srdeploy.batch.ray_run): the same rules, records and bytes."""
    from srdeploy.batch.ray_cluster import before_ray_import

    before_ray_import(address)  # the checks below import Ray
    for package in ("ray", "ray.data", "fsspec"):
        try:
            importlib.import_module(package)
        except ModuleNotFoundError:
            _fail(f"--ray needs the {package.split('.')[0]} package, which is not installed: pip install 'srdeploy[ray]'")
    import ray

    from srdeploy.batch.ray_cluster import ClusterError, failure_line
    from srdeploy.batch.ray_run import RayBatch

    try:
        with RayBatch(address, actors, cpus_per_actor) as batch:
            engine = batch.start(model, provider, precision, tile)
            if not quiet:
                pool = batch.pool
                click.echo(f"{_engine_line(engine, engine.get('note'))}; Ray: {pool.actors} actor(s) x {pool.cpus:g} CPU" + (" + 1 GPU" if pool.gpus else ""), err=True)
            return batch.run(sources, out, settings, report=report, progress=_bar_shown(quiet))
    except JournalError:
        raise  # upscale() says how far the batch got
    except ray.exceptions.RayError as e:  # a worker failed in a way the batch cannot go on from (an actor that cannot start)
        _fail(f"the cluster could not run the batch: {failure_line(e)}")
    except (ClusterError, ValueError, RuntimeError, OSError) as e:  # the cluster, or OUT unusable
        _fail(failure_line(e))


def one_line(text: str) -> str:
    """``text`` with control characters (a newline in a file name) and direction overrides
    escaped: one result, one line, shown as it is named. Bytes of a file name that are not
    UTF-8 are shown as display() shows them, so an input and its output read alike."""
    text = display(text)
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


# C0 and C1 controls (\x9b starts a terminal escape sequence as ESC [ does), and the
# bidirectional overrides that show "photo_\u202egnp.exe" as "photo_exe.png".
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _engine_line(d: dict, note: str | None) -> str:
    tiling = f"tile {d['tile']} + {d['overlap']} px overlap" if d["tile"] else "untiled"
    picked = f" ({note})" if note else ""
    return f"model {d['model']} (sha256 {d['model_sha256'][:12]}), x{d['scale']}, provider {d['provider']} {d['precision']}{picked}, {tiling}"


def _fail(message: str):
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)
