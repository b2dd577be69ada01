"""fsspec I/O: URLs of any protocol, atomic publishing, globbing."""
from __future__ import annotations

import fsspec
import pytest

from pipeline.io import fs


@pytest.fixture
def mem():
    m = fsspec.filesystem("memory")
    m.rm("/fs-test", recursive=True) if m.exists("/fs-test") else None
    yield m
    if m.exists("/fs-test"):
        m.rm("/fs-test", recursive=True)


def test_upload_to_a_local_path_is_atomic_and_overwrites(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    dest = tmp_path / "sub" / "out.bin"
    fs.upload(str(src), str(dest))
    fs.upload(str(src), f"file://{dest}")
    assert dest.read_bytes() == b"x" * 1000 and sorted(p.name for p in dest.parent.iterdir()) == ["out.bin"]


def test_upload_to_a_non_object_store_goes_through_a_temporary_name(tmp_path, mem):
    src = tmp_path / "src.bin"
    src.write_bytes(b"map")
    fs.upload(str(src), "memory://fs-test/maps/a.tif")
    assert mem.cat("/fs-test/maps/a.tif") == b"map" and mem.ls("/fs-test/maps", detail=False) == ["/fs-test/maps/a.tif"]


def test_text_glob_exists_and_remove(mem):
    fs.write_text("memory://fs-test/x/one.txt", "1")
    fs.write_text("memory://fs-test/x/two.txt", "2")
    fs.write_text("memory://fs-test/x/skip.csv", "3")
    assert fs.read_text("memory://fs-test/x/two.txt") == "2"
    found = fs.glob("memory://fs-test/x/*.txt")
    assert [f.rsplit("/", 1)[-1] for f in found] == ["one.txt", "two.txt"] and all(f.startswith("memory://") for f in found)
    assert fs.read_text(found[0]) == "1"
    assert fs.exists("memory://fs-test/x") and not fs.exists("memory://fs-test/nothing")
    fs.remove_tree("memory://fs-test/x")
    assert not fs.exists("memory://fs-test/x/one.txt")


def test_remote_folders_are_made_and_found_again(mem):
    fs.make_dirs("memory://fs-test/work/changemap-abc")
    fs.write_text("memory://fs-test/work/changemap-abc/map.json", "{}")
    fs.make_dirs("memory://fs-test/work/changemap-abc")  # again: nothing lost
    assert fs.read_text("memory://fs-test/work/changemap-abc/map.json") == "{}"


def test_what_a_killed_writer_left_is_removed_by_the_next_publish_and_nothing_else(tmp_path, mem, monkeypatch):
    """A writer killed outright leaves its temporaries (a map's are its size): the next publish removes them."""
    import signal
    import socket
    import subprocess
    import sys

    dest = tmp_path / "map.tif"
    killed = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from pipeline.io import fs
def write(tmp):
    Path(tmp).write_bytes(b"half")
    Path(tmp + ".tiles.tif").write_bytes(b"tiles")  # as the COG writer's temporary tiles
    print("writing", flush=True)
    time.sleep(60)
fs.publish({str(dest)!r}, write)
"""], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "writing"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith(f".map.tif.{socket.gethostname()}-{killed.pid}.") for n in left)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        kept = [f".map.tif.{host}-{alive.pid}.abc.part.tif",  # a live writer's
                ".map.tif.otherhost-1.abc.part.tif",  # another host's, on a shared filesystem
                f".other.tif.{host}-{killed.pid}.abc.part.tif"]  # another destination's
        for n in kept:
            (tmp_path / n).write_bytes(b"x")
        fs.write_text(str(dest), "done")
        assert dest.read_text() == "done"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["map.tif", *kept])
        # A remote destination's local staging folder, in the temporary folder, the same way.
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        dead_stage = tmp_path / "tmp" / f"changemap-publish-{host}-{killed.pid}.xyz"
        live_stage = tmp_path / "tmp" / f"changemap-publish-{host}-{alive.pid}.xyz"
        for stage in (dead_stage, live_stage):
            stage.mkdir()
            (stage / "part.tif").write_bytes(b"x")
        fs.write_text("memory://fs-test/remote.txt", "remote")
        assert mem.cat("/fs-test/remote.txt") == b"remote"
        assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [live_stage.name]
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_published_file_is_readable_as_the_umask_says(tmp_path, umask, mode):
    """mkstemp makes 0600 files; a map a tile server or a colleague's GIS must read is published as the umask says."""
    import os

    old = os.umask(umask)
    try:
        fs.write_text(str(tmp_path / "out.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == mode
