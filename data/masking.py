"""Masked-language-model inputs: which tokens to predict, and what the model sees in their place.

A strategy (ARCHITECTURE.md, "The masking strategies") is one entry of MASKING_STRATEGIES: a function
that chooses the predicted tokens and the unit (token, word or span) each token belongs to. One
function then applies the 80/10/10 replacement with one decision per unit. Everything is tensor
code on the batch's device: no Python loop over tokens, sequences or rounds.

Budget of `whole_word` and `span`: units are taken in random order until `rate` of the row's
non-special tokens are chosen. The word that crosses the budget is kept with probability
(budget left / its length), so a row's expected count is exactly the budget and its actual count
is off by less than one word (inside a span: the crossing span is cut after whole words, where
SpanBERT cuts it mid-word). `standard` and `dynamic` choose each token independently.

Spans tile each row's words with i.i.d. lengths from span_length_probabilities (SpanBERT's law,
mean 3.8 words). A span may run across a special token (a document's eos), which is never
predicted. Drawing until a budget in a row of fixed size favours longer spans (and words) a
little, by about (unit tokens / row tokens): +0.07 words on the mean span at S = 128.
"""

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from data.config import MaskingConfig
from data.tokenizer import Tokenizer

IGNORE_INDEX = -100  # label of a position with nothing to predict (cross_entropy's ignore_index)


@dataclass(frozen=True)
class VocabularyTables:
    """Per-vocabulary lookups, all on one device."""

    starts_word: torch.Tensor  # (V,) bool: the token's text begins with whitespace
    breaks_word: torch.Tensor  # (V,) bool: ends a line or is special, so the next token begins a word
    is_special: torch.Tensor  # (V,) bool: never predicted, never a word
    replacement_ids: torch.Tensor  # (R,) int64: the non-special ids a random replacement draws from

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "VocabularyTables":
        return cls(
            starts_word=tokenizer.starts_with_space & ~tokenizer.is_special,
            breaks_word=tokenizer.ends_with_newline | tokenizer.is_special,
            is_special=tokenizer.is_special,
            replacement_ids=torch.nonzero(~tokenizer.is_special).squeeze(1),
        )

    def to(self, device: torch.device) -> "VocabularyTables":
        return VocabularyTables(**{field.name: getattr(self, field.name).to(device) for field in fields(self)})


@dataclass
class Selection:
    """The tokens to predict, and the unit whose 80/10/10 decision each token shares."""

    predicted: torch.Tensor  # (B, S) bool
    unit: torch.Tensor  # (B, S) int64 in [0, S): the token's position, word or span index in its row


