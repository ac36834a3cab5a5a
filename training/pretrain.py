"""The pretraining loop shared by a study's trials and the full retrain.

Objectives form a registry: each turns a batch of packed token ids into (inputs, labels,
causal). The data a step sees (rows and masking) is a function of the seed, the step and the
micro-batch index only, and dropout draws from a random stream saved with the state, so a run
resumed from a checkpoint continues exactly, and one global batch split over processes or
micro-batches sees the same data.
"""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from data.corpus import PackedCorpus
from data.masking import Masker, causal_lm_labels
from data.pairs import next_sentence_pairs
from data.tokenizer import Tokenizer
from model.bert import Encoder
from training.config import ConfigError, RunConfig, TrainConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32 runs without autocast
# A time budget's first step cannot know its share of the budget; runs take thousands of steps on any device.
FIRST_STEP_SHARE = 1e-3


@dataclass
class Batch:
    """What an objective makes of packed rows: the model's inputs and its targets."""

    input_ids: torch.Tensor  # (B, S)
    labels: torch.Tensor  # (B, S), -100 where nothing is predicted
    causal: bool
    token_types: torch.Tensor | None = None  # (B, S) segments, with next-sentence prediction
    next_sentence_labels: torch.Tensor | None = None  # (B,)


def _masked_lm(trainer: "Pretrainer", token_ids: torch.Tensor) -> Batch:
    if not trainer.config.train.next_sentence:
        inputs, labels = trainer.masker(token_ids, trainer.generator)
        return Batch(inputs, labels, causal=False)
    pairs = next_sentence_pairs(token_ids, trainer.tokenizer.sep_id, trainer.generator)
    inputs, labels = trainer.masker(pairs.input_ids, trainer.generator)
    return Batch(inputs, labels, False, pairs.token_types, pairs.labels)


def _causal_lm(trainer: "Pretrainer", token_ids: torch.Tensor) -> Batch:
    inputs, labels = causal_lm_labels(token_ids, trainer.tokenizer.pad_id)
    return Batch(inputs, labels, causal=True)


OBJECTIVES: dict[str, Callable[["Pretrainer", torch.Tensor], Batch]] = {
    "mlm": _masked_lm,
    "clm": _causal_lm,
}


def initial_encoder(config: RunConfig, vocab_size: int, seed: int | None = None) -> Encoder:
    """The encoder a run starts from, built after seeding torch with train.seed (or `seed`): a run and
    the random-init baseline of its architecture get the same weights."""
    torch.manual_seed(config.train.seed if seed is None else seed)
    return Encoder(
        config.model, vocab_size, next_sentence=config.train.next_sentence, causal=config.train.objective == "clm"
    )


