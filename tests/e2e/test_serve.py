"""`duet serve` on embedded defaults, as `make run` starts it, and `duet load DIR`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.natsd import free_port, redact_url

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
SAMPLE = sorted(p.stem for p in (ROOT / "configs" / "sample_kb").glob("*.md"))


def _serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
    env |= {"DUET_DATA_DIR": str(data_dir), "DUET_PORT": str(port), "DUET_LOG_LEVEL": "WARNING"}
    log = (data_dir.parent / "serve.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "duet_cli", "serve"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_serve_embedded_defaults_sample_kb_and_load(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(data_dir, port)
    try:
        _wait(lambda: httpx.get(f"{base}/healthz").status_code == 200)
        health = httpx.get(f"{base}/healthz").json()
        nats_url = health["dependencies"]["nats"]["url"]
        assert nats_url.startswith("nats://127.0.0.1:") and not nats_url.endswith(":4222")
        marker = data_dir / "nats.url"
        # the marker carries the generated credentials, readable by its owner only;
        # /healthz shows the address without them
        assert redact_url(marker.read_text().strip()) == nats_url
        assert "@" in marker.read_text() and marker.stat().st_mode & 0o777 == 0o600
        assert health["dependencies"]["chroma"]["mode"] == "embedded"
        assert len(SAMPLE) >= 20
        _wait(lambda: all(httpx.get(f"{base}/v1/documents/{d}").status_code == 200 for d in SAMPLE))
        assert httpx.get(f"{base}/v1/documents/returns-policy").json()["tier"] == "hot"

        docs = tmp_path / "more"
        (docs / "faq").mkdir(parents=True)
        (docs / "faq" / "gift-cards.md").write_text(
            "# Gift cards\n\nLumora gift cards never expire and can be used on any product.")
        (docs / "store-hours.txt").write_text("Our Berlin showroom is open 10:00 to 18:00 on weekdays.")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")} | {
            "DUET_DATA_DIR": str(data_dir)}
        out = subprocess.run([sys.executable, "-m", "duet_cli", "load", str(docs)], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        assert "published 2 documents" in out.stdout
        _wait(lambda: httpx.get(f"{base}/v1/documents/faq.gift-cards").json().get("tier") == "hot")
        _wait(lambda: httpx.get(f"{base}/v1/documents/store-hours").json().get("tier") == "hot")
        assert _metric(base, "duet_chunks_embedded_total") > 100
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it after a clean stop
    assert not (data_dir / "nats.url").exists()

    # A restart on the same data finds everything in place: the sample KB is not re-embedded.
    proc = _serve(data_dir, port)
    try:
        _wait(lambda: httpx.get(f"{base}/healthz").status_code == 200)
        # the sample events are published before the gateway answers, so a document posted
        # now is applied after them: only its own chunk was embedded since the restart
        doc = {"event_type": "CREATE", "doc_id": "probe", "version": 1,
               "content": "# Probe\n\nA short probe document that has enough words in it.",
               "metadata": {"acl": ["public"]}}
        res = httpx.post(f"{base}/v1/documents", params={"wait": "true"}, json=doc, timeout=30)
        assert res.json()["outcome"] == "applied"
        assert _metric(base, "duet_chunks_embedded_total") == 1
        assert httpx.get(f"{base}/v1/documents/faq.gift-cards").json()["tier"] == "hot"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises it after a clean stop


def test_load_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")} | {
        "DUET_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "duet_cli", "load", str(tmp_path)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "DUET_NATS_URL" in out.stderr


def test_a_killed_serve_takes_its_nats_server_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    proc = _serve(data_dir, port)
    _wait(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200)
    nats_port = (data_dir / "nats.url").read_text().strip().rsplit(":", 1)[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def nats_gone() -> bool:
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return not any(f"-p {nats_port} " in line and "nats-server" in line
                       for line in out.splitlines())

    _wait(nats_gone, timeout_s=15)
