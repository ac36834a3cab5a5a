"""Our training step against Hugging Face BertForMaskedLM: same shapes, vocabulary, batch and masks.

    python -m bench.train                       # every row of the device's table (GPU if visible)
    python -m bench.train --device cpu --threads 2 --markdown bench/results/train.md
    python -m bench.train --rehearse            # a toy row on the CPU through every code path
    python -m bench.train --workload trial      # only the table of the trial's own step

One step = forward, backward, gradient clipping to norm 1 and an AdamW update, on a batch of
random token ids with exactly round(15% x B x S) positions predicted (input [MASK], label the
original id; labels -100 elsewhere; no padding). Contestants, built with one seed and timed
interleaved in this process (one step of each in turn, the order rotated every round, so machine
noise hits all of them):
- ours: model.bert.Encoder (attention "standard", backend "auto": our Triton kernel on a GPU, torch
  SDPA on the CPU), loss = encoder.prediction_loss(input_ids, labels, key_padding_mask): logits for
  the predicted positions only, over the full vocabulary;
- HF: transformers' BertForMaskedLM, attn_implementation "sdpa", the same sizes, vocabulary (our
  tokenizer's 50,261 ids), tied decoder and dropout 0.1 (no attention dropout, which ours lacks);
  its head computes logits at every position, as it does for its users;
- HF + compile: the same under torch.compile (by default on a GPU only).
On a GPU the steps run under bf16 autocast, and the peak memory of each step is recorded. Model
FLOPs count what the step needs (matmuls of every layer at every position, attention's two S x S
products, the head at the predicted positions only; backward = 2x forward), the same number for
every contestant, so their utilisations compare like their speeds. Utilisation is against the
peak of a plain square matmul in the step's dtype (bf16 on a GPU, fp32 on the CPU) measured in
this run, before and after the rows (the better of the two). Speedup "vs X" = X ms / ours ms.

A second table measures the trial's own workload (config.yaml's recipe: batch 8 x 128, 40% of the tokens
predicted, dropout 0), which differs from the first table's in what a step costs:
- ours: the step a trial runs, training.pretrain.Pretrainer.train_step on the packed corpus: the next batch,
  its masking (80/10/10), the sampled softmax (the batch's targets + 2,048 ids drawn from the unigram law)
  and row-sparse updates of the token table (SparseAdam), AdamW for the rest;
- ours, exact softmax: the same step with train.sampled_softmax null (logits over the whole vocabulary);
- HF (and HF + compile on a GPU): BertForMaskedLM at the same batch with the same share predicted, dropout 0.
"model GFLOP/step" counts the exact softmax's head; the MFU of ours counts its own head, logits over the
sampled softmax's candidates (the targets plus the 2,048 draws: an upper bound on the distinct ids).
"""

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.corpus import load_corpus
from data.files_location import resolve_data_dir
from data.tokenizer import Tokenizer
from hpo.config import defaults, load_config
from model.bert import Encoder
from training.pretrain import Execution, Pretrainer

PROJECT_DIR = Path(__file__).resolve().parents[1]

# name -> (hidden, layers, heads). tiny is config.yaml's smallest preset; small and base are BERT's.
SIZES = {
    "toy": (64, 1, 2),
    "tiny": (128, 2, 2),
    "small": (512, 4, 8),
    "base": (768, 12, 12),
}
FFN_MULTIPLE = 4
PREDICTED_SHARE = 0.15
DROPOUT = 0.1
# (size, seq_len, batch) per device: the trials' batch of 32 x 128 where a step takes seconds at most.
GPU_ROWS = (("tiny", 128, 32), ("small", 128, 32), ("base", 128, 32), ("base", 512, 32))
CPU_ROWS = (("tiny", 128, 32), ("small", 128, 32), ("base", 128, 8), ("base", 512, 2))
REHEARSAL_ROWS = (("toy", 32, 4),)
# The trial's workload (config.yaml's batch and masking rate) at the sizes a study samples and above.
TRIAL_GPU_ROWS = (("tiny", 128, 8), ("small", 128, 8), ("base", 128, 8))
TRIAL_CPU_ROWS = (("tiny", 128, 8), ("small", 128, 8))
TRIAL_REHEARSAL_ROWS = (("toy", 32, 4),)
MATMUL_SIZE = {"cuda": 8192, "cpu": 2048, "rehearsal": 256}


