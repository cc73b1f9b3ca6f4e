"""Identity (placeholder until the identity-and-access work lands): anonymous only."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import DuetError
from core.settings import Settings

__all__ = ["CustomerTokens", "Identity"]


@dataclass(frozen=True)
class Identity:
    """Who a customer is: an id and ACL groups, from a verified source only."""

    customer_id: str | None
    groups: tuple[str, ...]
    anonymous: bool

    @classmethod
    def anonymous_customer(cls) -> Identity:
        """A customer without a token: the group ``public``."""
        return cls(None, ("public",), True)

    @classmethod
    def for_channel(cls, customer_id: str, groups: tuple[str, ...] = ("public",)) -> Identity:
        """An identity a channel adapter vouches for (a WhatsApp number)."""
        return cls(customer_id, tuple(dict.fromkeys(("public", *groups))), False)


class CustomerTokens:
    """Verifies customer tokens."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def verify(self, token: str | None) -> Identity:
        """The identity a token proves; anonymous without one."""
        if token is None:
            return Identity.anonymous_customer()
        raise DuetError("the customer token is not valid")
