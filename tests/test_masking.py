"""MLM masking (data/masking.py) on real corpus text, with tolerances derived from the sample size.

Rates and shares are compared with FOUR standard deviations of their sampling law (binomial, or
a bound on it); laws of span lengths with a chi-square test at significance 1e-4. Seeds are fixed.
"""

import pytest
import torch
from scipy import stats

from bench.masking import CollatorTokenizer, corpus_sample
from data.masking import (
    IGNORE_INDEX,
    MASKING_STRATEGIES,
    Masker,
    causal_lm_labels,
    replace_predicted,
    sample_span_tiling,
    span_length_probabilities,
    word_starts,
)
from hpo.config import defaults

RATE = 0.15  # the masked fixture's rate (BERT's), whatever config.yaml's default
SOURCES = ("austen", "wikipedia", "brown", "python_docs")
TOKENS_PER_SOURCE = 64_000
SEQ_LEN = 128
SIGMAS = 4
CHI_SQUARE_SIGNIFICANCE = 1e-4


@pytest.fixture(scope="module")
def corpus_rows(tokenizer, data_dir) -> torch.Tensor:
    """(N, S) packed rows of real text ([CLS] first, eos between documents); every 4th row padded at its tail."""
    rows = corpus_sample(tokenizer, data_dir, SOURCES, TOKENS_PER_SOURCE, SEQ_LEN)
    for row in range(0, len(rows), 4):
        rows[row, 64 + (7 * row) % 64 :] = tokenizer.pad_id
    return rows


@pytest.fixture(scope="module")
def masked(tokenizer, corpus_rows):
    """strategy -> (selection, masked ids, labels) over all rows, one fixed seed each."""
    outputs = {}
    for strategy in MASKING_STRATEGIES:
        masker = Masker(defaults("masking", strategy=strategy, rate=RATE), tokenizer)
        generator = torch.Generator().manual_seed(1234)
        selection = masker.select(corpus_rows, generator)
        tables = masker.tables(corpus_rows.device)
        outputs[strategy] = (
            selection,
            *replace_predicted(corpus_rows, selection, tables, tokenizer.mask_id, masker.config, generator),
        )
    return outputs


