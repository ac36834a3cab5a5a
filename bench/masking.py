"""Masking throughput of each strategy against Hugging Face's DataCollatorForLanguageModeling.

Prints a markdown table: tokens/s of ours and of the peer in the same run (the peer on CPU, where
it runs), their ratio, and the masking time as a share of one training step of a stand-in small
encoder (hidden 128, 2 layers, 2 heads, tied MLM head on predicted positions only).

    python bench/masking.py [--batch-size 32] [--seq-len 128]
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from data.corpus import read_documents  # noqa: E402
from data.masking import MASKING_STRATEGIES, Masker, word_starts  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from hpo.config import defaults  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "files"
BENCH_SOURCES = ("austen", "wikipedia", "brown", "python_docs")


def corpus_sample(
    tokenizer: Tokenizer, data_dir: Path, sources: tuple[str, ...], tokens_per_source: int, seq_len: int
) -> torch.Tensor:
    """(N, S) int64 rows packed as in training: [CLS], then documents joined by eos, cut into rows."""
    stream: list[int] = []
    for source in sources:
        taken = 0
        for document in read_documents(data_dir / "corpus" / f"{source}.txt.gz"):
            tokens = tokenizer.encode(document) + [tokenizer.eos_id]
            stream += tokens
            taken += len(tokens)
            if taken >= tokens_per_source:
                break
    body = torch.tensor(stream[: len(stream) // (seq_len - 1) * (seq_len - 1)]).view(-1, seq_len - 1)
    return F.pad(body, (1, 0), value=tokenizer.cls_id)


class CollatorTokenizer:
    """The few tokenizer attributes DataCollatorForLanguageModeling reads when masking, from ours."""

    is_fast = True  # whole-word masking reads offsets, which only fast tokenizers provide
    mask_token = "[MASK]"
    pad_token = "[PAD]"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.mask_token_id = tokenizer.mask_id
        self.pad_token_id = tokenizer.pad_id

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.tokenizer.encoding.encode_single_token(token)

    def __len__(self) -> int:
        return self.tokenizer.vocab_size


def word_offsets(input_ids: torch.Tensor, masker: Masker) -> torch.Tensor:
    """(B, S, 2) character offsets with a one-character gap before each word: how HF finds words."""
    starts = word_starts(input_ids, masker.tables(input_ids.device))
    begin = torch.arange(input_ids.shape[1]) + starts.long().cumsum(1)  # (B, S)
    return torch.stack([begin, begin + 1], dim=-1)


class StandInEncoder(nn.Module):
    """A small BERT-like encoder from torch.nn, standing in for model/bert.py in the step timing."""

    def __init__(self, vocab_size: int, seq_len: int, hidden: int = 128, layers: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden)
        self.position_embedding = nn.Embedding(seq_len, hidden)
        block = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.blocks(
            self.token_embedding(input_ids) + self.position_embedding(positions), src_key_padding_mask=padding
        )
        predicted = labels != -100
        logits = self.final_norm(hidden[predicted]) @ self.token_embedding.weight.T  # (P, V), tied head
        return F.cross_entropy(logits, labels[predicted])


def seconds_per_call(
    functions: dict[str, Callable[[], object]], device: torch.device, rounds: int = 7, min_round_s: float = 0.1
) -> dict[str, float]:
    """Median over rounds of the mean time of one call of each function, rounds interleaved (same load)."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        for _ in range(3):
            function()
    synchronize()
    for _ in range(rounds):
        for name, function in functions.items():
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < min_round_s:
                function()
                calls += 1
                synchronize()
            timings[name].append(elapsed / calls)
    return {name: statistics.median(values) for name, values in timings.items()}


