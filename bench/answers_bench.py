"""Answer-level evaluation on knowledge bases this project did not write.

Two public corpora (``bench/corpora``, licenses beside them), each indexed through the
ingest worker (NATS + Chroma, production chunking) and asked through the retrieval
agent exactly as a chat turn is (``RetrievalAgent.stream``, a fresh session per question):

* **ghdocs** — eight GitHub Docs billing articles (CC BY 4.0) and ``questions.yaml``:
  30 answerable questions (prices and quotas in Markdown tables, yes/no, "how long"),
  8 the articles cannot answer, 3 prompt injections;
* **stackfaq** — StackFAQ (MIT): 100 of the 125 threads indexed, 25 held out; one
  paraphrase per thread asked (the 25 held-out ones are questions the KB cannot answer).

Reported per generator (extractive; the local model when installed) and per ranking
(passage re-ranking on/off):

* ``fact_rate``: answerable questions whose reply contains an expected fact (ghdocs: one
  of ``facts``, and for yes/no questions the right "Yes"/"No" first; stackfaq: the reply's
  content words are ≥ 80 % from the right thread and the thread is cited);
* ``citation_accuracy``: answerable questions whose first citation is the right article;
* ``dont_know_rate``: unanswerable questions answered with an honest "I couldn't find …"
  (a fallback) rather than an answer;
* ``injections_obeyed``: replies that contain what an injection asked for;
* ``first_answer_ms`` / ``whole_reply_ms``: from the turn's start to the first answer
  piece and to the final record (p50 / p90), one turn at a time;
* ``acknowledgments``: every question's acknowledgment, and how many name a word that is
  neither in the question nor anywhere in the knowledge base (the target is 0).

``python -m bench.answers_bench [extractive|local] [--no-rerank] [--ghdocs-only]``; ``make bench`` runs
the extractive generator with and without passage re-ranking, and the local model (when
its weights are installed: ``make local-model``) with the ranking as shipped (without).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.retrieval import PrefetchCache, RetrievalAgent, TurnContext
from agents.retrieval.turn import AnswerDelta, AnswerFinal
from agents.text import content_words, keyword_tokens
from bench.common import save, scratch_runtime, summary
from bench.stackfaq_bench import load_threads
from ingest.events import DocumentEvent
from ingest.publisher import publish_event

CORPORA = Path(__file__).resolve().parent / "corpora"
GHDOCS = CORPORA / "ghdocs"
HELD_OUT_EVERY = 5  # every 5th StackFAQ thread is held out: 25 of 125
_DONT_KNOW = re.compile(r"couldn't find|could not find|don't know|do not know|not sure", re.I)


@dataclass
class Item:
    """One question and what a right reply contains."""

    corpus: str
    q: str
    kind: str
    doc: str | None = None
    facts: list[str] = field(default_factory=list)
    yesno: str | None = None
    forbidden: list[str] = field(default_factory=list)
    reference: str = ""


@dataclass
class Outcome:
    """What the agent replied and how it scored."""

    item: Item
    text: str
    cited: list[str]
    decision: str
    first_ms: float | None
    whole_ms: float
    fact: bool = False
    cited_right: bool = False
    dont_know: bool = False
    obeyed: bool = False


def ghdocs_items() -> tuple[dict[str, str], list[Item]]:
    """The GitHub Docs articles (doc id → Markdown) and their questions."""
    docs = {p.stem: p.read_text(encoding="utf-8") for p in sorted(GHDOCS.glob("*.md"))}
    raw = yaml.safe_load((GHDOCS / "questions.yaml").read_text(encoding="utf-8"))
    items = [Item("ghdocs", str(r["q"]), str(r["kind"]), r.get("doc"), list(r.get("facts", [])),
                  r.get("yesno"), list(r.get("forbidden", []))) for r in raw]
    return docs, items


def stackfaq_items() -> tuple[dict[str, str], list[Item]]:
    """100 StackFAQ threads as articles; one paraphrase per thread (25 threads held out)."""
    docs: dict[str, str] = {}
    items: list[Item] = []
    for i, thread in enumerate(load_threads()):
        held_out = i % HELD_OUT_EVERY == 0
        if not held_out:
            docs[thread.doc_id] = thread.markdown()
        if thread.queries:
            items.append(Item("stackfaq", thread.queries[len(thread.queries) // 2],
                              "unanswerable" if held_out else "fact",
                              None if held_out else thread.doc_id,
                              reference="\n".join([thread.question, *thread.answers])))
    return docs, items


async def index(rt: Any, docs: dict[str, str], prefix: str) -> None:
    """Publish every article as a CREATE event and wait for all outcomes."""
    assert rt.nc is not None
    sub = await rt.nc.subscribe("duet.results.>")
    for doc_id, markdown in docs.items():
        title = markdown.splitlines()[0].lstrip("# ").strip()
        await publish_event(rt.nc, DocumentEvent.model_validate({
            "event_type": "CREATE", "doc_id": f"{prefix}-{doc_id}", "version": 1,
            "content": markdown, "metadata": {"title": title[:500], "acl": ["public"],
                                              "source": "cms"}}))
    for _ in docs:
        await sub.next_msg(timeout=300)
    await sub.unsubscribe()


def score(outcome: Outcome, prefix: str) -> Outcome:
    """Mark what the reply got right."""
    item, text = outcome.item, outcome.text
    low = text.lower()
    expected_doc = f"{prefix}-{item.doc}" if item.doc else None
    outcome.cited_right = bool(expected_doc and outcome.cited[:1] == [expected_doc])
    honest = outcome.decision == "fallback" or bool(_DONT_KNOW.search(text))
    if item.kind == "unanswerable":
        outcome.dont_know = honest and not re.match(r"\s*(yes|no)\b", low)
    elif item.kind == "injection":
        # an honest "I couldn't find anything about <their words>" echoes, never obeys
        outcome.obeyed = outcome.decision != "fallback" and any(
            f.lower() in low for f in item.forbidden)
    elif item.corpus == "ghdocs":
        has_fact = any(f.lower() in low for f in item.facts)
        polarity = item.yesno is None or low.lstrip().startswith(item.yesno)
        outcome.fact = has_fact and polarity
    else:
        ref = set(content_words(item.reference))
        words = content_words(text)
        share = sum(1 for w in words if w in ref) / max(len(words), 1)
        outcome.fact = outcome.cited_right and share >= 0.8
    return outcome


async def ask(agent: RetrievalAgent, item: Item) -> Outcome:
    """One question as the first turn of a new session."""
    turn = TurnContext(session_id="bench", text=item.q, history=[], groups=(),
                       cache=PrefetchCache())
    started = time.perf_counter()
    first: float | None = None
    final: AnswerFinal | None = None
    async for piece in agent.stream(turn):
        if isinstance(piece, AnswerDelta) and first is None and piece.text.strip():
            first = (time.perf_counter() - started) * 1000
        elif isinstance(piece, AnswerFinal):
            final = piece
    whole = (time.perf_counter() - started) * 1000
    assert final is not None
    return Outcome(item, final.text, [c.doc_id for c in final.citations], final.decision,
                   first if final.decision == "answer" else None, whole)


def report(outcomes: list[Outcome]) -> dict[str, Any]:
    """The figures of one run."""
    answerable = [o for o in outcomes if o.item.kind not in ("unanswerable", "injection")]
    unanswerable = [o for o in outcomes if o.item.kind == "unanswerable"]
    injections = [o for o in outcomes if o.item.kind == "injection"]
    by_kind: dict[str, list[Outcome]] = {}
    for o in answerable:
        by_kind.setdefault(o.item.kind, []).append(o)

    def rate(values: list[bool]) -> float | None:
        return round(sum(values) / len(values), 3) if values else None

    firsts = [o.first_ms for o in outcomes if o.first_ms is not None]
    return {
        "questions": len(outcomes),
        "fact_rate": rate([o.fact for o in answerable]),
        "fact_rate_by_kind": {k: rate([o.fact for o in v]) for k, v in sorted(by_kind.items())},
        "citation_accuracy": rate([o.cited_right for o in answerable]),
        "dont_know_rate": rate([o.dont_know for o in unanswerable]),
        "injections_obeyed": sum(o.obeyed for o in injections),
        "first_answer_ms": summary(firsts) if firsts else None,
        "whole_reply_ms": summary([o.whole_ms for o in outcomes]),
        "misses": [{"q": o.item.q, "reply": o.text[:240], "cited": o.cited[:2]}
                   for o in outcomes if (o.item.kind not in ("unanswerable", "injection")
                                         and not o.fact)
                   or (o.item.kind == "unanswerable" and not o.dont_know) or o.obeyed],
    }


_TEMPLATE_WORDS = frozenset(keyword_tokens(
    "let me look up check one moment while pulling now into for you on that the our your "
    "looking sorry frustrating understand trouble find about right away what went wrong "
    "hi hello there help reaching out welcome happy glad anything else need support agent "
    "connecting see hear course understood"))


async def acknowledgments(rt: Any, items: dict[str, list[Item]]) -> dict[str, Any]:
    """Every question's acknowledgment: how many name a word neither it nor the KB has."""
    from agents.ack import AckAgent
    from agents.intents import IntentCatalog
    from agents.retrieval.hybrid import KeywordIndex

    kb = rt.kb
    await asyncio.to_thread(kb.topics.rebuild)
    keyword = KeywordIndex(kb)
    await asyncio.to_thread(keyword.rebuild)
    catalog = await asyncio.to_thread(IntentCatalog.load, kb.embedder)
    ack = AckAgent(kb.embedder, catalog, topics=kb.topics, seed=1)
    out: dict[str, Any] = {}
    for corpus, corpus_items in items.items():
        bad: list[dict[str, str]] = []
        took: list[float] = []
        named = 0
        for item in corpus_items:
            started = time.perf_counter()
            result = await asyncio.to_thread(ack.acknowledge, item.q, session_key=item.q)
            took.append((time.perf_counter() - started) * 1000)
            named += result.intent == "kb_topic"
            own = set(keyword_tokens(item.q))
            unknown = [w for w in keyword_tokens(result.text)
                       if w not in own and w not in _TEMPLATE_WORDS and not keyword.knows(w)]
            if unknown:
                bad.append({"q": item.q, "ack": result.text, "unknown": " ".join(unknown)})
        out[corpus] = {"acknowledgments": len(corpus_items), "naming_a_kb_topic": named,
                       "naming_what_neither_message_nor_kb_has": len(bad), "examples": bad[:5],
                       "ms": summary(took)}
    keyword.close()
    return out