def random_init_encoder(config: RunConfig, vocab_size: int, device: torch.device) -> Encoder:
    """The encoder a run of `config` starts from, on `device`, built without moving torch's random stream:
    the random-init reference that the run's probe scores are read against."""
    saved_state = torch.get_rng_state()
    try:
        return initial_encoder(config, vocab_size).to(device)
    finally:
        torch.set_rng_state(saved_state)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def derived_seed(*keys: int) -> int:
    """A 64-bit seed that depends on nothing but `keys` (e.g. seed, step, micro-batch index)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def learning_rate_multiplier(schedule: str, progress: float, warmup_fraction: float, decay_fraction: float) -> float:
    """Linear warm-up from zero over the first `warmup_fraction` of the budget, then constant, linear decay
    to zero or cosine decay to zero at progress 1, or (wsd) constant until the last `decay_fraction` of the
    budget and a linear decay to zero over it. A step takes the multiplier of the progress at its end
    (Pretrainer.step_end_progress), so the first step does not run at zero."""
    if progress < warmup_fraction:
        return progress / warmup_fraction
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        return min(1.0, max(0.0, (1.0 - progress) / decay_fraction))
    decay = min(1.0, (progress - warmup_fraction) / (1.0 - warmup_fraction))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * decay))
    return 1.0 - decay


@dataclass(frozen=True)
class Execution:
    """How a step runs. The defaults are a study trial's: one process, one micro-batch, float32.

    The global batch (train.batch_size rows) of a step is cut into accumulation_steps * world_size
    micro-batches; process `rank` takes the contiguous slice of micro-batches rank * A .. rank * A + A - 1.
    """

    accumulation_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16 ("auto" is resolved before this)
    rank: int = 0
    world_size: int = 1
    # With the sampled softmax, the token table's gradient is row-sparse in one process. DDP cannot
    # all-reduce sparse gradients with NCCL, so under DDP it is dense and made row-sparse after the
    # all-reduce (row_sparse); True asks one process for the same, to reproduce a DDP run exactly.
    dense_embedding_gradients: bool = False

    @property
    def sparse_embedding_gradients(self) -> bool:
        return self.world_size == 1 and not self.dense_embedding_gradients

    @property
    def micro_batches(self) -> int:
        """Micro-batches per step over all processes."""
        return self.accumulation_steps * self.world_size


def _gradients_and_norm(parameters: list[nn.Parameter]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradients (sparse ones coalesced) and their total L2 norm."""
    gradients = [p.grad.coalesce() if p.grad.is_sparse else p.grad for p in parameters if p.grad is not None]
    norms = [torch.linalg.vector_norm(g.values() if g.is_sparse else g) for g in gradients]
    return gradients, torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def gradient_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The total L2 norm of the gradients, dense and sparse (row-sparse embedding) alike."""
    return _gradients_and_norm(parameters)[1]


def clip_gradient_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ over dense and sparse (row-sparse embedding) gradients alike; returns the norm
    before clipping."""
    gradients, total = _gradients_and_norm(parameters)
    if not gradients:
        return total
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for parameter, gradient in zip((p for p in parameters if p.grad is not None), gradients, strict=True):
        parameter.grad = gradient.mul_(scale)
    return total


def row_sparse(gradient: torch.Tensor) -> torch.Tensor:
    """A dense (V, H) embedding gradient as a coalesced sparse tensor of its non-zero rows (for SparseAdam,
    where DDP had to all-reduce it densely)."""
    rows = gradient.any(dim=1).nonzero().squeeze(1)  # sorted and distinct: coalesced by construction
    values = gradient.index_select(0, rows)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, gradient.shape, is_coalesced=True, check_invariants=False)


