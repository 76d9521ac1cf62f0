"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir, on a free loopback port.

    from postgres import pg_url  # noqa: F401   (a fixture: a fresh, empty database per test)

The binaries are looked up in $MMSEARCH_PG_BIN, /usr/lib/postgresql/*/bin (Debian, newest first) and $PATH.
When they (or the psycopg driver) are missing, tests using the fixture are skipped with the reason (failed
where $MMSEARCH_TEST_REQUIRE names postgres, as CI sets it: see tests/parts.py).
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` (or `nobody`) user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest

from parts import unavailable


def find_bin_dir() -> str | None:
    candidates = [os.environ.get("MMSEARCH_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: [int(x) for x in p.split("/")[-2].split(".") if x.isdigit()], reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    for d in candidates:
        if d and all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: str, *, durable: bool = False):
        self.bin_dir = bin_dir
        self.durable = durable  # False (tests): no fsync; True (benchmarks): PostgreSQL's own defaults
        self.root = tempfile.mkdtemp(prefix="mmsearch-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
            if user is None:
                raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")
            pw = pwd.getpwnam(user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
        self._counter = itertools.count()

    def _run(self, *args: str) -> None:
        cmd = self.prefix + list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if proc.returncode != 0:
            log = os.path.join(self.root, "server.log")
            tail = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{tail}")

    def start(self) -> "PostgresServer":
        b = self.bin_dir
        self._run(f"{b}/initdb", "-D", self.data, "-U", "mmsearch", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=50"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(f"{b}/pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.root, "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(f"{self.bin_dir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://mmsearch@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=mmsearch dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable("postgres", "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql "
                                "(Debian: apt-get install postgresql) or set MMSEARCH_PG_BIN")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("postgres", "psycopg (the PostgreSQL driver) is not installed: pip install 'psycopg[binary]'")
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh empty database on the throwaway server, as a SQLAlchemy URL."""
    return postgres_server.new_database()
