"""Local stand-ins for services that cannot run here, speaking their documented protocols.

:class:`FakeLLM` is an OpenAI-compatible ``/v1/chat/completions`` server: just enough
HTTP/1.1 and server-sent events (``data: {...}`` lines with ``choices[0].delta.content``,
then ``data: [DONE]``) on ``asyncio.start_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

TOKENS = ["Hold the reset button", " for 15 seconds", " until the LED flashes red [1]."]


class FakeLLM:
    """A tiny OpenAI-compatible ``/v1/chat/completions`` server with scripted behaviours."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay_s = 5.0
        #: pause between tokens (a slow model: cancellation and resume tests)
        self.token_delay_s = 0.005
        self.tokens = list(TOKENS)
        self.requests: list[dict] = []
        self.disconnected = asyncio.Event()
        self._handlers: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"path": request_line.split()[1], "headers": headers,
                                  "json": json.loads(body)})
            await self._respond(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "500":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n"
                         b"Connection: close\r\n\r\nboom")
            await writer.drain()
            return
        if self.mode == "slow_headers":
            await asyncio.sleep(self.delay_s)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
        await writer.drain()
        if self.mode == "slow_first_token":
            writer.write(b": keep-alive\n\n")
            await writer.drain()
            await asyncio.sleep(self.delay_s)
        for i, token in enumerate(self.tokens):
            event = {"id": "x", "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {"content": token}}]}
            writer.write(f"data: {json.dumps(event)}\n\n".encode())
            await writer.drain()
            if self.mode == "stall" and i == 0:
                # Hold the stream open until the client hangs up.
                await reader.read()
                self.disconnected.set()
                return
            await asyncio.sleep(self.token_delay_s)
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        writer.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await writer.drain()