@dataclass
class Contestant:
    """One implementation of the training step, ready to run."""

    name: str
    step: Callable[[], torch.Tensor]  # one training step; returns the loss
    persistent_bytes: int  # parameters and optimiser state, held between steps


@dataclass
class Result:
    """Median step time and peak memory of one contestant at one row, or why it has none."""

    milliseconds: float | None = None
    peak_mib: float | None = None
    note: str = ""


@dataclass
class Row:
    size: str
    seq_len: int
    batch: int
    predicted: int
    model_flops: float
    results: dict[str, Result] = field(default_factory=dict)
    own_flops: dict[str, float] = field(default_factory=dict)  # a contestant whose step needs other FLOPs

    def flops(self, name: str) -> float:
        return self.own_flops.get(name, self.model_flops)


@dataclass
class Settings:
    """How this run measures: device, dtype, contestants, repetitions."""

    device: str
    precision: str  # "bf16" (autocast) or "fp32"
    compile_backend: str | None  # torch.compile backend for HF + compile, or None for no such contestant
    warmup_steps: int
    rounds: int
    matmul_size: int

    def autocast(self) -> AbstractContextManager:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device, dtype=torch.bfloat16)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def model_flops(hidden: int, layers: int, batch: int, seq_len: int, predicted: int, vocab_size: int) -> float:
    """FLOPs one training step needs: 3x the forward's (backward = 2x forward)."""
    tokens = batch * seq_len
    block_matmuls = 2 * tokens * (4 + 2 * FFN_MULTIPLE) * hidden**2  # qkv, out, two FFN layers
    attention = 2 * 2 * batch * seq_len**2 * hidden  # q k^T and p v
    head = 2 * predicted * (hidden**2 + hidden * vocab_size)  # transform and tied decoder
    return 3.0 * (layers * (block_matmuls + attention) + head)


def matmul_peak_flops(settings: Settings) -> float:
    """FLOP/s of the best of several square matmuls in the step's dtype, on this device."""
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    size = settings.matmul_size
    left, right = (torch.randn(size, size, device=settings.device, dtype=dtype) for _ in "lr")
    best = math.inf
    for repeat in range(8):
        settings.synchronize()
        start = time.perf_counter()
        torch.mm(left, right)
        settings.synchronize()
        if repeat >= 2:  # two warm-ups
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def batch_for(
    seq_len: int, batch: int, tokenizer: Tokenizer, device: str, seed: int, share: float = PREDICTED_SHARE
) -> tuple[torch.Tensor, ...]:
    """input_ids, labels, key_padding_mask (B, S): [CLS] then random ordinary tokens, exactly
    round(share B S) positions predicted (never [CLS]), no padding."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, tokenizer.eos_id, (batch, seq_len), generator=generator)  # GPT-2's ordinary ids
    input_ids[:, 0] = tokenizer.cls_id
    positions = torch.arange(batch * seq_len)
    candidates = positions[positions % seq_len != 0]
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[: round(share * batch * seq_len)]]
    predicted = torch.zeros(batch * seq_len, dtype=torch.bool)
    predicted[chosen] = True
    predicted = predicted.view(batch, seq_len)
    labels = torch.where(predicted, input_ids, -100)
    input_ids = torch.where(predicted, tokenizer.mask_id, input_ids)
    key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool)
    return input_ids.to(device), labels.to(device), key_padding_mask.to(device)


def _persistent_bytes(model: torch.nn.Module, *optimizers: torch.optim.Optimizer) -> int:
    tensors = list(model.parameters()) + [
        value
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    ]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _training_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], settings: Settings):
    """A step function: loss, backward, clip, AdamW; and a thunk for the persistent memory it holds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step() -> torch.Tensor:
        with settings.autocast():
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, lambda: _persistent_bytes(model, optimizer)


