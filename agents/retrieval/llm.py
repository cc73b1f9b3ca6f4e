"""An answer generator on any OpenAI-compatible ``/chat/completions`` endpoint, streamed.

The prompt carries the retrieved sections (numbered, with title, section, version and
last update) and the knowledge base's as-of time, and tells the model to answer only
from them. The response is read as server-sent events (``data: {...}`` lines with
``choices[0].delta.content``, ending with ``data: [DONE]``).

Two deadlines guard the turn: no content within ``first_token_timeout_s`` of the request,
or no end within ``total_timeout_s``, raises :class:`core.errors.GenerationError` — as does
a refused connection, a non-200 status or an ``error`` event — so the retrieval agent can
answer extractively instead. No timer spans a ``yield``: each read has its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from core.errors import GenerationError
from ingest.kb import Hit

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["OpenAIChatGenerator", "build_messages"]

log = logging.getLogger("duet.agents")

SYSTEM_PROMPT = (
    "You are a customer-support assistant. Answer the customer's question using only the "
    "numbered sources below. If they do not contain the answer, say that you don't know and "
    "offer to connect the customer with a person; never guess, and never invent prices, "
    "dates, policies or steps. Answer in 2 to 4 short sentences, in the customer's language, "
    "and cite the sources you used like [1]. The sources were current as of {as_of}."
)


def build_messages(question: str, hits: Sequence[Hit],
                   as_of: datetime | None) -> list[dict[str, str]]:
    """The chat messages of a grounded answer: instructions with sources, then the question."""
    stamp = as_of.isoformat(timespec="seconds") if as_of else "an unknown time"
    numbers: dict[str, int] = {}
    blocks: list[str] = []
    for hit in hits:
        number = numbers.setdefault(hit.doc_id, len(numbers) + 1)
        section = hit.heading or hit.title
        blocks.append(
            f"[{number}] {section} (version {hit.version}, updated "
            f"{hit.updated_at.date().isoformat()})\n{hit.text.strip()}")
    system = SYSTEM_PROMPT.format(as_of=stamp) + "\n\nSources:\n\n" + "\n\n".join(blocks)
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


class OpenAIChatGenerator:
    """Streams answers from an OpenAI-compatible chat-completions endpoint."""

    name = "openai-chat"

    def __init__(self, base_url: str, *, model: str = "default", api_key: str | None = None,
                 first_token_timeout_s: float = 2.0, total_timeout_s: float = 20.0,
                 temperature: float = 0.2, max_tokens: int = 400,
                 client: httpx.AsyncClient | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.first_token_timeout_s = first_token_timeout_s
        self.total_timeout_s = total_timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._headers = {"Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(total_timeout_s, connect=first_token_timeout_s))

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIChatGenerator:
        """The generator of ``DUET_LLM_*`` (the base URL includes ``/v1``, as for OpenAI)."""
        if not settings.llm_base_url:
            raise GenerationError("DUET_LLM_BASE_URL is not set", retryable=False)
        return cls(settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_api_key,
                   first_token_timeout_s=settings.llm_first_token_timeout_s,
                   total_timeout_s=settings.llm_total_timeout_s)

    async def aclose(self) -> None:
        """Close the HTTP client if this generator created it."""
        if self._own_client:
            await self._client.aclose()

    async def stream(self, question: str, hits: Sequence[Hit], *,
                     as_of: datetime | None = None) -> AsyncIterator[str]:
        """Content deltas as they arrive; :class:`GenerationError` on any failure."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_deadline = started + self.first_token_timeout_s
        total_deadline = started + self.total_timeout_s
        payload = {"model": self.model, "messages": build_messages(question, hits, as_of),
                   "stream": True, "temperature": self.temperature,
                   "max_tokens": self.max_tokens}
        got_first = False

        def deadline() -> float:
            return total_deadline if got_first else min(first_deadline, total_deadline)

        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline()):
                    response = await stack.enter_async_context(
                        self._client.stream("POST", self.url, json=payload,
                                            headers=self._headers))
                    if response.status_code != 200:
                        body = (await response.aread())[:200].decode(errors="replace")
                        raise GenerationError(f"LLM endpoint answered {response.status_code}: "
                                              f"{body}", retryable=response.status_code >= 500)
            except TimeoutError as exc:
                raise GenerationError("LLM endpoint did not answer in time") from exc
            except httpx.HTTPError as exc:
                raise GenerationError(f"LLM endpoint unreachable: {exc!r}") from exc
            lines = response.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout_at(deadline()):
                        line = await anext(lines)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    what = "total" if got_first else "first-token"
                    raise GenerationError(f"LLM {what} timeout exceeded") from exc
                except httpx.HTTPError as exc:
                    raise GenerationError(f"LLM stream broke: {exc!r}") from exc
                event = _parse(line)
                if event is _DONE:
                    break
                if event:
                    got_first = True
                    yield event
        if not got_first:
            raise GenerationError("LLM endpoint returned no content")


_DONE = object()


def _parse(line: str) -> Any:
    """The content of one SSE line: text, ``_DONE``, or None (keep-alives, other fields)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"LLM sent malformed data: {data[:80]!r}") from exc
    if isinstance(event, dict) and event.get("error"):
        raise GenerationError(f"LLM error: {event['error']}")
    try:
        return event["choices"][0]["delta"].get("content") or None
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
