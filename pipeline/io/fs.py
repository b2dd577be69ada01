"""The one module that talks to fsspec: fetching files, work folders, atomic moves."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import fsspec


def download(url: str, local_path: str) -> None:
    """Copy ``url`` (any fsspec URL) to ``local_path`` via a temporary file and a rename."""
    target = Path(local_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(url, "rb") as src:
            shutil.copyfileobj(src, out, length=1 << 20)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def make_run_dir(base: str | None, prefix: str = "changemap-") -> str:
    """A fresh folder for one run's intermediate stores (under ``base``, else the system temp)."""
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def remove_tree(path: str) -> None:
    """Delete a folder and everything below it (missing is fine)."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def exists(path: str) -> bool:
    """Whether a file or folder exists at a path or URL."""
    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(root)


def read_text(url: str) -> str:
    """The whole text (UTF-8) of a small file at a path or URL (manifests, split lists)."""
    with fsspec.open(url, "rt", encoding="utf-8") as f:
        return f.read()
