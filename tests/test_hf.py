"""The Hugging Face face of the encoder: save_pretrained -> AutoModel.from_pretrained gives the same
model for every attention kind, the config round-trips, and a retrain's output folder loads."""

import dataclasses
import json

import pytest
import torch
from test_retrain import TINY
from transformers import AutoConfig, AutoModel

import kernels
import main
from hpo.config import defaults, load_config
from hpo.export import write_config
from model.config import ModelConfig
from model.hf import BertHpoConfig, BertHpoModel
from training import retrain as retrain_module
from training.probe import embed
from training.retrain import run_config

KINDS = list(kernels.ATTENTION_KINDS)
VOCAB = 100


def tiny_model(
    kind: str, pooling: str = "mean", next_sentence: bool = False, seed: int = 0, causal: bool = False
) -> BertHpoModel:
    model_config = defaults("model", hidden_size=32, num_layers=2, attention_kind=kind, pooling=pooling, max_seq_len=64)
    torch.manual_seed(seed)
    return BertHpoModel(BertHpoConfig.from_model_config(model_config, VOCAB, next_sentence, causal)).eval()


def padded_batch(pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 12, 7 and 3 real tokens (ids 1..VOCAB-1), padded with pad_id."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, VOCAB, (3, 12), generator=generator)
    attention_mask = torch.ones(3, 12, dtype=torch.long)  # as a Hugging Face tokenizer returns it
    attention_mask[1, 7:] = 0
    attention_mask[2, 3:] = 0
    return input_ids.masked_fill(attention_mask == 0, pad_id), attention_mask


@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_loads_with_automodel_and_embeds_the_same(kind, tmp_path):
    saved = tiny_model(kind)
    saved.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    loaded = AutoModel.from_pretrained(tmp_path)

    assert type(loaded) is BertHpoModel and not loaded.training
    assert loaded.config.model_config() == saved.config.model_config()
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.embed(input_ids, attention_mask), saved.embed(input_ids, attention_mask), rtol=0, atol=1e-6
        )
        hidden = loaded(input_ids, attention_mask=attention_mask).last_hidden_state
        real = attention_mask.bool()
        expected = saved(input_ids, attention_mask=attention_mask).last_hidden_state
        torch.testing.assert_close(hidden[real], expected[real], rtol=0, atol=1e-6)
    # Non-persistent buffers (the sinusoid table, the output prior) are rebuilt, not left as loaded memory.
    for (name, buffer), (_, expected_buffer) in zip(loaded.named_buffers(), saved.named_buffers(), strict=True):
        assert torch.equal(buffer, expected_buffer), name


@pytest.mark.parametrize("pooling", ["mean", "first", "pooler"])
def test_embed_is_the_probe_embedding(pooling, tmp_path):
    """Every part of the encoder travels (segment table, next-sentence head, pooler), and `embed` pools as
    the study's probe does, which takes unpadded token lists."""
    tiny_model("rope", pooling, next_sentence=True).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    input_ids, attention_mask = padded_batch()
    token_lists = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]

    probe_features = embed(loaded.encoder, token_lists, pad_id=0, batch_size=2, device=torch.device("cpu"))

    with torch.no_grad():
        embedded = loaded.embed(input_ids, attention_mask)
    torch.testing.assert_close(embedded, torch.from_numpy(probe_features), rtol=0, atol=1e-6)


def test_config_round_trips_and_speaks_hugging_face_names(tmp_path, tokenizer):
    # Same fields, config.yaml's defaults; but a key added after models were saved takes what its absence meant.
    assert BertHpoConfig().model_config() == dataclasses.replace(
        defaults("model"), parametrization="standard", attention_multiplier=1.0, zero_query=True
    )
    assert BertHpoConfig().vocab_size == tokenizer.vocab_size
    model_config = defaults(
        "model",
        hidden_size=48, num_layers=3, num_heads=4, ffn_multiple=2, embedding_std=0.5, dropout=0.2,
        attention_kind="exposb", attention_backend="reference", pooling="first", max_seq_len=96,
        gradient_checkpointing=True, compile=True, base_width=32, attention_multiplier=2.0,
        zero_query=not defaults("model").zero_query,
        parametrization={"standard": "mup", "mup": "standard"}[defaults("model").parametrization],
        sinusoid_amplitude={"unit": "table", "table": "unit"}[defaults("model").sinusoid_amplitude],
    )  # fmt: skip
    default = defaults("model")
    assert all(getattr(model_config, f.name) != getattr(default, f.name) for f in dataclasses.fields(default))
    config = BertHpoConfig.from_model_config(model_config, vocab_size=321, next_sentence=True, causal=True)

    assert BertHpoConfig.from_dict(config.to_dict()).model_config() == model_config
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is BertHpoConfig and loaded.model_config() == model_config
    assert (loaded.vocab_size, loaded.next_sentence, loaded.causal) == (321, True, True)
    assert (loaded.num_hidden_layers, loaded.num_attention_heads, loaded.max_position_embeddings) == (3, 4, 96)


