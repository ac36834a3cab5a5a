import dataclasses
import math

import pytest
import torch

import kernels
from hpo.config import default_config, defaults
from kernels import reference
from model.bert import Encoder
from model.positions import LearnedPositions, NoPositions, SinusoidalPositions

KINDS = list(kernels.ATTENTION_KINDS)


def padded_batch(vocab: int = 100, batch: int = 3, seq_len: int = 12):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    key_padding_mask = torch.ones(batch, seq_len, dtype=torch.bool)
    key_padding_mask[1, 7:] = False
    key_padding_mask[2, 3:] = False
    return input_ids, key_padding_mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_backward_every_kind_with_padding(kind, causal):
    torch.manual_seed(0)
    model = Encoder(defaults("model", hidden_size=32, num_layers=2, num_heads=2, attention_kind=kind, dropout=0.0), 100)
    input_ids, key_padding_mask = padded_batch()
    labels = torch.full_like(input_ids, -100)
    labels[:, 1] = input_ids[:, 1]
    labels[0, 9] = input_ids[0, 9]
    loss = model.prediction_loss(input_ids, labels, key_padding_mask, causal)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.token_embedding.weight.grad.abs().sum() > 0
    # Padding must not leak into real tokens: changing padded ids leaves real hidden states alone.
    model.eval()
    hidden = model.encode(input_ids, key_padding_mask, causal)
    changed = input_ids.masked_fill(~key_padding_mask, 7)
    hidden_changed = model.encode(changed, key_padding_mask, causal)
    torch.testing.assert_close(hidden[key_padding_mask], hidden_changed[key_padding_mask])


def test_position_handling_follows_the_attention_kind():
    expected = {
        "standard": LearnedPositions,
        "absolute": SinusoidalPositions,
        "rope": NoPositions,
        "exposb": NoPositions,
    }
    for kind, module in expected.items():
        model = Encoder(defaults("model", hidden_size=32, num_heads=2, attention_kind=kind), 50)
        assert type(model.positions) is module
    sinusoidal = Encoder(defaults("model", hidden_size=32, num_heads=2, attention_kind="absolute"), 50)
    assert not any("positions" in name for name, _ in sinusoidal.named_parameters())


def test_rope_and_exposb_encoders_see_order_without_position_tables():
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    swapped = torch.tensor([[1, 3, 2, 4, 5]])  # same tokens, two of them trade places
    mask = torch.ones_like(ids, dtype=torch.bool)
    for kind in ("rope", "exposb", "standard"):
        torch.manual_seed(0)
        model = Encoder(defaults("model", hidden_size=32, num_heads=2, attention_kind=kind, dropout=0.0), 50).eval()
        with torch.no_grad():
            for block in model.blocks:
                block.attention.qkv.weight.mul_(30)  # sharp attention, so order effects are visible
        first_token = model.encode(ids, mask)[0, 0]
        assert not torch.allclose(first_token, model.encode(swapped, mask)[0, 0], atol=1e-4)
    # Without any position signal the first token could not tell the two orders apart.
    model = Encoder(defaults("model", hidden_size=32, num_heads=2, attention_kind="rope", dropout=0.0), 50).eval()
    model.config.attention_kind = "standard"
    torch.testing.assert_close(model.encode(ids, mask)[0, 0], model.encode(swapped, mask)[0, 0])