def trial_config(size: str, seq_len: int, batch: int, sampled: bool, rehearse: bool):
    """config.yaml's recipe at this row's shape, with a token budget no step reaches."""
    hidden, layers, heads = SIZES[size]
    overrides = [
        f"model.hidden_size={hidden}",
        f"model.num_layers={layers}",
        f"model.num_heads={heads}",
        f"model.ffn_multiple={FFN_MULTIPLE}",
        f"data.seq_len={seq_len}",
        f"train.batch_size={batch}",
        "train.budget_seconds=null",
        "train.budget_tokens=1000000000000",
    ]
    if not sampled:
        overrides.append("train.sampled_softmax=null")
    if rehearse:  # one small source: the corpus is tokenised in a second
        overrides.append("data.sources=[wikipedia]")
    return load_config(PROJECT_DIR / "config.yaml", overrides)


def build_trial_contestants(
    size: str, seq_len: int, batch_size: int, tokenizer: Tokenizer, settings: Settings, rehearse: bool
) -> dict[str, Callable[[], Contestant]]:
    """The trial's step (ours with the sampled softmax and the exact one) on the packed corpus."""

    def ours(sampled: bool) -> Contestant:
        torch.manual_seed(0)
        config = trial_config(size, seq_len, batch_size, sampled, rehearse)
        corpus = load_corpus(resolve_data_dir(), config.data, tokenizer)
        precision = "bf16" if settings.precision == "bf16" else "fp32"
        trainer = Pretrainer(config, corpus, tokenizer, torch.device(settings.device), Execution(precision=precision))

        return _with_memory(
            "ours" if sampled else "ours, exact softmax",
            lambda: torch.tensor(trainer.train_step().loss),
            lambda: _persistent_bytes(trainer.model, *trainer.optimizers),
        )

    return {"ours": lambda: ours(True), "ours, exact softmax": lambda: ours(False)}


def build_contestants(
    size: str,
    vocab_size: int,
    pad_id: int,
    batch: tuple[torch.Tensor, ...],
    settings: Settings,
    dropout: float = DROPOUT,
    include_ours: bool = True,
) -> dict[str, Callable[[], Contestant]]:
    """name -> builder of that contestant (built one at a time, so a failure is one note)."""
    from transformers import BertConfig, BertForMaskedLM

    hidden, layers, heads = SIZES[size]
    input_ids, labels, key_padding_mask = batch

    def ours() -> Contestant:
        torch.manual_seed(0)
        config = defaults(
            "model", hidden_size=hidden, num_layers=layers, num_heads=heads, ffn_multiple=FFN_MULTIPLE, dropout=dropout
        )
        encoder = Encoder(config, vocab_size).to(settings.device).train()
        step, persistent = _training_step(
            encoder, lambda: encoder.prediction_loss(input_ids, labels, key_padding_mask), settings
        )
        return _with_memory("ours", step, persistent)

    def hugging_face(compiled: bool) -> Contestant:
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=FFN_MULTIPLE * hidden,
            max_position_embeddings=512,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=0.0,
            pad_token_id=pad_id,
            attn_implementation="sdpa",
        )
        model = BertForMaskedLM(config).to(settings.device).train()
        if model.config._attn_implementation != "sdpa":
            raise RuntimeError(f"BertForMaskedLM runs {model.config._attn_implementation!r} attention, not sdpa")
        forward = torch.compile(model, backend=settings.compile_backend) if compiled else model
        # No padding: attention_mask None keeps SDPA on its unmasked (fastest) path.
        step, persistent = _training_step(model, lambda: forward(input_ids=input_ids, labels=labels).loss, settings)
        return _with_memory("HF + compile" if compiled else "HF", step, persistent)

    builders = {"ours": ours} if include_ours else {}
    builders["HF"] = lambda: hugging_face(False)
    if settings.compile_backend:
        builders["HF + compile"] = lambda: hugging_face(True)
    return builders