def test_a_saved_config_writes_every_field_even_at_its_default(tmp_path):
    # Hugging Face writes only what differs from a default; a field left out would load as whatever the class's
    # default is then, so config.json must hold every one (then a later default changes no saved model).
    BertHpoConfig().save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    names = [f.name for f in dataclasses.fields(ModelConfig)] + ["vocab_size", "next_sentence", "causal"]
    assert [name for name in names if name not in written] == []


def test_a_mup_encoder_loads_with_its_parametrization(tmp_path):
    """Built by Hugging Face under mup (twice its base width): a zero query projection and the scaled matrices, as
    the study's encoder starts; saved and loaded, the same parametrisation and the same embeddings."""
    model_config = defaults(
        "model", hidden_size=64, num_heads=2, max_seq_len=64, parametrization="mup", base_width=32, zero_query=True
    )
    torch.manual_seed(0)
    saved = BertHpoModel(BertHpoConfig.from_model_config(model_config, VOCAB, next_sentence=False)).eval()
    attention = saved.encoder.blocks[0].attention
    assert not attention.qkv.weight[:64].any() and attention.scale == model_config.attention_multiplier / 32
    saved.save_pretrained(tmp_path)

    loaded = AutoModel.from_pretrained(tmp_path)

    assert loaded.encoder.parametrization == saved.encoder.parametrization
    assert loaded.encoder.parametrization.width_multiplier == 2.0
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(input_ids, attention_mask), saved.embed(input_ids, attention_mask))


def test_from_encoder_copies_the_weights_and_draws_nothing():
    encoder = tiny_model("standard", next_sentence=True).encoder
    random_state = torch.get_rng_state()

    copied = BertHpoModel.from_encoder(encoder)

    assert torch.equal(torch.get_rng_state(), random_state)
    assert copied.config.model_config() == encoder.config and copied.config.next_sentence
    expected = encoder.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in copied.encoder.state_dict().items())


def test_retrain_output_folder_loads_with_automodel(tmp_path, monkeypatch, capfd):
    config_file = tmp_path / "best_config.yaml"
    overrides = [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]
    write_config(load_config(main.PROJECT_DIR / "config.yaml", overrides), config_file)
    # The AG News probes take most of a tiny retrain and are tested in test_retrain.py.
    monkeypatch.setattr(retrain_module, "evaluate", lambda trainer, data_dir: {"validation_loss": 0.0})
    monkeypatch.setattr(retrain_module, "summary", lambda results, output_dir: "done")
    output = tmp_path / "retrain"

    assert main.main(["retrain", "--config", str(config_file), "--output", str(output)]) == 0
    assert "Writing model shards" not in capfd.readouterr().err  # no Hugging Face progress bar in the log

    assert {"config.json", "model.safetensors", "model.pt", "results.yaml"} <= {p.name for p in output.iterdir()}
    assert not list(output.glob(".*"))  # no staging folder or temporary file left behind
    loaded = AutoModel.from_pretrained(output)
    assert loaded.config.model_config() == run_config(load_config(config_file)).model
    weights = torch.load(output / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(tensor, weights[name]) for name, tensor in loaded.encoder.state_dict().items())
    assert loaded.encoder.state_dict().keys() == weights.keys()


@pytest.mark.parametrize(("causal", "next_sentence"), [(True, False), (False, True)])
def test_a_loaded_encoder_embeds_as_it_was_trained(tmp_path, encode_calls, causal, next_sentence):
    """AutoModel reads the direction and the segment from the saved config, as the study's probe does."""
    tiny_model("exposb", next_sentence=next_sentence, causal=causal).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.causal is causal and loaded.encoder.causal is causal
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        loaded.embed(input_ids, attention_mask=attention_mask)
        loaded(input_ids, attention_mask=attention_mask)
    assert encode_calls[0] == (causal, [0] if next_sentence else None)
    assert encode_calls[1][0] is causal  # forward too attends as in pretraining
