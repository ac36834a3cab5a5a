"""A small BERT-style encoder: embeddings, pre-LayerNorm blocks, a tied MLM head, pooling.

Attention goes through kernels.attention(kind, ...), so the attention kind decides both the
kernel and (via model/positions.py) what positions the embedding layer adds. The parametrisation
(model/parametrization.py) sets the initial scales, the learning rates of the matrices, and the
attention's and readout's scales from the width.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import kernels
from model.config import ModelConfig
from model.parametrization import PARAMETRIZATIONS
from model.positions import POSITIONS_BY_ATTENTION_KIND, SinusoidalPositions


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, scale: float):
        super().__init__()
        self.config = config
        self.scale = scale  # the logits' factor of q.k
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)  # rows: queries, keys, values
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, seq_len, hidden = x.shape  # x (B, S, hidden)
        heads = self.config.num_heads
        qkv = self.qkv(x).view(batch, seq_len, 3, heads, hidden // heads)  # (B, S, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, S, D)
        attended = kernels.attention(  # (B, H, S, D)
            self.config.attention_kind, q, k, v, key_padding_mask, causal, self.config.attention_backend, self.scale
        )
        return self.out(attended.transpose(1, 2).reshape(batch, seq_len, hidden))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, attention_scale: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.attention = SelfAttention(config, attention_scale)
        self.ffn_norm = nn.LayerNorm(config.hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.ffn_multiple * config.hidden_size),
            nn.GELU(),
            nn.Linear(config.ffn_multiple * config.hidden_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), key_padding_mask, causal))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Encoder(nn.Module):
    """Token ids (B, S) -> hidden states (B, S, H), with an MLM/CLM head tied to the embeddings.

    With `next_sentence`, it also has BERT's segment (token type) embeddings and a next-sentence
    classifier on the pooled first token. A `causal` encoder was trained to predict the next token (CLM):
    its sentence embedding reads it the way it was trained, each token seeing only those before it.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, next_sentence: bool = False, causal: bool = False):
        super().__init__()
        config.validate()
        self.config = config
        self.parametrization = PARAMETRIZATIONS[config.parametrization](config)
        self.causal = causal
        self.token_embedding = nn.Embedding(vocab_size, config.hidden_size)
        self.segment_embedding = nn.Embedding(2, config.hidden_size) if next_sentence else None
        self.next_sentence_head = nn.Linear(config.hidden_size, 2) if next_sentence else None
        self.positions = POSITIONS_BY_ATTENTION_KIND[config.attention_kind](config)
        self.embedding_norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        attention_scale = self.parametrization.attention_scale
        self.blocks = nn.ModuleList(Block(config, attention_scale) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)
        self.head_transform = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(), nn.LayerNorm(config.hidden_size)
        )
        self.head_bias = nn.Parameter(torch.empty(vocab_size))  # (V,)
        # (V,): log q of the unigram law, the output prior and the sampled softmax's proposal (set_output_prior)
        self.register_buffer("unigram_log_probs", torch.empty(vocab_size), persistent=False)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """The starting state of `module`, one of this encoder's modules (non-persistent buffers included:
        model/hf.py applies it after a load, to what the checkpoint does not hold).

        Linear layers N(0, 0.02^2) as in BERT, at the parametrisation's scale (model/parametrization.py: under
        mup smaller as the width grows, and a zero query projection); embedding tables N(0, model.embedding_std^2);
        layer norms the identity; a zero output bias and the uniform law as the output prior.

        With BERT's 0.02 tables, a tied head, the exact softmax and Adam, every rare token's row is
        pushed by about one learning rate per step in a shared direction: in a short trial those
        rows lost what told them apart, and the probe scored below a random encoder (0.4975 against
        0.52 at LR 3e-3, 300k tokens). With the sampled softmax and lazy Adam (training/pretrain.py) a
        row moves only when its token is seen, so the table's scale sets how far a few sightings
        carry a row from its random start: config.yaml records the measured choice.
        """
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.parametrization.matrix_std(module is self.next_sentence_head))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            # Here, not on SelfAttention: Hugging Face's post_init initialises only modules with parameters.
            if self.parametrization.zero_query and any(module is block.attention.qkv for block in self.blocks):
                with torch.no_grad():
                    module.weight[: self.config.hidden_size].zero_()  # the query rows
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.embedding_std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, SinusoidalPositions):
            module.reset_table()
        elif module is self:
            nn.init.zeros_(self.head_bias)
            with torch.no_grad():
                self.unigram_log_probs.fill_(-math.log(len(self.unigram_log_probs)))

    @torch.no_grad()
    def set_output_prior(self, token_counts: torch.Tensor) -> None:
        """Start the output bias at the corpus's add-one log unigram frequencies, which are also the
        proposal of the sampled softmax.

        At step 0 the model then predicts the unigram distribution (loss ~7.5 nats, not ln V ~10.8):
        with a zero bias, a short run's Adam steps of about one learning rate each can move the bias
        only ~0.1 in a few hundred steps, so the whole budget went into a prior a count gives for free.
        """
        probabilities = (token_counts.double() + 1.0) / (token_counts.sum() + len(token_counts))
        self.unigram_log_probs.copy_(probabilities.log())
        self.head_bias.copy_(self.unigram_log_probs)

    def encode(
        self,
        input_ids: torch.Tensor,
        key_padding_mask: torch.Tensor,
        causal: bool = False,
        token_types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(f"sequence length {seq_len} exceeds model.max_seq_len = {self.config.max_seq_len}")
        x = self.token_embedding(input_ids)  # (B, S, H)
        if self.segment_embedding is not None and token_types is not None:
            x = x + self.segment_embedding(token_types)
        positions = self.positions(seq_len)  # (S, H), or None
        if positions is not None:
            x = x + positions
        x = self.dropout(self.embedding_norm(x))
        for block in self.blocks:
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(block, x, key_padding_mask, causal, use_reentrant=False)
            else:
                x = block(x, key_padding_mask, causal)
        return self.final_norm(x)

    def prediction_loss(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        key_padding_mask: torch.Tensor,
        causal: bool = False,
        token_types: torch.Tensor | None = None,
        next_sentence_labels: torch.Tensor | None = None,
        sampled_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy over the positions whose label is not -100 (logits only there), plus
        the next-sentence cross-entropy when its labels are given (BERT sums the two).

        With `sampled_ids` (N ids drawn from the unigram law), the softmax runs over the targets and
        the sampled ids only: see sampled_logits.
        """
        hidden = self.encode(input_ids, key_padding_mask, causal, token_types)  # (B, S, H)
        predicted = labels != -100  # (B, S)
        targets = labels[predicted]  # (P,)
        if sampled_ids is None:
            loss = F.cross_entropy(self.logits(hidden[predicted]).float(), targets)
        else:
            scaled = self.readout_features(hidden[predicted])  # (P, H)
            logits, target_index, target_log_inclusion = self.sampled_logits(scaled, targets, sampled_ids)  # (P, C)
            loss = F.cross_entropy(logits.float(), target_index) - target_log_inclusion
        if next_sentence_labels is not None:
            if self.next_sentence_head is None:
                raise ValueError("next-sentence labels given to an encoder built without next_sentence=True")
            pair_logits = self.next_sentence_head(self.pool(hidden))  # (B, 2)
            loss = loss + F.cross_entropy(pair_logits.float(), next_sentence_labels)
        return loss

    def readout_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """(P, H) final hidden states -> the head's features at the tied readout's scale (model/parametrization.py),
        whose products with the token table's rows are the logits."""
        return self.head_transform(hidden) * self.parametrization.readout_scale

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(P, H) final hidden states -> (P, V) the MLM head's logits over the whole vocabulary."""
        return F.linear(self.readout_features(hidden), self.token_embedding.weight, self.head_bias)

    def sampled_logits(
        self, scaled: torch.Tensor, targets: torch.Tensor, sampled_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sampled softmax (Jean et al. 2015): logits over the candidates, the distinct ids among the
        P targets and the N sampled ids, and each target's index among them.

        The targets are themselves (nearly) draws of the unigram law, so the candidates are the
        distinct values of P + N draws: each logit is corrected by minus the log probability that
        its id is among them, 1 - (1 - q)^(P + N). Then the log-sum-exp is a consistent estimate of
        the full softmax's and so is the gradient; the correction of the target's own logit only
        shifts the loss by a constant (the targets' mean log inclusion, returned third), which
        prediction_loss takes back out so that the loss reads as an estimate of the exact one. Only
        the candidates' rows of the tied table take a gradient; with a sparse token_embedding, that
        gradient is sparse too (and so is the optimiser's work).
        """
        candidates, inverse = torch.unique(torch.cat([targets, sampled_ids]), return_inverse=True)  # (C,)
        draws = len(targets) + len(sampled_ids)
        log_inclusion = torch.log(-torch.expm1(draws * torch.log1p(-self.unigram_log_probs[candidates].exp())))
        rows = F.embedding(candidates, self.token_embedding.weight, sparse=self.token_embedding.sparse)  # (C, H)
        logits = F.linear(scaled, rows, self.head_bias[candidates] - log_inclusion.to(scaled.dtype))
        target_index = inverse[: len(targets)]  # (P,)
        return logits, target_index, log_inclusion[target_index].mean()

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler: tanh of a linear map of the first token's state."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def sentence_embedding(self, input_ids: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """(B, H) embedding for the probe, the encoder read as it was trained (causal after CLM; one segment, id
        0, after next-sentence pairs), pooled as model.pooling says (POOLINGS)."""
        token_types = torch.zeros_like(input_ids) if self.segment_embedding is not None else None
        hidden = self.encode(input_ids, key_padding_mask, self.causal, token_types)  # (B, S, H)
        return POOLINGS[self.config.pooling](self, hidden, key_padding_mask)

    def parameter_groups(
        self, learning_rate: float, layer_decay: float, weight_decay: float, embedding_lr_multiplier: float = 1.0
    ) -> list[dict]:
        """Optimizer groups. Layer-wise LR decay: the head gets the full rate, each level below it (top
        block, ..., first block, embedding norm) a factor `layer_decay` less than the one above.

        The embedding tables (token, segment, learned positions) form their own groups at
        learning_rate * embedding_lr_multiplier, outside the layer decay: the tied token table is both
        the lowest layer and the output layer, and a short run needs its rows to move far faster than
        the hidden matrices (BENCHMARKS.md, "Trials that learn"). The token table's group comes first, alone.
        Weight decay applies to the matrices of linear layers only, never to tables, norms or biases; the
        parametrisation sets the matrices' LR and decay from these (mup: the LR / m, Parametrization.matrix_group).
        The levels come from LAYER_LEVELS; parameters it does not name (final norm, MLM head, pooler,
        next-sentence head) are the head's level, depth + 1.
        """
        depth = self.config.num_layers
        tables = {id(module.weight) for module in self.modules() if isinstance(module, nn.Embedding)}
        token_table = self.token_embedding.weight
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        other_tables = []
        for name, parameter in self.named_parameters():
            if parameter is token_table:
                continue
            if id(parameter) in tables:
                other_tables.append(parameter)
                continue
            level = next((rule(name) for prefix, rule in LAYER_LEVELS.items() if name.startswith(prefix)), depth + 1)
            groups.setdefault((level, is_matrix(parameter)), []).append(parameter)
        table_rate = learning_rate * embedding_lr_multiplier
        optimizer_groups = [{"params": [token_table], "lr": table_rate, "weight_decay": 0.0}]
        if other_tables:
            optimizer_groups.append({"params": other_tables, "lr": table_rate, "weight_decay": 0.0})
        for (level, matrices), params in sorted(groups.items()):
            rate = learning_rate * layer_decay ** (depth + 1 - level)
            settings = {"lr": rate, "weight_decay": 0.0}
            if matrices:
                settings = self.parametrization.matrix_group(rate, weight_decay)
            optimizer_groups.append({"params": params, **settings})
        return optimizer_groups


# Sentence embeddings for the probe, by model.pooling: (encoder, hidden (B, S, H), key_padding_mask (B, S)) -> (B, H).
def mean_pooling(encoder: Encoder, hidden: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """The mean over real tokens."""
    weights = key_padding_mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def last_token_pooling(encoder: Encoder, hidden: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """The last real token's state (under causal attention, the only one that has seen the whole text)."""
    last = key_padding_mask.long().cumsum(1).argmax(1)  # (B,) index of the last real token
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


def first_token_pooling(encoder: Encoder, hidden: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """The first token's ([CLS]) state."""
    return hidden[:, 0]


def bert_pooling(encoder: Encoder, hidden: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """BERT's pooler (trained by next-sentence prediction only)."""
    return encoder.pool(hidden)


POOLINGS: dict[str, Callable[[Encoder, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pooling,
    "first": first_token_pooling,
    "last": last_token_pooling,
    "pooler": bert_pooling,
}

# Layer-wise LR decay: a parameter's level (0 the lowest) by the start of its name, for the parameters
# below the head; Encoder.parameter_groups gives each level below the head a factor layer_decay more.
LAYER_LEVELS: dict[str, Callable[[str], int]] = {
    "embedding_norm.": lambda name: 0,
    "blocks.": lambda name: int(name.split(".")[1]) + 1,  # blocks.<i>.… -> i + 1
}


def is_matrix(parameter: nn.Parameter) -> bool:
    """A linear layer's matrix, which takes weight decay and the parametrisation's LR; norms' and biases' vectors
    take neither (the embedding tables have groups of their own, without decay)."""
    return parameter.ndim >= 2
