"""A throwaway PostgreSQL server for the store tests: started once per test session, removed at the end.

``PostgresServer.start()`` runs ``initdb`` into a fresh temporary directory, starts the server with
``pg_ctl`` on 127.0.0.1 and a free port (its unix socket inside that directory, never in /var/run), with
durability switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``) because nothing in it needs
to survive, and creates an unprivileged role owning one database: the store runs as an ordinary database
owner, as it would in production, so a migration that needs superuser rights fails here too. PostgreSQL
refuses to run as root, so under root every server command runs as the ``postgres`` OS user through
``runuser``. Every wait is bounded; ``stop()`` escalates fast → immediate shutdown and removes the directory.

The pytest side: ``postgres_server`` (session scope) yields a ``PostgresTarget``; ``postgres_url`` (function
scope) hands each test a clean database (schema ``public`` dropped and recreated) as a SQLAlchemy URL
``postgresql+psycopg://...``. With ``EDGEFLEET_TEST_PG_URL`` set, that external database is used instead
(its store tables are dropped before each test). Without server binaries, without a ``postgres`` OS user
under root, or without the ``psycopg`` driver, the tests that ask for PostgreSQL SKIP and say why; a server
that is installed but fails to start is an error, with the tail of its log.

Test modules import both fixtures (``from edgefleet_testing.postgres import postgres_server, postgres_url``).
Each importing module gets its own session-scoped fixture definition, so the server itself is shared by
reference count: the first user starts it, the last one stops it (and an ``atexit`` hook catches a session
that dies before its finalizers run).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import pytest
import sqlalchemy as sa

PG_URL_ENV: Final = "EDGEFLEET_TEST_PG_URL"
OS_USER: Final = "postgres"
SUPERUSER: Final = "postgres"
APP_ROLE: Final = "edgefleet"
APP_DATABASE: Final = "edgefleet"
DRIVER: Final = "postgresql+psycopg"
START_TIMEOUT_S: Final = 60
STOP_TIMEOUT_S: Final = 20
COMMAND_TIMEOUT_S: Final = 120
# a reset waits at most this long for a lock a leaked connection of an earlier test still holds
RESET_LOCK_TIMEOUT: Final = "10s"
SERVER_SETTINGS: Final = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "log_min_messages=warning",
)
INSTALL_HINT: Final = (
    "install PostgreSQL (`make pg` as root runs apt-get install postgresql) "
    f"or point {PG_URL_ENV} at a database you may wipe"
)


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be started on this machine; the message says why and what to install."""


