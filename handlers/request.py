"""One TorchServe request -> the image bytes and output settings it asks for.

TorchServe hands the handler each request as a dict of its parameters (bytearrays): the
raw body under ``body``, or one entry per multipart form field. TorchServe 0.12 drops
query-string parameters of a POST, so options travel in headers or form fields. Request
headers are read through the context. A client chooses the output:

- format: header ``X-Output-Format`` or form field ``format``: png (default), jpeg/jpg,
  webp, or same (the input's own format);
- quality: header ``X-Output-Quality`` or form field ``quality``: 1-100 for JPEG/WebP
  (the defaults of ``srdeploy upscale``: srdeploy.io.imaging.DEFAULT_QUALITY).

A raw body needs a Content-Type (image/png, application/octet-stream...): TorchServe's
frontend parses a body sent as application/x-www-form-urlencoded (curl's default for
--data-binary) as a form and fails with 500 before the handler sees it.

Anything unusable raises :class:`RequestError` with the HTTP status the client gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from srdeploy.io import imaging

FORMAT_HEADER = "x-output-format"
QUALITY_HEADER = "x-output-quality"
OPTION_FIELDS = ("format", "quality")
IMAGE_FIELDS = ("image", "file", "body", "data")  # where the image is looked for, in order
# Request format name -> the name srdeploy.io.imaging.choose_format takes.
FORMATS = {**{name: name for name in imaging.OUTPUT_CHOICES}, "jpeg": "jpg"}
DEFAULT_FORMAT = "png"


class RequestError(ValueError):
    """A request the handler refuses; ``status`` is the HTTP code it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UpscaleRequest:
    data: bytes  # the encoded input image
    field: str  # the parameter it came in (body, image, ...), for messages
    format: str  # png | jpg | webp | same
    quality: int | None


def parse_request(params: Mapping[str, Any], headers: Mapping[str, str], name: str) -> UpscaleRequest:
    """``params``: the request's parameters as TorchServe passes them; ``headers``: its
    HTTP headers (any case); ``name`` names the request in messages."""
    if not isinstance(params, Mapping):
        raise RequestError(400, f"{name}: malformed request ({type(params).__name__} instead of parameters)")
    lowered = {str(k).lower(): v for k, v in headers.items()}
    field, data = _image_of(params, name)
    fmt = _option(params, lowered, "format", FORMAT_HEADER) or DEFAULT_FORMAT
    if fmt.lower() not in FORMATS:
        raise RequestError(400, f"{name}: unknown output format {fmt!r}; use png, jpeg, webp or same")
    quality_text = _option(params, lowered, "quality", QUALITY_HEADER)
    quality = None
    if quality_text:
        try:
            quality = int(quality_text)
        except ValueError:
            quality = 0
        if not 1 <= quality <= 100:
            raise RequestError(400, f"{name}: quality must be a whole number from 1 to 100, got {quality_text!r}")
    return UpscaleRequest(data, field, FORMATS[fmt.lower()], quality)


def _image_of(params: Mapping[str, Any], name: str) -> tuple[str, bytes]:
    candidates = [k for k in params if k not in OPTION_FIELDS]
    files = [k for k in candidates if not _is_text(params[k])]  # a form's caption or name is no candidate
    field = next((k for k in IMAGE_FIELDS if k in params), None)
    if field is None:
        if len(files) == 1:
            field = files[0]
        elif len(candidates) == 1:  # one field, whatever it holds: the image checks say what that is
            field = candidates[0]
        else:
            found = ", ".join(map(repr, params)) or "none"
            raise RequestError(400, f"{name}: no image found; send the image bytes as the request body or as a multipart field named 'image' (fields: {found})")
    value = params[field]
    if isinstance(value, str):
        # TorchServe decodes text/* bodies; the image checks then say what the bytes are.
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        raise RequestError(400, f"{name}: '{field}' holds {type(value).__name__} data (JSON?), not image bytes; send the image file itself")
    if not value:
        raise RequestError(400, f"{name}: '{field}' is empty; send the image file's bytes")
    return field, bytes(value)


def _is_text(value: Any) -> bool:
    """A text form field (TorchServe hands those over as str, or as bytes that read as text:
    UTF-8, printable). An image's bytes never do: every format's header holds a byte that
    is not UTF-8 or not printable. (Magic numbers would not do: a caption "BMW M3" starts
    like a BMP.)"""
    if isinstance(value, str):
        return True
    if not isinstance(value, (bytes, bytearray)):
        return False
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def _option(params: Mapping[str, Any], headers: Mapping[str, str], field: str, header: str) -> str | None:
    """A form field wins over the header: it travels with the image it applies to."""
    value = params.get(field)
    if value is None:
        value = headers.get(header)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value).strip() or None