async def run_variant(rt: Any, items: dict[str, list[Item]], *, generator: str,
                      rerank: bool) -> dict[str, Any]:
    """Every question of both corpora through one agent configuration."""
    from agents.retrieval.generators import build_generator
    from core.settings import Settings

    settings = Settings(_env_file=None, generator=generator)
    agent = RetrievalAgent(rt.kb, generator=build_generator(settings), rerank=rerank)
    await agent.warm_up()
    out: dict[str, Any] = {}
    async with agent:
        for corpus, corpus_items in items.items():
            # One warm-up turn: model loading and first-call costs are not a customer's.
            await ask(agent, corpus_items[0])
            outcomes = [score(await ask(agent, item), corpus) for item in corpus_items]
            out[corpus] = report(outcomes)
    return out


def variants(argv: list[str]) -> list[tuple[str, bool]]:
    """(generator, rerank) pairs to run: the arguments', else every one available."""
    rerank_options = [False] if "--no-rerank" in argv else [True, False]
    names = [a for a in argv if not a.startswith("--")]
    if not names:
        names = ["extractive"]
        try:
            from agents.retrieval.local_llm import local_model_available
        except ImportError:
            pass
        else:
            names += ["local"] if local_model_available() else []
    # The local model is measured with the ranking as shipped (it takes minutes a run).
    return [(g, r) for g in names for r in (rerank_options if g == "extractive" else [False])]


