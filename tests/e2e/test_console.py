"""The supervisor console in real headless Chromium (Debian ``chromium`` driven by
Playwright's Python package; no browser download), against the real gateway.

A customer escalates over the chat socket; the console shows it in the queue; the test
claims it in the page, sees the transcript with its citation links and an agent-assist
draft, replies from the page (the customer's socket receives the person's words as a
``human`` delta), and releases it (the bot answers the customer again). Screenshots are
saved in the test's temporary directory.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import expect

from channels.console import RedactTokens
from core.natsd import EmbeddedNats
from tests.conftest import Gateway, make_settings, run_gateway
from tests.e2e.test_supervisor import ALICE, BOB, DOC, customer

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("console")
    async with EmbeddedNats(tmp / "nats") as server:
        settings = make_settings(tmp, server.url, chat_rate_burst=50,
                                 supervisor_tokens=f"alice:{ALICE},bob:{BOB}")
        async with run_gateway(settings) as gateway, \
                httpx.AsyncClient(base_url=gateway.base_url) as client:
            res = await client.post("/v1/documents", params={"wait": "true"}, json=DOC)
            assert res.status_code == 200, res.text
            yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def browser() -> AsyncIterator:
    if shutil.which(str(CHROMIUM)) is None:
        pytest.fail("Debian chromium is missing: run `make test-system`")
    from playwright.async_api import async_playwright

    # (page waits use locator assertions: the page's CSP forbids the eval that
    # wait_for_function needs)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_the_page_is_served_with_a_strict_policy(gw: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gw.base_url) as client:
        page = await client.get("/console")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert ALICE not in page.text
        script = await client.get("/console/console.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert (await client.get("/console/../gateway/app.py")).status_code == 404
        assert (await client.get("/console/nope.js")).status_code == 404
    # browsers pass the token as ?token=, and uvicorn logs every accepted websocket's URL
    assert any(isinstance(f, RedactTokens) for f in logging.getLogger("uvicorn.error").filters)


async def test_a_wrong_token_does_not_sign_in(gw: Gateway, browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{gw.base_url}/console")
    await page.fill("#token", "not-a-real-token-0123456789")
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#signin-error")).to_contain_text("not accepted", timeout=30_000)
    assert await page.is_hidden("#desk")
    await page.close()


async def test_claim_reply_and_release_from_the_console(gw: Gateway, browser,
                                                        tmp_path: Path) -> None:
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(f"{gw.base_url}/console")
    await page.fill("#token", ALICE)
    await page.press("#token", "Enter")
    await expect(page.locator("#status")).to_have_text("connected", timeout=30_000)

    chat = await customer(gw)
    await chat.send(type="message", text="How do I factory reset the hub?")
    await chat.until("done")
    await chat.send(type="handoff", reason="I'd rather talk to a person")
    sid = (await chat.until("escalated"))["session_id"]

    item = f'#queue li[data-session="{sid}"]'
    await page.wait_for_selector(item)
    assert "customer_request" in await page.inner_text(item)
    await page.screenshot(path=str(tmp_path / "console-queue.png"))

    await page.focus("body")
    await page.keyboard.press("c")  # claim the selected (only) conversation
    await page.wait_for_selector("#conversation:not([hidden])")
    assert (await chat.until("agent_joined"))["agent"]["name"] == "alice"
    transcript = await page.inner_text("#transcript")
    assert "How do I factory reset the hub?" in transcript
    link = page.locator("#transcript a", has_text="Resetting the hub (v4)").first
    assert await link.get_attribute("href") == "https://help.example.com/hub-reset"
    assert "Resetting the hub (v4)" in await page.inner_text("#documents")

    await chat.send(type="message", text="how long does the reset take?")
    await page.wait_for_selector("#send-suggestion")
    assert "how long does the reset take?" in await page.inner_text("#transcript")
    draft = await page.inner_text("#suggestion .draft")
    assert draft.strip()
    await page.screenshot(path=str(tmp_path / "console.png"))

    await page.click("#use-suggestion")
    assert await page.input_value("#reply") == draft
    await page.fill("#reply", "Hi, Alice here. The reset takes about 5 minutes.")
    await page.press("#reply", "Control+Enter")
    human = await chat.until("delta", source="human")
    assert human["text"] == "Hi, Alice here. The reset takes about 5 minutes."
    await expect(page.locator("#transcript")).to_contain_text("Alice here", timeout=30_000)
    await page.screenshot(path=str(tmp_path / "console-replied.png"))

    await page.click("#release")
    assert (await chat.until("agent_left"))["agent"]["name"] == "alice"
    await page.wait_for_selector("#conversation[hidden]", state="attached")
    await chat.send(type="message", text="and what colour is the LED?")
    back = await chat.until("done")
    assert back["text"] and back["decision"] is not None  # the bot answers again
    await chat.close()
    assert errors == []
    print(f"console screenshots in {tmp_path}")
    await page.close()
