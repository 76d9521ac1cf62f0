"""A damaged catalog.db (truncated, garbage, empty, corrupt inside) makes every command fail with the
documented one line and exit 7, never a traceback, and is never silently replaced by an empty catalog."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.errors import CatalogError
from indexer.catalog import Catalog, database_url
from search.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "catalog_v1"


def _damage(data: Path, how: str) -> None:
    shutil.copytree(FIXTURE, data)
    path = data / "catalog.db"
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "corrupt inside":  # the header and page 1 intact, every other page overwritten
        page = int.from_bytes(raw[16:18], "big")
        path.write_bytes(raw[:page] + bytes((i * 37 + 11) % 256 for i in range(len(raw) - page)))
    else:
        raise AssertionError(how)


COMMANDS = {
    "jobs": ["jobs"],
    "query": ["query", "a cat", "--collection", "photos"],
    "index": ["index", "{images}", "--collection", "photos", "--model", "{images}"],
    "rebuild": ["rebuild", "--collection", "photos"],
    "delete": ["delete", "--collection", "photos", "--id", "1"],
}
DAMAGE = ["truncated", "garbage", "empty", "corrupt inside"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_a_damaged_catalog(tmp_path, capsys, how, command):
    data = tmp_path / "data"
    _damage(data, how)
    before = (data / "catalog.db").read_bytes()
    images = tmp_path / "images"
    images.mkdir()
    argv = [a.format(images=images) for a in COMMANDS[command]] + ["--data-dir", str(data)]
    assert main(argv) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mmsearch {command}: "), err
    assert "Traceback" not in err and "SELECT" not in err and "sqlalche.me" not in err
    assert "catalog" in err
    assert (data / "catalog.db").read_bytes() == before  # nothing rewritten, nothing re-created


@pytest.mark.parametrize("how", DAMAGE)
def test_serve_refuses_a_damaged_catalog(tmp_path, how):
    data = tmp_path / "data"
    _damage(data, how)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "serve", "--data-dir", str(data), "--address",
                           "127.0.0.1:0"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mmsearch serve: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_messages_say_what_is_wrong_and_how_to_start_afresh(tmp_path):
    for how, words in [("truncated", "is truncated"), ("garbage", "not an SQLite database"),
                       ("empty", r"is empty \(0 bytes\)")]:
        data = tmp_path / how
        _damage(data, how)
        with pytest.raises(CatalogError, match=words) as info:
            Catalog(database_url(data))
        assert "mv " in str(info.value) and "backup" in str(info.value)
    data = tmp_path / "corrupt"
    _damage(data, "corrupt inside")
    with pytest.raises(CatalogError, match="malformed|not a database"):
        Catalog(database_url(data))


def test_a_new_catalog_file_is_never_half_made(tmp_path):
    """A catalog file appears whole (made under another name, then linked into place), so an empty
    catalog.db can always be refused. An empty file beside a non-empty write-ahead log is a catalog whose
    pages are all still in the log, and is accepted."""
    from indexer.catalog import check_sqlite_file

    path = tmp_path / "data" / "catalog.db"
    assert not check_sqlite_file(str(path))
    Catalog(database_url(tmp_path / "data")).close()
    assert check_sqlite_file(str(path)) and path.stat().st_size > 0
    assert sorted(os.listdir(path.parent)) == ["catalog.db"]
    path.write_bytes(b"")
    (tmp_path / "data" / "catalog.db-wal").write_bytes(b"x" * 100)
    assert check_sqlite_file(str(path))
    os.unlink(path)
    os.mkdir(path)
    with pytest.raises(CatalogError, match="not a regular file"):
        Catalog(database_url(tmp_path / "data"))
