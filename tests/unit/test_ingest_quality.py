"""The repetition gate (zero false positives on every real corpus we have) and the fault
classifier (whose fault is a failed apply)."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from core.errors import DependencyError
from core.settings import CONFIGS_DIR
from ingest.chunking import chunk_markdown
from ingest.faults import dependency_fault
from ingest.quality import is_repetitive, repetition_check
from tests.unit.test_crowd_out import junk_document

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STACKFAQ = [ROOT / "bench" / "corpora" / "stackfaq" / "stackExchange-FAQ.json",
            Path("/work/shared/eval/stackfaq/stackExchange-FAQ.json")]


def real_documents() -> dict[str, str]:
    """Every real document we have: sample KB, GitHub docs, vendor fixtures, StackFAQ."""
    docs = {f"kb/{p.stem}": p.read_text(encoding="utf-8")
            for p in sorted((CONFIGS_DIR / "sample_kb").glob("*.md"))}
    for folder in (ROOT / "bench" / "corpora" / "ghdocs", ROOT / "tests" / "fixtures" / "kb_vendor"):
        docs |= {f"{folder.name}/{p.stem}": p.read_text(encoding="utf-8")
                 for p in sorted(folder.glob("*.md"))}
    for path in STACKFAQ:
        if not path.exists():
            continue
        for i, pair in enumerate(json.loads(path.read_text())["root"]["qapair"]):
            answers = pair["answer"] if isinstance(pair["answer"], list) else [pair["answer"]]
            body = [f"# {pair['question'].strip()}"] + [
                f"## Answer {j}\n\n{a.strip()}" for j, a in enumerate(answers, 1) if a and a.strip()]
            docs[f"{path.parts[-3]}/stackfaq-{i}"] = "\n\n".join(body) + "\n"
    return docs


def check(text: str):
    return repetition_check(text, [c.text for c in chunk_markdown("d", text)])


def test_no_real_document_is_quarantined_or_loses_a_chunk() -> None:
    docs = real_documents()
    assert len(docs) > 150
    flagged = {name: found for name, text in docs.items()
               if (found := check(text)).problem or found.drop}
    assert flagged == {}


def test_all_real_documents_as_one_long_document_pass() -> None:
    # Long real text has fewer distinct words per word than short text: still far from junk.
    assert check("\n\n".join(real_documents().values())) == check("# x\n\nplain words here")


@pytest.mark.parametrize("junk", [
    junk_document(),                                       # random order, 16 words
    "# Help\n\n" + "reset password account help support " * 14000,   # one phrase, repeated
], ids=["random-words", "one-phrase"])
def test_repeated_support_words_are_quarantined_with_a_reason(junk: str) -> None:
    found = check(junk)
    assert found.problem is not None and found.problem.startswith("repetitive low-information")


def test_a_repetitive_section_of_a_real_document_is_dropped_not_the_document() -> None:
    real = (CONFIGS_DIR / "sample_kb" / "warranty.md").read_text(encoding="utf-8")
    junk_section = "\n\n## Keywords\n\n" + " ".join(["warranty claim refund help"] * 40) + "\n"
    text = real + junk_section
    chunks = chunk_markdown("d", text)
    found = repetition_check(text, [c.text for c in chunks])
    assert found.problem is None and len(found.drop) == 1
    dropped = chunks[next(iter(found.drop))]
    assert "Keywords" in dropped.heading and is_repetitive(dropped.text)
    assert found.note == "dropped 1 repetitive low-information chunk(s)"


@pytest.mark.parametrize(("exc", "fault"), [
    (OSError(errno.ENOSPC, "No space left on device"), "disk full (ENOSPC)"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system (EROFS)"),
    (PermissionError(errno.EACCES, "denied"), "permission denied (EACCES)"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "readonly database"),
    (RuntimeError("Query error: Database error: error returned from database: (code: 13) "
                  "database or disk is full"), "database or disk is full"),
    (RuntimeError("(code: 14) unable to open database file"), "unable to open database"),
    (ConnectionError("chroma unavailable"), "unreachable (ConnectionError)"),
    (TimeoutError(), "unreachable (TimeoutError)"),
    (DependencyError("the registry is down"), "the registry is down"),
    (nats.errors.ConnectionClosedError(), "connection closed"),
    (nats.errors.NoRespondersError(), "unreachable (NoRespondersError)"),
    (nats.js.errors.ServiceUnavailableError(), "unreachable (ServiceUnavailableError)"),
    (nats.errors.UnexpectedEOF(), "unreachable (UnexpectedEOF)"),
    (nats.errors.OutboundBufferLimitError(), "unreachable (OutboundBufferLimitError)"),
])
def test_dependency_faults_are_recognised(exc: BaseException, fault: str) -> None:
    assert dependency_fault(exc) == fault


def test_a_fault_is_found_down_the_exception_chain() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("upsert failed") from inner
    except ValueError as outer:
        assert dependency_fault(outer) == "disk full (ENOSPC)"


@pytest.mark.parametrize("exc", [
    ValueError("vector of the wrong shape"), KeyError("doc_id"), TypeError("bad metadata"),
])
def test_other_errors_are_the_events_own(exc: BaseException) -> None:
    assert dependency_fault(exc) is None
