"""Next-sentence pairs (data/pairs.py) on real corpus rows, and the encoder's NSP head."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.masking import corpus_sample
from data.pairs import IS_NEXT, NOT_NEXT, next_sentence_pairs
from hpo.config import defaults
from model.bert import Encoder

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
SEQ_LEN = 128
BATCH = 32
MIN_SEGMENT = 8


@pytest.fixture(scope="module")
def rows(tokenizer, data_dir) -> torch.Tensor:
    return corpus_sample(tokenizer, data_dir, ("austen", "wikipedia", "brown"), 64_000, SEQ_LEN)


@pytest.fixture(scope="module")
def pairs(rows, tokenizer):
    """(source batch, pairs) for every batch of BATCH rows, one seeded generator."""
    generator = torch.Generator().manual_seed(7)
    batches = [rows[start : start + BATCH] for start in range(0, len(rows) - BATCH + 1, BATCH)]
    return [
        (batch, next_sentence_pairs(batch, tokenizer.sep_id, generator, min_segment=MIN_SEGMENT)) for batch in batches
    ]


def split(pair_ids: torch.Tensor, sep_id: int) -> tuple[int, int]:
    """Positions of the two [SEP]s of one row."""
    first, second = torch.nonzero(pair_ids == sep_id).squeeze(1).tolist()
    return first, second


def test_layout_is_cls_a_sep_b_sep_with_token_types(pairs, tokenizer):
    for batch, made in pairs:
        assert made.input_ids.shape == batch.shape
        assert (made.input_ids[:, 0] == tokenizer.cls_id).all()
        for ids, types in zip(made.input_ids, made.token_types, strict=True):
            first, second = split(ids, tokenizer.sep_id)
            assert second == SEQ_LEN - 1
            assert MIN_SEGMENT <= first - 1 and second - first - 1 >= MIN_SEGMENT
            assert (types[: first + 1] == 0).all() and (types[first + 1 :] == 1).all()


def test_is_next_continues_the_stream_and_not_next_comes_from_another_row(pairs, tokenizer):
    for batch, made in pairs:
        for index, (ids, label) in enumerate(zip(made.input_ids, made.labels, strict=True)):
            first, _ = split(ids, tokenizer.sep_id)
            segment_a, segment_b = ids[1:first], ids[first + 1 : -1]
            assert torch.equal(segment_a, batch[index, 1:first])
            own_continuation = batch[index, first : SEQ_LEN - 2]
            if label == IS_NEXT:
                assert torch.equal(segment_b, own_continuation)
            else:
                assert label == NOT_NEXT
                others = [row for row in range(len(batch)) if row != index]
                assert any(torch.equal(segment_b, batch[row, first : SEQ_LEN - 2]) for row in others)
                assert not torch.equal(segment_b, own_continuation)


def test_half_the_pairs_are_not_next_within_four_standard_deviations(pairs):
    labels = torch.cat([made.labels for _, made in pairs])
    n = len(labels)
    share = (labels == NOT_NEXT).float().mean().item()
    assert n >= 1000
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n)


def test_cut_points_spread_over_their_range(pairs, tokenizer):
    cuts = torch.tensor([split(ids, tokenizer.sep_id)[0] for _, made in pairs for ids in made.input_ids])
    low, high = MIN_SEGMENT + 1, SEQ_LEN - 2 - MIN_SEGMENT  # first [SEP] lands at cut + 1
    assert cuts.min() == low and cuts.max() == high
    # Uniform on [low, high]: the mean is within 4 standard errors of the midpoint.
    spread = (high - low + 1) ** 2 - 1
    assert abs(cuts.float().mean().item() - (low + high) / 2) < 4 * math.sqrt(spread / 12 / len(cuts))


def test_seeded_generator_makes_the_same_pairs(rows, tokenizer):
    batch = rows[:BATCH]
    one = next_sentence_pairs(batch, tokenizer.sep_id, torch.Generator().manual_seed(3))
    two = next_sentence_pairs(batch, tokenizer.sep_id, torch.Generator().manual_seed(3))
    assert torch.equal(one.input_ids, two.input_ids) and torch.equal(one.labels, two.labels)


def test_too_short_rows_or_single_row_batches_are_refused(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        next_sentence_pairs(torch.zeros(4, 16, dtype=torch.long), tokenizer.sep_id)
    with pytest.raises(ValueError, match="at least 2 rows"):
        next_sentence_pairs(torch.zeros(1, 64, dtype=torch.long), tokenizer.sep_id)


def test_encoder_loss_adds_the_next_sentence_cross_entropy(rows, tokenizer):
    torch.manual_seed(0)
    model = Encoder(
        defaults("model", hidden_size=32, num_layers=1, num_heads=2, dropout=0.0), tokenizer.vocab_size, True
    )
    made = next_sentence_pairs(rows[:8], tokenizer.sep_id, torch.Generator().manual_seed(0))
    labels = torch.full_like(made.input_ids, -100)
    labels[:, 5] = made.input_ids[:, 5]
    padding = torch.ones_like(made.input_ids, dtype=torch.bool)
    total = model.prediction_loss(made.input_ids, labels, padding, False, made.token_types, made.labels)
    masked_only = model.prediction_loss(made.input_ids, labels, padding, False, made.token_types)
    hidden = model.encode(made.input_ids, padding, False, made.token_types)
    expected = masked_only + F.cross_entropy(model.next_sentence_head(model.pool(hidden)), made.labels)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert model.segment_embedding.weight.grad.abs().sum() > 0
    assert model.next_sentence_head.weight.grad.abs().sum() > 0


def test_encoder_without_next_sentence_refuses_its_labels(rows, tokenizer):
    model = Encoder(defaults("model", hidden_size=32, num_layers=1, num_heads=2), tokenizer.vocab_size)
    assert model.segment_embedding is None and model.next_sentence_head is None
    ids = rows[:2]
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    with pytest.raises(ValueError, match="next_sentence=True"):
        model.prediction_loss(ids, labels, torch.ones_like(ids, dtype=torch.bool), False, None, torch.zeros(2).long())


def test_pretraining_with_next_sentence_prediction_trains_its_head(data_dir, tokenizer, tmp_path):
    from data.corpus import load_corpus
    from hpo.config import load_config
    from training.pretrain import Pretrainer

    overrides = [
        "train.batch_size=16",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.dropout=0.0",
        "data.sources=[austen]",
        f"data.cache_dir={tmp_path}",
    ]
    plain_config = load_config(CONFIG, overrides)
    nsp_config = load_config(CONFIG, [*overrides, "train.nsp=true"])
    corpus = load_corpus(data_dir, nsp_config.data, tokenizer)
    plain = Pretrainer(plain_config, corpus, tokenizer, torch.device("cpu"))
    trainer = Pretrainer(nsp_config, corpus, tokenizer, torch.device("cpu"))
    head_before = trainer.model.next_sentence_head.weight.detach().clone()
    segments_before = trainer.model.segment_embedding.weight.detach().clone()
    losses = [trainer.train_step().loss for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    # An untrained two-way classifier adds about ln 2 to the masked-LM loss of the same rows.
    assert abs(losses[0] - plain.train_step().loss - math.log(2)) < 0.3
    assert not torch.equal(trainer.model.next_sentence_head.weight, head_before)
    assert not torch.equal(trainer.model.segment_embedding.weight, segments_before)


def test_causal_runs_ignore_next_sentence_prediction():
    from hpo.config import load_config

    config = load_config(CONFIG, ["train.nsp=true", "train.objective=clm"])
    assert not config.train.next_sentence
    assert load_config(CONFIG, ["train.nsp=true"]).train.next_sentence
