"""The one module that talks to fsspec: files, listings, work folders, atomic uploads.

Every function takes a local path or an fsspec URL and uses the storage options
installed for the process (:mod:`pipeline.storage`).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable
from glob import escape as _escape
from pathlib import Path
from typing import Any

import fsspec

from pipeline import storage
from pipeline.errors import ChangemapError, UnknownProtocolError

# Object stores publish an object only when its upload completes (single PUT or a
# completed multipart upload), so writing straight to the final key is atomic.
_ATOMIC_PUT = {"s3", "gs", "az"}


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` (with the installed storage options) and the path within it."""
    return fsspec.core.url_to_fs(url, **storage.options_for(url))


def _owner() -> str:
    """This process, as temporary names carry it: ``host-pid``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _sweep(folder: Path, prefix: str) -> None:
    """Remove what killed writers of this host left in ``folder`` under ``prefix + "host-pid."``.

    A process killed outright (SIGKILL, a preempted node) cannot remove its temporaries: a
    map's are its size. Only those of a process of this host that no longer exists go; a
    live writer's, or another host's (a shared filesystem), stay.
    """
    host = socket.gethostname()
    for path in folder.glob(f"{_escape(prefix)}{_escape(host)}-*.*"):
        pid = path.name[len(prefix) + len(host) + 1:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal): its files stay
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """This process's umask (read by setting it and back: the only portable way; under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def publish(dest: str, write: Callable[[str], None]) -> None:
    """The one atomic write: ``write(path)`` fills a temporary local file, which is then published at ``dest``.

    The temporary file keeps ``dest``'s extension (drivers choose formats by it). A local
    ``dest`` gets a rename in its own folder; an object store (S3, GCS, Azure) one upload,
    which it makes visible only once complete; other filesystems a temporary name and a move.
    A failure leaves nothing at ``dest`` and no temporary file behind; what a killed writer
    left (its temporaries carry its host and process) is removed by the next publish. A local
    file gets the mode a new file gets under the process's umask (0644 under umask 022).
    """
    name = storage.basename(dest)
    ext = os.path.splitext(name)[1]
    if not storage.is_remote(dest):
        final = Path(storage.local_path(dest))
        final.parent.mkdir(parents=True, exist_ok=True)
        _sweep(final.parent, f".{final.name}.")
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.{_owner()}.", suffix=f".part{ext}")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename: readable as the umask says
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    _sweep(Path(tempfile.gettempdir()), "changemap-publish-")
    with tempfile.TemporaryDirectory(prefix=f"changemap-publish-{_owner()}.") as folder:
        tmp = os.path.join(folder, f"part{ext}")
        write(tmp)
        _put(tmp, dest)


def _copy_from(open_source: Callable[[], Any]) -> Callable[[str], None]:
    def fill(path: str) -> None:
        with open_source() as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    return fill


def download(url: str, local_path: str) -> None:
    """Copy ``url`` (any fsspec URL) to ``local_path``, atomically."""
    fs, path = filesystem(url)
    publish(local_path, _copy_from(lambda: fs.open(path, "rb")))


def upload(local_path: str, url: str) -> None:
    """Publish a finished local file at ``url`` so that it appears only when complete (see :func:`publish`)."""
    if not storage.is_remote(url):
        publish(url, _copy_from(lambda: open(local_path, "rb")))
    else:
        _put(local_path, url)


def _put(local_path: str, url: str) -> None:
    fs, path = filesystem(url)
    if storage.protocol(url) in _ATOMIC_PUT:
        fs.put_file(local_path, path)
    else:
        tmp = f"{storage.parent(path)}/.{storage.basename(path)}.{uuid.uuid4().hex}.part"
        fs.put_file(local_path, tmp)
        try:
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    fs.invalidate_cache(storage.parent(path))


def write_text(url: str, text: str) -> None:
    """Write a small text file (summary, config) atomically at a path or URL."""
    publish(url, lambda path: Path(path).write_text(text, encoding="utf-8"))


def read_text(url: str) -> str:
    """The whole text (UTF-8) of a small file at a path or URL (manifests, split lists)."""
    fs, path = filesystem(url)
    with fs.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def make_dirs(url: str) -> None:
    """Create a folder (a no-op on object stores, where prefixes need none)."""
    if storage.is_remote(url):
        fs, path = filesystem(url)
        fs.makedirs(path, exist_ok=True)
    else:
        Path(storage.local_path(url)).mkdir(parents=True, exist_ok=True)


def remove_tree(url: str) -> None:
    """Delete a folder (or prefix) and everything below it (missing is fine)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def exists(url: str) -> bool:
    """Whether a file or folder exists at a path or URL (listing caches bypassed)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return fs.exists(path)


def glob(pattern: str) -> list[str]:
    """Files matching a glob pattern, as URLs of the pattern's filesystem (sorted)."""
    fs, path = filesystem(pattern)
    fs.invalidate_cache()
    found = sorted(p for p in fs.glob(path) if not fs.isdir(p))
    return [fs.unstrip_protocol(p) for p in found] if storage.is_remote(pattern) else found


def rasterio_opener(url: str) -> Any:
    """The fsspec filesystem rasterio should read ``url`` through (protocols GDAL cannot read itself)."""
    fs, _ = filesystem(url)
    return fs


def check_protocol(url: str, role: str) -> None:
    """Refuse a URL whose protocol fsspec does not know, or whose driver is not installed."""
    if "://" not in url:
        return
    scheme = url.split("://", 1)[0].lower()
    if scheme not in fsspec.available_protocols():
        raise UnknownProtocolError(
            f"{role} {storage.redact_url(url)} uses the unknown protocol {scheme}://; use a local path or a URL "
            "of a protocol fsspec knows (s3://, gs://, az://, https://, file://, memory://)")
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise UnknownProtocolError(
            f"{role} {storage.redact_url(url)} needs the {scheme}:// driver, which is not installed ({exc}); "
            "install it, e.g. pip install -e \".[gcs,azure]\"") from None


def check_writable(url: str, role: str) -> None:
    """Refuse a place ``url`` cannot be written to.

    Locally, its nearest existing ancestor must be a writable folder (a *file* on the way is an
    error); object-store prefixes need no folder.
    """
    if storage.is_remote(url):
        return
    path = Path(storage.local_path(url)).absolute()
    if path.is_dir():
        raise ChangemapError(f"{role} {path} is a folder; give a file name such as {path / 'change.tif'}")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ChangemapError(f"{role} {path} cannot be written: {ancestor} is a file, not a folder; "
                             "choose an output path under a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ChangemapError(f"{role} {path} cannot be written: no write permission in {ancestor}; "
                             "choose a folder you can write to")


def listdir(url: str) -> list[str]:
    """The names of the files directly under a folder or prefix (empty when it does not exist)."""
    if not storage.is_remote(url):
        folder = Path(storage.local_path(url))
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        return sorted(storage.basename(p) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def write_small(url: str, text: str = "") -> None:
    """Write a marker file holding ``text`` (its parents as needed); the data it vouches for is already written."""
    if not storage.is_remote(url):
        path = Path(storage.local_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    fs, path = filesystem(url)
    fs.pipe_file(path, text.encode())
