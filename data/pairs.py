"""Sentence pairs for next-sentence prediction (NSP), built from packed corpus rows on the batch's device.

Each packed row is [CLS] followed by a stretch of the corpus stream. A pair cuts that stretch
at a random point: segment A is the text before the cut; segment B is either the text right
after it (label 0, "is next", as in the original BERT) or, for about half of the rows, the text
at the same offset of another row of the batch (label 1, "not next") — rows are drawn at
random from the whole corpus, so that text comes from elsewhere, almost always another document.
The output keeps the row length: [CLS] A [SEP] B [SEP], with token types 0 up to the first
[SEP] and 1 after it. The last two tokens of the stretch make room for the two [SEP]s.
Documents inside a stretch stay joined by <|endoftext|>, exactly as in the MLM stream.
"""

from dataclasses import dataclass

import torch

IS_NEXT, NOT_NEXT = 0, 1


@dataclass
class SentencePairs:
    input_ids: torch.Tensor  # (B, S) [CLS] A [SEP] B [SEP]
    token_types: torch.Tensor  # (B, S) 0 for [CLS] A [SEP], 1 for B [SEP]
    labels: torch.Tensor  # (B,) IS_NEXT or NOT_NEXT


def next_sentence_pairs(
    token_ids: torch.Tensor,
    sep_id: int,
    generator: torch.Generator | None = None,
    not_next_probability: float = 0.5,
    min_segment: int = 8,
) -> SentencePairs:
    """Pairs from a (B, S) batch of packed rows ([CLS] + stream); everything drawn from `generator`."""
    batch, seq_len = token_ids.shape
    if seq_len < 2 * min_segment + 3:
        raise ValueError(f"sequence length {seq_len} is too short for two segments of at least {min_segment} tokens")
    if batch < 2:
        raise ValueError("next-sentence pairs need a batch of at least 2 rows (the 'not next' text is another row's)")
    device = token_ids.device
    # Segment A ends at position `cut`; positions cut+2 .. S-2 hold B, read from index p-1 of its source row.
    cut = torch.randint(min_segment, seq_len - 2 - min_segment, (batch, 1), device=device, generator=generator)
    labels = (torch.rand(batch, device=device, generator=generator) < not_next_probability).long()
    # Another row for "not next": a shift of 1..B-1 never lands on the row itself.
    shift = torch.randint(1, batch, (batch,), device=device, generator=generator)
    rows = torch.arange(batch, device=device)
    source = torch.where(labels == NOT_NEXT, (rows + shift) % batch, rows)

    positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
    in_b = positions > cut + 1
    from_a = token_ids
    from_b = token_ids[source].gather(1, (positions - 1).clamp(min=0))
    input_ids = torch.where(in_b, from_b, from_a)
    is_sep = (positions == cut + 1) | (positions == seq_len - 1)
    input_ids = input_ids.masked_fill(is_sep, sep_id)
    token_types = in_b.long() | (positions == seq_len - 1).long()
    return SentencePairs(input_ids, token_types, labels)
