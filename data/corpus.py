"""Pretraining text -> GPT-2 tokens -> packed fixed-length sequences, cached as uint16 memmaps.

Each sequence is [CLS] followed by seq_len - 1 tokens of a stream in which documents are
joined by <|endoftext|>. Every `validation_every`-th document goes to a held-out stream used
for the MLM validation loss. The token files are cached under a key made of the source files'
contents, the tokenizer's ranks file and the packing settings, so only the first run tokenizes.
"""

import fcntl
import gzip
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from data.config import CorpusConfig
from data.files_location import DataError
from data.machine import usable_cpus
from data.progress import progress_bar
from data.tokenizer import Tokenizer

CACHE_FORMAT_VERSION = 1
ENCODE_CHUNK_DOCUMENTS = 2000  # documents per batch handed to the tokenizer's threads


def read_documents(path: Path) -> list[str]:
    """Documents of one corpus file: gzip UTF-8, separated by one blank line."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise OSError(f"cannot read corpus file {path}: {error}") from error
    return [document for document in text.split("\n\n") if document.strip()]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pack(streams: list[list[int]], seq_len: int, cls_id: int, eos_id: int) -> np.ndarray:
    """Join token lists with eos, cut into rows of seq_len - 1, prefix each row with cls."""
    body = seq_len - 1
    total = sum(len(tokens) + 1 for tokens in streams)
    flat = np.empty(total, dtype=np.uint16)
    position = 0
    for tokens in streams:
        flat[position : position + len(tokens)] = tokens
        flat[position + len(tokens)] = eos_id
        position += len(tokens) + 1
    rows = total // body
    packed = np.empty((rows, seq_len), dtype=np.uint16)
    packed[:, 0] = cls_id
    packed[:, 1:] = flat[: rows * body].reshape(rows, body)
    return packed


class PackedCorpus:
    """Packed train and validation sequences; batch(step, batch_size, seed) is a pure function of its arguments,
    so runs with the same seed see the same data in the same order, whatever else differs."""

    def __init__(self, train: np.ndarray, validation: np.ndarray):
        self.train = train  # (N, S) uint16
        self.validation = validation  # (M, S) uint16
        self._orders: dict[tuple[int, int], np.ndarray] = {}  # the current (seed, epoch)'s row order
        self._counts: np.ndarray | None = None

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """(V,) int64 occurrences of each id in the training rows (computed once, ~0.1 s)."""
        if self._counts is None or len(self._counts) != vocab_size:
            self._counts = np.bincount(np.asarray(self.train).ravel(), minlength=vocab_size).astype(np.int64)
        return self._counts

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        if (seed, epoch) not in self._orders:
            self._orders = {(seed, epoch): np.random.default_rng([seed, epoch]).permutation(len(self.train))}
        return self._orders[seed, epoch]

    def batch(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """(B, S) int64 training batch number `step` of the data order `seed`: epochs are seeded permutations
        of the rows."""
        global_index = np.arange(step * batch_size, (step + 1) * batch_size)
        epochs, positions = np.divmod(global_index, len(self.train))
        rows = np.array([self._epoch_order(seed, e)[p] for e, p in zip(epochs, positions, strict=True)])
        return torch.from_numpy(self.train[np.sort(rows)].astype(np.int64))

    def validation_batches(self, batch_size: int, max_sequences: int):
        """Fixed held-out batches (the first max_sequences rows), for a comparable MLM loss."""
        rows = self.validation[:max_sequences]
        for start in range(0, len(rows), batch_size):
            yield torch.from_numpy(rows[start : start + batch_size].astype(np.int64))


def load_corpus(data_dir: Path, config: CorpusConfig, tokenizer: Tokenizer) -> PackedCorpus:
    """Packed corpus from the cache, tokenizing and caching first if needed (safe across processes)."""
    config.validate()
    paths = [Path(data_dir) / "corpus" / f"{name}.txt.gz" for name in sorted(config.sources)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} not found; check --data_dir or data.sources")
    key_material = {
        "version": CACHE_FORMAT_VERSION,
        "sources": {path.name: _file_digest(path) for path in paths},
        "tokenizer": _file_digest(tokenizer.ranks_file),
        "vocab_size": tokenizer.vocab_size,
        "packing": {k: v for k, v in asdict(config).items() if k not in ("sources", "cache_dir")},
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(config.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    train_path, validation_path = cache_dir / f"{key}.train.u16", cache_dir / f"{key}.validation.u16"
    meta_path = cache_dir / f"{key}.json"
    # One process tokenizes; the others wait on the lock and then read its files.
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not meta_path.is_file():
            _build_cache(paths, config, tokenizer, train_path, validation_path, meta_path, key_material)
    meta = json.loads(meta_path.read_text())
    if meta["train_rows"] == 0:
        raise DataError(
            f"corpus files {', '.join(path.name for path in paths)} in {Path(data_dir) / 'corpus'} hold fewer than "
            f"data.seq_len = {config.seq_len} tokens; expected text to pretrain on"
        )
    return PackedCorpus(
        _open_rows(train_path, meta["train_rows"], config.seq_len),
        _open_rows(validation_path, meta["validation_rows"], config.seq_len),
    )


def _open_rows(path: Path, rows: int, seq_len: int) -> np.ndarray:
    if rows == 0:  # numpy cannot map an empty file
        return np.empty((0, seq_len), dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(rows, seq_len))


def _encode(tokenizer: Tokenizer, documents: list[str], threads: int, bar) -> list[list[int]]:
    """Token ids of each document, in chunks so that the progress bar moves."""
    tokens: list[list[int]] = []
    for start in range(0, len(documents), ENCODE_CHUNK_DOCUMENTS):
        chunk = documents[start : start + ENCODE_CHUNK_DOCUMENTS]
        tokens += tokenizer.encode_batch(chunk, threads)
        bar.update(len(chunk))
    return tokens


def _build_cache(paths, config, tokenizer, train_path, validation_path, meta_path, key_material):
    train_docs, validation_docs = [], []
    for path in paths:
        documents = read_documents(path)
        validation_docs += documents[:: config.validation_every]
        train_docs += [d for i, d in enumerate(documents) if i % config.validation_every]
    threads = usable_cpus()
    with progress_bar(len(train_docs) + len(validation_docs), "tokenising the corpus", unit="doc") as bar:
        train_tokens = _encode(tokenizer, train_docs, threads, bar)
        validation_tokens = _encode(tokenizer, validation_docs, threads, bar)
    train = _pack(train_tokens, config.seq_len, tokenizer.cls_id, tokenizer.eos_id)
    validation = _pack(validation_tokens, config.seq_len, tokenizer.cls_id, tokenizer.eos_id)
    for array, path in ((train, train_path), (validation, validation_path)):
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        array.tofile(temporary)
        os.replace(temporary, path)
    meta = {**key_material, "train_rows": len(train), "validation_rows": len(validation)}
    temporary = meta_path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(meta, indent=1))
    os.replace(temporary, meta_path)
