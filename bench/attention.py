"""Our Triton attention kernels against torch SDPA and the plain PyTorch reference, on one GPU.

    python bench/attention.py [--causal] [--quick] [--kinds standard rope] [--markdown PATH]

For each attention kind and shape (B, H, S, D), in bfloat16 with about 10% of the keys padded at
the tail of each row (lengths vary by row), it times the forward and forward+backward passes with
triton.testing.do_bench (median) of:
- ours: kernels.attention(kind, ..., backend="triton");
- SDPA: torch.nn.functional.scaled_dot_product_attention with the same boolean mask (rope: after
  the PyTorch rotary embedding; exposb: plain softmax SDPA, a speed peer of another formula), on
  the first SDPA backend of flash, efficient, cudnn, math that runs forward and backward;
- reference: kernels.attention(kind, ..., backend="oracle"), which materialises the S x S matrix.
FLOPs: forward 4*B*H*S*S*D (two matmuls), backward 2.5x that (five matmuls), halved when causal;
padded keys are counted as if real. Speedup = peer time / our time (> 1: ours is faster).
"""

import argparse
import sys
import warnings
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
PADDED_FRACTION = 0.1
DTYPE = torch.bfloat16
DEVICE = "cuda"


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


def pick_sdpa_backend(kind, inputs, key_padding_mask, causal):
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
            torch.cuda.synchronize()
            return backend.name.lower(), attention
        except RuntimeError as error:
            reasons.append(f"{backend.name.lower()}: {str(error).splitlines()[0][:80]}")
        finally:
            for tensor in inputs:
                tensor.grad = None
    raise RuntimeError("no SDPA backend ran: " + "; ".join(reasons))


def time_implementation(attention, inputs, grad_out, warmup_ms, repeat_ms) -> Timing:
    """Median forward and forward+backward times; an error (OOM, missing kernel) becomes a note."""
    from triton.testing import do_bench

    def forward():
        with torch.no_grad():
            attention(*inputs)

    def forward_backward():
        attention(*inputs).backward(grad_out)

    timing = Timing()
    try:
        timing.forward_ms = do_bench(forward, warmup=warmup_ms, rep=repeat_ms, return_mode="median")
        timing.forward_backward_ms = do_bench(
            forward_backward, warmup=warmup_ms, rep=repeat_ms, grad_to_none=inputs, return_mode="median"
        )
    except Exception as error:  # one failing implementation must not stop the whole table
        timing.note = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
    finally:
        for tensor in inputs:
            tensor.grad = None
        torch.cuda.empty_cache()
    return timing


def max_error_against_float32_oracle(kind, inputs, key_padding_mask, causal) -> float | None:
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
        torch.cuda.empty_cache()


def benchmark_row(kind, shape, causal, generator, warmup_ms, repeat_ms) -> Row:
    inputs = [torch.randn(shape, generator=generator).to(DEVICE, DTYPE).requires_grad_() for _ in "qkv"]
    grad_out = torch.randn(shape, generator=generator).to(DEVICE, DTYPE)
    key_padding_mask = padding_mask(shape[0], shape[2], DEVICE, generator)

    def ours(q, k, v):
        return kernels.attention(kind, q, k, v, key_padding_mask, causal, backend="triton")

    def oracle(q, k, v):
        return kernels.attention(kind, q, k, v, key_padding_mask, causal, backend="oracle")

    max_error = max_error_against_float32_oracle(kind, inputs, key_padding_mask, causal)
    try:
        backend_name, sdpa = pick_sdpa_backend(kind, inputs, key_padding_mask, causal)
        sdpa_timing = time_implementation(sdpa, inputs, grad_out, warmup_ms, repeat_ms)
    except RuntimeError as error:
        backend_name, sdpa_timing = "none", Timing(note=str(error)[:200])
    return Row(
        kind=kind,
        shape=shape,
        ours=time_implementation(ours, inputs, grad_out, warmup_ms, repeat_ms),
        sdpa=sdpa_timing,
        reference=time_implementation(oracle, inputs, grad_out, warmup_ms, repeat_ms),
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


def render_markdown(cells: list[list[str]], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--causal", action="store_true", help="causal masking (the CLM objective)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and short timings: a smoke run")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="attention kinds to run")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown to this path")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU (none visible to torch); nothing was measured.")
    import triton

    shapes = QUICK_SHAPES if arguments.quick else SHAPES
    warmup_ms, repeat_ms = (5, 20) if arguments.quick else (25, 100)
    generator = torch.Generator().manual_seed(arguments.seed)
    title = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
        f"{str(DTYPE).removeprefix('torch.')}, ~{PADDED_FRACTION:.0%} keys padded, "
        f"{'causal' if arguments.causal else 'bidirectional'}; FLOPs fwd 4*B*H*S*S*D, bwd 2.5x fwd"
        f"{', halved (causal)' if arguments.causal else ''}; speedup = peer ms / our ms"
    )
    print(title, flush=True)

    rows = []
    for kind in arguments.kinds:
        for shape in shapes:
            row = benchmark_row(kind, shape, arguments.causal, generator, warmup_ms, repeat_ms)
            rows.append(row)
            print(f"  done {kind} {shape}: ours f+b {_ms(row.ours.forward_backward_ms)} ms", flush=True)

    cells = [table_cells(row, arguments.causal) for row in rows]
    print()
    print(render_text(cells))
    for line in notes(rows):
        print(line)
    if arguments.markdown:
        arguments.markdown.parent.mkdir(parents=True, exist_ok=True)
        arguments.markdown.write_text(render_markdown(cells, title) + "".join(f"\n- {n}" for n in notes(rows)) + "\n")
        print(f"markdown table written to {arguments.markdown}")


if __name__ == "__main__":
    main()
