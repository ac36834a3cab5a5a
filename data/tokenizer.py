"""GPT-2 BPE via tiktoken, built from the bundled ranks file (never a network call).

Four special tokens for the encoder objectives are appended after the GPT-2 ids:
[MASK], [PAD], [CLS], [SEP]. GPT-2's own <|endoftext|> (50256) separates documents.
"""

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import tiktoken
import tiktoken.load
import torch

# The GPT-2 pre-tokenisation pattern (tiktoken_ext.openai_public.r50k_pat_str), kept here so the
# encoding is built from the ranks file alone.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
END_OF_TEXT = "<|endoftext|>"
ENCODER_SPECIALS = ("[MASK]", "[PAD]", "[CLS]", "[SEP]")


@dataclass
class Tokenizer:
    """GPT-2 BPE plus the encoder's special tokens; ids are stable across runs."""

    ranks_file: Path
    encoding: tiktoken.Encoding = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ranks_file = Path(self.ranks_file)
        if not self.ranks_file.is_file():
            raise FileNotFoundError(
                f"tokenizer ranks file {self.ranks_file} not found; pass --data_dir pointing at a "
                "folder with tokenizers/gpt2.tiktoken (the project bundles one in data/files)"
            )
        ranks = tiktoken.load.load_tiktoken_bpe(str(self.ranks_file))
        specials = {END_OF_TEXT: len(ranks)}
        specials.update({name: len(ranks) + 1 + i for i, name in enumerate(ENCODER_SPECIALS)})
        self.encoding = tiktoken.Encoding(
            name="gpt2-encoder", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
        )

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eos_id(self) -> int:
        return self.encoding.encode_single_token(END_OF_TEXT)

    @property
    def mask_id(self) -> int:
        return self.encoding.encode_single_token("[MASK]")

    @property
    def pad_id(self) -> int:
        return self.encoding.encode_single_token("[PAD]")

    @property
    def cls_id(self) -> int:
        return self.encoding.encode_single_token("[CLS]")

    @property
    def sep_id(self) -> int:
        return self.encoding.encode_single_token("[SEP]")

    @property
    def special_ids(self) -> list[int]:
        return [self.eos_id, self.mask_id, self.pad_id, self.cls_id, self.sep_id]

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids; special-token strings in the text are treated as plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        return [self.encoding.decode_single_token_bytes(i) for i in range(self.vocab_size)]

    @cached_property
    def starts_with_space(self) -> torch.Tensor:
        """(vocab,) bool: the token's text begins with whitespace, so it begins a new word."""
        return torch.tensor([b[:1].isspace() for b in self._token_bytes], dtype=torch.bool)

    @cached_property
    def ends_with_newline(self) -> torch.Tensor:
        """(vocab,) bool: the token's text ends a line, so the next token begins a new word."""
        return torch.tensor([b.endswith(b"\n") for b in self._token_bytes], dtype=torch.bool)

    @cached_property
    def is_special(self) -> torch.Tensor:
        """(vocab,) bool: special tokens, never masked, never drawn as a random replacement."""
        table = torch.zeros(self.vocab_size, dtype=torch.bool)
        table[self.special_ids] = True
        return table
