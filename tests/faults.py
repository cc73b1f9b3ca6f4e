"""Fault injection for the fault suite and ``bench/faults_bench.py``: the embedded NATS child
of a ``duet serve``, a small tmpfs to fill, a Chroma server behind a delaying TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from core.natsd import free_port

__all__ = ["DelayProxy", "chroma_server", "child_pid", "fill", "tmpfs", "wait_for"]


def child_pid(parent: int, name: str) -> int | None:
    """The pid of ``parent``'s child process called ``name`` (from /proc), or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == parent and comm == name:
            return int(entry.name)
    return None


async def wait_for(check, *, timeout_s: float = 60.0, every_s: float = 0.1,
                   what: str = "the condition") -> float:
    """Poll the async ``check`` until it is true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(every_s)
    raise AssertionError(f"{what} did not happen within {timeout_s:g}s")


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int):
    """A tmpfs of ``size_mb`` mounted at ``path`` (needs root); unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise PermissionError(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
            f.flush()


class DelayProxy:
    """A loopback TCP proxy that holds every chunk from the upstream for ``delay_s``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(reader, up_writer, delay=False))
                group.create_task(self._pipe(up_reader, writer, delay=True))
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    delay: bool) -> None:
        while data := await reader.read(65536):
            if delay and self.delay_s:
                await asyncio.sleep(self.delay_s)
            writer.write(data)
            await writer.drain()
        writer.close()


def _start_chroma(path: Path) -> tuple[subprocess.Popen[bytes], int, Any]:
    binary = Path(sys.executable).parent / "chroma"
    exe = str(binary) if binary.exists() else shutil.which("chroma")
    if exe is None:
        raise FileNotFoundError("the chroma CLI (chromadb package) is not installed")
    port = free_port()
    path.mkdir(parents=True, exist_ok=True)
    log = (path.parent / f"chroma-{port}.log").open("ab")
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    return proc, port, log


@contextlib.asynccontextmanager
async def chroma_server(path: Path) -> AsyncIterator[int]:
    """``chroma run`` on a free loopback port with its data under ``path``; yields the port."""
    proc, port, log = _start_chroma(path)
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            async def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"chroma exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get(
                        f"http://127.0.0.1:{port}/api/v2/heartbeat")).status_code == 200
                return False

            await wait_for(up, timeout_s=60, what="chroma run answering")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
