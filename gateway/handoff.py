"""What the customer is told on the way to a person: honest, with what happens next and the
queue position, never a dead end (there is always something the customer can do)."""

from __future__ import annotations

__all__ = ["BACK_TO_BOT", "escalated", "human_only", "still_waiting", "timed_out"]

_LEAVE = ("You can leave a message here and we'll keep it for them, or say \"back to the "
          "bot\" to keep chatting with me.")

BACK_TO_BOT = ("You're back with the assistant, and your request for a person is withdrawn. "
               "Ask me anything (or ask for a person again at any time).")

_TOPIC_WORDS = {
    "self_harm": "If you are in danger or thinking about hurting yourself, please contact your "
                 "local emergency number or a crisis line right now. ",
}


def _place(position: int) -> str:
    if position == 1:
        return "you're first in the queue"
    return f"you're number {position} in the queue"


def escalated(position: int, online: int) -> str:
    """Right after an escalation."""
    if online == 0:
        return ("I've asked for a person from our team, but nobody is online right now. "
                + _LEAVE)
    return (f"I've asked for a person from our team: {_place(position)}. They'll join this chat "
            "and see everything so far. While you wait I won't answer on my own; say "
            "\"back to the bot\" if you'd rather keep chatting with me.")


def human_only(topic: str) -> str:
    """The bot does not answer a human-only topic."""
    return (_TOPIC_WORDS.get(topic, "")
            + "This is something a person from our team should handle, so I'm bringing "
              "one in rather than answering myself.")


def still_waiting(position: int | None, notice: str | None, online: int) -> str:
    """A message while waiting: kept for the supervisor, no facts from the bot."""
    if notice in ("offline", "timeout") or online == 0:
        return ("Thanks, I've kept your message for our team; they'll see it as soon as "
                "someone is available. Say \"back to the bot\" if you'd like to keep "
                "chatting with me meanwhile.")
    return (f"Thanks, I've passed that on; {_place(position or 1)}. A person will join this "
            "chat shortly.")


def timed_out(minutes: float) -> str:
    """The wait passed ``DUET_HANDOFF_TIMEOUT_S``."""
    return (f"Sorry, nobody from our team could join in the last {minutes:g} minutes. "
            + _LEAVE)
