"""Channels: the ways a customer reaches the gateway.

Each channel speaks the chat wire contract (shared/PROTOCOL.md §1) on the customer's
side; the gateway does not know which one it talks to beyond ``hello.channel``.
:mod:`channels.terminal` is the ``duet chat`` terminal client.
"""

__all__: list[str] = []
