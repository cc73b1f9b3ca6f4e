"""The retrieval graph's state: what each step adds to the turn."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypedDict

import numpy as np

from agents.retrieval.contextualize import Rewrite
from agents.retrieval.decide import Verdict
from agents.retrieval.hybrid import DocScore
from agents.retrieval.turn import AnswerFinal
from ingest.kb import Hit

__all__ = ["Mode", "RetrievalState"]

#: "turn": answer and stop; "prefetch": only prefetch for a finished turn; "full": both.
Mode = Literal["turn", "prefetch", "full"]


class RetrievalState(TypedDict, total=False):
    """The state of one run of the retrieval graph (the turn itself is the runtime context)."""

    #: Which steps run.
    mode: Mode
    #: contextualize: the self-contained query and how it was made.
    rewrite: Rewrite
    #: retrieve: the query's unit embedding.
    vector: np.ndarray
    #: retrieve: documents ranked by fused score.
    ranked: list[DocScore]
    #: retrieve: the chunks, best first.
    hits: list[Hit]
    #: retrieve: the index's as-of time (the cache's, on a prefetch hit).
    as_of: datetime | None
    #: retrieve: answered from the session's prefetch cache.
    prefetch_hit: bool
    #: decide: the decision, confidence and documents.
    verdict: Verdict
    #: decide: why a person should take over, if so.
    escalate_reason: str | None
    #: generate: the finished turn (input of prefetch).
    final: AnswerFinal
    #: prefetch: documents loaded into the session's cache.
    prefetched: list[str]
