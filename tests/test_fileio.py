import hashlib
import os

import pytest

from tmrjax.fileio import file_sha256, write_atomic


def test_file_sha256_matches_hashlib_on_multi_chunk_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_write_atomic_replaces_and_reports_size(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    assert write_atomic(path, lambda f: f.write(b"new content")) == len(b"new content")
    assert path.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_write_atomic_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(path, fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]
