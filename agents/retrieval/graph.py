"""The retrieval agent's LangGraph ``StateGraph``: five nodes, one path per mode.

::

    START ─┬─(turn, full)─► contextualize ─► retrieve ─► decide ─► generate ─┬─(turn)─► END
           │                                                                 └─(full)─┐
           └─(prefetch)───────────────────────────────────────────────────► prefetch ─┴► END

Each node is an object holding its long-lived dependencies (built once by the agent);
the turn (text, history, groups, the session's cache) is LangGraph's runtime context,
and answer pieces leave through the custom stream (``stream_mode="custom"``).
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agents.retrieval.state import RetrievalState
from agents.retrieval.turn import TurnContext

__all__ = ["NODES", "build_graph"]

#: The node names, in the order a turn runs them.
NODES = ("contextualize", "retrieve", "decide", "generate", "prefetch")


def _entry(state: RetrievalState) -> str:
    return "prefetch" if state.get("mode") == "prefetch" else "contextualize"


def _after_generate(state: RetrievalState) -> str:
    return "prefetch" if state.get("mode") == "full" else END


def build_graph(*, contextualize: Any, retrieve: Any, decide: Any, generate: Any,
                prefetch: Any) -> CompiledStateGraph:
    """Compile the graph from its five node callables."""
    graph = StateGraph(RetrievalState, context_schema=TurnContext)
    graph.add_node("contextualize", contextualize)
    graph.add_node("retrieve", retrieve)
    graph.add_node("decide", decide)
    graph.add_node("generate", generate)
    graph.add_node("prefetch", prefetch)
    graph.add_conditional_edges(START, _entry, ["contextualize", "prefetch"])
    graph.add_edge("contextualize", "retrieve")
    graph.add_edge("retrieve", "decide")
    graph.add_edge("decide", "generate")
    graph.add_conditional_edges("generate", _after_generate, ["prefetch", END])
    graph.add_edge("prefetch", END)
    return graph.compile(name="retrieval")
