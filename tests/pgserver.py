"""A throwaway PostgreSQL server for the tests: `initdb` into a temporary folder, `pg_ctl start`
on a free loopback port, trust authentication, no fsync.

Needs PostgreSQL's server binaries (`initdb`, `pg_ctl`, `postgres`; Debian's `postgresql`
package), found in `DOMICILE_TEST_PG_BINDIR` when set, else in the newest
`/usr/lib/postgresql/*/bin`, else on `PATH`. No running server is needed. `initdb` refuses to
run as root, so under root the server runs as the unprivileged `postgres` user.

    server = ThrowawayPostgres()
    server.start()
    server.url()            # postgresql://postgres@127.0.0.1:<port>/postgres
    server.stop()           # an outage; start() brings it back on the same port
    server.close()          # stop and delete everything

`python3 -m tests.pgserver` checks that this machine can run one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

BINDIR_ENV = "DOMICILE_TEST_PG_BINDIR"
SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
TOOLS = ("initdb", "pg_ctl", "postgres")
RUN_AS = "postgres"  # the unprivileged account Debian's package creates
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """This machine cannot run a throwaway server (no binaries, or no unprivileged user)."""


class PostgresFailed(RuntimeError):
    """The binaries are there but the server did not initialise, start or stop."""


def find_bindir() -> Path:
    """The folder holding `initdb`, `pg_ctl` and `postgres`, or PostgresUnavailable."""
    override = os.environ.get(BINDIR_ENV)
    if override:  # exactly this folder: no fallback, so a wrong value is visible
        candidates = [Path(override)]
    else:
        found = sorted(Path("/").glob(SEARCH_GLOB.lstrip("/")), key=_version, reverse=True)
        on_path = shutil.which("initdb")
        candidates = [*found, *([Path(on_path).parent] if on_path else [])]
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in TOOLS):
            return folder
    where = f"{BINDIR_ENV}={override}" if override else f"{SEARCH_GLOB} or PATH"
    raise PostgresUnavailable(f"PostgreSQL's server binaries (initdb, pg_ctl) are not in {where}")


def _version(folder: Path) -> tuple[int, ...]:
    """`/usr/lib/postgresql/15/bin` → (15,): the newest installed major version first."""
    return tuple(int(part) for part in folder.parent.name.split(".") if part.isdigit())


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresDatabases:
    """Creates throwaway databases (`<prefix>_<name>_<random>`) on the server of `admin_url`
    and drops them after (the test suite's, and the benchmarks')."""

    def __init__(self, admin_url: str, prefix: str = "domicile_test") -> None:
        scheme, rest = admin_url.split("://", 1)
        if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise ValueError("the admin URL must be a postgresql:// URL")
        self._prefix = prefix
        # SQLAlchemy only here: `python3 -m tests.pgserver` runs before the venv exists.
        from sqlalchemy import create_engine, text

        self._text = text
        self.admin_url = f"postgresql+psycopg://{rest}"
        self._admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self._created: list[str] = []
        self._base = "postgresql://" + rest.rsplit("/", 1)[0]

    def check(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(self._text("SELECT 1"))

    def create(self, name: str) -> str:
        database = f"{self._prefix}_{name}_{secrets.token_hex(4)}"
        with self._admin.connect() as conn:
            conn.execute(self._text(f'CREATE DATABASE "{database}"'))
        self._created.append(database)
        return f"{self._base}/{database}"

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            for database in self._created:
                conn.execute(self._text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        self.dispose()

    def dispose(self) -> None:
        """Close the admin connections (the databases stay: a throwaway server goes whole)."""
        self._admin.dispose()


class ThrowawayPostgres:
    """One private PostgreSQL server in a temporary folder; see the module's docstring."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self._account = _unprivileged_account()
        self.root = Path(tempfile.mkdtemp(prefix="domicile-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_file = self.root / "server.log"
        self.port = 0
        self.running = False
        self._initialised = False
        self.socket_dir.mkdir()
        if self._account is not None:
            uid, gid = self._account
            for path in (self.root, self.socket_dir):
                os.chown(path, uid, gid)
        # Stops the server and removes the folder even if the owner forgets to close().
        self._finalizer = weakref.finalize(self, _teardown, self.bindir, self.data,
                                           self._account, self.root)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (initialising it the first time); same port on every start."""
        if self.running:
            return
        if not self._initialised:
            self._initdb()
        if self.port:
            self._start_on(self.port)
            return
        # A free port can be taken between probing it and the server binding it: try anew.
        for attempt in range(3):
            port = free_loopback_port()
            try:
                self._start_on(port)
                return
            except PostgresFailed:
                if attempt == 2:
                    raise

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: pg_ctl's smart, fast or immediate); start() resumes it."""
        if not self.running:
            return
        self._run(self._pg_ctl_command("stop", "-m", mode, "-t", str(STOP_TIMEOUT_S)),
                  "pg_ctl stop", STOP_TIMEOUT_S + 10)
        self.running = False

    def close(self) -> None:
        """Stop the server and delete its folder."""
        self.running = False
        self._finalizer()

    def url(self, database: str = "postgres") -> str:
        """An admin URL (user `postgres`, trust authentication) of `database`."""
        if not self.port:
            raise PostgresFailed("the server has not been started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _initdb(self) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                  "initdb", START_TIMEOUT_S)
        # Speed over durability: a test server's data may be lost in a machine crash.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# domicile tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n")
        self._initialised = True

    def _start_on(self, port: int) -> None:
        self._run(self._pg_ctl_command("start", "-w", "-t", str(START_TIMEOUT_S),
                                       "-l", str(self.log_file), "-o", f"-p {port}"),
                  "pg_ctl start", START_TIMEOUT_S + 10)
        self.port = port
        self.running = True

    def _pg_ctl_command(self, *args: str) -> list[str]:
        return [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]

    def _run(self, command: list[str], what: str, timeout: float) -> None:
        try:
            done = _run_as(command, self._account, self.root, timeout)
        except subprocess.TimeoutExpired as exc:
            raise PostgresFailed(f"{what} took more than {timeout:.0f} s{self._log_tail()}"
                                 ) from exc
        if done.returncode != 0:
            raise PostgresFailed(f"{what} exited with {done.returncode}: "
                                 f"{done.stdout.strip()[-2000:]}{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _unprivileged_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, and initdb refuses root; no `{RUN_AS}` user to run it as"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _run_as(command: list[str], account: tuple[int, int] | None, cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str]:
    # pg_ctl sends the server's own output to the log file, so these pipes close when
    # pg_ctl exits, not when the server does.
    return subprocess.run(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
                          user=account and account[0], group=account and account[1],
                          extra_groups=account and [])


def _teardown(bindir: Path, data: Path, account: tuple[int, int] | None, root: Path) -> None:
    """Stop the server if its data folder is still in use, then delete the folder."""
    if (data / "postmaster.pid").exists():
        command = [str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w"]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _run_as(command, account, root, STOP_TIMEOUT_S)
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    """`python3 -m tests.pgserver`: can this machine run the suite's PostgreSQL tests?"""
    began = time.monotonic()
    try:
        with ThrowawayPostgres() as server:
            print(f"throwaway PostgreSQL from {server.bindir} started in "
                  f"{time.monotonic() - began:.1f} s at {server.url()}")
    except (PostgresUnavailable, PostgresFailed) as exc:
        print(f"no throwaway PostgreSQL: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
