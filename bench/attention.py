"""Our Triton attention kernels against torch SDPA and the plain PyTorch reference, on one GPU.

    python bench/attention.py [--causal] [--quick] [--kinds standard rope] [--markdown PATH]
    python bench/attention.py --rehearse   # CPU, Triton's interpreter, a toy shape: every code path

For each attention kind and shape (B, H, S, D), in bfloat16 with about 10% of the keys padded at
the tail of each row (lengths vary by row), it times the forward and forward+backward passes with
triton.testing.do_bench (median; on the CPU, the median of a few plain runs) of:
- ours: kernels.attention(kind, ..., backend="triton");
- SDPA: torch.nn.functional.scaled_dot_product_attention with the same boolean mask (rope: after
  the PyTorch rotary embedding; exposb: plain softmax SDPA, a speed peer of another formula), on
  the first SDPA backend of flash, efficient, cudnn, math that runs forward and backward;
- reference: kernels.attention(kind, ..., backend="oracle"), which materialises the S x S matrix.
FLOPs: forward 4*B*H*S*S*D (two matmuls), backward 2.5x that (five matmuls), halved when causal;
padded keys are counted as if real. Speedup = peer time / our time (> 1: ours is faster).

Then a large-logit accuracy check: q scaled so that the logits reach +-30, out, dq, dk and dv of
ours and of the reference in the benchmark's dtype, each against the reference in float64; the
tests' rule asks ours to stay within 2x the reference's error. The markdown file is rewritten after
every row, so a run cut short keeps what it measured.
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import kernels  # noqa: E402
from kernels import reference  # noqa: E402

KINDS = ("standard", "absolute", "rope", "exposb")
SHAPES = ((256, 4, 128, 64), (128, 12, 128, 64), (32, 12, 512, 64), (8, 12, 2048, 64))
QUICK_SHAPES = ((4, 2, 128, 64), (2, 2, 256, 64))
REHEARSAL_SHAPES = ((2, 2, 48, 32),)
ACCURACY_SHAPE = (4, 12, 512, 64)
REHEARSAL_ACCURACY_SHAPE = (2, 2, 40, 32)
MAX_LOGIT = 30.0
PADDED_FRACTION = 0.1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Settings:
    """Where and how this run measures."""

    device: str
    dtype: torch.dtype
    shapes: tuple[tuple[int, int, int, int], ...]
    accuracy_shape: tuple[int, int, int, int]
    warmup_ms: int
    repeat_ms: int

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def release_memory(self) -> None:
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def median_ms(self, function: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> float:
        """Median milliseconds of one call: do_bench on a GPU, a few timed calls on the CPU."""
        if self.device == "cuda":
            from triton.testing import do_bench

            return do_bench(
                function, warmup=self.warmup_ms, rep=self.repeat_ms, grad_to_none=grad_to_none, return_mode="median"
            )
        times = []
        for _ in range(3):
            for tensor in grad_to_none or []:
                tensor.grad = None
            start = time.perf_counter()
            function()
            times.append(1000 * (time.perf_counter() - start))
        return statistics.median(times)


@dataclass
class Timing:
    """Median milliseconds of one implementation, or why it has none."""

    forward_ms: float | None = None
    forward_backward_ms: float | None = None
    note: str = ""


@dataclass
class Row:
    kind: str
    shape: tuple[int, int, int, int]
    ours: Timing
    sdpa: Timing
    reference: Timing
    sdpa_backend: str
    max_error: float | None


def padding_mask(batch: int, seq_len: int, device: str, generator: torch.Generator) -> torch.Tensor:
    """(B, S) True = real; each row loses 0..2*10% of its keys at the tail, 10% on average."""
    most_padded = round(2 * PADDED_FRACTION * seq_len)
    padded = torch.randint(0, most_padded + 1, (batch,), generator=generator)
    lengths = (seq_len - padded).to(device)
    return torch.arange(seq_len, device=device)[None, :] < lengths[:, None]


def flops(shape: tuple[int, int, int, int], causal: bool) -> tuple[float, float]:
    """FLOPs of the forward and of forward+backward."""
    batch, heads, seq_len, head_dim = shape
    forward = 4.0 * batch * heads * seq_len * seq_len * head_dim / (2 if causal else 1)
    return forward, 3.5 * forward


def sdpa_function(kind, key_padding_mask, causal, backend):
    """SDPA on the given backend with the boolean (B, 1, S, S) mask built once, outside the timing."""
    from torch.nn.attention import sdpa_kernel

    allowed = reference.allowed_keys(key_padding_mask, key_padding_mask.shape[1], causal)

    def attention(q, k, v):
        if kind == "rope":
            q, k = reference.rotary_embedding(q), reference.rotary_embedding(k)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    return attention


def pick_sdpa_backend(kind, inputs, key_padding_mask, causal, settings: Settings):
    """The first SDPA backend, in torch's order of preference, that runs forward and backward."""
    from torch.nn.attention import SDPBackend

    candidates = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    candidates += [SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    reasons = []
    for backend in candidates:
        attention = sdpa_function(kind, key_padding_mask, causal, backend)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # each refusing backend warns why
                attention(*inputs).sum().backward()
            settings.synchronize()
            return backend.name.lower(), attention
        except RuntimeError as error:
            reasons.append(f"{backend.name.lower()}: {str(error).splitlines()[0][:80]}")
        finally:
            for tensor in inputs:
                tensor.grad = None
    raise RuntimeError("no SDPA backend ran: " + "; ".join(reasons))


def time_implementation(attention, inputs, grad_out, settings: Settings) -> Timing:
    """Median forward and forward+backward times; an error (OOM, missing kernel) becomes a note."""

    def forward():
        with torch.no_grad():
            attention(*inputs)

    def forward_backward():
        attention(*inputs).backward(grad_out)

    timing = Timing()
    try:
        timing.forward_ms = settings.median_ms(forward)
        timing.forward_backward_ms = settings.median_ms(forward_backward, grad_to_none=inputs)
    except Exception as error:  # one failing implementation must not stop the whole table
        timing.note = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    finally:
        for tensor in inputs:
            tensor.grad = None
        settings.release_memory()
    return timing


def max_error_against_float32_oracle(kind, inputs, key_padding_mask, causal, settings: Settings) -> float | None:
    """max |ours - oracle in float32| on the output: a guard that the timed kernel is right."""
    try:
        with torch.no_grad():
            ours = kernels.attention(kind, *inputs, key_padding_mask, causal, backend="triton")
            wide = [x.float() for x in inputs]
            truth = kernels.attention(kind, *wide, key_padding_mask, causal, backend="oracle")
        return (ours.float() - truth).abs().max().item()
    except Exception:
        return None  # the timing's note says why
    finally:
        settings.release_memory()


def benchmark_row(kind, shape, causal, generator, settings: Settings) -> Row:
    device, dtype = settings.device, settings.dtype
    inputs = [torch.randn(shape, generator=generator).to(device, dtype).requires_grad_() for _ in "qkv"]
    grad_out = torch.randn(shape, generator=generator).to(device, dtype)
    key_padding_mask = padding_mask(shape[0], shape[2], device, generator)

    def ours(q, k, v):
        return kernels.attention(kind, q, k, v, key_padding_mask, causal, backend="triton")

    def oracle(q, k, v):
        return kernels.attention(kind, q, k, v, key_padding_mask, causal, backend="oracle")

    max_error = max_error_against_float32_oracle(kind, inputs, key_padding_mask, causal, settings)
    try:
        backend_name, sdpa = pick_sdpa_backend(kind, inputs, key_padding_mask, causal, settings)
        sdpa_timing = time_implementation(sdpa, inputs, grad_out, settings)
    except RuntimeError as error:
        backend_name, sdpa_timing = "none", Timing(note=str(error)[:200])
    return Row(
        kind=kind,
        shape=shape,
        ours=time_implementation(ours, inputs, grad_out, settings),
        sdpa=sdpa_timing,
        reference=time_implementation(oracle, inputs, grad_out, settings),
        sdpa_backend=backend_name,
        max_error=max_error,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio(peer: float | None, ours: float | None) -> str:
    return "-" if peer is None or ours is None else f"{peer / ours:.2f}x"


def _tflops(flop_count: float, milliseconds: float | None) -> str:
    return "-" if milliseconds is None else f"{flop_count / milliseconds / 1e9:.1f}"


HEADER = (
    "kind", "B,H,S,D", "ours fwd ms", "fwd TFLOP/s", "ours f+b ms", "f+b TFLOP/s",
    "SDPA backend", "SDPA fwd ms", "SDPA f+b ms", "vs SDPA fwd", "vs SDPA f+b",
    "ref fwd ms", "ref f+b ms", "vs ref fwd", "vs ref f+b", "max err",
)  # fmt: skip


def table_cells(row: Row, causal: bool) -> list[str]:
    forward_flops, forward_backward_flops = flops(row.shape, causal)
    ours, sdpa, ref = row.ours, row.sdpa, row.reference
    return [
        row.kind,
        ",".join(map(str, row.shape)),
        _ms(ours.forward_ms),
        _tflops(forward_flops, ours.forward_ms),
        _ms(ours.forward_backward_ms),
        _tflops(forward_backward_flops, ours.forward_backward_ms),
        row.sdpa_backend,
        _ms(sdpa.forward_ms),
        _ms(sdpa.forward_backward_ms),
        _ratio(sdpa.forward_ms, ours.forward_ms),
        _ratio(sdpa.forward_backward_ms, ours.forward_backward_ms),
        _ms(ref.forward_ms),
        _ms(ref.forward_backward_ms),
        _ratio(ref.forward_ms, ours.forward_ms),
        _ratio(ref.forward_backward_ms, ours.forward_backward_ms),
        "-" if row.max_error is None else f"{row.max_error:.1e}",
    ]


def notes(rows: list[Row]) -> list[str]:
    """One line per implementation that did not run, with the reason."""
    lines = []
    for row in rows:
        for name, timing in (("ours", row.ours), ("SDPA", row.sdpa), ("reference", row.reference)):
            if timing.note:
                lines.append(f"{row.kind} {row.shape} {name}: unavailable ({timing.note})")
    return lines


def render_text(cells: list[list[str]]) -> str:
    widths = [max(len(line[column]) for line in [list(HEADER), *cells]) for column in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in [list(HEADER), *cells]
    )


def large_logit_errors(kind: str, causal: bool, generator: torch.Generator, settings: Settings) -> list[str]:
    """Cells of one accuracy row: max |error| against float64 of out, dq, dk, dv, for ours and for the
    reference in the benchmark's dtype, and the worst ratio of the two."""
    shape = settings.accuracy_shape
    q, k, v, grad_out = (
        torch.randn(shape, generator=generator, dtype=torch.float64).to(settings.device) for _ in "qkvg"
    )
    q = reference.scale_to_max_logit(q, k, MAX_LOGIT)
    key_padding_mask = padding_mask(shape[0], shape[2], settings.device, generator)

    def results(backend: str, dtype: torch.dtype) -> list[torch.Tensor]:
        leaves = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = kernels.attention(kind, *leaves, key_padding_mask, causal, backend=backend)
        return [out.detach(), *torch.autograd.grad(out, leaves, grad_out.to(dtype))]

    try:
        truth = results("oracle", torch.float64)
        ours_errors = [
            (x.double() - t).abs().max().item() for x, t in zip(results("triton", settings.dtype), truth, strict=True)
        ]
        plain = results("oracle", settings.dtype)
        plain_errors = [(x.double() - t).abs().max().item() for x, t in zip(plain, truth, strict=True)]
    except Exception as error:  # an accuracy failure must not hide the timings
        return [kind, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}", "", ""]
    finally:
        settings.release_memory()
    worst = max(mine / max(theirs, 1e-30) for mine, theirs in zip(ours_errors, plain_errors, strict=True))
    return [
        kind,
        " / ".join(f"{e:.1e}" for e in ours_errors),
        " / ".join(f"{e:.1e}" for e in plain_errors),
        f"{worst:.2f}",
    ]


ACCURACY_HEADER = ("kind", "ours max err out / dq / dk / dv", "reference, same dtype", "worst ours / reference")


def render_markdown(cells: list[list[str]], title: str, accuracy: list[list[str]], accuracy_title: str, rows) -> str:
    """The timing table, its notes and the accuracy table, as markdown."""
    lines = [f"### {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    lines += [f"- {note}" for note in notes(rows)]
    if accuracy:
        lines += ["", f"#### {accuracy_title}", "", "| " + " | ".join(ACCURACY_HEADER) + " |"]
        lines += ["|" + "---|" * len(ACCURACY_HEADER)] + ["| " + " | ".join(line) + " |" for line in accuracy]
    return "\n".join(lines) + "\n"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--causal", action="store_true", help="causal masking (the CLM objective)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and short timings: a smoke run")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="attention kinds to run")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype of q, k, v (default bf16)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown to this path, after every row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="on the CPU in Triton's interpreter (set TRITON_INTERPRET=1), float32, one toy shape: every code path",
    )
    return parser.parse_args()


def settings_from(arguments: argparse.Namespace) -> Settings:
    if arguments.rehearse:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("bench/attention.py --rehearse runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
        # The interpreter has no bf16 arithmetic of its own: the rehearsal runs float32.
        return Settings("cpu", torch.float32, REHEARSAL_SHAPES, REHEARSAL_ACCURACY_SHAPE, warmup_ms=0, repeat_ms=0)
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU (none visible to torch); nothing was measured.")
    timing_ms = (5, 20) if arguments.quick else (25, 100)
    shapes = QUICK_SHAPES if arguments.quick else SHAPES
    return Settings("cuda", DTYPES[arguments.dtype], shapes, ACCURACY_SHAPE, *timing_ms)


def main() -> None:
    arguments = parse_arguments()
    settings = settings_from(arguments)
    import triton

    machine = torch.cuda.get_device_name() if settings.device == "cuda" else "CPU (Triton interpreter)"
    dtype_name = str(settings.dtype).removeprefix("torch.")
    mode = "causal" if arguments.causal else "bidirectional"
    title = (
        f"{machine}, torch {torch.__version__}, triton {triton.__version__}, {dtype_name}, "
        f"~{PADDED_FRACTION:.0%} keys padded, {mode}; FLOPs fwd 4*B*H*S*S*D, bwd 2.5x fwd"
        f"{', halved (causal)' if arguments.causal else ''}; speedup = peer ms / our ms"
    )
    accuracy_title = (
        f"Large logits (q scaled to logits of +-{MAX_LOGIT:g}), {mode}, B,H,S,D = "
        f"{','.join(map(str, settings.accuracy_shape))}, {dtype_name}: max |error| against the reference in float64"
    )
    print(title, flush=True)
    generator = torch.Generator().manual_seed(arguments.seed)
    rows, accuracy = [], []

    def write_markdown() -> None:
        if arguments.markdown:
            arguments.markdown.parent.mkdir(parents=True, exist_ok=True)
            cells = [table_cells(row, arguments.causal) for row in rows]
            arguments.markdown.write_text(render_markdown(cells, title, accuracy, accuracy_title, rows))

    for kind in arguments.kinds:
        for shape in settings.shapes:
            row = benchmark_row(kind, shape, arguments.causal, generator, settings)
            rows.append(row)
            print(f"  done {kind} {shape}: ours f+b {_ms(row.ours.forward_backward_ms)} ms", flush=True)
            write_markdown()
    for kind in arguments.kinds:
        accuracy.append(large_logit_errors(kind, arguments.causal, generator, settings))
        print(f"  large logits {kind}: worst ours / reference {accuracy[-1][-1]}", flush=True)
        write_markdown()

    print()
    print(render_text([table_cells(row, arguments.causal) for row in rows]))
    for line in notes(rows):
        print(line)
    print()
    print(accuracy_title)
    for line in accuracy:
        print("  ".join(line))
    if arguments.markdown:
        print(f"markdown tables written to {arguments.markdown}")


if __name__ == "__main__":
    main()