def _with_memory(name: str, step: Callable[[], torch.Tensor], persistent: Callable[[], int]) -> Contestant:
    """The contestant after one step, so that its optimiser state exists and is counted."""
    loss = step()
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name}: first loss is {loss.item()}")
    return Contestant(name, step, persistent())


def time_interleaved(contestants: list[Contestant], settings: Settings) -> dict[str, float]:
    """Median milliseconds per step of each contestant, one step of each in turn."""
    for contestant in contestants:
        for _ in range(settings.warmup_steps):
            contestant.step()
    times: dict[str, list[float]] = {contestant.name: [] for contestant in contestants}
    losses = []
    for round_index in range(settings.rounds):
        shift = round_index % len(contestants)
        for contestant in contestants[shift:] + contestants[:shift]:
            settings.synchronize()
            start = time.perf_counter()
            losses.append((contestant.name, contestant.step()))
            settings.synchronize()
            times[contestant.name].append(time.perf_counter() - start)
    for name, loss in losses:
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: a timed step's loss is {loss.item()}")
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def peak_mib(contestant: Contestant, settings: Settings) -> float | None:
    """Peak memory of one step (GPU only): its parameters and optimiser state plus what the step allocates."""
    if settings.device != "cuda":
        return None
    settings.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    contestant.step()
    settings.synchronize()
    return (contestant.persistent_bytes + torch.cuda.max_memory_allocated() - before) / 2**20


