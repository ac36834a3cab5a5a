"""The pretraining loop shared by a study's trials and the full retrain.

Objectives form a registry: each turns a batch of packed token ids into (inputs, labels,
causal). Everything random (batch order, masking) is a function of the seed and the step, so
a run resumed from a checkpoint continues exactly.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from data.corpus import PackedCorpus
from data.masking import Masker, causal_lm_labels
from data.tokenizer import Tokenizer
from hpo.config import Config
from model.bert import Encoder

Batch = tuple[torch.Tensor, torch.Tensor, bool]  # (input ids, labels, causal)


def _masked_lm(trainer: "Pretrainer", token_ids: torch.Tensor) -> Batch:
    inputs, labels = trainer.masker(token_ids, trainer.generator)
    return inputs, labels, False


def _causal_lm(trainer: "Pretrainer", token_ids: torch.Tensor) -> Batch:
    inputs, labels = causal_lm_labels(token_ids, trainer.tokenizer.pad_id)
    return inputs, labels, True


OBJECTIVES: dict[str, Callable[["Pretrainer", torch.Tensor], Batch]] = {
    "mlm": _masked_lm,
    "clm": _causal_lm,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def learning_rate_multiplier(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then constant, linear decay to zero or cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


@dataclass
class StepResult:
    loss: float
    tokens: int


class Pretrainer:
    """Model, optimiser, schedule and data position of one pretraining run."""

    def __init__(self, config: Config, corpus: PackedCorpus, tokenizer: Tokenizer, device: torch.device):
        self.config = config
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.device = device
        train = config.train
        torch.manual_seed(train.seed)
        self.model = Encoder(config.model, tokenizer.vocab_size).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameter_groups(train.learning_rate, train.layer_lr_decay, train.weight_decay),
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        self.tokens_per_step = train.batch_size * corpus.seq_len
        self.total_steps = max(1, train.budget_tokens // self.tokens_per_step)
        warmup_steps = max(1, int(train.warmup_fraction * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: learning_rate_multiplier(train.schedule, step, self.total_steps, warmup_steps),
        )
        self.masker = Masker(config.masking, tokenizer)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(train.seed)
        self.make_batch = OBJECTIVES[train.objective]
        self.step = 0

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def loss_on(self, token_ids: torch.Tensor) -> torch.Tensor:
        inputs, labels, causal = self.make_batch(self, token_ids.to(self.device, non_blocking=True))
        return self.model.prediction_loss(inputs, labels, inputs != self.tokenizer.pad_id, causal)

    def train_step(self) -> StepResult:
        """One optimiser step on batch number self.step."""
        self.model.train()
        loss = self.loss_on(self.corpus.batch(self.step, self.config.train.batch_size))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return StepResult(loss=loss.item(), tokens=self.tokens_per_step)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean objective loss on the fixed held-out sequences (masking seeded, so comparable)."""
        self.model.eval()
        saved_state = self.generator.get_state()
        self.generator.manual_seed(12345)
        losses = [
            self.loss_on(batch).item()
            for batch in self.corpus.validation_batches(
                self.config.train.batch_size, self.config.train.validation_sequences
            )
        ]
        self.generator.set_state(saved_state)
        self.model.train()
        return sum(losses) / max(1, len(losses))