class PostgresStartError(RuntimeError):
    """The server binaries exist but the throwaway cluster did not come up; carries the server log tail."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one installation, or None.

    ``initdb`` on PATH wins (resolved through symlinks, so ``pg_ctl`` comes from the same version); else the
    newest Debian/Ubuntu ``/usr/lib/postgresql/<major>/bin``.
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)

    def major(path: Path) -> tuple[int, str]:
        version = path.parent.name
        return (int(version), version) if version.isdigit() else (-1, version)

    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True))
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database identifier must match [a-z_][a-z0-9_]*, got {name!r}")
    return f'"{name}"'


@dataclass
class PostgresServer:
    """One running throwaway cluster. Create with ``PostgresServer.start()``; ``stop()`` removes it."""

    bindir: Path
    root: Path
    port: int
    superuser_password: str
    app_password: str
    run_as: str | None
    _stopped: bool = field(default=False, init=False)

    # ---- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    def start(cls, bindir: Path | None = None) -> PostgresServer:
        """initdb + pg_ctl start + create the app role and database. Raises ``PostgresUnavailable`` when this
        machine cannot run PostgreSQL and ``PostgresStartError`` when it tried and failed."""
        if importlib.util.find_spec("psycopg") is None:
            raise PostgresUnavailable(
                "the psycopg driver is not installed: run "
                "`.venv/bin/pip install -c constraints.txt 'psycopg[binary]'` (it is in the dev extra)"
            )
        bindir = bindir or find_bindir()
        if bindir is None:
            raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}")
        run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(OS_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL as "
                    "(PostgreSQL refuses root); install the postgresql package, which creates it"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root without `runuser` to drop to the postgres OS user")
            run_as = OS_USER
        root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        server = cls(
            bindir=bindir,
            root=root,
            port=0,
            superuser_password=secrets.token_urlsafe(24),
            app_password=secrets.token_urlsafe(24),
            run_as=run_as,
        )
        try:
            server._init_cluster()
            server._start_server()
            server._create_app_database()
        except BaseException:
            server.stop()
            raise
        return server

    def _init_cluster(self) -> None:
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        (self.root / "socket").mkdir(mode=0o700)
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.root, pwfile, self.root / "socket"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _start_server(self) -> None:
        settings = " ".join(f"-c {setting}" for setting in SERVER_SETTINGS)
        last_error: PostgresStartError | None = None
        # the free port is found by binding and closing, so another process can take it before the server
        # binds; a second and third port are cheap
        for _attempt in range(3):
            self.port = _free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root / 'socket'} {settings}"
            try:
                self._run(
                    "pg_ctl",
                    "--pgdata",
                    str(self.data_dir),
                    "--log",
                    str(self.log_file),
                    "--wait",
                    "--timeout",
                    str(START_TIMEOUT_S),
                    "--options",
                    options,
                    "start",
                    timeout_s=START_TIMEOUT_S + 10,
                )
                return
            except PostgresStartError as exc:
                last_error = exc
                if "could not bind" not in self.log_tail() and "in use" not in self.log_tail():
                    break
        assert last_error is not None
        raise last_error

    def _create_app_database(self) -> None:
        engine = sa.create_engine(self.superuser_url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                role = _quote_ident(APP_ROLE)
                # a literal is needed here (utility statements take no bind parameters); token_urlsafe
                # yields only [A-Za-z0-9_-], so no quoting can be broken
                conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{self.app_password}'")
        finally:
            engine.dispose()
        self.create_database(APP_DATABASE)

    def stop(self) -> None:
        """Shut the server down (fast, then immediate, then SIGKILL of its postmaster) and delete its files."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data_dir / "postmaster.pid").exists():
                for mode in ("fast", "immediate"):
                    with contextlib.suppress(PostgresStartError):
                        self._run(
                            "pg_ctl",
                            "--pgdata",
                            str(self.data_dir),
                            "--mode",
                            mode,
                            "--wait",
                            "--timeout",
                            str(STOP_TIMEOUT_S),
                            "stop",
                            timeout_s=STOP_TIMEOUT_S + 10,
                        )
                        break
                else:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 9)

    # ---- addresses -----------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def superuser_url(self, database: str = "postgres") -> sa.URL:
        return sa.URL.create(
            DRIVER,
            username=SUPERUSER,
            password=self.superuser_password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def url(self, database: str = APP_DATABASE) -> sa.URL:
        """The app role's URL for ``database`` (an ordinary owner, not a superuser)."""
        return sa.URL.create(
            DRIVER, username=APP_ROLE, password=self.app_password, host="127.0.0.1", port=self.port, database=database
        )

    # ---- databases -----------------------------------------------------------------------------------------

    def create_database(self, name: str) -> sa.URL:
        """A new empty database owned by the app role; returns its URL."""
        engine = sa.create_engine(self.superuser_url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(
                    f"CREATE DATABASE {_quote_ident(name)} OWNER {_quote_ident(APP_ROLE)} TEMPLATE template0"
                )
        finally:
            engine.dispose()
        return self.url(name)

    def reset(self, database: str = APP_DATABASE) -> sa.URL:
        """Empty ``database``: drop schema ``public`` with everything in it and create it again."""
        engine = sa.create_engine(self.url(database))
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{RESET_LOCK_TIMEOUT}'")
                conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
        finally:
            engine.dispose()
        return self.url(database)

    def fresh_url(self) -> str:
        return self.reset().render_as_string(hide_password=False)

    # ---- running the server's tools --------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _run(self, tool: str, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        command: Sequence[str] = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        try:
            done = subprocess.run(
                command,
                # the postgres OS user may not be allowed into the caller's working directory
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PostgresStartError(
                f"`{' '.join(command)}` did not finish within {timeout_s:.0f} s; server log:\n{self.log_tail()}"
            ) from None
        if done.returncode != 0:
            raise PostgresStartError(
                f"`{tool} {' '.join(args)}` exited with {done.returncode}:\n"
                f"{done.stderr.strip() or done.stdout.strip()}"
                f"\nserver log ({self.log_file}):\n{self.log_tail()}"
            )


class PostgresTarget(Protocol):
    """What the fixtures hand out: a database that ``fresh_url`` empties and names."""

    def fresh_url(self) -> str: ...


@dataclass(frozen=True)
class ExternalPostgres:
    """A database named by ``EDGEFLEET_TEST_PG_URL``: only its store tables are dropped between tests."""

    url: str

    def fresh_url(self) -> str:
        # imported here: the store is what the tests exercise, not a dependency of starting a server
        from edgefleet_controller.store.schema import metadata

        engine = sa.create_engine(self.url)
        try:
            with engine.begin() as conn:
                metadata.drop_all(conn)
                conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        finally:
            engine.dispose()
        return self.url


# ---- the shared server ---------------------------------------------------------------------------------------

_lock = threading.Lock()
_shared: PostgresServer | None = None
_users = 0


def acquire_shared_server() -> PostgresServer:
    """The session's server, started on first use; pair every call with ``release_shared_server``."""
    global _shared, _users
    with _lock:
        if _shared is None:
            _shared = PostgresServer.start()
            atexit.register(_shared.stop)
        _users += 1
        return _shared


def release_shared_server() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _shared is not None:
            _shared.stop()
            _shared = None
            _users = 0


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresTarget]:
    """The session's PostgreSQL: the external ``EDGEFLEET_TEST_PG_URL`` or a throwaway local server."""
    external = os.environ.get(PG_URL_ENV)
    if external:
        yield ExternalPostgres(external)
        return
    try:
        server = acquire_shared_server()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            # `make test` installs PostgreSQL (as root); in CI a skip here would hide a broken install step.
            pytest.fail(f"PostgreSQL is required in CI and could not be started: {exc}")
        pytest.skip(f"PostgreSQL tests skipped on this machine: {exc}")
    try:
        yield server
    finally:
        release_shared_server()


@pytest.fixture
def postgres_url(postgres_server: PostgresTarget) -> str:
    """A clean PostgreSQL database for one test, as a SQLAlchemy URL string (password included)."""
    return postgres_server.fresh_url()