async def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:] if __name__ == "__main__" else []
    gh_docs, gh_items = ghdocs_items()
    sf_docs, sf_items = stackfaq_items()
    if "--ghdocs-only" in argv:
        sf_docs, sf_items = {}, []
    report_all: dict[str, Any] = {"corpora": {
        "ghdocs": {"articles": len(gh_docs), "questions": len(gh_items)},
        "stackfaq": {"threads_indexed": len(sf_docs), "questions": len(sf_items)}}}
    async with scratch_runtime() as rt:
        await index(rt, gh_docs, "ghdocs")
        if sf_docs:
            await index(rt, sf_docs, "stackfaq")
        items = {"ghdocs": gh_items, "stackfaq": sf_items} if sf_items else {"ghdocs": gh_items}
        report_all["acknowledgments"] = await acknowledgments(rt, items)
        print("   acknowledgments:", {c: (f["naming_a_kb_topic"],
                                           f["naming_what_neither_message_nor_kb_has"])
                                       for c, f in report_all["acknowledgments"].items()},
              flush=True)
        for generator, rerank in variants(argv):
            name = f"{generator}{' (passage re-ranking)' if rerank else ''}"
            print(f"-- {name}", flush=True)
            report_all[name] = await run_variant(rt, items, generator=generator, rerank=rerank)
            for corpus, figures in report_all[name].items():
                print(f"   {corpus:8s} facts {figures['fact_rate']}  citations "
                      f"{figures['citation_accuracy']}  don't-know {figures['dont_know_rate']}  "
                      f"injections obeyed {figures['injections_obeyed']}  first "
                      f"{(figures['first_answer_ms'] or {}).get('p50')} ms  whole "
                      f"{figures['whole_reply_ms']['p50']} ms", flush=True)
    save("answers", report_all)


if __name__ == "__main__":
    asyncio.run(main())
