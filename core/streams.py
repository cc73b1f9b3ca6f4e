"""Creating JetStream streams and key-value buckets with their limits, race-free.

Every stream and bucket Duet writes has a byte limit (and, where its content is a log or
expires, an age limit and per-subject history), so no writer can fill the disk: a stream
whose oldest entries may go (a session log, the audit log) discards the oldest; one whose
every entry is accepted work (document events, the WhatsApp inbox, a bucket of state)
refuses the new write instead, which the writer turns into a clear error — nothing accepted
is dropped to make room.

Both helpers create what is missing and bring an existing stream's limits up to date (a
restart with new settings applies them), and tolerate another process creating the same
stream at the same moment.

JetStream reserves a stream's byte limit against its store (by default 75 % of the disk
free when the server started) and refuses a stream whose limit does not fit
(``insufficient storage resources``). A limit that does not fit is halved until it does,
and half of that is taken, so the streams created after it still find room; the stream is
then smaller than configured, and a warning says so — on a small disk Duet starts with
smaller limits instead of not starting.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig, StreamInfo
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

__all__ = ["MEMORY_BUCKET_MAX_BYTES", "ensure_kv", "ensure_stream"]

log = logging.getLogger("duet.nats")

#: The limit of a bucket held in memory (presence, heartbeats): small keys that expire.
MEMORY_BUCKET_MAX_BYTES = 8 * 1024**2
#: The smallest limit a stream is shrunk to when its store has no room for the configured one.
MIN_FITTED_BYTES = 1024**2
#: JetStream's "insufficient storage resources available".
_NO_ROOM = 10047

T = TypeVar("T")

async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or update an existing one to ``config`` (limits included)."""
    async def apply(max_bytes: int | None) -> StreamInfo:
        wanted = dataclasses.replace(config, max_bytes=max_bytes)
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                return await js.add_stream(wanted)
            except BadRequestError:
                pass  # a concurrent process created it first: bring it to this config
        return await js.update_stream(wanted)

    return await _fitted(config.name, config.max_bytes, apply)


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Open the bucket (creating it if missing) with ``config``'s limits applied.

    An existing bucket keeps its history and content; only its limits (bytes, age, value
    size, history per key) are brought up to date.
    """
    async def apply(max_bytes: int | None) -> KeyValue:
        wanted = dataclasses.replace(config, max_bytes=max_bytes)
        try:
            kv = await js.key_value(config.bucket)
        except BucketNotFoundError:
            try:
                return await js.create_key_value(config=wanted)
            except BadRequestError:
                kv = await js.key_value(config.bucket)  # created by a concurrent process
        await _update_limits(js, wanted)
        return kv

    return await _fitted(config.bucket, config.max_bytes, apply)


async def _fitted(name: str, max_bytes: int | None,
                  apply: Callable[[int | None], Awaitable[T]]) -> T:
    """``apply(max_bytes)``, with the limit shrunk to what the store has room for."""
    size = max_bytes
    while True:
        try:
            result = await apply(size)
        except APIError as exc:
            if exc.err_code != _NO_ROOM or size is None or size <= MIN_FITTED_BYTES:
                raise
            size = max(size // 2, MIN_FITTED_BYTES)
            continue
        if size == max_bytes or size is None:
            return result
        # It fits at ``size``; take half, so what is created next still finds room.
        taken = max(size // 2, MIN_FITTED_BYTES)
        if taken != size:
            result = await apply(taken)
        log.warning("the JetStream store has no room for this limit; using a smaller one",
                    extra={"stream": name, "configured_bytes": max_bytes, "bytes": taken})
        return result


async def _update_limits(js: JetStreamContext, config: KeyValueConfig) -> None:
    name = f"KV_{config.bucket}"
    current = (await js.stream_info(name)).config
    wanted = {
        "max_bytes": config.max_bytes if config.max_bytes is not None else -1,
        "max_age": config.ttl or 0.0,
        "max_msg_size": config.max_value_size if config.max_value_size is not None else -1,
        "max_msgs_per_subject": config.history,
    }
    changes = {key: value for key, value in wanted.items()
               if _normal(getattr(current, key)) != _normal(value)}
    if not changes:
        return
    log.info("updating the limits of a bucket", extra={"bucket": config.bucket, **changes})
    await js.update_stream(dataclasses.replace(current, **changes))


def _normal(value: float | int | None) -> float:
    """None, 0 and -1 all mean "no limit" for these fields."""
    if value is None or value <= 0:
        return -1.0
    return float(value)
