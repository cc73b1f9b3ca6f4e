"""The generate step: stream the reply the decision calls for, then the final record.

- answer: the configured generator over the chosen documents' sections; if it fails
  before its first piece (slow, erroring or unreachable LLM), the extractive generator
  answers instead and the failure is logged. A turn is never left empty.
- clarify: one question naming the two candidate documents.
- fallback: an honest "I couldn't find it", the best document's most relevant sentence
  when one is at all relevant, and an offer of a person. Nothing is guessed.
- small talk ("thanks!"): one courteous line, no search, the session's topic kept.

Replies stream sentence by sentence. The node ends the turn: it writes the
:class:`AnswerFinal` and updates the session's topic memory and co-retrieval counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from langgraph.runtime import Runtime

from agents.retrieval.cache import SessionTopic
from agents.retrieval.generators import ExtractiveGenerator, Generator
from agents.retrieval.prefetch import CoRetrieval
from agents.retrieval.turn import AnswerDelta, AnswerFinal, Citation, TurnContext
from agents.smalltalk import small_talk
from agents.text import noun_phrase
from core.errors import GenerationError
from ingest.kb import Hit

__all__ = ["GenerateNode", "clarify_sentences", "fallback_sentences"]

log = logging.getLogger("duet.agents")


def clarify_sentences(titles: Sequence[str]) -> list[str]:
    """A question back that names the candidate documents."""
    options = " or ".join(f"\u201c{t}\u201d" for t in titles[:2])
    return ["I want to make sure I give you the right answer.",
            f"Is your question about {options}?"]


def fallback_sentences(question: str, partial: tuple[str, str] | None) -> list[str]:
    """An honest "not found", the closest passage if any, and the offer of a person."""
    topic = noun_phrase(question)
    about = f"about {topic}" if topic else "about that"
    out = [f"I'm sorry, I couldn't find anything {about} in our help articles, "
           "and I don't want to guess."]
    if partial is not None:
        title, sentence = partial
        out.append(f"The closest I found is in \u201c{title}\u201d: {sentence}")
    out.append("Would you like me to connect you with a person from our support team?")
    return out


class GenerateNode:
    """Graph node: streams the reply as :class:`AnswerDelta` s, then one :class:`AnswerFinal`."""

    def __init__(self, generator: Generator, extractive: ExtractiveGenerator,
                 co_retrieval: CoRetrieval) -> None:
        self._generator = generator
        self._extractive = extractive
        self._co = co_retrieval

    async def __call__(self, state: dict, runtime: Runtime[TurnContext]) -> dict:
        turn = runtime.context
        write = runtime.stream_writer
        verdict = state["verdict"]
        rewrite = state["rewrite"]
        as_of = state.get("as_of")
        pieces: list[str] = []

        def emit(piece: str) -> None:
            pieces.append(piece)
            write(AnswerDelta(piece))

        def say(sentences: Sequence[str]) -> None:
            for sentence in sentences:
                emit(sentence if not pieces else f" {sentence}")

        citations: list[Citation] = []
        if rewrite.kind == "social":
            say([small_talk(turn.text) or "Is there anything else I can help you with?"])
        elif verdict.decision == "answer":
            hits = [s.hit for doc in verdict.docs for s in doc.hits]
            await self._answer(rewrite.query, hits, as_of, emit)
            if not pieces:
                say([f"You'll find this in \u201c{verdict.docs[0].title}\u201d."])
            citations = [Citation.from_hit(doc.best) for doc in verdict.docs]
        elif verdict.decision == "clarify":
            say(clarify_sentences([doc.title for doc in verdict.docs]))
        else:
            partial = None
            if verdict.docs:
                doc = verdict.docs[0]
                best = await asyncio.to_thread(self._extractive.select, rewrite.query,
                                               [s.hit for s in doc.hits], limit=1)
                if best:
                    partial = (doc.title, best[0].text)
                    citations = [Citation.from_hit(doc.best)]
            say(fallback_sentences(turn.text, partial))

        final = AnswerFinal(
            text="".join(pieces), citations=citations, as_of=as_of,
            confidence=verdict.confidence, decision=verdict.decision,
            rewritten_query=rewrite.query, prefetch_hit=bool(state.get("prefetch_hit")),
            escalate_reason=state.get("escalate_reason"), hits=list(state.get("hits") or []),
        )
        write(final)
        if rewrite.kind != "social":
            self._remember(turn, state, final)
        return {"final": final}

    async def _answer(self, question: str, hits: list[Hit], as_of: datetime | None,
                      emit: Callable[[str], None]) -> None:
        """The generator's pieces; the extractive answer if it fails before the first one."""
        sent = 0
        if self._generator is not self._extractive:
            try:
                async with _closing(self._generator.stream(question, hits, as_of=as_of)) as gen:
                    async for piece in gen:
                        if piece:
                            emit(piece)
                            sent += 1
            except GenerationError as exc:
                log.warning("generator failed", extra={
                    "generator": self._generator.name, "error": exc.message, "pieces": sent})
            except Exception:  # a broken plug-in must not leave the turn empty
                log.exception("generator crashed", extra={"generator": self._generator.name})
            if sent:
                return
            log.warning("answering extractively instead", extra={
                "generator": self._generator.name})
        async with _closing(self._extractive.stream(question, hits, as_of=as_of)) as gen:
            async for piece in gen:
                emit(piece)

    def _remember(self, turn: TurnContext, state: dict, final: AnswerFinal) -> None:
        """Session memory for the next turn's follow-up rule, and co-retrieval counts."""
        cache = turn.cache
        rewrite = state["rewrite"]
        previous = cache.topic
        keep_anchor = rewrite.kind == "context" and previous is not None
        top = final.citations[0] if final.citations else None
        cache.topic = SessionTopic(
            anchor=previous.anchor if keep_anchor else rewrite.query,
            title=top.title if top else (previous.title if keep_anchor else None),
            doc_id=top.doc_id if top else (previous.doc_id if keep_anchor else None),
            vector=previous.vector if keep_anchor else state.get("vector"),
            decision=final.decision,
        )
        if final.decision == "answer" and final.citations:
            new = [c.doc_id for c in final.citations]
            self._co.record(list(cache.cited), new)
            cache.cited.extend(d for d in new if d not in cache.cited)


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[str]) -> AsyncIterator[AsyncIterator[str]]:
    """Close an async generator even when the turn is cancelled mid-stream."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
