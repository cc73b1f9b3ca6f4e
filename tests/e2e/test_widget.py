"""The web chat widget in real headless Chromium (Debian's, driven by Playwright).

A host page on another loopback origin embeds the widget with its one tag (with CSS that
tries to break it, and a strict Content-Security-Policy: no inline styles); the gateway
allows that origin (``DUET_ALLOWED_ORIGINS``). Answers come
from a slow OpenAI-compatible model (tests/fakes.py), so a reply is still streaming when the
test looks at it or cuts the network. Screenshots go to ``$DUET_SCREENSHOT_DIR`` (default: a
temp dir; the path is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from core.natsd import EmbeddedNats
from core.settings import Settings
from gateway.auth import CustomerTokens
from gateway.events import AgentJoined, AgentLeft, AgentRef, Delta, Done, Timings
from tests.conftest import Gateway, make_settings, run_gateway
from tests.fakes import FakeLLM

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
HUB_URL = "https://help.example.com/hub-reset"
SECRET = "widget-tests-signing-secret-0123456789abcdef"
#: Sentences of the article, which a (slow) model says back one by one: every one grounded.
STEPS = ["Hold the reset button for 15 seconds until the LED flashes red.",
         "Wait 5 minutes while the hub restarts.",
         "Open the Lumora app on your phone.",
         "Tap Add device and choose Hub.",
         "Scan the code on the bottom of the hub.",
         "Keep the phone close to the hub.",
         "Pick your home network from the list.",
         "Type the password of your home network.",
         "Wait until the LED turns solid green.",
         "Add your bulbs again from the Devices tab."]

HOSTILE_CSS = """
* { font-size: 40px !important; color: red !important; font-family: fantasy !important; }
div { border: 3px dashed hotpink !important; padding: 30px !important; }
button { display: none !important; }
textarea, input { visibility: hidden !important; }
ol, li, a { all: unset !important; }
"""


class HostPage:
    """Another site (its own loopback origin) that embeds the widget with one tag."""

    def __init__(self) -> None:
        self.gateway_url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> HostPage:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def html(self) -> str:
        return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Shop</title>"
                "<link rel='stylesheet' href='/host.css'></head><body><h1>A shop</h1>"
                "<p id='text'>Welcome to the shop.</p>"
                f"<script src='{self.gateway_url}/widget.js' data-duet-url='{self.gateway_url}' "
                "async></script></body></html>")

    def csp(self) -> str:
        """A strict policy: no inline styles or scripts, the gateway for the widget only."""
        ws = self.gateway_url.replace("http://", "ws://")
        return (f"default-src 'none'; style-src 'self'; script-src {self.gateway_url}; "
                f"connect-src {ws}; img-src 'self' data:")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path = (await reader.readline()).decode().split(" ")[1:2] or ["/"]
            while (await reader.readline()).strip():
                pass
            css = path[0] == "/host.css"
            body = (HOSTILE_CSS if css else self.html()).encode()
            kind = "text/css" if css else "text/html; charset=utf-8"
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Security-Policy: {self.csp()}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class Site:
    def __init__(self, gw: Gateway, host: HostPage, llm: FakeLLM, browser: Browser,
                 shots: Path) -> None:
        self.gw = gw
        self.host = host
        self.llm = llm
        self.browser = browser
        self.shots = shots

    async def page(self) -> Page:
        context = await self.browser.new_context(viewport={"width": 900, "height": 720})
        page = await context.new_page()
        await page.goto(self.host.origin + "/")
        await page.locator("#duet-chat .bubble").wait_for()
        return page

    async def shot(self, page: Page, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path

    def session(self, session_id: str):
        session = self.gw.state.chat.sessions.held(session_id)
        assert session is not None
        return session


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    path = Path(os.environ.get("DUET_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory, shots: Path) -> AsyncIterator[Site]:
    tmp = tmp_path_factory.mktemp("widget")
    host = await HostPage().start()
    llm = FakeLLM()
    await llm.start()
    async with EmbeddedNats(tmp / "nats") as nats:
        settings = make_settings(tmp, nats.url, llm_base_url=llm.base_url,
                                 llm_first_token_timeout_s=10.0, llm_total_timeout_s=60.0,
                                 allowed_origins=host.origin, customer_token_secret=SECRET)
        async with run_gateway(settings) as gw, async_playwright() as p:
            host.gateway_url = gw.base_url
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=60) as client:
                res = await client.post("/v1/documents", params={"wait": "true"}, json={
                    "event_type": "CREATE", "doc_id": "hub-reset", "version": 1,
                    "content": "# Resetting the hub\n\n## Factory reset\n" + " ".join(STEPS),
                    "metadata": {"title": "Resetting the hub", "url": HUB_URL,
                                 "acl": ["public"], "source": "cms"}})
                assert res.status_code == 200, res.text
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                              args=CHROMIUM_ARGS)
            yield Site(gw, host, llm, browser, shots)
            await browser.close()
    await llm.close()
    await host.close()


@pytest.fixture(autouse=True)
def _model(site: Site) -> None:
    site.llm.mode = "ok"
    site.llm.token_delay_s = 0.005
    site.llm.tokens = ["Hold the reset button", " for 15 seconds", " until the LED flashes red [1]."]


async def ask(page: Page, text: str) -> None:
    bubble = page.locator("#duet-chat .bubble")
    if await bubble.get_attribute("aria-expanded") != "true":
        await bubble.click()
    field = page.get_by_label("Your message")
    await field.fill(text)
    await field.press("Enter")


async def test_a_question_shows_the_acknowledgment_then_the_answer_with_its_citation(
        site: Site) -> None:
    site.llm.mode, site.llm.delay_s = "slow_first_token", 1.5
    page = await site.page()
    await ask(page, "How do I factory reset the hub?")
    reply = page.locator("#duet-chat .msg.bot").first
    ack = reply.locator(".ack")
    await expect(ack).not_to_have_text("", timeout=30_000)
    # the acknowledgment stands alone, visibly set apart, while the answer is being written
    assert await reply.locator(".answer").text_content() == ""
    style = await ack.evaluate("n => [getComputedStyle(n).fontStyle, getComputedStyle(n).color]")
    assert style[0] == "italic"
    assert await page.locator("#duet-chat .typing").is_visible()
    await site.shot(page, "widget-ack")
    await expect(reply.locator(".answer")).to_contain_text("15 seconds", timeout=30_000)
    link = reply.locator(".sources a")
    await expect(link).to_have_text("Resetting the hub", timeout=30_000)
    assert await link.get_attribute("href") == HUB_URL
    assert "as of" in (await reply.locator(".sources .asof").text_content() or "")
    assert await page.locator("#duet-chat .msg.user").all_text_contents() == [
        "How do I factory reset the hub?"]
    await expect(page.locator("#duet-chat .typing")).to_be_hidden()
    await site.shot(page, "widget-answer")
    await page.context.close()


async def test_a_network_cut_mid_reply_loses_nothing_and_doubles_nothing(site: Site) -> None:
    site.llm.token_delay_s = 0.5
    site.llm.tokens = [f"{step} " for step in STEPS]
    page = await site.page()
    await ask(page, "How do I factory reset the hub?")
    answer = page.locator("#duet-chat .msg.bot .answer").first
    await expect(answer).to_contain_text(STEPS[1], timeout=30_000)
    await page.context.set_offline(True)
    await expect(page.locator("#duet-chat .status")).to_contain_text("offline")
    session_id = await page.evaluate("Duet.sessionId")
    session = site.session(session_id)
    await asyncio.sleep(1.5)  # the reply goes on streaming into the session meanwhile
    assert await page.evaluate("Duet.connected") is False
    await page.context.set_offline(False)
    await expect(page.locator("#duet-chat .msg.bot .sources")).to_be_visible(timeout=60_000)
    done = [e for e in session.log if isinstance(e, Done)][-1]
    shown = await page.locator("#duet-chat .msg.bot").first.evaluate(
        "n => n.querySelector('.ack').textContent + ' ' + n.querySelector('.answer').textContent")
    assert " ".join(shown.split()) == " ".join(done.text.split())
    for step in STEPS:
        assert shown.count(step) == 1, step
    assert await page.locator("#duet-chat .msg.bot").count() == 1
    assert await page.locator("#duet-chat .msg.user").count() == 1
    assert await page.evaluate("Duet.connects") >= 2
    await expect(page.locator("#duet-chat .status")).to_be_hidden()
    # typed while offline: sent once when the network is back
    await page.context.set_offline(True)
    await ask(page, "thanks!")
    await page.context.set_offline(False)
    await expect(page.locator("#duet-chat .msg.bot")).to_have_count(2, timeout=60_000)
    users = [e.text for e in session.log if e.type == "user_message"]
    assert users == ["How do I factory reset the hub?", "thanks!"]
    await page.context.close()


async def test_a_supervisors_reply_appears_with_their_name(site: Site) -> None:
    page = await site.page()
    await ask(page, "How do I factory reset the hub?")
    await expect(page.locator("#duet-chat .msg.bot .sources")).to_be_visible(timeout=30_000)
    await page.get_by_role("button", name="Talk to a person").click()
    await expect(page.locator("#duet-chat .note").last).to_contain_text("person", timeout=30_000)
    session = site.session(await page.evaluate("Duet.sessionId"))
    await session.emit(AgentJoined(agent=AgentRef(id="sup-1", name="Anna")))
    # a person's message as the supervisor socket emits it: a human delta and its done
    said = "Hi! I'm Anna — I can help with the hub."
    await session.emit(Delta(turn_id="h1", source="human", text=said))
    await session.emit(Done(turn_id="h1", text=said, timings_ms=Timings(total=0.0)))
    human = page.locator("#duet-chat .msg.human")
    await expect(human).to_contain_text("I can help with the hub", timeout=30_000)
    await expect(human.locator(".who")).to_have_text("Anna")
    await expect(page.locator("#duet-chat .note").last).to_contain_text("Anna joined")
    await site.shot(page, "widget-supervisor")
    await session.emit(AgentLeft(agent=AgentRef(id="sup-1", name="Anna")))  # after the done
    await expect(page.locator("#duet-chat .note").last).to_contain_text("Anna left")
    assert await page.locator("#duet-chat .msg.bot").count() == 1  # the done added nothing
    # a reload redraws the whole conversation from the session (and resumes it)
    await page.reload()
    await page.locator("#duet-chat .bubble").click()
    await expect(page.locator("#duet-chat .note").last).to_contain_text("Anna left",
                                                                        timeout=30_000)
    assert await page.locator("#duet-chat .msg.user").count() == 1
    assert await page.locator("#duet-chat .msg.human").count() == 1
    assert await page.locator("#duet-chat .msg.bot").count() == 1
    await page.context.close()


async def test_host_css_cannot_break_it_and_it_works_from_the_keyboard(site: Site) -> None:
    page = await site.page()
    bubble = page.locator("#duet-chat .bubble")
    assert await bubble.is_visible()  # host CSS hides every button; not this one
    size = await bubble.evaluate("n => getComputedStyle(n).fontSize")
    assert size != "40px"
    # styled although the page's Content-Security-Policy forbids inline styles
    assert await bubble.evaluate("n => getComputedStyle(n).backgroundColor") == "rgb(59, 91, 219)"
    # nor does the widget touch the host page
    assert await page.locator("#text").evaluate("n => getComputedStyle(n).fontSize") == "40px"
    await page.keyboard.press("Tab")
    assert await page.evaluate(
        "document.activeElement.id === 'duet-chat' && "
        "document.activeElement.shadowRoot.activeElement.classList.contains('bubble')")
    assert await bubble.get_attribute("aria-expanded") == "false"
    await page.keyboard.press("Enter")
    assert await bubble.get_attribute("aria-expanded") == "true"
    field = page.get_by_label("Your message")
    await expect(field).to_be_focused()
    assert await field.is_visible()
    assert await page.get_by_role("dialog", name="Chat with us").is_visible()
    assert await page.get_by_role("log").get_attribute("aria-live") == "polite"
    await page.keyboard.type("How do I factory reset the hub?")
    await page.keyboard.press("Enter")
    await expect(page.locator("#duet-chat .msg.bot .sources")).to_be_visible(timeout=30_000)
    await page.keyboard.press("Escape")
    assert await bubble.get_attribute("aria-expanded") == "false"
    assert await page.evaluate(
        "document.activeElement.shadowRoot.activeElement.classList.contains('bubble')")
    await site.shot(page, "widget-hostile-css")
    await page.context.close()


async def test_the_gateway_serves_the_widget_and_a_demo_page(site: Site) -> None:
    async with httpx.AsyncClient(base_url=site.gw.base_url) as client:
        js = await client.get("/widget.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        demo = await client.get("/")
        assert demo.status_code == 200 and '<script src="/widget.js"' in demo.text
    context = await site.browser.new_context()
    page = await context.new_page()
    await page.goto(site.gw.base_url + "/")
    await ask(page, "How do I factory reset the hub?")
    await expect(page.locator("#duet-chat .msg.bot .answer")).to_contain_text(
        "15 seconds", timeout=30_000)
    await site.shot(page, "widget-demo-page")
    await context.close()


async def test_a_signed_in_customer_passes_their_token(site: Site) -> None:
    """``Duet.setCustomerToken`` (or ``data-customer-token``) opens the customer's own
    session; a bad token is refused without a session."""
    context = await site.browser.new_context()
    page = await context.new_page()
    await page.goto(site.host.origin + "/")
    await page.locator("#duet-chat .bubble").wait_for()
    await page.evaluate("Duet.setCustomerToken('not.a.jwt')")
    await ask(page, "hello")
    await expect(page.locator("#duet-chat .note").first).to_contain_text(
        "not accepted", timeout=30_000)
    assert await page.evaluate("Duet.sessionId") is None  # no guest session instead
    token = CustomerTokens(Settings(_env_file=None, customer_token_secret=SECRET)).mint(
        "alice", ["beta"])
    await page.evaluate("t => Duet.setCustomerToken(t)", token)
    await expect(page.locator("#duet-chat .msg.bot").first).not_to_have_text("", timeout=30_000)
    session = site.session(await page.evaluate("Duet.sessionId"))
    assert session.customer_id == "alice" and "beta" in session.groups
    assert [e.text for e in session.log if e.type == "user_message"] == ["hello"]
    await context.close()