def test_head_computes_logits_only_at_predicted_positions(monkeypatch):
    model = Encoder(defaults("model", hidden_size=32, num_heads=2), 100)
    input_ids, key_padding_mask = padded_batch()
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[1, 4] = 5, 6
    shapes = []
    original = torch.nn.functional.linear

    def spy(x, weight, bias=None):
        if weight is model.token_embedding.weight:
            shapes.append(tuple(x.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    model.prediction_loss(input_ids, labels, key_padding_mask)
    assert shapes == [(2, 32)]


@pytest.mark.parametrize("pooling", ["mean", "first", "last", "pooler"])
def test_sentence_embedding_ignores_padding(pooling):
    model = Encoder(defaults("model", hidden_size=32, num_heads=2, pooling=pooling), 100).eval()
    input_ids, key_padding_mask = padded_batch()
    embedding = model.sentence_embedding(input_ids, key_padding_mask)
    changed = model.sentence_embedding(input_ids.masked_fill(~key_padding_mask, 9), key_padding_mask)
    assert embedding.shape == (3, 32)
    torch.testing.assert_close(embedding, changed)


def test_layer_wise_learning_rate_decay_and_embedding_tables_outside_it():
    config = defaults("model", hidden_size=32, num_layers=3, num_heads=2, parametrization="standard")
    model = Encoder(config, 50)
    groups = model.parameter_groups(learning_rate=1.0, layer_decay=0.5, weight_decay=0.1, embedding_lr_multiplier=30)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert rate_of[id(model.head_bias)] == 1.0
    assert rate_of[id(model.blocks[2].ffn[0].weight)] == 0.5
    assert rate_of[id(model.blocks[0].ffn[0].weight)] == 0.125
    assert rate_of[id(model.embedding_norm.weight)] == 0.0625
    # The tied table (input and output layer) and the learned position table: their own rate, no decay.
    assert groups[0]["params"] == [model.token_embedding.weight]
    assert rate_of[id(model.token_embedding.weight)] == rate_of[id(model.positions.table.weight)] == 30.0
    assert decay_of[id(model.positions.table.weight)] == decay_of[id(model.token_embedding.weight)] == 0.0
    assert decay_of[id(model.blocks[0].ffn[0].weight)] == 0.1
    assert decay_of[id(model.blocks[0].ffn[0].bias)] == decay_of[id(model.final_norm.weight)] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def masked_batch(vocab: int):
    input_ids, key_padding_mask = padded_batch(vocab)
    labels = torch.full_like(input_ids, -100)
    labels[:, 1:3] = input_ids[:, 1:3]
    return input_ids, labels, key_padding_mask


@pytest.mark.parametrize("parametrization", ["standard", "mup"])
def test_sampled_softmax_that_draws_every_id_is_the_exact_softmax(parametrization):
    """With every id among the candidates and each included for sure, the corrections vanish (under mup, at twice
    its base width, both paths scale the tied readout alike)."""
    torch.manual_seed(0)
    vocab = 40
    config = defaults("model", hidden_size=16, num_layers=1, num_heads=2, parametrization=parametrization, base_width=8)
    model = Encoder(config, vocab)
    model.set_output_prior(torch.arange(vocab) + 5)
    input_ids, labels, key_padding_mask = masked_batch(vocab)
    exact = model.prediction_loss(input_ids, labels, key_padding_mask)
    every_id_often = torch.arange(vocab).repeat(2000)  # inclusion probability 1 - (1 - q)^80000 = 1.0
    sampled = model.prediction_loss(input_ids, labels, key_padding_mask, sampled_ids=every_id_often)
    torch.testing.assert_close(sampled, exact)


def test_sampled_softmax_estimates_the_exact_loss_and_gradient_and_touches_only_candidate_rows():
    torch.manual_seed(0)
    vocab = 2000
    model = Encoder(defaults("model", hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), vocab)
    counts = (10_000 / torch.arange(1, vocab + 1)).round()  # Zipf's law, as text
    model.set_output_prior(counts)
    proposal = model.unigram_log_probs.exp()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.multinomial(proposal, 3 * 12, replacement=True, generator=generator).view(3, 12)
    key_padding_mask = torch.ones_like(input_ids, dtype=torch.bool)
    labels = torch.full_like(input_ids, -100)
    labels[:, 1:5] = input_ids[:, 1:5]
    head = model.head_transform[0].weight

    def loss_and_gradient(sampled_ids=None) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = model.prediction_loss(input_ids, labels, key_padding_mask, sampled_ids=sampled_ids)
        loss.backward()
        return loss.item(), head.grad.flatten().clone()

    exact_loss, exact_gradient = loss_and_gradient()
    draws = [torch.multinomial(proposal, 400, replacement=True, generator=generator) for _ in range(30)]
    estimates = [loss_and_gradient(sampled_ids) for sampled_ids in draws]
    mean_loss = sum(loss for loss, _ in estimates) / len(estimates)
    mean_gradient = torch.stack([gradient for _, gradient in estimates]).mean(0)
    # Consistent, not unbiased: with 400 of 2,000 ids drawn both lie close to the exact values.
    assert abs(mean_loss - exact_loss) < 0.05 * exact_loss
    assert torch.nn.functional.cosine_similarity(mean_gradient, exact_gradient, dim=0) > 0.95
    model.token_embedding.sparse = True
    model.zero_grad()
    model.prediction_loss(input_ids, labels, key_padding_mask, sampled_ids=draws[0]).backward()
    gradient = model.token_embedding.weight.grad.coalesce()
    assert gradient.is_sparse
    touched = set(gradient.indices()[0].tolist())
    assert touched <= set(input_ids.flatten().tolist()) | set(draws[0].tolist())
    assert set(labels[labels != -100].tolist()) <= touched


def test_sparse_and_dense_token_table_gradients_agree():
    torch.manual_seed(0)
    vocab = 300
    model = Encoder(defaults("model", hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), vocab)
    input_ids, labels, key_padding_mask = masked_batch(vocab)
    sampled_ids = torch.randint(0, vocab, (50,))
    gradients = []
    for sparse in (False, True):
        model.token_embedding.sparse = sparse
        model.zero_grad()
        model.prediction_loss(input_ids, labels, key_padding_mask, sampled_ids=sampled_ids).backward()
        gradients.append(model.token_embedding.weight.grad.to_dense())
    torch.testing.assert_close(gradients[1], gradients[0])


def test_exposb_reference_weights_sum_to_one_and_skip_padded_keys():
    torch.manual_seed(0)
    q, k = (torch.randn(2, 2, 9, 8, dtype=torch.float64) * 2 for _ in range(2))
    key_padding_mask = torch.ones(2, 9, dtype=torch.bool)
    key_padding_mask[1, 5:] = False
    key_padding_mask[1, 1] = False
    for causal in (False, True):
        weights = reference.stickbreaking_weights(q, k, key_padding_mask, causal)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 9, dtype=torch.float64))
        padded = ~key_padding_mask[1]
        off_diagonal = ~torch.eye(9, dtype=torch.bool)
        assert (weights[1][:, :, padded] * off_diagonal[:, padded]).abs().max() == 0
        if causal:
            assert weights.triu(1).abs().max() == 0
    # A padded key breaks nothing: removing it leaves the other weights unchanged.
    weights = reference.stickbreaking_weights(q, k, key_padding_mask)
    keep = [0, 2, 3, 4]
    trimmed = reference.stickbreaking_weights(q[1:, :, keep], k[1:, :, keep], torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(weights[1:, :, keep][..., keep], trimmed)


def test_softmax_reference_fully_padded_row_is_zero_without_nan():
    q, k, v = (torch.randn(1, 1, 4, 8, requires_grad=True) for _ in range(3))
    out = reference.softmax_attention(q, k, v, torch.zeros(1, 4, dtype=torch.bool))
    out.sum().backward()
    assert out.abs().max() == 0
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_output_prior_makes_the_first_prediction_the_unigram_law():
    torch.manual_seed(0)
    counts = torch.tensor([0, 5, 100, 20, 1000, 0, 3, 1])
    model = Encoder(defaults("model", hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), vocab_size=len(counts))
    model.set_output_prior(counts)
    smoothed = (counts.double() + 1) / (counts.sum() + len(counts))
    # Softmax is shift-invariant: the bias alone reproduces the add-one unigram law exactly.
    torch.testing.assert_close(torch.softmax(model.head_bias.double(), 0), smoothed)


def test_pretraining_starts_from_the_corpus_unigram_law(data_dir, tokenizer, tmp_path):
    from pathlib import Path

    from data.corpus import load_corpus
    from hpo.config import load_config
    from training.pretrain import Pretrainer

    config_path = Path(__file__).resolve().parents[1] / "config.yaml"
    overrides = ["search_space={}", "data.sources=[austen]", f"data.cache_dir={tmp_path}", "model.dropout=0.0"]
    config = load_config(config_path, overrides)
    corpus = load_corpus(data_dir, config.data, tokenizer)
    trainer = Pretrainer(config, corpus, tokenizer, torch.device("cpu"))
    counts = corpus.token_counts(tokenizer.vocab_size).copy()
    assert counts[tokenizer.cls_id] == len(corpus.train)  # the cached counts are left as they are
    bias = trainer.model.head_bias
    assert bias[tokenizer.cls_id] == bias.min()  # every row starts with [CLS], yet it is never a target
    counts[tokenizer.cls_id] = 0
    assert bias[int(counts.argmax())] == bias.max()
    # The first step's masked-LM loss is near the unigram entropy (~7.5 nats), far below ln V.
    assert trainer.train_step().loss < math.log(tokenizer.vocab_size) - 2.0


@pytest.mark.parametrize("embedding_std", [1.0, 0.1])
def test_embedding_tables_have_their_scale_and_linear_layers_bert_scale(embedding_std):
    torch.manual_seed(0)
    config = defaults(
        "model", hidden_size=64, num_layers=1, num_heads=2, embedding_std=embedding_std, parametrization="standard"
    )
    model = Encoder(config, vocab_size=5000)
    assert abs(model.token_embedding.weight.std().item() / embedding_std - 1.0) < 0.02
    assert abs(model.positions.table.weight.std().item() / embedding_std - 1.0) < 0.05
    assert abs(model.blocks[0].attention.qkv.weight.std().item() - 0.02) < 0.002


def test_model_compile_trains_as_eager(data_dir, tokenizer, tmp_path, monkeypatch):
    """`model.compile: true`: the trainer's encoder runs compiled, its steps match eager ones, and
    its weights keep their names (checkpoints load either way). (Here rather than in test_compile.py,
    which CI also runs in the triton-3.6 environment that has no tokenizer.)"""
    from pathlib import Path

    import torch._dynamo

    import training.pretrain
    from data.corpus import load_corpus
    from hpo.config import load_config
    from training.pretrain import Pretrainer

    monkeypatch.setattr(training.pretrain, "COMPILE_BACKEND", "aot_eager")
    config_path = Path(__file__).resolve().parents[1] / "config.yaml"
    overrides = ["search_space={}", "data.sources=[austen]", f"data.cache_dir={tmp_path}", "train.budget_seconds=null"]
    losses, state_keys, graphs = [], [], []
    for compile_flag in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        config = load_config(config_path, [*overrides, f"model.compile={str(compile_flag).lower()}"])
        corpus = load_corpus(data_dir, config.data, tokenizer)
        trainer = Pretrainer(config, corpus, tokenizer, torch.device("cpu"))
        losses.append([trainer.train_step().loss for _ in range(3)])
        state_keys.append(list(trainer.model.state_dict()))
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs == [0, 1]  # compiled only when asked, to one graph
    torch._dynamo.reset()
    eager, compiled = losses
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert state_keys[0] == state_keys[1]


@pytest.mark.parametrize(("objective", "nsp"), [("clm", False), ("mlm", True), ("mlm", False)])
def test_the_probe_reads_an_encoder_as_it_was_trained(objective, nsp, encode_calls):
    """Causal attention for a CLM encoder, segment 0 for a next-sentence one: the probe's embedding (and so its
    random-init reference) sees what pretraining saw."""
    from training.pretrain import initial_encoder
    from training.probe import embed

    config = default_config()
    config.model = defaults("model", hidden_size=32, num_heads=2)
    config.train = dataclasses.replace(config.train, objective=objective, nsp=nsp)
    encoder = initial_encoder(config, vocab_size=100)
    embed(encoder, [[1, 5, 7], [1, 9]], pad_id=0, batch_size=8, device=torch.device("cpu"))
    assert encode_calls == [(objective == "clm", [0] if nsp else None)]


def test_last_token_pooling_takes_each_rows_last_real_token():
    from model.bert import last_token_pooling

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # (B, S, H)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert last_token_pooling(None, hidden, mask).flatten().tolist() == [2.0, 7.0]


def test_absolute_positions_at_the_token_tables_scale():
    from model.positions import SinusoidalPositions

    unit = SinusoidalPositions(defaults("model", sinusoid_amplitude="unit", embedding_std=0.1))
    table = SinusoidalPositions(defaults("model", sinusoid_amplitude="table", embedding_std=0.1))
    assert unit.table.abs().max().item() == pytest.approx(1.0, abs=1e-3)
    # The root mean square of a position vector equals a table row's at the start: embedding_std.
    assert table.table.pow(2).mean(1).sqrt().mean().item() == pytest.approx(0.1, rel=0.02)


def named_groups(model: Encoder, **settings) -> list[tuple[list[str], float, float]]:
    """parameter_groups as (parameter names, lr, weight decay), in order."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = model.parameter_groups(**settings)
    return [([names[id(p)] for p in group["params"]], group["lr"], group["weight_decay"]) for group in groups]


GROUP_SETTINGS = {"learning_rate": 1e-3, "layer_decay": 0.5, "weight_decay": 0.01, "embedding_lr_multiplier": 30}


def encoders_at_base_width(kind: str, attention_multiplier: float, zero_query: bool) -> tuple[Encoder, Encoder]:
    """(standard, mup) encoders at hidden_size == base_width (64, head size 32), drawn from the same seed."""
    encoders = []
    for parametrization in ("standard", "mup"):
        torch.manual_seed(0)
        config = defaults(
            "model",
            hidden_size=64,
            num_heads=2,
            attention_kind=kind,
            parametrization=parametrization,
            base_width=64,
            attention_multiplier=attention_multiplier,
            zero_query=zero_query,
        )
        encoders.append(Encoder(config, 100, next_sentence=True).eval())
    return encoders[0], encoders[1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("attention_multiplier", [1.0, math.sqrt(32)])
def test_mup_at_its_base_width_is_standard_but_for_the_attention(kind, attention_multiplier):
    """hidden_size == base_width: the same weights (but a zero query projection) and the same learning rates and
    weight decays; the attention's logits are attention_multiplier x q.k / head size against q.k / sqrt(head
    size): standard's scale when the multiplier is sqrt(head size)."""
    standard, mup = encoders_at_base_width(kind, attention_multiplier, zero_query=True)
    mup_weights = mup.state_dict()
    for name, weight in standard.state_dict().items():
        if name.endswith("attention.qkv.weight"):
            assert not mup_weights[name][:64].any(), f"{name}: the query rows start at zero"
            assert torch.equal(mup_weights[name][64:], weight[64:]), name
        else:
            assert torch.equal(mup_weights[name], weight), name
    assert named_groups(mup, **GROUP_SETTINGS) == named_groups(standard, **GROUP_SETTINGS)
    assert mup.parametrization.readout_scale == standard.parametrization.readout_scale
    assert standard.blocks[0].attention.scale == 1 / math.sqrt(32)
    assert mup.blocks[0].attention.scale == pytest.approx(attention_multiplier / 32, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_mup_without_the_zero_query_at_standard_attention_scale_is_standard_at_its_base_width(kind):
    """model.zero_query false and attention_multiplier sqrt(head size): at hidden_size == base_width, the same
    weights, learning rates, scales and outputs as standard."""
    standard, mup = encoders_at_base_width(kind, math.sqrt(32), zero_query=False)
    for name, weight in standard.state_dict().items():
        assert torch.equal(mup.state_dict()[name], weight), name
    assert named_groups(mup, **GROUP_SETTINGS) == named_groups(standard, **GROUP_SETTINGS)
    assert mup.blocks[0].attention.scale == pytest.approx(standard.blocks[0].attention.scale, rel=1e-12)
    with torch.no_grad():
        batch = padded_batch(vocab=100)
        torch.testing.assert_close(mup.encode(*batch), standard.encode(*batch), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("zero_query", [False, True])
def test_mup_scales_the_matrices_with_width_and_keeps_input_like_parameters(zero_query):
    """At 4x the base width: hidden matrices start at std 0.02 / 2 (the query projection at zero with
    model.zero_query) and learn at LR / 4 (weight decay x 4), the next-sentence readout at 0.02 / 4 and LR / 4;
    tables, biases and norms keep their scale and LR; layer-wise LR decay still applies; the tied readout is
    scaled by base_width**-0.5 / 4."""
    torch.manual_seed(0)
    config = defaults(
        "model",
        hidden_size=256,
        num_heads=8,
        num_layers=2,
        parametrization="mup",
        base_width=64,
        attention_multiplier=1.0,
        zero_query=zero_query,
    )
    model = Encoder(config, 2000, next_sentence=True)
    block = model.blocks[0]
    query, key_value = block.attention.qkv.weight[:256], block.attention.qkv.weight[256:]
    hidden_matrices = [key_value, block.attention.out.weight, block.ffn[0].weight]
    hidden_matrices += [block.ffn[2].weight, model.head_transform[0].weight, model.pooler.weight]
    hidden_matrices += [] if zero_query else [query]
    for matrix in hidden_matrices:
        assert matrix.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.next_sentence_head.weight.std().item() == pytest.approx(0.005, rel=0.15)
    assert query.any() != zero_query
    assert model.token_embedding.weight.std().item() == pytest.approx(config.embedding_std, rel=0.02)
    assert model.positions.table.weight.std().item() == pytest.approx(config.embedding_std, rel=0.05)

    settings = {}
    for names, lr, weight_decay in named_groups(model, **GROUP_SETTINGS):
        settings.update({name: (lr, weight_decay) for name in names})
    head, first_block = 1e-3, 1e-3 * 0.5**2
    assert settings["blocks.0.ffn.0.weight"] == (pytest.approx(first_block / 4), pytest.approx(0.04))
    assert settings["blocks.0.ffn.0.bias"] == (first_block, 0.0)
    assert settings["blocks.0.attention_norm.weight"] == (first_block, 0.0)
    assert settings["next_sentence_head.weight"] == settings["pooler.weight"] == (head / 4, pytest.approx(0.04))
    assert settings["head_bias"] == (head, 0.0)
    assert settings["token_embedding.weight"] == settings["positions.table.weight"] == (30e-3, 0.0)
    assert model.parametrization.readout_scale == pytest.approx(64**-0.5 / 4)
    assert block.attention.scale == 1 / 32


@pytest.mark.parametrize("kind", KINDS)
def test_reference_attention_takes_the_scale(kind, monkeypatch):
    """The PyTorch paths (SDPA for the softmax kinds) apply the logits' scale as the float64 oracle does, and the
    encoder hands them its parametrisation's."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 12, 16, generator=generator, dtype=torch.float64) for _ in "qkv")
    _, key_padding_mask = padded_batch()
    results = {
        (backend, scale): kernels.attention(kind, q, k, v, key_padding_mask, False, backend, scale)
        for backend in ("reference", "oracle")
        for scale in (None, 1 / 16)
    }
    torch.testing.assert_close(results["reference", 1 / 16], results["oracle", 1 / 16])
    torch.testing.assert_close(results["reference", None], results["oracle", None])
    assert not torch.allclose(results["oracle", 1 / 16], results["oracle", None])

    scales = []
    monkeypatch.setattr(kernels, "attention", lambda *args: scales.append(args[-1]) or args[3])
    config = defaults(
        "model",
        hidden_size=32,
        num_heads=2,
        attention_kind=kind,
        parametrization="mup",
        base_width=16,
        attention_multiplier=2.0,
    )
    Encoder(config, 50).encode(*padded_batch(vocab=50))
    assert scales == [2 / 16, 2 / 16]  # one per layer: attention_multiplier / head size


@pytest.mark.parametrize(("parametrization", "width_multiplier"), [("standard", 1), ("mup", 2)])
def test_pretraining_keeps_the_sparse_token_table_and_layer_decay_under_either_parametrization(
    parametrization, width_multiplier, data_dir, tokenizer, tmp_path
):
    """config.yaml's recipe (sampled softmax, lazy Adam on the token table) at 256 wide, layer decay 0.5: the table
    keeps the recipe's LR and moves only the rows a step touched; under mup (base width 128) the matrices learn at
    half the rate of their level."""
    from pathlib import Path

    from data.corpus import load_corpus
    from hpo.config import load_config
    from training.pretrain import Pretrainer

    overrides = ["search_space={}", "data.sources=[austen]", f"data.cache_dir={tmp_path}", "train.budget_seconds=null"]
    overrides += ["model.hidden_size=256", "model.num_heads=4", f"model.parametrization={parametrization}"]
    config = load_config(Path(__file__).resolve().parents[1] / "config.yaml", [*overrides, "train.layer_lr_decay=0.5"])
    trainer = Pretrainer(config, load_corpus(data_dir, config.data, tokenizer), tokenizer, torch.device("cpu"))
    dense, sparse = trainer.optimizers
    table = trainer.model.token_embedding.weight
    learning_rate = config.train.learning_rate
    assert isinstance(sparse, torch.optim.SparseAdam) and sparse.param_groups[0]["params"] == [table]
    assert sparse.param_groups[0]["initial_lr"] == learning_rate * config.train.embedding_lr_multiplier
    initial_lr = {id(p): group["initial_lr"] for group in dense.param_groups for p in group["params"]}
    first_block = trainer.model.blocks[0].ffn[0]  # two levels below the head
    assert initial_lr[id(first_block.weight)] == pytest.approx(learning_rate * 0.25 / width_multiplier)
    assert initial_lr[id(first_block.bias)] == pytest.approx(learning_rate * 0.25)

    start = table.detach().clone()
    assert all(math.isfinite(trainer.train_step().loss) for _ in range(2))
    moved = (table.detach() != start).any(dim=1)
    assert 0 < moved.sum() < len(table) / 4
