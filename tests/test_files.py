"""fairref.files: what fairref writes appears whole or not at all, with ordinary
permissions, and a failure leaves the target as it was and no temporary behind."""

import os

import pytest

from fairref.files import atomic_directory, write_atomic, write_text_atomic


def umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_write_text_atomic_replaces_and_creates_the_parent(tmp_path):
    target = tmp_path / "new" / "out.json"
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two ✓\n")
    assert target.read_text(encoding="utf-8") == "two ✓\n"
    assert os.listdir(target.parent) == ["out.json"]
    assert target.stat().st_mode & 0o777 == umask_mode()


def test_write_atomic_hands_the_writer_a_file_it_may_reopen(tmp_path):
    target = tmp_path / "a.bin"

    def write(tmp):
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.bin.") and tmp.exists()
        with open(tmp, "wb") as fh:
            fh.write(b"\x00\x01")
    assert write_atomic(target, write) == target
    assert target.read_bytes() == b"\x00\x01"
    assert target.stat().st_mode & 0o777 == umask_mode()


@pytest.mark.parametrize("fail", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path, fail):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise fail
    with pytest.raises(type(fail)):
        write_atomic(target, write)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


def test_a_directory_or_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        write_text_atomic(tmp_path / "d", "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write_atomic(tmp_path / "f" / "x.txt", lambda tmp: tmp.write_text("x"))
    assert sorted(os.listdir(tmp_path)) == ["d", "f"] and os.listdir(tmp_path / "d") == []


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "q"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "a").write_text("1")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
    assert os.listdir(out) == ["a"]
    with pytest.raises(FileExistsError, match="--force"):
        with atomic_directory(out):
            pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert os.listdir(out) == ["b"] and os.listdir(tmp_path) == ["q"]
