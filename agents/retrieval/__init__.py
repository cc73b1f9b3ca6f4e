"""The retrieval agent: contextualize → retrieve → decide → generate (streamed) → prefetch.

The gateway builds one :class:`RetrievalAgent` per process and, per session, one
:class:`PrefetchCache`; each turn is a :class:`TurnContext`. ``agent.stream(turn)``
yields :class:`AnswerDelta` pieces in order and then exactly one :class:`AnswerFinal`;
``agent.prefetch(turn, final)`` is scheduled after the turn.
"""

from agents.retrieval.agent import RetrievalAgent
from agents.retrieval.cache import PrefetchCache, SessionTopic
from agents.retrieval.contextualize import ContextPolicy, Rewrite
from agents.retrieval.decide import DecisionPolicy
from agents.retrieval.generators import ExtractiveGenerator, Generator, build_generator
from agents.retrieval.graph import NODES, build_graph
from agents.retrieval.hybrid import FusionWeights, KeywordIndex
from agents.retrieval.journeys import Journeys
from agents.retrieval.llm import OpenAIChatGenerator
from agents.retrieval.turn import AnswerDelta, AnswerFinal, Citation, Decision, TurnContext

__all__ = [
    "NODES",
    "AnswerDelta",
    "AnswerFinal",
    "Citation",
    "ContextPolicy",
    "Decision",
    "DecisionPolicy",
    "ExtractiveGenerator",
    "FusionWeights",
    "Generator",
    "Journeys",
    "KeywordIndex",
    "OpenAIChatGenerator",
    "PrefetchCache",
    "Rewrite",
    "RetrievalAgent",
    "SessionTopic",
    "TurnContext",
    "build_generator",
    "build_graph",
]
