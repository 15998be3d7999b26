"""``srdeploy demo``: the page on http://127.0.0.1:7860, until Ctrl-C or SIGTERM.

The first model is loaded (and warmed up) before the server accepts a request. Gradio
writes uploads, results and the pictures it shows under one temporary folder of this
process, removed when the server stops; its analytics and version check are off, and
the page loads nothing from outside this server. Heavy imports happen inside the command.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import click

from srdeploy.demo import guard
from srdeploy.io import imaging
from srdeploy.io.image_guard import most_file_bytes
from srdeploy.io.imaging import DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION
from srdeploy.runtime import engines, zoo
from srdeploy.runtime.upscaler import DEFAULT_TILE

LOOPBACK = "127.0.0.1"



@click.command("demo")
@click.option("--model", "models", multiple=True, default=("default",), show_default=True,
              help=f"{' | '.join(zoo.NAMES)} | PATH.onnx | PATH.engine; repeat to offer several (the first is loaded at start). Shipped models are always offered.")
@click.option("--provider", type=click.Choice(engines.PROVIDERS), default="auto", show_default=True, help="The engine selected when the page opens (as srdeploy upscale --provider).")
@click.option("--precision", type=click.Choice(engines.PRECISIONS), default="auto", show_default=True, help="The precision selected when the page opens (as srdeploy upscale --precision).")
@click.option("--tile", type=click.IntRange(min=0), default=DEFAULT_TILE, show_default=True, help="LR tile side in pixels, as srdeploy upscale --tile; 0 = whole image (CPU only).")
@click.option("--quality", type=click.IntRange(1, 100), default=None, help=f"JPEG/WebP quality [default: {imaging.QUALITY_DEFAULTS_TEXT}], as srdeploy upscale --quality.")
@click.option("--png-compression", type=click.IntRange(0, 9), default=DEFAULT_PNG_COMPRESSION, show_default=True, help="PNG compression 0-9, as srdeploy upscale --png-compression.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, help="Refuse inputs with more pixels (checked before decoding).")
@click.option("--host", default=LOOPBACK, show_default=True, help="Address to listen on; 0.0.0.0 makes the page reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to listen on.")
def demo(models, provider, precision, tile, quality, png_compression, max_pixels, host, port):
    """Serve a page to try the models on one image: the input beside its 4x result, a
    slider against bicubic, the engine that ran and its time, the file to download."""
    from srdeploy.demo.choices import machine_choices
    from srdeploy.demo.compare import Settings
    from srdeploy.demo.upscalers import Upscalers
    from srdeploy.io import imaging
    from srdeploy.runtime.upscaler import ProviderError
    from srdeploy.runtime.zoo import ModelError

    problem = listen_problem(host, port)  # before minutes of loading: Gradio's own message hides the cause
    if problem:
        click.echo(f"Error: cannot listen on {host}:{port}: {problem}", err=True)
        sys.exit(2)
    imaging.allow_pixels(max_pixels)  # as srdeploy upscale does
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, so the temporary folder goes too
    workdir = Path(tempfile.mkdtemp(prefix="srdeploy-demo-"))
    # Read by Gradio when it is imported and when the page is built, so set first. Run
    # history (Gradio >= 6.2x) would keep every upload and result in the browser's storage.
    os.environ["GRADIO_TEMP_DIR"] = str(workdir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_RUN_HISTORY"] = "False"
    try:
        from srdeploy.demo.page import CSS, build  # Gradio: a missing demo extra fails here, before the model loads

        try:
            for spec in models:
                zoo.resolve_model(spec)  # every named file is checked now, not on first use
            choices = machine_choices(models, provider, precision)
            upscalers = Upscalers(tile)
            first = upscalers.get(choices.models[0], provider, precision)
        except (ModelError, ProviderError, ValueError, ImportError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        up = first.upscaler
        picked = f" ({up.engine_why})" if up.engine_why else ""
        click.echo(f"model {up.model.name}, provider {up.provider} {up.precision}{picked}: loaded in {first.seconds:.1f} s", err=True)
        settings = Settings("same", quality, png_compression, max_pixels)
        serve(build(choices, upscalers, settings, workdir / "results", provider, precision), CSS, host, port, max_pixels)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def listen_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host``:``port`` (an IPv6 address, an unknown name,
    an address not this machine's, a port taken), or None: a socket is bound there and
    closed again."""
    if ":" in host:  # Gradio writes its URL as http://HOST:PORT, without an IPv6 address's brackets, and fails
        return f"an IPv6 address is not supported by the page's server (Gradio); use {LOOPBACK}, localhost or 0.0.0.0"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        return f"{host} is not a name or address this machine can use ({e.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's TIME_WAIT is fine
        try:
            probe.bind(address)
        except OSError as e:
            return e.strerror or str(e)
    return None


def serve(page, css: str, host: str, port: int, max_pixels: int) -> None:
    """Start the page, say where it is, and block until SIGINT or SIGTERM (either may
    come while Gradio is still starting)."""
    try:
        try:
            page.launch(
                server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, share=False, inbrowser=False,
                ssr_mode=False,  # no Node.js server beside this one
                mcp_server=False,
                max_file_size=most_file_bytes(max_pixels),  # larger uploads: refused by Gradio, as upscale refuses such files
                css=css,
                app_kwargs=guard.app_kwargs(host),
            )
        except OSError as e:  # the port is taken, or the address is not this machine's
            click.echo(f"Error: cannot listen on {host}:{port}: {e}", err=True)
            sys.exit(2)
        click.echo(f"srdeploy demo: http://{host}:{port} (Ctrl-C stops it)", err=True)
        while True:
            time.sleep(3600)  # the server runs on Gradio's threads
    except KeyboardInterrupt:
        click.echo("srdeploy demo: stopped", err=True)
    finally:
        page.close(verbose=False)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
