"""Folders of images and list files, shared by training and evaluation (torch-free)."""

from __future__ import annotations

import os
from pathlib import Path

from srdeploy.io.files import read_regular
from srdeploy.io.formats import READ_SUFFIXES, is_image_name


def scan_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursive, sorted; hidden files and folders (a name
    starting with a dot: macOS's ``._face.jpg`` resource forks, ``.git``) are left out, as
    ``srdeploy upscale`` leaves them out of a folder."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name) and not any(part.startswith(".") for part in p.relative_to(root).parts))


def output_inside_images(out: str | Path, image_folders: dict[str, str | Path | None]) -> str | None:
    """Why ``out`` must not be used: it lies in one of ``image_folders`` (flag -> folder),
    whose images are found recursively, so the figures a run writes there would be read
    back as images by the next run. None when it is apart from all of them."""
    where = _real(out)
    for flag, folder in image_folders.items():
        if folder is not None and where.is_relative_to(_real(folder)):
            return f"{out} is inside {flag} {folder}: the next run would read the figures written there as images; give a folder outside it"
    return None


def _real(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a link loop: compared as given, and said by whoever opens it
        return Path(os.path.abspath(path))


def list_images(root: str | Path, list_file: str | Path | None = None) -> list[Path]:
    """Images under ``root``, or those named in ``list_file`` in its order (one relative
    path per line, with or without extension: CelebA-HQ's ``test.txt`` names ``25531`` for
    ``25531.jpg``; blank lines and ``#`` comments ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    paths = scan_images(root)
    if list_file is not None:
        by_name: dict[str, list[Path]] = {}
        for p in paths:
            rel = p.relative_to(root)
            for key in {rel.as_posix(), rel.with_suffix("").as_posix()}:
                by_name.setdefault(key, []).append(p)
        try:  # utf-8-sig: a list saved by an editor that starts it with a byte-order mark; a named pipe is refused, not waited on
            text = read_regular(list_file).decode("utf-8-sig")
        except OSError as e:  # missing, a folder, a pipe, unreadable
            raise ValueError(f"{list_file}: cannot read this list of images ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{list_file}: not a UTF-8 text list of image names ({e.reason} at byte {e.start})") from None
        names = [n.strip() for n in text.splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FileNotFoundError(f"{list_file}: {len(missing)} listed images missing under {root}, e.g. {missing[:3]}")
        ambiguous = [n for n in names if len(by_name[n]) > 1]
        if ambiguous:
            raise ValueError(f"{list_file}: names match several files under {root}, e.g. {ambiguous[0]!r}")
        paths = [by_name[n][0] for n in names]
        first: dict[Path, str] = {}
        for name, path in zip(names, paths):  # counted twice, an image would weigh double in every mean
            if path in first:
                raise ValueError(f"{list_file}: {name!r} and {first[path]!r} name the same image ({path.relative_to(root).as_posix()}); list each once")
            first[path] = name
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(READ_SUFFIXES))}) under {root}")
    return paths
