"""The encoder as a Hugging Face model: `import model.hf`, then AutoModel.from_pretrained(folder).

Importing this module registers BertHpoConfig with AutoConfig and BertHpoModel with AutoModel
under the model type "bert-pretraining-hpo". It imports transformers (seconds of start-up), so
nothing on the study's path imports it; `model/__init__.py` stays empty for the same reason.

The folder holds the whole encoder, MLM head included, so a saved model can be pretrained further.
The head's output matrix is the token table itself (F.linear with token_embedding.weight, not a
second parameter), so nothing is tied at save or load time and the table is stored once.
"""

import dataclasses

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutput

from model.bert import Encoder
from model.config import ModelConfig

MODEL_TYPE = "bert-pretraining-hpo"


class BertHpoConfig(PreTrainedConfig):
    """ModelConfig's fields, the vocabulary size, whether the encoder has the next-sentence parts (segment table
    and classifier), and whether it was trained causally (CLM), so that a loaded encoder embeds as it was trained.

    Hugging Face configs declare their fields with defaults, so this class repeats config.yaml's model section
    (the one place that does, kept equal to it by tests/test_hf.py), but for a field added after models were
    saved, whose default is what its absence meant. config.json holds every field, even at its default (a test
    says so), so a default changed later changes no saved model."""

    model_type = MODEL_TYPE
    # Hugging Face's common names for the same settings, for tools that read them.
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "max_position_embeddings": "max_seq_len",
    }

    vocab_size: int = 50261  # GPT-2's 50,257 ids and the four encoder specials (data/tokenizer.py)
    next_sentence: bool = False
    causal: bool = False
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    ffn_multiple: int = 4
    embedding_std: float = 0.1
    dropout: float = 0.0
    attention_kind: str = "standard"
    attention_backend: str = "auto"
    pooling: str = "mean"
    max_seq_len: int = 512
    sinusoid_amplitude: str = "unit"
    gradient_checkpointing: bool = False
    compile: bool = False
    parametrization: str = "standard"
    base_width: int = 128
    attention_multiplier: float = 1.0  # a saved model without it is from before it existed (model/config.py)
    zero_query: bool = True  # likewise

    @classmethod
    def from_model_config(
        cls, model: ModelConfig, vocab_size: int, next_sentence: bool, causal: bool = False
    ) -> "BertHpoConfig":
        return cls(vocab_size=vocab_size, next_sentence=next_sentence, causal=causal, **dataclasses.asdict(model))

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(ModelConfig)})


class BertHpoModel(PreTrainedModel):
    """Token ids and attention mask -> last hidden states; `embed` gives the probe's sentence embedding."""

    config_class = BertHpoConfig
    base_model_prefix = "bert_hpo"

    def __init__(self, config: BertHpoConfig):
        super().__init__(config)
        self.encoder = Encoder(config.model_config(), config.vocab_size, config.next_sentence, config.causal)
        self.post_init()

    @classmethod
    def from_encoder(cls, encoder: Encoder) -> "BertHpoModel":
        """A CPU copy of a trained encoder (weights copied, nothing drawn at random)."""
        config = BertHpoConfig.from_model_config(
            encoder.config,
            encoder.token_embedding.num_embeddings,
            encoder.segment_embedding is not None,
            encoder.causal,
        )
        with no_init_weights():
            model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Transformers calls this on every module a loaded checkpoint left without values.
        self.encoder._init_weights(module)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.encoder.token_embedding

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> BaseModelOutput:
        """input_ids (B, S); attention_mask (B, S), 1 or True for real tokens (default: all real);
        token_type_ids (B, S) in {0, 1}, used only by an encoder pretrained with next-sentence pairs. The
        attention runs as in pretraining: causal for an encoder trained by CLM (config.causal)."""
        key_padding_mask = self._key_padding_mask(input_ids, attention_mask)
        hidden = self.encoder.encode(input_ids, key_padding_mask, self.encoder.causal, token_type_ids)
        return BaseModelOutput(last_hidden_state=hidden)  # (B, S, H)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H) sentence embeddings, as the study's probe reads them: attention as in pretraining, segment 0,
        pooled by config.pooling."""
        return self.encoder.sentence_embedding(input_ids, self._key_padding_mask(input_ids, attention_mask))

    @staticmethod
    def _key_padding_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}; "
                "they must match (B, S)"
            )
        return attention_mask.bool()


AutoConfig.register(MODEL_TYPE, BertHpoConfig)
AutoModel.register(BertHpoConfig, BertHpoModel)