def eligible_tokens(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    return ~tokenizer.is_special.take(input_ids)


def word_index_and_lengths(tokenizer, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) word index of each token, and (B, S) token count of each word index (0 past the last word)."""
    masker = Masker(defaults("masking"), tokenizer)
    word_of_token = (word_starts(input_ids, masker.tables(input_ids.device)).cumsum(1) - 1).clamp(min=0)
    lengths = torch.zeros_like(input_ids).scatter_add_(1, word_of_token, eligible_tokens(tokenizer, input_ids).long())
    return word_of_token, lengths


def binomial_tolerance(probability: float, trials: int) -> float:
    return SIGMAS * (probability * (1 - probability) / trials) ** 0.5


def test_word_starts_follow_the_tokenizer(tokenizer):
    token = tokenizer.encoding.encode_single_token
    pieces = ["The", "ory", " world", ".", "\n", "Hello", "ing", " again"]
    ids = {piece: token(piece) for piece in pieces}
    row = [tokenizer.cls_id, ids["The"], ids["ory"], ids[" world"], ids["."], ids["\n"], ids["Hello"]]
    row += [tokenizer.eos_id, ids["ing"], ids[" again"], tokenizer.pad_id]
    mid_word_row = [ids["ory"], ids[" world"], ids["ing"]] + [tokenizer.pad_id] * (len(row) - 3)
    expected = [
        [0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0],  # after [CLS]; space; newline token; after newline; after eos
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # a row may start mid-word: position 0 still starts one
    ]
    masker = Masker(defaults("masking"), tokenizer)
    starts = word_starts(torch.tensor([row, mid_word_row]), masker.tables(torch.device("cpu")))
    assert starts.tolist() == [[bool(flag) for flag in flags] for flags in expected]


@pytest.mark.parametrize("strategy", list(MASKING_STRATEGIES))
def test_labels_and_replacements_are_consistent(tokenizer, corpus_rows, strategy):
    original = corpus_rows.clone()
    masker = Masker(defaults("masking", strategy=strategy), tokenizer)
    masked_ids, labels = masker(corpus_rows, torch.Generator().manual_seed(7))
    predicted = labels != IGNORE_INDEX
    assert torch.equal(corpus_rows, original), "the input was modified in place"
    assert predicted.any()
    assert torch.equal(labels[predicted], original[predicted])
    assert torch.equal(masked_ids[~predicted], original[~predicted])
    assert not tokenizer.is_special.take(original[predicted]).any(), "a special or padding token was predicted"
    randomised = predicted & (masked_ids != original) & (masked_ids != tokenizer.mask_id)
    assert randomised.any()
    assert not tokenizer.is_special.take(masked_ids[randomised]).any(), "a random replacement drew a special token"


def test_random_replacements_draw_from_every_non_special_id(tokenizer):
    replacement_ids = Masker(defaults("masking"), tokenizer).tables(torch.device("cpu")).replacement_ids
    assert not tokenizer.is_special.take(replacement_ids).any()
    assert len(replacement_ids.unique()) == tokenizer.vocab_size - len(tokenizer.special_ids)


def test_same_seed_same_masks(tokenizer, corpus_rows, masked):
    masker = Masker(defaults("masking", strategy="span", rate=RATE), tokenizer)
    first = masker(corpus_rows[:64], torch.Generator().manual_seed(3))
    again = masker(corpus_rows[:64], torch.Generator().manual_seed(3))
    other = masker(corpus_rows[:64], torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
    # __call__ is select followed by replace_predicted, which the shared fixture calls one by one
    _, fixture_ids, fixture_labels = masked["span"]
    called_ids, called_labels = masker(corpus_rows, torch.Generator().manual_seed(1234))
    assert torch.equal(called_ids, fixture_ids) and torch.equal(called_labels, fixture_labels)


def test_standard_rate_is_binomial(tokenizer, corpus_rows, masked):
    selection, _, _ = masked["standard"]
    eligible = eligible_tokens(tokenizer, corpus_rows)
    trials = int(eligible.sum())
    assert trials >= 200_000
    rate = selection.predicted.sum().item() / trials
    assert abs(rate - RATE) <= binomial_tolerance(RATE, trials)


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_word_strategies_meet_the_budget(tokenizer, corpus_rows, masked, strategy):
    """Each row is within one word of rate * its tokens, and the expectation is the budget exactly."""
    selection, _, _ = masked[strategy]
    eligible = eligible_tokens(tokenizer, corpus_rows)
    _, word_lengths = word_index_and_lengths(tokenizer, corpus_rows)
    budget = RATE * eligible.sum(1)
    deviation = selection.predicted.sum(1) - budget  # (B,)
    longest_word = word_lengths.max(1).values
    assert (deviation.abs() < longest_word).all()
    # A row's count is `before` or `before + length` of the crossing word, with mean exactly the budget:
    # its variance is at most length ** 2 / 4 <= longest_word ** 2 / 4.
    standard_deviation = (longest_word.double() ** 2).sum().sqrt() / 2
    assert abs(deviation.sum().item()) <= SIGMAS * standard_deviation.item()


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_no_word_is_partly_predicted(tokenizer, corpus_rows, masked, strategy):
    selection, _, _ = masked[strategy]
    word_of_token, word_lengths = word_index_and_lengths(tokenizer, corpus_rows)
    predicted_per_word = torch.zeros_like(word_lengths).scatter_add_(1, word_of_token, selection.predicted.long())
    assert ((predicted_per_word == 0) | (predicted_per_word == word_lengths)).all()
    assert (predicted_per_word > 0).sum() > 1000


@pytest.mark.parametrize("strategy", list(MASKING_STRATEGIES))
def test_replacement_shares_per_unit(tokenizer, corpus_rows, masked, strategy):
    """80/10/10 decided once per unit (token for standard/dynamic, word, span): shares of units."""
    selection, masked_ids, _ = masked[strategy]
    shown_mask = selection.predicted & (masked_ids == tokenizer.mask_id)
    changed = selection.predicted & (masked_ids != corpus_rows)
    per_unit = {
        name: torch.zeros_like(corpus_rows).scatter_add_(1, selection.unit, flags.long())
        for name, flags in (("predicted", selection.predicted), ("mask", shown_mask), ("changed", changed))
    }
    units = per_unit["predicted"] > 0
    mask_units = per_unit["mask"] > 0
    assert (per_unit["mask"][mask_units] == per_unit["predicted"][mask_units]).all(), "a unit is partly [MASK]"
    # A random replacement equal to the original (1 in 50k) reads as unchanged; far below the tolerance.
    random_units = units & ~mask_units & (per_unit["changed"] > 0)
    count = int(units.sum())
    for share, expected in ((mask_units.sum() / count, 0.8), (random_units.sum() / count, 0.1)):
        assert abs(share.item() - expected) <= binomial_tolerance(expected, count)


def complete_span_lengths(span_of_slot: torch.Tensor, real_slot: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B, S) real words per span for spans that start max_length or more words before the row's end; else 0.

    Whether a span starts there depends only on the spans before it, so its length is an unbiased draw.
    """
    batch_size, slots = span_of_slot.shape
    slot = torch.arange(slots).expand(batch_size, slots)
    length = torch.zeros_like(span_of_slot).scatter_add_(1, span_of_slot, real_slot.long())
    first = torch.full_like(span_of_slot, slots).scatter_reduce_(
        1, span_of_slot, torch.where(real_slot, slot, slots), "amin"
    )
    return torch.where(first <= real_slot.sum(1, keepdim=True) - max_length, length, 0)


def assert_follows_law(lengths: torch.Tensor, probabilities: torch.Tensor) -> None:
    counts = torch.bincount(lengths[lengths > 0], minlength=len(probabilities) + 1)[1:].double()
    assert counts.sum() > 5000
    expected = probabilities.double() / probabilities.double().sum() * counts.sum()
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > CHI_SQUARE_SIGNIFICANCE


def test_span_length_law_is_spanbert():
    probabilities = span_length_probabilities(0.2, 10)
    assert torch.isclose(probabilities.sum(), torch.tensor(1.0))
    mean = (torch.arange(1, 11) * probabilities).sum().item()
    assert abs(mean - 3.797) < 1e-3  # SpanBERT's geometric(0.2) renormalised on 1..10: mean 3.8 words
    tiling = sample_span_tiling(4096, SEQ_LEN, 0.2, 10, generator=torch.Generator().manual_seed(5))
    assert_follows_law(complete_span_lengths(tiling, torch.ones_like(tiling, dtype=torch.bool), 10), probabilities)


def test_predicted_spans_follow_the_law(tokenizer, corpus_rows):
    """Lengths in words (predicted or not) of the spans with predicted tokens, in rows of 1024 tokens.

    A budget in a row of fixed size favours longer spans by about (span tokens / row tokens): at
    S = 128 the mean is ~0.07 words long (2.3M spans measured), at S = 1024 below this sample's
    resolution. The sampled law itself is tested exactly in test_span_length_law_is_spanbert.
    """
    rows = corpus_rows[: len(corpus_rows) // 8 * 8].reshape(-1, 1024)
    masker = Masker(defaults("masking", strategy="span"), tokenizer)
    selection = masker.select(rows, torch.Generator().manual_seed(21))
    starts = word_starts(rows, masker.tables(rows.device))
    word_of_token = (starts.cumsum(1) - 1).clamp(min=0)
    batch_size, slots = rows.shape
    word_unit = torch.zeros(batch_size, slots + 1, dtype=torch.long)  # last column collects the non-start tokens
    word_unit.scatter_(1, torch.where(starts, word_of_token, slots), selection.unit)
    real_word = torch.arange(slots) < starts.sum(1, keepdim=True)
    has_predicted = torch.zeros_like(rows).scatter_add_(1, selection.unit, selection.predicted.long()) > 0
    lengths = complete_span_lengths(word_unit[:, :slots], real_word, 10)
    assert_follows_law(torch.where(has_predicted, lengths, 0), span_length_probabilities(0.2, 10))


def test_dynamic_rates_spread_over_the_range(tokenizer, corpus_rows):
    config = defaults("masking", strategy="dynamic")
    masker = Masker(config, tokenizer)
    generator = torch.Generator().manual_seed(11)
    rates = []
    for batch in corpus_rows.split(32):
        _, labels = masker(batch, generator)
        trials = int(eligible_tokens(tokenizer, batch).sum())
        rate = (labels != IGNORE_INDEX).sum().item() / trials
        slack = binomial_tolerance(config.max_rate, trials)
        assert config.min_rate - slack <= rate <= config.max_rate + slack
        rates.append(rate)
    # With 60 uniform draws, missing a quarter of the range at one end has probability 0.75 ** 60 ~ 3e-8.
    quarter = (config.max_rate - config.min_rate) / 4
    assert len(rates) >= 60
    assert min(rates) < config.min_rate + quarter and max(rates) > config.max_rate - quarter


def test_standard_agrees_with_hugging_face(tokenizer, corpus_rows, masked):
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(
        CollatorTokenizer(tokenizer), mlm_probability=RATE, mask_replace_prob=0.8, random_replace_prob=0.1
    )
    special = tokenizer.is_special.take(corpus_rows)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs_ids, theirs_labels = collator.torch_mask_tokens(corpus_rows.clone(), special_tokens_mask=special)
    _, ours_ids, ours_labels = masked["standard"]
    trials = int((~special).sum())

    def shares(masked_ids, labels):
        predicted = labels != IGNORE_INDEX
        count = int(predicted.sum())
        shown_mask = (predicted & (masked_ids == tokenizer.mask_id)).sum().item()
        unchanged = (predicted & (masked_ids == corpus_rows)).sum().item()
        return count, {"predicted": count / trials, "mask": shown_mask / count, "unchanged": unchanged / count}

    ours_count, ours = shares(ours_ids, ours_labels)
    theirs_count, theirs = shares(theirs_ids, theirs_labels)
    for name, samples in (("predicted", (trials, trials)), ("mask", (ours_count, theirs_count))):
        pooled = (ours[name] + theirs[name]) / 2
        tolerance = SIGMAS * (pooled * (1 - pooled) * (1 / samples[0] + 1 / samples[1])) ** 0.5
        assert abs(ours[name] - theirs[name]) <= tolerance, name
    pooled = (ours["unchanged"] + theirs["unchanged"]) / 2
    tolerance = SIGMAS * (pooled * (1 - pooled) * (1 / ours_count + 1 / theirs_count)) ** 0.5
    assert abs(ours["unchanged"] - theirs["unchanged"]) <= tolerance


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "spam"}, "masking.strategy = 'spam'; expected one of standard, dynamic, span, whole_word"),
        ({"rate": 1.5}, "masking.rate = 1.5; expected 0 < rate < 1"),
        ({"rate": 0.0}, "masking.rate = 0.0"),
        ({"min_rate": 0.3, "max_rate": 0.2}, "masking.min_rate = 0.3, masking.max_rate = 0.2"),
        ({"mask_token_fraction": -0.1}, "masking.mask_token_fraction = -0.1; expected 0 <= fraction <= 1"),
        ({"random_token_fraction": 0.3}, "expected a sum <= 1"),
        ({"span_geometric_p": 0.0}, "masking.span_geometric_p = 0.0; expected 0 < p < 1"),
        ({"span_geometric_p": 1.0}, "masking.span_geometric_p = 1.0; expected 0 < p < 1"),
        ({"span_max_length": 0}, "masking.span_max_length = 0; expected an integer >= 1"),
        ({"span_max_length": 2.5}, "masking.span_max_length = 2.5"),
    ],
)
def test_invalid_config_names_field_value_and_range(tokenizer, overrides, message):
    config = defaults("masking", **overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.").replace("+", r"\+")):
        config.validate()
    with pytest.raises(ValueError, match="masking"):
        Masker(config, tokenizer)


def test_default_config_is_valid():
    defaults("masking").validate()


def test_masker_rejects_a_batch_of_the_wrong_shape(tokenizer):
    with pytest.raises(ValueError, match=r"shape \(5,\) and dtype torch.int64; expected \(B, S\) int64"):
        Masker(defaults("masking"), tokenizer)(torch.zeros(5, dtype=torch.int64))


def test_causal_lm_labels_are_the_next_token(tokenizer):
    pad, eos = tokenizer.pad_id, tokenizer.eos_id
    input_ids = torch.tensor([[11, 12, eos, 13, pad, pad], [21, 22, 23, 24, 25, 26]])
    same_ids, labels = causal_lm_labels(input_ids, pad)
    assert same_ids is input_ids
    assert labels.tolist() == [[12, eos, 13, -100, -100, -100], [22, 23, 24, 25, 26, -100]]


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", list(MASKING_STRATEGIES))
def test_masking_runs_on_the_batch_device(tokenizer, corpus_rows, strategy):
    rows = corpus_rows.cuda()
    masker = Masker(defaults("masking", strategy=strategy), tokenizer)
    masked_ids, labels = masker(rows, torch.Generator("cuda").manual_seed(0))
    assert masked_ids.is_cuda and labels.is_cuda
    predicted = labels != IGNORE_INDEX
    assert torch.equal(labels[predicted], rows[predicted]) and torch.equal(masked_ids[~predicted], rows[~predicted])
    assert not tokenizer.is_special.cuda().take(rows[predicted]).any()
    trials = int(eligible_tokens(tokenizer, corpus_rows).sum())
    rate = predicted.sum().item() / trials
    assert abs(rate - 0.15) <= binomial_tolerance(0.2, trials) + (0.05 if strategy == "dynamic" else 0)
