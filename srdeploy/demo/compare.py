"""One request of the page: an uploaded file -> the file ``srdeploy upscale`` would write
for it, the pictures to compare, and a summary of what ran.

The file goes through the Upscaler's decode, upscale_picture and encode (the three steps
of ``upscale_bytes``, as the batch runs them) with the command's settings, so the
download is byte for byte the CLI's output. decode checks the header (pixel cap, format,
output size) before it decodes a pixel. Every failure becomes one line naming the file and
the reason; nothing raises to the page.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from srdeploy.demo.upscalers import Upscalers
from srdeploy.io import imaging
from srdeploy.io.imaging import ImageError, OutputTooLarge, Picture
from srdeploy.runtime.engines import ProviderError
from srdeploy.runtime.upscaler import Encoded, Upscaler
from srdeploy.runtime.zoo import ModelError

log = logging.getLogger(__name__)

# Pictures on the page are at most this many pixels a side (the download is always the
# whole file): a screen shows no more, and the page encodes every picture it shows.
SHOWN_MAX_SIDE = 4096
# A result's file stays this long (and Gradio's copies of uploads and results, see
# srdeploy.demo.page): time enough to download it, and a page left running for days does
# not fill the disk.
KEEP_SECONDS = 3600


@dataclass(frozen=True)
class Settings:
    """The ``srdeploy upscale`` output settings the page applies to every request."""

    format: str  # same | png | jpg | webp
    quality: int | None  # None: the format's default (JPEG 95, WebP 90)
    png_compression: int  # 0-9, as srdeploy.io.imaging.encode
    max_pixels: int  # input cap, checked on the header


@dataclass(frozen=True)
class Comparison:
    """What the page shows for one upload: 8-bit Pillow images at most SHOWN_MAX_SIDE a
    side (the input; bicubic and the model at the output's shown size), and the file."""

    input: Image.Image
    bicubic: Image.Image
    upscaled: Image.Image
    file: Path  # the output, named as srdeploy upscale names it
    summary: str  # what ran, on what, how long it took


def compare(upscalers: Upscalers, upload: Path, model: str, provider: str, precision: str, settings: Settings, out_dir: Path) -> Comparison | str:
    """``upload``: the uploaded file, under the user's file name. Returns the comparison,
    or the one-line reason there is none."""
    name = upload.name
    try:
        loaded = upscalers.get(model, provider, precision)
        up = loaded.upscaler
        data = upload.read_bytes()
        start = time.perf_counter()
        decoded = up.decode(data, name, settings.format, settings.max_pixels)
        result = up.upscale_picture(decoded.picture)
        encoded = up.encode(result, decoded.format, decoded.note, settings.quality, settings.png_compression)
        seconds = time.perf_counter() - start
        file = out_dir / uuid.uuid4().hex / (Path(name).stem + imaging.output_suffix(encoded.format, Path(name).suffix))
        file.parent.mkdir(parents=True)
        file.write_bytes(encoded.data)
        remove_results(out_dir, older_than=time.time() - KEEP_SECONDS)
        # The screen's copies (up to a few times the image's bytes): inside the guard too.
        upscaled = _fit(_to_pil(result))
        bicubic = _to_pil(decoded.picture).resize(upscaled.size, Image.Resampling.BICUBIC)
        return Comparison(_fit(_to_pil(decoded.picture)), bicubic, upscaled, file, summary(up, decoded.picture, encoded, seconds, loaded.seconds))
    except OutputTooLarge as e:  # the shared remedy names the CLI's --format
        return f"{e.reason}; choose PNG as the output format"
    except (ImageError, ModelError, ProviderError) as e:
        return str(e)  # ImageError names the file; the others name the model or the provider
    except ValueError as e:  # a setting the Upscaler refused
        return f"{name}: {e}"
    except MemoryError:
        return f"{name}: out of memory while upscaling; try a smaller image"
    except Exception as e:  # the page's last guard: the server log gets the traceback, the user one line
        log.exception("upscaling %s failed", name)
        return f"{name}: unexpected {type(e).__name__}: {e}"


def remove_results(out_dir: Path, older_than: float) -> None:
    """Remove the result folders under ``out_dir`` last changed before ``older_than`` (a
    time.time() value)."""
    for folder in out_dir.iterdir():
        try:
            if folder.stat().st_mtime < older_than:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            pass


def summary(up: Upscaler, lr: Picture, encoded: Encoded, seconds: float, load_seconds: float) -> str:
    """Three lines: the engine (as ``srdeploy upscale`` prints it), the work, the time."""
    d = up.describe()
    picked = f" ({up.engine_why})" if up.engine_why else ""
    tiling = f"tile {d['tile']} + {d['overlap']} px overlap" if d["tile"] else "untiled"
    width, height = lr.size
    lines = [
        f"model {d['model']} (sha256 {d['model_sha256'][:12]}), x{d['scale']}, provider {d['provider']} {d['precision']}{picked}, {tiling}, {d['threads']} threads",
        f"{width}x{height} -> {encoded.width}x{encoded.height} {encoded.format}, {len(encoded.data):,} bytes" + (f" ({encoded.note})" if encoded.note else ""),
        f"{seconds:.2f} s to decode, upscale and encode" + (f"; this model and engine were loaded first, in {load_seconds:.1f} s" if load_seconds else ""),
    ]
    return "\n".join(lines)


def _to_pil(pic: Picture) -> Image.Image:
    """8-bit for the screen (16-bit samples are rounded; the file keeps them)."""
    return imaging.picture_to_pil(imaging.to_8bit(pic) if pic.depth == 16 else pic)


def _fit(img: Image.Image) -> Image.Image:
    if max(img.size) <= SHOWN_MAX_SIDE:
        return img
    ratio = SHOWN_MAX_SIDE / max(img.size)
    return img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), Image.Resampling.BOX)