def build_optimizers(model: Encoder, train: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW over the model's parameter groups (their LRs set by the parametrisation and the layer decay); with
    the sampled softmax, the token table (the first group) gets SparseAdam instead, lazy Adam on the rows a step
    touched, as AdamW with weight decay 0."""
    groups = model.parameter_groups(
        train.learning_rate, train.layer_lr_decay, train.weight_decay, train.embedding_lr_multiplier
    )
    adam = {"betas": (0.9, 0.98), "eps": 1e-6}
    if train.sampled_softmax is None:
        return [torch.optim.AdamW(groups, **adam)]
    token_table = groups.pop(0)
    return [
        torch.optim.AdamW(groups, **adam),
        torch.optim.SparseAdam(token_table["params"], lr=token_table["lr"], **adam),
    ]


COMPILE_BACKEND = "inductor"  # of model.compile; tests use "aot_eager", which generates no code


class _PredictionLoss(nn.Module):
    """DDP synchronises gradients only for calls through its forward; this makes the loss a forward."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.encoder.prediction_loss(*args, **kwargs)


@dataclass
class StepResult:
    loss: float  # mean over this process's micro-batches
    tokens: int  # over all processes
    learning_rate: float  # train.learning_rate x the schedule, as used by this step (the top layer's non-matrix rate)
    gradient_norm: float  # of all the gradients, before clipping


def check_execution(train: TrainConfig, execution: Execution) -> None:
    """The batch must split into the execution's micro-batches (and, with next-sentence pairs, two rows each)."""
    if train.batch_size % execution.micro_batches:
        raise ConfigError(
            f"train.batch_size = {train.batch_size} does not split into {execution.accumulation_steps} "
            f"micro-batch(es) x {execution.world_size} process(es); make it a multiple of {execution.micro_batches}"
        )
    if train.next_sentence and train.batch_size // execution.micro_batches < 2:
        raise ConfigError(
            f"train.nsp needs at least 2 rows per micro-batch (a 'not next' segment comes from another row); "
            f"train.batch_size = {train.batch_size} over {execution.micro_batches} micro-batch(es) is too small"
        )


class Pretrainer:
    """Model, optimiser, schedule and data position of one pretraining run.

    The budget is train.budget_tokens, or train.budget_seconds of training wall time when set;
    `progress` in [0, 1] measures it, and the learning-rate schedule follows progress.
    """

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # training time; a test may drive a fake one

    def __init__(
        self,
        config: RunConfig,
        corpus: PackedCorpus,
        tokenizer: Tokenizer,
        device: torch.device,
        execution: Execution = Execution(),
    ):
        self.config = config
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.device = device
        self.execution = execution
        check_execution(config.train, execution)
        self.model = self._build_model()
        self.proposal = self.model.unigram_log_probs.exp()  # (V,) what the sampled softmax draws from
        self.training_loss = self._training_loss()
        self.tokens_per_step = config.train.batch_size * corpus.seq_len
        self.total_steps = max(1, config.train.budget_tokens // self.tokens_per_step)
        self.budget_seconds = config.train.budget_seconds
        self.step = 0
        self.train_seconds = 0.0
        self.last_loss = math.nan  # of the latest step
        self.optimizers = build_optimizers(self.model, config.train)
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: self.learning_rate_multiplier())
            for optimizer in self.optimizers
        ]
        self.scaler = torch.amp.GradScaler(device.type, enabled=execution.precision == "fp16")
        self.masker = Masker(config.masking, tokenizer)
        self.generator = torch.Generator(device=device)
        self.make_batch = OBJECTIVES[config.train.objective]

    def _build_model(self) -> Encoder:
        """The run's starting encoder on its device: output prior from the corpus, compiled if asked, and a
        row-sparse token table with the sampled softmax in one process."""
        config, tokenizer = self.config, self.tokenizer
        model = initial_encoder(config, tokenizer.vocab_size).to(self.device)
        if config.model.compile:
            # The encoder compiles to one graph, our attention kernels as custom ops inside it
            # (tests/test_compile.py); the loss around it, whose shapes depend on the data (the
            # predicted positions, the sampled ids), stays eager. The weights stay the module's own.
            model.encode = torch.compile(model.encode, backend=COMPILE_BACKEND)
        counts = torch.from_numpy(self.corpus.token_counts(tokenizer.vocab_size)).clone()
        counts[[tokenizer.cls_id, tokenizer.mask_id, tokenizer.pad_id, tokenizer.sep_id]] = 0  # never targets
        model.set_output_prior(counts)
        # Row-sparse gradients for the token table when only a few rows take one (sampled softmax):
        # a dense (V, H) gradient and Adam update over all rows cost more than the rest of a tiny step.
        sampled = config.train.sampled_softmax is not None
        model.token_embedding.sparse = sampled and self.execution.sparse_embedding_gradients
        return model

    def _training_loss(self) -> Callable[..., torch.Tensor]:
        """The model's loss, or under torchrun its DDP wrapper's, which all-reduces the gradients."""
        execution = self.execution
        if execution.world_size == 1:
            return self.model.prediction_loss
        # Same initial weights on every process (seeded before the model was built), its own dropout stream on each.
        torch.manual_seed(derived_seed(self.config.train.seed, execution.rank))
        return DistributedDataParallel(
            _PredictionLoss(self.model),
            device_ids=[self.device] if self.device.type == "cuda" else None,
            find_unused_parameters=True,  # the pooler takes no part in the pretraining loss
            forward_sync_buffers=False,  # the only buffer is a constant sinusoid table
        )

    def learning_rate_multiplier(self) -> float:
        """The schedule's multiplier for the coming step (at the progress of its end)."""
        train = self.config.train
        return learning_rate_multiplier(
            train.schedule, self.step_end_progress, train.warmup_fraction, train.decay_fraction
        )

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def progress(self) -> float:
        """Share of the budget used: steps for a token budget, training wall time for a time budget."""
        if self.budget_seconds is None:
            return self.step / self.total_steps
        return self.train_seconds / self.budget_seconds

    @property
    def step_end_progress(self) -> float:
        """Progress at the end of the coming step: exact for a token budget; for a time budget, estimated
        from the mean step time so far (before any step: FIRST_STEP_SHARE of the budget)."""
        if self.budget_seconds is None:
            return (self.step + 1) / self.total_steps
        if self.step == 0:
            return FIRST_STEP_SHARE
        return (self.train_seconds * (self.step + 1) / self.step) / self.budget_seconds

    @property
    def finished(self) -> bool:
        return self.progress >= 1.0

    @property
    def tokens_seen(self) -> int:
        """Tokens trained on so far (all processes)."""
        return self.step * self.tokens_per_step

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.execution.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def loss_on(self, token_ids: torch.Tensor, loss_function: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Objective loss of a (B, S) batch; loss_function is the model's, or its DDP wrapper's in training.
        In training mode the sampled softmax (train.sampled_softmax) draws its ids here; in evaluation
        the loss is always the exact softmax's, so validation losses compare across settings."""
        batch = self.make_batch(self, token_ids.to(self.device, non_blocking=True))
        sampled_ids = None
        if self.model.training and self.config.train.sampled_softmax is not None:
            sampled_ids = torch.multinomial(
                self.proposal, self.config.train.sampled_softmax, replacement=True, generator=self.generator
            )  # (N,)
        with self.autocast():
            return loss_function(
                batch.input_ids,
                batch.labels,
                batch.input_ids != self.tokenizer.pad_id,
                batch.causal,
                batch.token_types,
                batch.next_sentence_labels,
                sampled_ids,
            )

    def _gradient_sync(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients once per step, after the last micro-batch's backward."""
        if isinstance(self.training_loss, DistributedDataParallel) and not last_micro_batch:
            return self.training_loss.no_sync()
        return contextlib.nullcontext()

    def train_step(self) -> StepResult:
        """One optimiser step on batch number self.step (this process's micro-batches of it)."""
        started = self.clock()
        self.model.train()
        execution = self.execution
        group = self.optimizers[0].param_groups[-1]  # the schedule's multiplier, as the scheduler set it
        learning_rate = self.config.train.learning_rate * group["lr"] / group["initial_lr"]
        global_batch = self.corpus.batch(self.step, self.config.train.batch_size, self.config.train.seed)  # (B, S)
        rows = len(global_batch) // execution.micro_batches
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(execution.accumulation_steps):
            index = execution.rank * execution.accumulation_steps + micro
            self.generator.manual_seed(derived_seed(self.config.train.seed, self.step, index))
            with self._gradient_sync(micro == execution.accumulation_steps - 1):
                loss = self.loss_on(global_batch[index * rows : (index + 1) * rows], self.training_loss)
                self.scaler.scale(loss / execution.accumulation_steps).backward()
            loss_sum += loss.detach()
        table = self.model.token_embedding.weight
        if len(self.optimizers) > 1 and table.grad is not None and not table.grad.is_sparse:
            table.grad = row_sparse(table.grad)  # for SparseAdam, after DDP's dense all-reduce
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        parameters = list(self.model.parameters())
        if self.config.train.grad_clip > 0:
            norm = clip_gradient_norm(parameters, self.config.train.grad_clip)
        else:
            norm = gradient_norm(parameters)
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        mean_loss = loss_sum.item() / execution.accumulation_steps  # .item() also waits for the GPU
        self.last_loss = mean_loss
        self.step += 1
        self.train_seconds += self.clock() - started
        for scheduler in self.schedulers:  # after the clock, so a time budget's schedule sees this step's time
            scheduler.step()
        return StepResult(mean_loss, self.tokens_per_step, learning_rate, norm.item())

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean objective loss on the fixed held-out sequences (masking seeded, so comparable)."""
        self.model.eval()
        self.generator.manual_seed(12345)
        losses = [
            self.loss_on(batch, self.model.prediction_loss).item()
            for batch in self.corpus.validation_batches(
                self.config.train.batch_size, self.config.train.validation_sequences
            )
        ]
        self.model.train()
        return sum(losses) / max(1, len(losses))

    def random_state(self) -> dict[str, torch.Tensor | None]:
        """This process's dropout streams (the masking is reseeded per micro-batch and needs none)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit-identically."""
        return {
            "model": self.model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "random": self.random_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        for scheduler, scheduler_state in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(scheduler_state)
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.train_seconds = state["train_seconds"]
        torch.set_rng_state(state["random"]["cpu"])
        if self.device.type == "cuda" and state["random"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["random"]["cuda"], self.device)
