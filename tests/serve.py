"""`duet serve` as a child process, for the tests that kill and restart real gateways."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from core.natsd import free_port

ROOT = Path(__file__).parents[1]


class ServeProcess:
    """A `duet serve` on a free port, over an existing NATS, with ``DUET_*`` overrides."""

    def __init__(self, data_dir: Path, nats_url: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
        environ |= {"DUET_DATA_DIR": str(data_dir), "DUET_PORT": str(self.port),
                    "DUET_NATS_URL": nats_url, "DUET_LOG_LEVEL": "WARNING",
                    "DUET_LOAD_SAMPLE_KB": "0", **env}
        log = (data_dir.parent / f"serve-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "duet_cli", "serve"], env=environ,
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    async def ready(self, timeout_s: float = 120.0) -> None:
        """Wait until ``/healthz`` answers 200 (fails at once if the process exits)."""
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(int(timeout_s / 0.2)):
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}")
                try:
                    if (await client.get(f"{self.base}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("gateway did not become healthy")

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a minute."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