def run_row(
    size: str,
    seq_len: int,
    batch_size: int,
    tokenizer: Tokenizer,
    settings: Settings,
    trial: bool = False,
    rehearse: bool = False,
) -> Row:
    """One row: the synthetic batch's step (trial False), or the trial's workload (ours on the packed corpus,
    HF on a synthetic batch with the recipe's share predicted and dropout)."""
    hidden, layers, _ = SIZES[size]
    vocab_size = tokenizer.vocab_size
    if trial:
        recipe = load_config(PROJECT_DIR / "config.yaml")
        share, dropout = recipe.masking.rate, recipe.model.dropout
    else:
        share, dropout = PREDICTED_SHARE, DROPOUT
    batch = batch_for(seq_len, batch_size, tokenizer, settings.device, seed=seq_len, share=share)
    predicted = int((batch[1] != -100).sum())
    row = Row(
        size, seq_len, batch_size, predicted, model_flops(hidden, layers, batch_size, seq_len, predicted, vocab_size)
    )
    builders = {}
    if trial:
        # The sampled softmax's head: logits over its candidates, at most the targets plus the draws.
        candidates = min(vocab_size, predicted + recipe.train.sampled_softmax)
        row.own_flops["ours"] = model_flops(hidden, layers, batch_size, seq_len, predicted, candidates)
        builders = build_trial_contestants(size, seq_len, batch_size, tokenizer, settings, rehearse)
    builders |= build_contestants(
        size, vocab_size, tokenizer.pad_id, batch, settings, dropout=dropout, include_ours=not trial
    )
    contestants = []
    for name, build in builders.items():
        try:
            contestants.append(build())
            row.results[name] = Result()
        except Exception as error:  # one failing contestant (OOM, compile error) must not stop the table
            row.results[name] = Result(note=f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
    try:
        for name, milliseconds in time_interleaved(contestants, settings).items():
            row.results[name].milliseconds = milliseconds
        for contestant in contestants:
            row.results[contestant.name].peak_mib = peak_mib(contestant, settings)
    except Exception as error:  # the row's notes say why it has no times
        for contestant in contestants:
            row.results[contestant.name].note = f"timing failed: {type(error).__name__}: {str(error)[:160]}"
    return row


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _ratio(peer: float | None, ours: float | None) -> str:
    return "-" if peer is None or ours is None else f"{peer / ours:.2f}x"


def render(rows: list[Row], names: list[str], peak_flops: float, title: str, on_gpu: bool) -> str:
    peers = [name for name in names if name != "ours"]
    header = ["size", "hidden/layers/heads", "batch x seq", "predicted", "model GFLOP/step"]
    header += [f"{name} ms" for name in names] + [f"ours vs {peer}" for peer in peers]
    header += [f"{name} MFU" for name in names] + ([f"{name} peak MiB" for name in names] if on_gpu else [])
    lines = [title, "", "| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    notes = []
    for row in rows:
        results = [row.results.get(name, Result(note="not run")) for name in names]
        ours = row.results["ours"].milliseconds
        cells = [row.size, "/".join(map(str, SIZES[row.size])), f"{row.batch} x {row.seq_len}", f"{row.predicted:,}"]
        cells.append(f"{row.model_flops / 1e9:,.1f}")
        cells += [_ms(result.milliseconds) for result in results]
        cells += [_ratio(row.results[peer].milliseconds, ours) for peer in peers]
        cells += [
            "-" if result.milliseconds is None else f"{row.flops(name) / (result.milliseconds / 1e3) / peak_flops:.0%}"
            for name, result in zip(names, results, strict=True)
        ]
        if on_gpu:
            cells += ["-" if result.peak_mib is None else f"{result.peak_mib:,.0f}" for result in results]
        lines.append("| " + " | ".join(cells) + " |")
        notes += [
            f"- {row.size} S={row.seq_len} {name}: {result.note}"
            for name, result in zip(names, results, strict=True)
            if result.note
        ]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def describe(settings: Settings, peaks: list[float], threads: int, load_averages: list[float]) -> str:
    """The title line: machine, versions, dtype, the measured matmul peak, repetitions."""
    import transformers

    if settings.device == "cuda":
        machine, load = torch.cuda.get_device_name(), ""
    else:
        machine = f"{platform.machine()} CPU, {threads} torch threads"
        load = ", load average (1 min) {:.2f} at start, {:.2f} at end".format(*load_averages)
    dtype = "bf16 autocast, bf16" if settings.precision == "bf16" else "fp32, fp32"
    return (
        f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}; {dtype} matmul peak "
        f"{max(peaks) / 1e9:,.0f} GFLOP/s ({settings.matmul_size}^3: {peaks[0] / 1e9:,.0f} before the rows, "
        f"{peaks[1] / 1e9:,.0f} after){load}; median of {settings.rounds} interleaved steps after "
        f"{settings.warmup_steps} warm-up"
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if visible")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--rows",
        nargs="+",
        metavar="SIZE:SEQ:BATCH",
        help=f"rows to run, e.g. tiny:128:32 (sizes {', '.join(SIZES)}; default: the device's table)",
    )
    parser.add_argument(
        "--trial_rows",
        nargs="+",
        metavar="SIZE:SEQ:BATCH",
        help="rows of the trial-workload table (default: tiny:128:8 and small:128:8, base too on a GPU)",
    )
    parser.add_argument(
        "--workload",
        choices=("both", "exact", "trial"),
        default="both",
        help="exact: the synthetic batch at 15%% predicted; trial: a trial's own step; both (default): two tables",
    )
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 autocast on cuda, fp32 on cpu")
    parser.add_argument(
        "--compile_backend",
        help="torch.compile backend of the HF + compile contestant, or 'none' (default: inductor on cuda, none on cpu)",
    )
    parser.add_argument("--rounds", type=int, help="timed steps per contestant (default: 20 on cuda, 5 on cpu)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file, after every row")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="a toy row on the CPU with bf16 autocast and HF compiled by aot_eager: every code path, in seconds",
    )
    return parser.parse_args()


def settings_from(arguments: argparse.Namespace) -> tuple[Settings, list[tuple[str, int, int]]]:
    """The run's settings and rows from the flags (--rehearse fixes a toy run on the CPU)."""
    if arguments.rehearse:
        settings = Settings("cpu", "bf16", "aot_eager", warmup_steps=1, rounds=2, matmul_size=MATMUL_SIZE["rehearsal"])
        return settings, list(REHEARSAL_ROWS)
    device = arguments.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/train.py --device cuda: no CUDA GPU is visible to torch")
    on_gpu = device == "cuda"
    compile_backend = arguments.compile_backend or ("inductor" if on_gpu else "none")
    settings = Settings(
        device=device,
        precision=arguments.precision or ("bf16" if on_gpu else "fp32"),
        compile_backend=None if compile_backend == "none" else compile_backend,
        warmup_steps=3 if on_gpu else 1,
        rounds=arguments.rounds or (20 if on_gpu else 5),
        matmul_size=MATMUL_SIZE[device],
    )
    rows = [_parse_row(text) for text in arguments.rows] if arguments.rows else list(GPU_ROWS if on_gpu else CPU_ROWS)
    return settings, rows


