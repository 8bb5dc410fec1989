"""Throw-away servers on loopback for the soak harness and the tests: a private PostgreSQL (initdb in a temp
folder, its own port), kdsearch's gRPC storage proxy in front of a database, each startable, killable and
restartable; nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """Where PostgreSQL's server tools are (Debian keeps them out of PATH, in /usr/lib/postgresql/<ver>/bin)."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").is_file():
        return Path(found).resolve().parent
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if p.parts[-3].isdigit()]
    return max(versions, key=lambda p: int(p.parts[-3])).parent if versions else None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class PostgresServer:
    """A private server: ``url``, ``restart()`` (an immediate stop, as on a crash, then a start), ``stop()``."""

    def __init__(self, bindir: Path, base: Path, as_user: list[str], max_connections: int) -> None:
        self.bindir, self.base, self.as_user = bindir, base, as_user
        self.data = base / "data"
        self.max_connections = max_connections
        self.port = 0
        self.url = ""

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=self.base, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        ports = [self.port] if self.port else [free_port() for _ in range(3)]
        for port in ports:  # a free port may be taken before the server binds it: try another
            options = f"-k {self.base} -p {port} -h 127.0.0.1 -c fsync=off -c max_connections={self.max_connections}"
            started = self._run(
                *self.as_user,
                str(self.bindir / "pg_ctl"),
                *("-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60", "-o", options, "start"),
            )
            if started.returncode == 0:
                self.port = port
                self.url = f"postgresql://kdsearch@127.0.0.1:{port}/kdsearch_test"
                return
        log = (self.base / "server.log").read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}{log}")

    def stop(self) -> None:
        self._run(*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def scalar(self, sql: str) -> int:
        """One integer from ``sql`` on the study database (through psql: no connection stays open); -1 on error."""
        out = self._run(
            str(self.bindir / "psql"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "kdsearch", "-d", "kdsearch_test", "-At", "-c", sql),
        )
        try:
            return int(out.stdout.strip()) if out.returncode == 0 else -1
        except ValueError:  # the table does not exist yet
            return -1

    def connections(self) -> int:
        """Client connections to the study database now (``pg_stat_activity``)."""
        return self.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'kdsearch_test' AND pid <> pg_backend_pid()"
        )


@contextmanager
def private_postgres(max_connections: int = 100) -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server with an empty database ``kdsearch_test``, removed afterwards.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user (created by Debian's
    package) or ``nobody``, in a fresh folder under /tmp that it owns. ``max_connections``: 100 is
    PostgreSQL's default. A RuntimeError when the server tools are missing (``scripts/setup.sh --test``).
    """
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; `scripts/setup.sh --test` installs Debian's postgresql"
        )
    base = Path(tempfile.mkdtemp(prefix="kdsearch-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        name = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if name is None:
            raise RuntimeError("no unprivileged user (postgres or nobody) to run the PostgreSQL server as")
        entry = pwd.getpwnam(name)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", name, "--"]
    server = PostgresServer(bindir, base, as_user, max_connections)
    init = server._run(
        *as_user,
        str(bindir / "initdb"),
        "-D",
        str(server.data),
        "-U",
        "kdsearch",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    )
    if init.returncode != 0:
        raise RuntimeError(init.stdout + init.stderr)
    try:
        server.start()
        made = server._run(
            str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "kdsearch", "kdsearch_test"
        )
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


class StorageProxy:
    """``kdsearch storage-proxy`` for ``backend`` on a free loopback port: ``url``, ``kill()`` (SIGKILL),
    ``start()`` (again on the same port), ``stop()``."""

    def __init__(self, backend: str, log: Path, threads: int = 64) -> None:
        self.backend, self.log, self.threads = backend, log, threads
        self.port = free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_s: float = 60.0) -> None:
        env = {**os.environ, "KDSEARCH_STORAGE": self.backend, "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "kdsearch",
            "storage-proxy",
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
        ]
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storage-proxy exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"storage-proxy did not listen within {wait_s:.0f} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def storage_proxy(backend: str, log: Path, threads: int = 64) -> Iterator[StorageProxy]:
    proxy = StorageProxy(backend, log, threads)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
