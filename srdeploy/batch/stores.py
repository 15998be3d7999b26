"""Object stores (``s3://``, ``gs://``; ``file://`` is a local path) through fsspec: the
inputs a batch finds and reads there, and the :class:`Bucket` place its outputs go to.

An object store has no rename, but a PUT is atomic: a reader sees the whole new object or
the old state, never part of it. So a Bucket writes each output whole, in one PUT, and
the object carries what it was made from as user metadata: the sha256 of its bytes and its
rerun key (srdeploy.batch.steps). A rerun reads that back with a HEAD, where a folder's
rerun reads the journal: an output PUT just before the driver died, before its journal
record, still counts as done, and nothing on the store is ever half written.

fsspec and s3fs come with the ``ray`` extra (gs:// needs gcsfs besides); nothing here is
imported by a batch of local folders.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import unquote

from srdeploy.batch.jobs import walk_tree
from srdeploy.io.files import FileTooLarge

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
KEY_FIELD = "srdeploy-key"  # the rerun key, JSON (ASCII: metadata travels as HTTP headers)
SHA256_FIELD = "srdeploy-sha256"  # of the object's bytes
SIZE_FIELD = "srdeploy-size"  # WIDTHxHEIGHT, for the result line of a retried task
RUN_FIELD = "srdeploy-run"  # the run that wrote it: a retried task's earlier attempt is this run's
# A single PUT goes up to 5 GiB on S3; s3fs switches to a multipart upload (also atomic,
# but several requests) at twice its chunk size unless told otherwise.
_ONE_PUT = 5 * 2**30


def is_uri(text: str) -> bool:
    """Whether ``text`` names a store by URI (``s3://b/k``, ``file:///x``) rather than a path."""
    return bool(_SCHEME.match(text))


def as_local(text: str) -> Path | str:
    """A command-line input or output: a local Path (``file://`` URIs too), else the URI."""
    if not is_uri(text):
        return Path(text)
    if text.lower().startswith("file://"):
        # RFC 8089: file:///x and file://localhost/x name /x on this machine, with the path
        # percent-encoded (a space is %20); another host's file is not reachable from here.
        # A # or ? stays part of the name (photo#1.png), not a fragment or a query.
        host, slash, path = text[len("file://") :].partition("/")
        if host not in ("", "localhost"):
            raise ValueError(f"{text}: a file:// URI of another host ({host}); give a local path, or mount it")
        return Path(slash + unquote(path))
    return text


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path without the scheme) for ``uri``."""
    from fsspec.core import url_to_fs

    return url_to_fs(uri)


def read_uri(uri: str, limit: int | None = None) -> bytes:
    """An object's bytes; a missing or unreadable one raises OSError, as a file would, and
    one of more than ``limit`` bytes FileTooLarge, unread (its size from the store)."""
    fs, path = filesystem(uri)
    if limit is not None and (size := fs.size(path)) is not None and size > limit:
        raise FileTooLarge(errno.EFBIG, f"more than {limit:,} bytes", uri)
    return fs.cat_file(path)


def find_inputs(uri: str, recursive: bool, out: str | None) -> tuple[list[tuple[str, PurePosixPath]], int] | None:
    """The image objects under ``uri`` with their place under OUT and the number of
    "subfolders" (common prefixes) not entered, by the same rules as a local folder
    (srdeploy.batch.jobs.walk_tree); ``[(uri, name)]`` for one object; None when there is
    nothing at ``uri``. ``out``: OUT's URI, left out of the walk."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    out_path = filesystem(out)[1].rstrip("/") if out and is_uri(out) and type(filesystem(out)[0]) is type(fs) else None
    if fs.isdir(root):
        is_out: Callable[[str, str], bool] = lambda parent, d: f"{parent.rstrip('/')}/{d}" == out_path  # noqa: E731
        found, unentered = walk_tree(fs.walk(root), recursive, is_out)
        rel_root = PurePosixPath(root)
        files = [(fs.unstrip_protocol(f"{parent.rstrip('/')}/{name}"), PurePosixPath(parent, name).relative_to(rel_root)) for parent, name in found]
        return files, unentered
    if fs.isfile(root):
        return [(fs.unstrip_protocol(root), PurePosixPath(PurePosixPath(root).name))], 0
    return None


