"""LiveKit: callers in LiveKit rooms, answered by the dual-agent router (issue #8).

- :mod:`channels.livekit.plugins` — the voice channel's speech parts as LiveKit plugins
  (``DuetSTT``: faster-whisper behind ``stt.STT._recognize_impl``, made streaming by
  ``stt.StreamAdapter`` with the Silero VAD; ``DuetTTS``: Piper behind a
  ``tts.ChunkedStream``, acknowledgments from the phrase cache) and ``RouterLLM``, whose
  replies come from a ``ChatService`` conversation (acknowledgment first, then the
  grounded answer), not from a separate LLM loop;
- :mod:`channels.livekit.worker` — ``duet voice-worker``: an Agents worker that joins
  rooms with an ``AgentSession`` over those three.

Nothing here imports LiveKit at gateway start-up: the gateway serves no LiveKit route.
"""
