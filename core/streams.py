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
"""

from __future__ import annotations

import dataclasses
import logging

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

__all__ = ["MEMORY_BUCKET_MAX_BYTES", "ensure_kv", "ensure_stream"]

log = logging.getLogger("duet.nats")

#: The limit of a bucket held in memory (presence, heartbeats): small keys that expire.
MEMORY_BUCKET_MAX_BYTES = 8 * 1024**2

async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or update an existing one to ``config`` (limits included)."""
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except BadRequestError:
            pass  # a concurrent process created it first: bring it to this config
    return await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Open the bucket (creating it if missing) with ``config``'s limits applied.

    An existing bucket keeps its history and content; only its limits (bytes, age, value
    size, history per key) are brought up to date.
    """
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(config=config)
        except BadRequestError:
            kv = await js.key_value(config.bucket)  # created by a concurrent process
    await _update_limits(js, config)
    return kv


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