def training_step_seconds(tokenizer: Tokenizer, masker: Masker, batch: torch.Tensor) -> float:
    """Seconds of one AdamW step of the stand-in encoder on a masked batch."""
    model = StandInEncoder(tokenizer.vocab_size, batch.shape[1]).to(batch.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator(batch.device).manual_seed(0)
    masked, labels = masker(batch, generator)
    padding = batch == tokenizer.pad_id

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(masked, labels, padding).backward()
        optimizer.step()

    return seconds_per_call({"step": step}, batch.device, rounds=3, min_round_s=1.0)["step"]


# BERT's masking rate on both sides (the collator's default), as BENCHMARKS.md's figures were measured.
RATES = {"rate": 0.15, "min_rate": 0.10, "max_rate": 0.20}


def hugging_face_maskers(tokenizer: Tokenizer, masker: Masker, batch: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The peer's masking calls on CPU, given precomputed special-token masks and offsets (its fast path)."""
    from transformers import DataCollatorForLanguageModeling

    collator_tokenizer = CollatorTokenizer(tokenizer)
    special = masker.tables(batch.device).is_special.take(batch)
    offsets = word_offsets(batch, masker)
    standard = DataCollatorForLanguageModeling(collator_tokenizer, mlm_probability=RATES["rate"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that whole-word masking never uses random tokens
        whole_word = DataCollatorForLanguageModeling(
            collator_tokenizer, whole_word_mask=True, mlm_probability=RATES["rate"]
        )
    return {
        "HF standard": lambda: standard.torch_mask_tokens(batch.clone(), special_tokens_mask=special),
        "HF whole-word": lambda: whole_word.torch_mask_tokens(
            batch.clone(), special_tokens_mask=special, offset_mapping=offsets
        ),
    }


# HF has no span masking: its whole-word masking is the nearest peer of ours.
PEER_OF_STRATEGY = {
    "standard": "HF standard",
    "dynamic": "HF standard",
    "span": "HF whole-word",
    "whole_word": "HF whole-word",
}
COLUMNS = (
    "strategy",
    "device",
    "ours tokens/s",
    "peer (CPU)",
    "peer tokens/s",
    "ours / peer",
    "ms per batch",
    "masking / training step",
)


def strategy_rows(
    tokenizer: Tokenizer, batch: torch.Tensor, peer_calls: dict[str, Callable[[], object]]
) -> list[list[str]]:
    """One table row per strategy on the batch's device, timed interleaved with the peer's calls on CPU."""
    tokens = batch.numel()
    generator = torch.Generator(batch.device).manual_seed(0)
    ours_calls = {
        strategy: partial(Masker(defaults("masking", strategy=strategy, **RATES), tokenizer), batch, generator)
        for strategy in MASKING_STRATEGIES
    }
    seconds = seconds_per_call(ours_calls | peer_calls, batch.device)
    step_seconds = training_step_seconds(tokenizer, Masker(defaults("masking", **RATES), tokenizer), batch)
    rows = []
    for strategy in MASKING_STRATEGIES:
        ours, peer = seconds[strategy], PEER_OF_STRATEGY[strategy]
        rows.append(
            [
                strategy,
                batch.device.type,
                f"{tokens / ours:,.0f}",
                peer,
                f"{tokens / seconds[peer]:,.0f}",
                f"{seconds[peer] / ours:.2f}x",
                f"{ours * 1e3:.2f}",
                f"{100 * ours / step_seconds:.2f}% of {step_seconds * 1e3:.0f} ms",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads of torch")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)

    tokenizer = Tokenizer(DATA_DIR / "tokenizers" / "gpt2.tiktoken")
    tokens_per_source = arguments.batch_size * arguments.seq_len // len(BENCH_SOURCES) + 1000
    cpu_batch = corpus_sample(tokenizer, DATA_DIR, BENCH_SOURCES, tokens_per_source, arguments.seq_len)
    cpu_batch = cpu_batch[: arguments.batch_size]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    peer_calls = hugging_face_maskers(tokenizer, Masker(defaults("masking", **RATES), tokenizer), cpu_batch)

    print(
        f"batch {arguments.batch_size} x {arguments.seq_len} tokens of real corpus text; {arguments.threads} CPU "
        f"threads; the peer runs on CPU; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print("| " + " | ".join(COLUMNS) + " |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for device in devices:
        for row in strategy_rows(tokenizer, cpu_batch.to(device), peer_calls):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
