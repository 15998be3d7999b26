"""``srdeploy package``: the model as a TorchServe archive, plus a safe config.properties.

Exit status: 0 on success, 2 when the archive could not be built (model, options, tools).
Heavy imports happen inside the command.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from srdeploy.handlers.config import SERVED_PROVIDERS, Ports, ServeConfig
from srdeploy.runtime import zoo
from srdeploy.runtime.engines import PRECISIONS


@click.command("package")
@click.option("--model", default="default", show_default=True, help=f"{' | '.join(zoo.NAMES)} | PATH.onnx")
@click.option("-o", "--output", "store", required=True, type=click.Path(path_type=Path, file_okay=False), help="Model store folder; NAME.mar is written into it.")
@click.option("--name", default=None, help="Model name: the archive's file name and the URL path /predictions/NAME [default: the model's, e.g. srresnet].")
@click.option("--config", "properties", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Where to write config.properties [default: beside the model store folder].")
@click.option("--port", type=click.IntRange(1, 65535 - 16), default=Ports.base, show_default=True, help="Inference port; management, metrics, gRPC and worker ports follow it (+1..+5), all on 127.0.0.1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=ServeConfig.batch_size, show_default=True, help="Requests per batch (mixed sizes are fine); on a CPU batches add latency, not throughput.")
@click.option("--max-batch-delay", type=click.IntRange(min=0), default=ServeConfig.max_batch_delay_ms, show_default=True, help="Milliseconds TorchServe waits to fill a batch.")
@click.option("--workers", type=click.IntRange(min=1), default=ServeConfig.workers, show_default=True, help="Worker processes; they share the cores (engine threads = cores / workers).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=ServeConfig.max_pixels, show_default=True, help="Largest input in pixels (413 above); request/response size limits follow.")
@click.option("--provider", type=click.Choice(SERVED_PROVIDERS), default=ServeConfig.provider, show_default=True, help="Engine of the workers, written into the archive; auto = cuda when the worker can start it, else the fastest CPU engine for its CPU (a GPU worker on the CPU logs a warning).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=ServeConfig.precision, show_default=True, help="As `srdeploy upscale --precision`.")
@click.option("--tile", type=click.IntRange(min=1), default=ServeConfig.tile, show_default=True, help="LR tile side, as `srdeploy upscale --tile` (same value, same bytes); a server always tiles, so that a request's memory stays bounded.")
@click.option("--response-timeout", type=click.IntRange(min=1), default=None, help="Seconds per batch before TorchServe restarts the worker [default: sized from the model for a CPU].")
@click.option("--force", is_flag=True, help="Replace an existing NAME.mar and config.properties.")
def package(model, store, name, properties, port, batch_size, max_batch_delay, workers, max_pixels, provider, precision, tile, response_timeout, force):
    """Build MODEL_STORE/NAME.mar for TorchServe 0.12 and a safe config.properties.

    Start it from the folder that should hold key_file.json (the API tokens):

        torchserve --start --ts-config config.properties --foreground
    """
    from srdeploy.handlers.package import PackageError, build_archive
    from srdeploy.runtime.engines import ProviderError
    from srdeploy.runtime.zoo import ModelError

    try:
        config = ServeConfig(batch_size=batch_size, max_batch_delay_ms=max_batch_delay, workers=workers, max_pixels=max_pixels, tile=tile, provider=provider, precision=precision,
                             response_timeout_s=response_timeout)
        done = build_archive(model, store, name, config, Ports(port), properties, force)
    except (ModelError, PackageError, ProviderError, ValueError, ImportError, OSError) as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    click.echo(f"wrote {done.archive} (model sha256 {done.model_sha256[:12]}, responseTimeout {done.response_timeout_s} s)")
    click.echo(f"wrote {done.config_properties}")
    # Quoted: the line is meant to be pasted into a shell, where a space or $(...) in a path would split or run.
    click.echo(f"start: cd {shlex.quote(str(done.config_properties.parent))} && torchserve --start --ts-config {shlex.quote(done.config_properties.name)} --foreground")
    click.echo(f"call:  curl -H \"Authorization: Bearer $(python -c \"import json; print(json.load(open('key_file.json'))['inference']['key'])\")\" "
               f"-H 'Content-Type: image/png' --data-binary @face.png -o face_x4.png http://127.0.0.1:{port}/predictions/{done.model_name}")