class Bucket:
    """An object-store prefix as a batch's output place (see srdeploy.batch.steps.Place):
    one PUT per output, carrying its sha256 and rerun key, which vouch for it; no temp
    objects. It also answers ``last_ok`` as a journal would, from that metadata."""

    def __init__(self, uri: str, run: str | None = None):
        self.uri, self.run = uri.rstrip("/"), run
        self.fs, self.root = filesystem(self.uri)
        self.root = self.root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol not in _METADATA:
            raise ValueError(f"{uri}: srdeploy writes to local folders and to {', '.join(p + '://' for p in _METADATA)} stores, not {protocol}://")
        self._put_options, self._read_metadata = _METADATA[protocol]
        self._head: tuple[str, dict | None] | None = None  # the last target looked up: one HEAD answers holds, sha256 and last_ok

    # --- what the steps ask (srdeploy.batch.steps.Place) --------------------------

    def target(self, output: PurePosixPath) -> str:
        return f"{self.root}/{output}"

    def location(self, target: str) -> str:
        return self.fs.unstrip_protocol(target)

    def holds(self, target: str) -> bool:
        return self._metadata(target) is not None

    def sha256(self, target: str) -> str | None:
        """What the object's metadata says its bytes hash to (the PUT that wrote them set it):
        None when it is not there or not ours."""
        meta = self._metadata(target)
        return None if meta is None else meta.get(SHA256_FIELD)

    def last_ok(self, output: str, output_sha256: str | None) -> dict | None:
        """The record that vouches for an output with these bytes: its rerun key and sha256,
        as a journal's ``ok`` record holds them; None for an object srdeploy did not write."""
        meta = self._metadata(self.target(PurePosixPath(output)))
        if not meta or KEY_FIELD not in meta or meta.get(SHA256_FIELD) != output_sha256:
            return None
        try:
            key = json.loads(meta[KEY_FIELD])
        except json.JSONDecodeError:
            return None
        if not isinstance(key, dict):
            return None
        record = {**key, "output": output, "output_sha256": meta[SHA256_FIELD], "input": key.get("source")}
        width, _, height = meta.get(SIZE_FIELD, "").partition("x")
        if self.run is not None and meta.get(RUN_FIELD) == self.run and width.isdigit() and height.isdigit():
            record["made_by_this_run"] = [int(width), int(height)]  # Ray retried a task after its PUT
        return record

    def stage(self, target: str, data: bytes, key: dict, output_sha256: str, size: tuple[int, int]) -> None:
        """Write the output whole, in one PUT that carries its key: committed when it returns."""
        meta = {KEY_FIELD: json.dumps(key, sort_keys=True), SHA256_FIELD: output_sha256, SIZE_FIELD: f"{size[0]}x{size[1]}"}  # ensure_ascii: header-safe
        if self.run is not None:
            meta[RUN_FIELD] = self.run
        content_type = mimetypes.guess_type(target)[0] or "application/octet-stream"
        self._head = None
        self.fs.pipe_file(target, data, chunksize=_ONE_PUT, **self._put_options(meta, content_type))

    def publish(self, tmp: Path, target: str, found: str | None) -> None:  # stage wrote the object whole
        raise AssertionError("a Bucket stages nothing to rename")

    def discard(self, tmp: Path) -> None:
        raise AssertionError("a Bucket stages nothing to remove")

    # --- the journal beside the outputs --------------------------------------------

    def download(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.root}/{name}")
        except FileNotFoundError:
            return None

    def upload(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.root}/{name}", data, chunksize=_ONE_PUT)

    def names(self, folder: str) -> list[str]:
        """The names of the objects in ``folder`` under the prefix, as the store lists them
        now (not from fsspec's cache of listings: another driver may have written since)."""
        try:
            found = self.fs.ls(f"{self.root}/{folder}", detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return [PurePosixPath(path).name for path in found]

    def _metadata(self, target: str) -> dict | None:
        if self._head is None or self._head[0] != target:
            try:
                meta = self._read_metadata(self.fs, target)
            except FileNotFoundError:
                meta = None
            self._head = (target, meta)
        return self._head[1]


def _s3_metadata(fs: Any, path: str) -> dict:
    return fs.metadata(path, refresh=True)


def _gcs_metadata(fs: Any, path: str) -> dict:
    return fs.info(path).get("metadata") or {}


# protocol -> (the PUT's keyword arguments for user metadata and content type, how to read
# the metadata back); the fsspec back ends name them differently.
_METADATA: dict[str, tuple[Callable[[dict, str], dict], Callable[[Any, str], dict]]] = {
    "s3": (lambda meta, ctype: {"Metadata": meta, "ContentType": ctype}, _s3_metadata),
    "gs": (lambda meta, ctype: {"metadata": meta, "content_type": ctype}, _gcs_metadata),
    "gcs": (lambda meta, ctype: {"metadata": meta, "content_type": ctype}, _gcs_metadata),
}
