"""Web widget: pressing Enter → the first visible acknowledgment, measured in the browser.

The gateway runs as its own process on the sample knowledge base (see
:func:`bench.chat_bench.gateway_process`); headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright) opens the gateway's demo page, and the widget is used as a customer
would: type a question, press Enter. In the page, ``performance.now()`` is taken in a
capturing ``keydown`` listener for that Enter, and again at the first animation frame after
the reply bubble's acknowledgment (and then its answer) got text — the frame in which it is
painted. ``done`` is the frame after the sources or the end of the turn appear.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from playwright.async_api import Page, async_playwright

from bench.chat_bench import QUESTIONS, gateway_process, phrase
from bench.common import save, summary

TURNS = 40
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Resolves with {ack, answer, done} in ms after the next Enter, for the reply bubble number n.
_WATCH = """
(n) => new Promise((resolve) => {
  const root = document.querySelector('#duet-chat').shadowRoot;
  let t0 = null; const out = {ack: null, answer: null, done: null};
  const painted = (key) => requestAnimationFrame(() => {
    if (out[key] === null) out[key] = performance.now() - t0;
  });
  window.addEventListener('keydown', (e) => { if (e.key === 'Enter' && t0 === null) t0 = performance.now(); }, {capture: true, once: true});
  const check = () => {
    if (t0 === null) return;
    const bubble = root.querySelectorAll('.msg.bot')[n];
    if (!bubble) return;
    if (out.ack === null && bubble.querySelector('.ack').textContent) painted('ack');
    if (out.answer === null && bubble.querySelector('.answer').textContent) painted('answer');
    const typing = root.querySelector('.typing');
    if (out.done === null && !typing.classList.contains('show')) {
      requestAnimationFrame(() => { out.done = performance.now() - t0; observer.disconnect(); resolve(out); });
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
})
"""


async def _turn(page: Page, n: int, text: str) -> dict[str, Any]:
    watch = asyncio.ensure_future(page.evaluate(_WATCH, n))
    await asyncio.sleep(0.05)  # the listener is installed
    field = page.get_by_label("Your message")
    await field.fill(text)
    await field.press("Enter")
    return await asyncio.wait_for(watch, 60)


async def main() -> None:
    rng = random.Random(5)
    results: list[dict[str, Any]] = []
    async with gateway_process() as gw, async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for i in range(TURNS):
                if i % 4 == 0:  # a new visitor every four questions
                    context = await browser.new_context()
                    page = await context.new_page()
                    await page.goto(gw.base_url + "/")
                    await page.locator("#duet-chat .bubble").click()
                    n = 0
                results.append(await _turn(page, n, phrase(rng.choice(QUESTIONS), rng)))
                n += 1
                if i % 4 == 3:
                    await context.close()
        finally:
            await browser.close()
    acks = [r["ack"] for r in results if r["ack"] is not None]
    firsts = [min(v for v in (r["ack"], r["answer"]) if v is not None) for r in results
              if r["ack"] is not None or r["answer"] is not None]
    save("widget_latency", {
        "turns": len(results), "turns_with_ack": len(acks),
        "enter_to_first_visible_ack_ms": summary(acks) if acks else None,
        "enter_to_first_visible_text_ms": summary(firsts),
        "enter_to_answer_ms": summary([r["answer"] for r in results if r["answer"] is not None]),
        "enter_to_done_ms": summary([r["done"] for r in results if r["done"] is not None]),
    })


__all__ = ["main"]

if __name__ == "__main__":
    asyncio.run(main())
