"""`duet chat`: the terminal client against the real gateway, as a subprocess and in-process."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import httpx
import pytest

from channels.terminal import TerminalChat, chat_url
from core.natsd import free_port
from tests.conftest import Gateway

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]

GIFT_CARDS = """# Gift Card Policy

## Expiry
Lumora gift cards never expire and can be used on any product in the Lumora store.

## Checking the balance
Check the balance of a gift card at lumora.com/giftcards by entering the 16-digit card number.
"""

SHOWROOM = """# Berlin Showroom

## Opening hours
The Berlin showroom on Torstrasse is open from 10:00 to 18:00 on weekdays and closed on Sundays.
"""


async def _add(gateway: Gateway, doc_id: str, text: str) -> None:
    doc = {"event_type": "CREATE", "doc_id": doc_id, "version": 1, "content": text,
           "metadata": {"acl": ["public"], "source": "cms"}}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        res = await http.post("/v1/documents", params={"wait": "true"}, json=doc)
    assert res.status_code == 200 and res.json()["outcome"] == "applied", res.text


async def _duet_chat(*args: str, stdin: bytes | None = None,
                     timeout_s: float = 60.0) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")} | {"NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duet_cli", "chat", *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    # The gateway serves from this event loop: wait without blocking it.
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_once_prints_the_streamed_answer_and_its_source(gateway: Gateway) -> None:
    await _add(gateway, "gift-cards", GIFT_CARDS)
    code, out, err = await _duet_chat("--url", gateway.ws_url, "--once",
                                      "Do Lumora gift cards expire?")
    assert code == 0, err
    assert "never expire" in out
    reply, info = out.rstrip("\n").rsplit("\n", 1)
    assert "never expire" in reply
    assert "sources: Gift Card Policy" in info and "as of " in info and "total " in info
    assert "\x1b[" not in out  # no colour when not writing to a terminal


async def test_interactive_session_two_lines_then_eof(gateway: Gateway) -> None:
    await _add(gateway, "gift-cards", GIFT_CARDS)
    await _add(gateway, "berlin-showroom", SHOWROOM)
    code, out, err = await _duet_chat(
        "--url", gateway.base_url,  # http:// and no path: the client finds /v1/chat
        stdin=b"Do Lumora gift cards expire?\nWhen is the Berlin showroom open?\n")
    assert code == 0, err
    lines = out.splitlines()
    infos = [i for i, line in enumerate(lines) if line.startswith("  [")]
    assert len(infos) == 2, out
    first, second = "\n".join(lines[:infos[0]]), "\n".join(lines[infos[0] + 1:infos[1]])
    assert "never expire" in first and "Gift Card Policy" in lines[infos[0]]
    assert "10:00 to 18:00" in second and "Berlin Showroom" in lines[infos[1]]
    assert "[error" not in out + err


async def test_once_against_nothing_fails_clearly() -> None:
    code, out, err = await _duet_chat("--url", f"ws://127.0.0.1:{free_port()}", "--once",
                                      "hello?")
    assert code == 1
    assert "cannot connect" in err


async def test_reconnect_resumes_the_same_session(gateway: Gateway) -> None:
    await _add(gateway, "gift-cards", GIFT_CARDS)
    out, err = io.StringIO(), io.StringIO()
    chat = TerminalChat(chat_url(gateway.ws_url), out=out, err=err, color=False)
    async with asyncio.TaskGroup() as group:
        group.create_task(chat.connection_loop())
        await chat.say("Do Lumora gift cards expire?")
        await chat.wait_reply()
        session, seq = chat.session_id, chat.last_seq
        assert session and seq > 0
        assert chat._ws is not None
        await chat._ws.close()  # the connection drops; the client re-opens it with resume
        await chat.say("How do I check the balance?")
        await chat.wait_reply()
        await chat.close()
    assert chat.session_id == session and chat.last_seq > seq
    assert "reconnected" in err.getvalue()
    assert out.getvalue().count("sources: Gift Card Policy") == 2
    assert "lumora.com/giftcards" in out.getvalue()
