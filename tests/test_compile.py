"""torch.compile of the encoder: one graph, no breaks, for every attention kind and backend.

Our Triton kernels are torch custom ops, opaque to dynamo; on the CPU they run in Triton's
interpreter (tests/conftest.py). `aot_eager` traces forward and backward through AOT autograd as
inductor does, without generating code, so each compile takes seconds.
"""

import pytest
import torch
import torch._dynamo

import kernels
from hpo.config import defaults
from model.bert import Encoder
from tests.oracle import INTERPRETED

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference"]
if DEVICE == "cuda" or INTERPRETED:
    BACKENDS.append("triton")
VOCAB_SIZE = 500


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: no cached graph, no recompile limit reached by earlier tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_encoder(kind: str, backend: str) -> Encoder:
    """One block, no dropout (so compiled and eager runs compute the same thing)."""
    torch.manual_seed(0)
    config = defaults(
        "model", hidden_size=64, num_layers=1, num_heads=2, dropout=0.0, attention_kind=kind, attention_backend=backend
    )
    return Encoder(config, VOCAB_SIZE).to(DEVICE)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, labels (4 predicted positions per row), key_padding_mask with a padded tail in row 1."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 24), generator=generator)
    key_padding_mask = torch.ones(2, 24, dtype=torch.bool)
    key_padding_mask[1, 18:] = False
    labels = torch.full_like(input_ids, -100)
    labels[:, 2:18:4] = input_ids[:, 2:18:4]
    return input_ids.to(DEVICE), labels.to(DEVICE), key_padding_mask.to(DEVICE)


def assert_no_graph_break(function, *args) -> None:
    explanation = torch._dynamo.explain(function)(*args)
    reasons = [str(reason.reason).splitlines()[0] for reason in explanation.break_reasons]
    assert explanation.graph_break_count == 0, f"graph breaks: {reasons}"
    assert explanation.graph_count == 1


def assert_compiled_matches_eager(loss_fn, encoder: Encoder) -> None:
    """The loss and every parameter's gradient agree between a fullgraph compile and eager mode."""
    results = []
    for function in (loss_fn, torch.compile(loss_fn, backend="aot_eager", fullgraph=True)):
        encoder.zero_grad(set_to_none=True)
        loss = function()
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in encoder.parameters() if p.grad is not None])
    eager, compiled = results
    assert len(eager) == len(compiled)
    for expected, got in zip(eager, compiled, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(kernels.ATTENTION_KINDS))
def test_encoder_compiles_to_one_graph(kind, backend):
    encoder = tiny_encoder(kind, backend)
    input_ids, _, key_padding_mask = batch()
    assert_no_graph_break(encoder.encode, input_ids, key_padding_mask)
    assert_compiled_matches_eager(lambda: encoder.encode(input_ids, key_padding_mask).square().mean(), encoder)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["standard", "exposb"])
def test_training_loss_compiles_to_one_graph_with_dynamic_output_shapes(kind, backend):
    """prediction_loss keeps the predicted positions only (hidden[labels != -100]): a shape that
    depends on the data, on which dynamo breaks the graph twice unless it may capture such shapes,
    so a compiled training step needs torch._dynamo.config.capture_dynamic_output_shape_ops."""
    encoder = tiny_encoder(kind, backend)
    input_ids, labels, key_padding_mask = batch()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        assert_no_graph_break(encoder.prediction_loss, input_ids, labels, key_padding_mask)
        assert_compiled_matches_eager(lambda: encoder.prediction_loss(input_ids, labels, key_padding_mask), encoder)
