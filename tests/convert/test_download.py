"""OfficialFile digest checks and fetch's behaviour offline, all without network access."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request

import pytest

from tmrjax.convert.download import OfficialFile, fetch
from tmrjax.weights import WeightsError

CONTENT = b"not really a checkpoint\n" * 100
SHA256 = hashlib.sha256(CONTENT).hexdigest()
MD5 = hashlib.md5(CONTENT).hexdigest()


def official(digest: str = SHA256[:8], hash_name: str = "sha256") -> OfficialFile:
    return OfficialFile(f"https://example.invalid/models/net-{digest[:8]}.pth", hash_name, digest)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_verify_accepts_the_published_digest(tmp_path):
    path = tmp_path / "net.pth"
    path.write_bytes(CONTENT)
    official(SHA256[:8]).verify(path)
    official(SHA256).verify(path)
    official(MD5, "md5").verify(path)


@pytest.mark.parametrize("hash_name,digest", [("sha256", "deadbeef"), ("md5", "0" * 32)])
def test_verify_rejects_another_digest(tmp_path, hash_name, digest):
    path = tmp_path / "net.pth"
    path.write_bytes(CONTENT)
    with pytest.raises(WeightsError, match="does not match") as info:
        official(digest, hash_name).verify(path)
    assert str(path) in str(info.value)


def test_fetch_offline_says_where_to_put_the_file(tmp_path, offline):
    file = official()
    with pytest.raises(WeightsError, match="cannot download") as info:
        fetch(file, tmp_path / "cache")
    message = str(info.value)
    assert file.url in message
    assert str(tmp_path / "cache" / file.filename) in message
    assert list((tmp_path / "cache").iterdir()) == []  # no partial download left behind


def test_fetch_keeps_a_valid_file_without_network(tmp_path, offline):
    file = official()
    (tmp_path / file.filename).write_bytes(CONTENT)
    assert fetch(file, tmp_path) == tmp_path / file.filename


def test_fetch_refuses_a_corrupt_cached_file(tmp_path, offline):
    file = official()
    (tmp_path / file.filename).write_bytes(CONTENT[:-1])
    with pytest.raises(WeightsError, match="does not match"):
        fetch(file, tmp_path)


def test_fetch_downloads_and_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(CONTENT))
    dest = fetch(official(), tmp_path)
    assert dest.read_bytes() == CONTENT

    with pytest.raises(WeightsError, match="does not match"):
        fetch(official("deadbeef"), tmp_path / "other")
    assert not (tmp_path / "other" / official("deadbeef").filename).exists()
