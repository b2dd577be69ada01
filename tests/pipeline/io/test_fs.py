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
