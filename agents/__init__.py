"""The two agents of a turn and what they share.

::

    agents/
    ├── ack.py          AckAgent: a specific acknowledgment within milliseconds (no facts)
    ├── intents.py      IntentCatalog: configs/intents.yaml with example embeddings
    ├── escalation.py   EscalationFlag, detect_flags, EscalationPolicy
    ├── text.py         keyword tokens, sentences, key noun phrases
    ├── smalltalk.py    "thanks!", "ok bye": answered without searching
    └── retrieval/      RetrievalAgent: a LangGraph StateGraph that contextualizes the turn,
                        retrieves (dense + BM25 tie-breaks, ACL, freshness), decides
                        (answer, clarify, fallback), streams a grounded answer with citations
                        and prefetches the likely next documents into the session's cache

Agents know nothing of channels or the gateway: they take a turn (text, history, the
customer's groups, the session's cache) and return text and decisions. Long-lived
dependencies come in by constructor; per-turn ones travel in the turn.
"""
