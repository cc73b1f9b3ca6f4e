"""The ``duet`` command: ``serve``, ``ingest-worker``, ``load DIR``, ``chat``, ``token``,
``voice-worker``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

__all__ = ["main"]


def _settings():
    from core.logs import configure_logging
    from core.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app, server_options

    settings = _settings()
    if args.port is not None:
        settings.port = args.port
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), **server_options(settings))
    return 0


async def _worker_main() -> int:
    from core.errors import DependencyError
    from core.metrics import Metrics
    from core.natsd import resolve_nats_url
    from ingest.runtime import KnowledgeRuntime

    settings = _settings()
    url = resolve_nats_url(settings.nats_url, settings.data_dir)
    if not url:
        raise DependencyError("no NATS: set DUET_NATS_URL or start `duet serve` first")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with KnowledgeRuntime(settings, url, metrics=Metrics(), run_worker=True):
        await stop.wait()
    return 0


def _load(args: argparse.Namespace) -> int:
    from core.errors import DependencyError
    from core.natsd import close_nats, connect, resolve_nats_url
    from ingest.loader import load_directory
    from ingest.worker import ensure_stream

    settings = _settings()
    url = resolve_nats_url(settings.nats_url, settings.data_dir)
    if not url:
        raise DependencyError("no NATS: set DUET_NATS_URL or start `duet serve` first")

    async def run() -> int:
        nc = await connect(url, name="duet-load")
        try:
            await ensure_stream(nc.jetstream(), settings)
            acl = [g.strip() for g in args.acl.split(",") if g.strip()]
            count = await load_directory(nc, Path(args.directory), source=args.source, acl=acl)
        finally:
            await close_nats(nc)
        print(f"published {count} documents from {args.directory}")
        return 0

    return asyncio.run(run())


def _chat(args: argparse.Namespace) -> int:
    from channels.terminal import chat_url, run

    url = args.url
    if not url:
        from core.settings import Settings

        settings = Settings()
        url = chat_url(host=settings.host, port=settings.port)
    return run(chat_url(url), text=args.once, timeout_s=args.timeout,
               customer_token=args.token)


def _token(args: argparse.Namespace) -> int:
    from core.settings import Settings
    from gateway.auth import CustomerTokens

    settings = Settings()  # no logging, no data dir: this only prints a token
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    private_key = None
    if args.private_key:
        try:
            private_key = Path(args.private_key).read_bytes()
        except OSError as exc:
            from core.errors import ValidationError

            raise ValidationError(f"cannot read {args.private_key}: {exc.strerror}") from exc
    print(CustomerTokens(settings).mint(args.sub, groups, args.ttl, private_key=private_key))
    return 0


def _voice_worker() -> int:
    from channels.livekit.worker import run_worker
    from core.errors import ValidationError

    settings = _settings()
    if not settings.livekit_url:
        raise ValidationError("no LiveKit server: set DUET_LIVEKIT_URL (and its API key/secret)")
    return run_worker(settings)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``duet`` command."""
    parser = argparse.ArgumentParser(prog="duet", description="Duet support gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (and, by default, the ingest worker)")
    serve.add_argument("--port", type=int, default=None, help="override DUET_PORT")
    sub.add_parser("ingest-worker", help="run only the JetStream ingest worker")
    load = sub.add_parser("load", help="publish a folder of Markdown/text files as documents")
    load.add_argument("directory")
    load.add_argument("--source", default="cms", help="source of the documents (subject suffix)")
    load.add_argument("--acl", default="public", help="comma-separated groups allowed to read")
    chat = sub.add_parser("chat", help="chat with a running gateway from the terminal")
    chat.add_argument("--url", default=None,
                      help="chat websocket (default: ws://DUET_HOST:DUET_PORT/v1/chat)")
    chat.add_argument("--once", metavar="TEXT", default=None,
                      help="send one message, print the reply and exit")
    chat.add_argument("--timeout", type=float, default=60.0,
                      help="with --once: longest wait for the reply, in seconds")
    chat.add_argument("--token", default=None,
                      help="customer token (JWT, see `duet token`) to chat as; default: anonymous")
    token = sub.add_parser(
        "token", help="print a customer token (JWT) signed with DUET_CUSTOMER_TOKEN_SECRET",
        description="Mint a customer token for tests and demos; in production the company's "
                    "backend signs them (see docs/security.md).")
    token.add_argument("--sub", required=True, help="customer id (the token's `sub`)")
    token.add_argument("--groups", default="", help="comma-separated ACL groups")
    token.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    token.add_argument("--private-key", metavar="FILE", default=None,
                       help="PEM RSA/EC private key: sign RS256/ES256 instead of HS256")
    sub.add_parser("voice-worker", help="answer callers in LiveKit rooms (DUET_LIVEKIT_URL)")
    args = parser.parse_args(argv)

    from core.errors import DuetError

    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "chat":
            return _chat(args)
        if args.command == "token":
            return _token(args)
        if args.command == "voice-worker":
            return _voice_worker()
        if args.command == "ingest-worker":
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_worker_main())
            return 0
        return _load(args)
    except DuetError as exc:
        print(f"duet: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