def lookup(table: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """table[input_ids] by index_select: `take` splits even a small batch across threads, which
    stalls for milliseconds when the CPU cores are oversubscribed (several study workers)."""
    return table.index_select(0, input_ids.reshape(-1)).view(input_ids.shape)


def word_starts(input_ids: torch.Tensor, tables: VocabularyTables) -> torch.Tensor:
    """(B, S) bool: the non-special tokens that begin a word (whitespace, line or special before, or row start)."""
    after_break = F.pad(lookup(tables.breaks_word, input_ids[:, :-1]), (1, 0), value=True)  # (B, S)
    return ~lookup(tables.is_special, input_ids) & (lookup(tables.starts_word, input_ids) | after_break)


def span_length_probabilities(p: float, max_length: int, device: torch.device | None = None) -> torch.Tensor:
    """(max_length,) SpanBERT's law of span lengths 1..max_length in words: Geometric(p), renormalised."""
    lengths = torch.arange(max_length, device=device, dtype=torch.float32)
    weights = p * (1 - p) ** lengths
    return weights / weights.sum()


def sample_span_tiling(
    batch_size: int,
    word_slots: int,
    p: float,
    max_length: int,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, W) span index of each word slot: the slots cut into consecutive spans with i.i.d. lengths.

    Geometric(p) modulo max_length is Geometric(p) conditioned on <= max_length: SpanBERT's law.
    """
    geometric = torch.empty(batch_size, word_slots, dtype=torch.long, device=device).geometric_(p, generator=generator)
    lengths = (geometric - 1) % max_length + 1  # (B, W)
    first_slots = (lengths.cumsum(1) - lengths).clamp(max=word_slots)  # (B, W); past the row -> spare column
    is_first = torch.zeros(batch_size, word_slots + 1, dtype=torch.bool, device=device)
    is_first.scatter_(1, first_slots, True)
    return is_first[:, :word_slots].cumsum(1) - 1


def select_standard(
    input_ids: torch.Tensor, tables: VocabularyTables, config: MaskingConfig, generator: torch.Generator | None
) -> Selection:
    """Each non-special token independently with probability `rate`."""
    return _select_tokens(input_ids, tables, config.rate, generator)


def select_dynamic(
    input_ids: torch.Tensor, tables: VocabularyTables, config: MaskingConfig, generator: torch.Generator | None
) -> Selection:
    """As standard, with the rate drawn for the whole batch uniformly in [min_rate, max_rate]."""
    draw = torch.rand((), device=input_ids.device, generator=generator)
    rate = config.min_rate + (config.max_rate - config.min_rate) * draw  # stays a tensor: no device sync
    return _select_tokens(input_ids, tables, rate, generator)


def select_whole_word(
    input_ids: torch.Tensor, tables: VocabularyTables, config: MaskingConfig, generator: torch.Generator | None
) -> Selection:
    """Whole words in random order until `rate` of the tokens; each word is its own unit."""
    batch_size, seq_len = input_ids.shape
    span_of_word = torch.arange(seq_len, device=input_ids.device).expand(batch_size, seq_len)
    return _select_word_spans(input_ids, tables, config.rate, span_of_word, generator)


def select_span(
    input_ids: torch.Tensor, tables: VocabularyTables, config: MaskingConfig, generator: torch.Generator | None
) -> Selection:
    """SpanBERT: spans of whole words, lengths from span_length_probabilities, in random order until `rate`."""
    batch_size, seq_len = input_ids.shape
    span_of_word = sample_span_tiling(
        batch_size, seq_len, config.span_geometric_p, config.span_max_length, input_ids.device, generator
    )
    return _select_word_spans(input_ids, tables, config.rate, span_of_word, generator)


SelectionFunction = Callable[[torch.Tensor, VocabularyTables, MaskingConfig, torch.Generator | None], Selection]
MASKING_STRATEGIES: dict[str, SelectionFunction] = {
    "standard": select_standard,
    "dynamic": select_dynamic,
    "span": select_span,
    "whole_word": select_whole_word,
}


def _select_tokens(
    input_ids: torch.Tensor, tables: VocabularyTables, rate: float | torch.Tensor, generator: torch.Generator | None
) -> Selection:
    batch_size, seq_len = input_ids.shape
    draws = torch.rand(batch_size, seq_len, device=input_ids.device, generator=generator)
    positions = torch.arange(seq_len, device=input_ids.device).expand(batch_size, seq_len)
    return Selection(predicted=~lookup(tables.is_special, input_ids) & (draws < rate), unit=positions)


def _select_word_spans(
    input_ids: torch.Tensor,
    tables: VocabularyTables,
    rate: float,
    span_of_word: torch.Tensor,
    generator: torch.Generator | None,
) -> Selection:
    """Take spans (runs of word slots) in random order, words in text order, until the token budget."""
    batch_size, seq_len = input_ids.shape
    device = input_ids.device
    eligible = ~lookup(tables.is_special, input_ids)  # (B, S)
    # Special tokens get a neighbouring word's slot; they count for no word and are never predicted.
    word_of_token = (word_starts(input_ids, tables).cumsum(1) - 1).clamp(min=0)  # (B, S)
    word_lengths = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    word_lengths.scatter_add_(1, word_of_token, eligible.long())  # (B, W=S); empty slots past the last word

    # Equal priorities within a span plus a stable sort keep its words together and in text order.
    span_priority = torch.randint(2**62, (batch_size, seq_len), device=device, generator=generator)
    order = torch.sort(span_priority.gather(1, span_of_word), dim=1, stable=True).indices  # (B, W)
    ordered_lengths = word_lengths.gather(1, order)
    taken_after = ordered_lengths.cumsum(1)
    taken_before = taken_after - ordered_lengths
    budget = rate * eligible.sum(1, keepdim=True)  # (B, 1)
    fits = taken_after <= budget
    crosses = (taken_before < budget) & ~fits  # at most one word per row
    keep_probability = (budget - taken_before) / ordered_lengths.clamp(min=1)
    keep_draw = torch.rand(batch_size, 1, device=device, generator=generator)
    chosen_in_order = fits | (crosses & (keep_draw < keep_probability))
    chosen_word = torch.zeros_like(chosen_in_order).scatter_(1, order, chosen_in_order)
    return Selection(
        predicted=eligible & chosen_word.gather(1, word_of_token),
        unit=span_of_word.gather(1, word_of_token),
    )


def replace_predicted(
    input_ids: torch.Tensor,
    selection: Selection,
    tables: VocabularyTables,
    mask_id: int,
    config: MaskingConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels): each unit shown as [MASK], a random token or itself, one draw per unit."""
    batch_size, seq_len = input_ids.shape
    device = input_ids.device
    unit_draws = torch.rand(batch_size, seq_len, device=device, generator=generator)
    token_draws = unit_draws.gather(1, selection.unit)  # (B, S): the tokens of a unit share its draw
    show_mask = selection.predicted & (token_draws < config.mask_token_fraction)
    show_random = (
        selection.predicted & ~show_mask & (token_draws < config.mask_token_fraction + config.random_token_fraction)
    )
    replacement_index = torch.randint(
        len(tables.replacement_ids), (batch_size, seq_len), device=device, generator=generator
    )
    random_ids = lookup(tables.replacement_ids, replacement_index)  # (B, S)
    masked_ids = torch.where(show_mask, mask_id, torch.where(show_random, random_ids, input_ids))
    labels = torch.where(selection.predicted, input_ids, IGNORE_INDEX)
    return masked_ids, labels


class Masker:
    """One run's MLM masking: the configured strategy, then the 80/10/10 replacement."""

    def __init__(self, config: MaskingConfig, tokenizer: Tokenizer) -> None:
        config.validate()
        self.config = config
        self.mask_id = tokenizer.mask_id
        self._select = MASKING_STRATEGIES[config.strategy]
        self._cpu_tables = VocabularyTables.from_tokenizer(tokenizer)
        self._tables_by_device = {self._cpu_tables.is_special.device: self._cpu_tables}

    def tables(self, device: torch.device) -> VocabularyTables:
        """The vocabulary tables on `device`, copied there on first use."""
        if device not in self._tables_by_device:
            self._tables_by_device[device] = self._cpu_tables.to(device)
        return self._tables_by_device[device]

    def select(self, input_ids: torch.Tensor, generator: torch.Generator | None = None) -> Selection:
        """Which tokens of a (B, S) int64 batch to predict; `generator` must live on the batch's device."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.int64:
            raise ValueError(
                f"input_ids has shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}; expected (B, S) int64"
            )
        return self._select(input_ids, self.tables(input_ids.device), self.config, generator)

    def __call__(
        self, input_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels) for a (B, S) batch; labels are -100 where nothing is predicted."""
        selection = self.select(input_ids, generator)
        tables = self.tables(input_ids.device)
        return replace_predicted(input_ids, selection, tables, self.mask_id, self.config, generator)


def causal_lm_labels(input_ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, labels) for next-token prediction: labels[t] = input_ids[t + 1], already shifted.

    The last position and padding targets are -100. Document separators (eos) stay targets, as in
    GPT-2: the model learns where a document ends.
    """
    labels = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX)
    return input_ids, labels.masked_fill(labels == pad_id, IGNORE_INDEX)
