import gzip

import numpy as np
import pytest
import torch

from data.corpus import load_corpus, read_documents
from data.files_location import resolve_data_dir
from hpo.config import defaults


@pytest.fixture
def tiny_data_dir(tmp_path, data_dir):
    """A data folder whose corpus is three short documents per source file we use."""
    (tmp_path / "corpus").mkdir()
    for name in ("ag_news", "tokenizers"):
        (tmp_path / name).symlink_to(data_dir / name)
    documents = [f"Document number {i} says hello to the packed world." for i in range(30)]
    with gzip.open(tmp_path / "corpus" / "wikipedia.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n\n".join(documents) + "\n\n")
    return tmp_path


def test_packing_joins_documents_with_eos_and_starts_rows_with_cls(tiny_data_dir, tokenizer, tmp_path):
    config = defaults("data", sources=["wikipedia"], seq_len=16, validation_every=10, cache_dir=str(tmp_path / "c"))
    corpus = load_corpus(tiny_data_dir, config, tokenizer)
    documents = read_documents(tiny_data_dir / "corpus" / "wikipedia.txt.gz")
    train_docs = [d for i, d in enumerate(documents) if i % 10]
    stream = []
    for document in train_docs:
        stream += tokenizer.encode(document) + [tokenizer.eos_id]
    rows = len(stream) // 15
    assert corpus.train.shape == (rows, 16)
    assert (corpus.train[:, 0] == tokenizer.cls_id).all()
    np.testing.assert_array_equal(corpus.train[:, 1:].reshape(-1), stream[: rows * 15])
    validation_stream = sum((tokenizer.encode(d) + [tokenizer.eos_id] for d in documents[::10]), [])
    assert corpus.validation.shape == (len(validation_stream) // 15, 16)


def test_cache_is_reused_and_keyed_by_settings(tiny_data_dir, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    config = defaults("data", sources=["wikipedia"], seq_len=16, cache_dir=str(cache))
    load_corpus(tiny_data_dir, config, tokenizer)
    first = sorted(p.name for p in cache.glob("*.u16"))
    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*.u16")}
    load_corpus(tiny_data_dir, config, tokenizer)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.u16")} == mtimes  # not rebuilt
    load_corpus(tiny_data_dir, defaults("data", sources=["wikipedia"], seq_len=32, cache_dir=str(cache)), tokenizer)
    assert len(sorted(p.name for p in cache.glob("*.u16"))) == 2 * len(first)


def test_batches_are_deterministic_and_cover_an_epoch(tiny_data_dir, tokenizer, tmp_path):
    config = defaults("data", sources=["wikipedia"], seq_len=16, cache_dir=str(tmp_path / "c"))
    corpus = load_corpus(tiny_data_dir, config, tokenizer)
    rows = len(corpus.train)
    assert len({tuple(row) for row in corpus.train.tolist()}) == rows  # rows are distinct here
    batches = [corpus.batch(step, 4, seed=3) for step in range(rows // 4)]
    seen = {tuple(row) for batch in batches for row in batch.tolist()}
    assert len(seen) == (rows // 4) * 4  # one epoch: no row drawn twice
    assert (corpus.batch(2, 4, seed=3) == batches[2]).all()
    assert batches[0].dtype == torch.int64
    assert not all((corpus.batch(s, 4, seed=4) == batches[s]).all() for s in range(len(batches)))
    assert (load_corpus(tiny_data_dir, config, tokenizer).batch(2, 4, seed=3) == batches[2]).all()  # any copy


def test_missing_corpus_file_is_named(tiny_data_dir, tokenizer, tmp_path):
    config = defaults("data", sources=["brown"], cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="brown.txt.gz"):
        load_corpus(tiny_data_dir, config, tokenizer)


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ag_news/train.csv is missing .*HPO_DATA_DIR"):
        resolve_data_dir()
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        resolve_data_dir(str(tmp_path / "absent"))
    monkeypatch.delenv("HPO_DATA_DIR")
    assert (resolve_data_dir() / "ag_news" / "train.csv").is_file()