def _parse_row(text: str) -> tuple[str, int, int]:
    size, _, rest = text.partition(":")
    seq_len, _, batch = rest.partition(":")
    if size not in SIZES or not seq_len.isdigit() or not batch.isdigit():
        raise SystemExit(
            f"--rows {text!r}: expected SIZE:SEQ:BATCH with SIZE one of {', '.join(SIZES)}, e.g. tiny:128:32"
        )
    if int(seq_len) > 512:
        raise SystemExit(f"--rows {text!r}: sequences are at most 512 tokens (both models' position tables)")
    return size, int(seq_len), int(batch)


def run_table(
    rows: list[tuple[str, int, int]],
    names: list[str],
    tokenizer: Tokenizer,
    settings: Settings,
    markdown: Path | None,
    trial: bool,
    rehearse: bool,
) -> tuple[list[Row], list[float], list[float]]:
    """Every row of one table (the table rewritten to `markdown` after each); the matmul peaks and load
    averages before and after."""
    load_averages = [os.getloadavg()[0]]
    peaks = [matmul_peak_flops(settings)]
    results: list[Row] = []
    for size, seq_len, batch in rows:
        print(f"running {'the trial workload, ' if trial else ''}{size} S={seq_len} B={batch} ...", flush=True)
        results.append(run_row(size, seq_len, batch, tokenizer, settings, trial=trial, rehearse=rehearse))
        progress = (
            f"(in progress; at the start: matmul peak {peaks[0] / 1e9:,.0f} GFLOP/s, load {load_averages[0]:.2f})"
        )
        if markdown:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(render(results, names, max(peaks), progress, settings.device == "cuda"))
    peaks.append(matmul_peak_flops(settings))
    load_averages.append(os.getloadavg()[0])
    return results, peaks, load_averages


def main() -> None:
    arguments = parse_arguments()
    settings, rows = settings_from(arguments)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    tokenizer = Tokenizer(resolve_data_dir() / "tokenizers" / "gpt2.tiktoken")
    hf_names = ["HF"] + (["HF + compile"] if settings.compile_backend else [])
    tables = []
    if arguments.workload in ("both", "exact"):
        names = ["ours", *hf_names]
        exact_md = arguments.markdown
        results, peaks, loads = run_table(rows, names, tokenizer, settings, exact_md, False, arguments.rehearse)
        title = describe(settings, peaks, torch.get_num_threads(), loads)
        tables.append(render(results, names, max(peaks), title, settings.device == "cuda"))
    if arguments.workload in ("both", "trial"):
        names = ["ours", "ours, exact softmax", *hf_names]
        trial_rows = trial_rows_from(arguments, settings)
        results, peaks, loads = run_table(trial_rows, names, tokenizer, settings, None, True, arguments.rehearse)
        title = "The trial's workload (sampled softmax, row-sparse token table, the recipe's batch and masking). "
        title += describe(settings, peaks, torch.get_num_threads(), loads)
        tables.append(render(results, names, max(peaks), title, settings.device == "cuda"))
    text = "\n".join(tables)
    print(text)
    if arguments.markdown:
        arguments.markdown.parent.mkdir(parents=True, exist_ok=True)
        arguments.markdown.write_text(text)


def trial_rows_from(arguments: argparse.Namespace, settings: Settings) -> list[tuple[str, int, int]]:
    if arguments.trial_rows:
        return [_parse_row(text) for text in arguments.trial_rows]
    if arguments.rehearse:
        return list(TRIAL_REHEARSAL_ROWS)
    return list(TRIAL_GPU_ROWS if settings.device == "cuda" else TRIAL_CPU_ROWS)


if __name__ == "__main__":
    main()
