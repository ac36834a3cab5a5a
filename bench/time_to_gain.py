"""How many seconds until an encoder has learned a given amount? config.yaml's recipe trained for equal seconds by our
loop and by Hugging Face BertForMaskedLM, on the same corpus, tokenizer and packed sequences, each probed by the
project's probe beside its own random-init encoder. The ways:

  ours         the trial's loop (training.pretrain.Pretrainer) on our encoder (model.bert.Encoder);
  HF recipe    BertForMaskedLM of the same shape (vocabulary, width, depth, heads, feed-forward, tied decoder,
               attn_implementation="sdpa") given the settings of our recipe that its loop has: masking rate
               (DataCollatorForLanguageModeling, 80/10/10), batch, peak LR and token-table LR multiplier (AdamW
               parameter groups), weight decay on matrices only, Adam's betas and eps, warm-up and schedule, dropout;
  HF defaults  the same model with the BERT paper's settings (not Trainer's): 15% masking, LR 1e-4, batch 32, linear
               decay to zero after a 1% warm-up, dropout 0.1, one LR for every parameter (about 100 steps in 600 s
               on this CPU: it cannot learn in that budget);
  HF one LR    the same model as a Hugging Face user would train it: plain AdamW with Trainer's betas (0.9, 0.999)
               and eps 1e-8, one LR for every parameter, linear decay to zero after the recipe's warm-up, the
               recipe's masking rate, batch and dropout; one run per LR of --peer_learning_rates (default 5e-4,
               1e-3, 2e-3, 4e-3), and ours is compared with the LR of the best mean gain at the longest point. That
               LR is chosen on the very seeds it is then compared on: the best of 4 noisy means is biased up, so
               the comparison is the peer's favourable case.

The models differ in more than these settings (model/bert.py, training/pretrain.py, transformers' modeling_bert.py and
data_collator.py). None of the differences is ablated here, so no part of a gap can be put on any one of them:
  - initial scales: our token and position tables N(0, 0.1^2) (model.embedding_std), BERT's N(0, 0.02^2) (the
    padding id's row zero); linear layers N(0, 0.02^2) in both;
  - output prior: our output bias starts at the corpus's log unigram frequencies (loss about 7.5 nats at step 0),
    BERT's at zero (ln 50,261 = 10.8);
  - logit scale: our head's features are multiplied by hidden_size**-0.5 before the tied table (standard
    parametrisation), BERT's are not;
  - LayerNorm: ours pre-LN blocks and a final LayerNorm, BERT post-LN (after each residual sum); eps 1e-5 against
    1e-12; BERT also adds a learned segment vector (token type 0) to every token, ours has no segment table;
  - softmax: ours over the batch's targets and 2,048 ids drawn from the unigram law (sampled softmax, corrected for
    the draws), BERT's exact over all 50,261 ids, with logits at every position (the loss at the predicted ones);
  - token-table updates: ours lazy (SparseAdam: only the rows among the sampled softmax's candidates move and update
    their moments), BERT's dense AdamW: under the exact softmax every row takes a gradient at every step, so Adam
    moves every row by up to about its LR at every step;
  - per-group LRs: HF recipe has ours (tables at LR x embedding_lr_multiplier, the rest at LR; layer decay is not
    applied: config.yaml's 1.0 is none); HF defaults and HF one LR one LR for every parameter;
  - Adam: ours and HF recipe betas (0.9, 0.98), eps 1e-6; HF one LR (0.9, 0.999), 1e-8; HF defaults (0.9, 0.999),
    1e-6; weight decay 0.01 on the matrices of linear layers in every way;
  - schedule: every way's LR follows the share of the time budget spent; ours and HF recipe config.yaml's
    (constant after a 5% warm-up), HF defaults and HF one LR linear decay to zero;
  - masking: the same law (each ordinary token with probability `rate`, 80/10/10), drawn by other code and streams;
    our random replacements are ordinary ids, the collator's any of the 50,261 (the four specials included);
  - dropout: none in ours, HF recipe and HF one LR; 0.1 in HF defaults, on BERT's attention probabilities too
    (ours has no attention dropout).
Data order: a run's rows are corpus.batch(step, batch, seed), so at a seed ours, HF recipe and HF one LR (batch 8)
train on the same rows in the same order, HF defaults (batch 32) on other rows; masks and initial weights differ.

    python -m bench.time_to_gain          # every way; 5, 15, 30, 75, 150, 300, 600 s; seeds 0, 1; two at a time
    python -m bench.time_to_gain --ways "HF one LR" --peer_learning_rates 5e-4,1e-3 --output studies/bench/part
    python -m bench.time_to_gain --points 20,60 --seeds 0 --jobs 1
    python -m bench.time_to_gain --device cuda --points 10,30,60 --jobs 3   # the GPU machine (bench/gpu_check.sh)

Each run trains one torch thread for the longest point's seconds of training time (probes not counted; the LR
schedules follow the share of the budget spent) and stops at each point for the probe (AG News, 5-fold CV over
train.csv, mean-pooled final hidden states, the same code for every way). Runs go `--jobs` at a time (two: one per
core of this machine, so the ways meet the same load; one: in this process). Each finished run is cached in --work
under a digest of everything that shaped it (the points, device, probe rows, the resolved data, model, masking,
train and probe settings, and a Hugging Face way's whole recipe, its LR included): a rerun runs only what is missing,
so a measurement can be split over sessions by --ways and --peer_learning_rates (each part with its own --output)
and the full command then reads every run back. Printed and written (OUTPUT/time_to_gain.md, .json, .png): each
way's gain at each point (mean over seeds ± SE), the seconds each needs to reach +3 and +5 points (linear
interpolation of the mean gain between points), their ratios to ours, and each compared peer's gain against ours at
the peer's own tokens (see equal_tokens).
"""

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cli import numbers, run_cli
from hpo.statistics import mean_and_standard_error, t_interval

PROJECT_DIR = Path(__file__).resolve().parents[1]
POINTS = (5, 15, 30, 75, 150, 300, 600)
SEEDS = (0, 1)
TARGETS = (0.03, 0.05)
SWEEP = "HF one LR"  # the way run once per LR of --peer_learning_rates
PEER_LEARNING_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
RUN_SECTIONS = ("data", "model", "masking", "train", "probe")  # the config sections that shape a run


@dataclass(frozen=True)
class PeerRecipe:
    """Every setting of the Hugging Face loop (a run's cache key holds them all)."""

    masking_rate: float
    learning_rate: float  # peak LR of every parameter but the embedding tables
    table_lr_multiplier: float  # the embedding tables' LR = learning_rate x this (1: one LR for every parameter)
    batch_size: int
    warmup: float  # share of the time budget, a linear warm-up from zero
    schedule: str  # after the warm-up, as training.pretrain.learning_rate_multiplier reads it
    decay_fraction: float  # the wsd schedule's decay share
    dropout: float  # hidden states and attention probabilities
    betas: tuple[float, float]
    eps: float
    weight_decay: float  # on the matrices of linear layers only


def our_recipe(config, learning_rate: float | None = None) -> PeerRecipe:
    """HF recipe: the settings of config.yaml's recipe that the Hugging Face loop has."""
    train = config.train
    return PeerRecipe(
        config.masking.rate,
        train.learning_rate,
        train.embedding_lr_multiplier,
        train.batch_size,
        train.warmup_fraction,
        train.schedule,
        train.decay_fraction,
        config.model.dropout,
        (0.9, 0.98),
        1e-6,
        train.weight_decay,
    )


def bert_paper_defaults(config, learning_rate: float | None = None) -> PeerRecipe:
    """HF defaults: the BERT paper's settings (Devlin et al. 2019, appendix A.2: LR 1e-4 after a 1% warm-up, then a
    linear decay; Adam's beta2 0.999; dropout 0.1; 15% masking), at batch 32."""
    return PeerRecipe(0.15, 1e-4, 1.0, 32, 0.01, "linear", 0.0, 0.1, (0.9, 0.999), 1e-6, config.train.weight_decay)


def one_learning_rate(config, learning_rate: float | None) -> PeerRecipe:
    """HF one LR: plain AdamW (Trainer's betas and eps) at `learning_rate` for every parameter, linear decay to zero
    after the recipe's warm-up; the recipe's masking rate, batch and dropout."""
    train = config.train
    return PeerRecipe(
        config.masking.rate,
        learning_rate,
        1.0,
        train.batch_size,
        train.warmup_fraction,
        "linear",
        0.0,
        config.model.dropout,
        (0.9, 0.999),
        1e-8,
        train.weight_decay,
    )


# A Hugging Face way's recipe from the run's config (and the sweep's LR, which only SWEEP takes).
PEERS: dict[str, Callable[..., PeerRecipe]] = {
    "HF recipe": our_recipe,
    "HF defaults": bert_paper_defaults,
    SWEEP: one_learning_rate,
}
WAYS = ("ours", *PEERS)


@dataclass(frozen=True)
class Way:
    """A row of the table: a way of training, with its LR for the sweep."""

    name: str
    learning_rate: float | None = None

    @property
    def label(self) -> str:
        return self.name if self.learning_rate is None else f"{self.name} {self.learning_rate:g}"

    def recipe(self, config) -> PeerRecipe | None:
        """The Hugging Face loop's settings under `config` (None for ours, whose settings are the config's)."""
        return PEERS[self.name](config, self.learning_rate) if self.name in PEERS else None


class MeanPooledHuggingFace:
    """BertForMaskedLM read as the project's probe reads an encoder: the mean of the final hidden states over real
    tokens (training.probe.embed calls sentence_embedding, eval and train)."""

    def __init__(self, model):
        self.model = model
        self.config = model.config

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def sentence_embedding(self, input_ids, key_padding_mask):
        hidden = self.model.bert(input_ids=input_ids, attention_mask=key_padding_mask.long()).last_hidden_state
        weights = key_padding_mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class CollatorTokenizer:
    """What DataCollatorForLanguageModeling's masking reads of a tokenizer, for our GPT-2 BPE one."""

    mask_token = "[MASK]"

    def __init__(self, tokenizer):
        self.mask_token_id = tokenizer.mask_id
        self.pad_token_id = tokenizer.pad_id
        self.vocab_size = tokenizer.vocab_size

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.mask_token_id

    def __len__(self) -> int:
        return self.vocab_size


@dataclass(frozen=True)
class Setting:
    """Where and how every run of this benchmark trains and probes."""

    device: str = "cpu"  # cpu: one torch thread per run; cuda: bf16 autocast for every way
    overrides: tuple[str, ...] = ()  # config.yaml overrides for every way (e.g. a rehearsal's small corpus)
    probe_rows: int | None = None  # a class-balanced subset of train.csv for the probe (None: all of it)


def run_config(seed: int, points: list[float], setting: Setting):
    """config.yaml with the setting's overrides, the seed, and a time budget of the longest point."""
    from hpo.config import load_config

    overrides = [*setting.overrides, f"train.seed={seed}", f"train.budget_seconds={max(points)}"]
    return load_config(PROJECT_DIR / "config.yaml", overrides)


def run_key(way: Way, seed: int, points: list[float], setting: Setting) -> str:
    """A digest of everything that shapes a run: the way (and its LR), the points, the setting, the resolved config
    sections a run reads, and a Hugging Face way's whole recipe."""
    config = run_config(seed, points, setting)
    sections = {name: dataclasses.asdict(getattr(config, name)) for name in RUN_SECTIONS}
    shaped = (way, sorted(points), setting, sections, way.recipe(config))
    return hashlib.sha256(repr(shaped).encode()).hexdigest()[:10]


def run_path(way: Way, seed: int, points: list[float], work: Path, setting: Setting) -> Path:
    return work / f"{way.label.replace(' ', '_')}_{seed}_{run_key(way, seed, points, setting)}.json"


def run(way: Way, seed: int, points: list[float], work: Path, setting: Setting = Setting()) -> dict:
    """One way from one seed, probed at each point; cached in WORK under run_key, so that a run with other points,
    settings, recipe or LR never reads this one."""
    path = run_path(way, seed, points, work, setting)
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from data.agnews import load_agnews, stratified_subset
    from data.corpus import load_corpus
    from data.files_location import resolve_data_dir
    from data.tokenizer import Tokenizer
    from training.probe import Probe

    if setting.device == "cpu":
        torch.set_num_threads(1)
    data_dir = resolve_data_dir()
    config = run_config(seed, points, setting)
    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    corpus = load_corpus(data_dir, config.data, tokenizer)
    probe_texts = load_agnews(data_dir)[0]
    if setting.probe_rows:
        probe_texts = stratified_subset(probe_texts, setting.probe_rows, config.probe.seed)
    probe = Probe(probe_texts, tokenizer, config.probe)
    device = torch.device(setting.device)
    recipe = way.recipe(config)
    if recipe is None:
        trainer = OurLoop(config, corpus, tokenizer, device)
    else:
        trainer = HuggingFaceLoop(recipe, config, corpus, tokenizer, device)

    def score() -> float:
        return probe.score(trainer.encoder, device, config.probe.folds).accuracy

    random_init = score()
    figures = {
        "way": way.name,
        "learning_rate": way.learning_rate,
        "seed": seed,
        "recipe": None if recipe is None else dataclasses.asdict(recipe),
        "random_init_accuracy": random_init,
        "points": [],
    }
    for point in sorted(points):
        while trainer.train_seconds < point:
            trainer.train_step()
        accuracy = score()
        figures["points"].append(
            {
                "seconds": point,
                "train_seconds": trainer.train_seconds,
                "tokens": trainer.tokens_seen,
                "loss": trainer.last_loss,  # of the last step (ours: the sampled softmax's estimate of the exact)
                "accuracy": accuracy,
                "gain": accuracy - random_init,
            }
        )
        gain = 100 * (accuracy - random_init)
        print(f"{way.label} seed {seed}: {point:g} s, {trainer.tokens_seen:,} tokens: gain {gain:+.1f}", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(figures, indent=1))
    partial.replace(path)  # whole or absent: a run stopped while writing runs again
    return figures


class OurLoop:
    """The trial's loop: a Pretrainer with a time budget of the longest point."""

    def __init__(self, config, corpus, tokenizer, device):
        from training.pretrain import Execution, Pretrainer

        precision = "bf16" if device.type == "cuda" else "fp32"
        self.trainer = Pretrainer(config, corpus, tokenizer, device, Execution(precision=precision))
        self.encoder = self.trainer.model

    @property
    def train_seconds(self) -> float:
        return self.trainer.train_seconds

    @property
    def tokens_seen(self) -> int:
        return self.trainer.tokens_seen

    @property
    def last_loss(self) -> float:
        return self.trainer.last_loss

    def train_step(self) -> None:
        self.trainer.train_step()


class HuggingFaceLoop:
    """BertForMaskedLM of the config's shape trained by a PeerRecipe, the LR schedule following the share of the time
    budget spent, as ours does (training.pretrain's schedule and first-step share)."""

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # training time; a test may drive a fake one

    def __init__(self, recipe: PeerRecipe, config, corpus, tokenizer, device):
        import torch
        from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

        model_config = config.model
        self.recipe = recipe
        self.corpus, self.seed, self.budget = corpus, config.train.seed, config.train.budget_seconds
        torch.manual_seed(config.train.seed)
        hf_config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=model_config.hidden_size,
            num_hidden_layers=model_config.num_layers,
            num_attention_heads=model_config.num_heads,
            intermediate_size=model_config.ffn_multiple * model_config.hidden_size,
            max_position_embeddings=model_config.max_seq_len,
            hidden_dropout_prob=recipe.dropout,
            attention_probs_dropout_prob=recipe.dropout,
            pad_token_id=tokenizer.pad_id,
            attn_implementation="sdpa",
        )
        self.model = BertForMaskedLM(hf_config).to(device).train()
        self.device = device
        self.encoder = MeanPooledHuggingFace(self.model)
        tables, decayed, undecayed = [], [], []
        for name, parameter in self.model.named_parameters():
            if "embeddings" in name and parameter.ndim == 2:
                tables.append(parameter)
            elif parameter.ndim >= 2:
                decayed.append(parameter)
            else:
                undecayed.append(parameter)
        peak = recipe.learning_rate
        self.optimizer = torch.optim.AdamW(
            [
                {"params": tables, "lr": peak * recipe.table_lr_multiplier, "weight_decay": 0.0},
                {"params": decayed, "lr": peak, "weight_decay": recipe.weight_decay},
                {"params": undecayed, "lr": peak, "weight_decay": 0.0},
            ],
            betas=recipe.betas,
            eps=recipe.eps,
        )
        self.peaks = [group["lr"] for group in self.optimizer.param_groups]
        self.collator = DataCollatorForLanguageModeling(
            CollatorTokenizer(tokenizer), mlm_probability=recipe.masking_rate
        )
        self.collator.generator = torch.Generator().manual_seed(config.train.seed)
        self.specials = torch.tensor(
            [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.eos_id]
        )
        self.grad_clip = config.train.grad_clip
        self.step = 0
        self.train_seconds = 0.0
        self.last_loss = math.nan
        self.tokens_per_step = recipe.batch_size * corpus.seq_len

    @property
    def tokens_seen(self) -> int:
        return self.step * self.tokens_per_step

    def multiplier(self) -> float:
        """The schedule's multiplier for the coming step, at the progress of its end (as Pretrainer's)."""
        from training.pretrain import FIRST_STEP_SHARE, learning_rate_multiplier

        progress = self.train_seconds * (self.step + 1) / self.step / self.budget if self.step else FIRST_STEP_SHARE
        recipe = self.recipe
        return learning_rate_multiplier(recipe.schedule, progress, recipe.warmup, recipe.decay_fraction)

    def train_step(self) -> None:
        import torch

        started = self.clock()
        multiplier = self.multiplier()
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * multiplier
        rows = self.corpus.batch(self.step, self.recipe.batch_size, self.seed)  # (B, S), the same rows as ours at B
        inputs, labels = self.collator.torch_mask_tokens(
            rows.clone(), special_tokens_mask=torch.isin(rows, self.specials)
        )
        inputs, labels = inputs.to(self.device), labels.to(self.device)
        on_gpu = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on_gpu):  # as ours runs on a GPU
            loss = self.model(input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.item()  # waits for the GPU, as ours does, so the clock times the step
        self.step += 1
        self.train_seconds += self.clock() - started


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean ± SE over seeds; nan for both if a run went non-finite (its probe scores nan)."""
    if not all(math.isfinite(value) for value in values):
        return math.nan, math.nan
    return mean_and_standard_error(values)


def seconds_to_reach(points: list[dict], target: float) -> float:
    """The first time the mean gain reaches `target`, interpolated linearly between points (nan if never; 0 for a
    target at or below zero, which the random-init encoder holds by definition)."""
    if target <= 0:
        return 0.0
    previous = (0.0, 0.0)
    for point in points:
        if point["gain"] >= target:
            (t0, g0), (t1, g1) = previous, (point["seconds"], point["gain"])
            return t1 if g1 == g0 else t0 + (target - g0) * (t1 - t0) / (g1 - g0)
        previous = (point["seconds"], point["gain"])
    return math.nan


def gain_at_tokens(points: list[dict], tokens: float) -> tuple[float, bool]:
    """A run's gain after `tokens` tokens trained, interpolated linearly between its probes (before the first: from
    the random init, 0 tokens and gain 0), and whether probes lie on both sides (nan past the last probe)."""
    previous = (0.0, 0.0)
    for index, point in enumerate(points):
        if point["tokens"] >= tokens:
            (n0, g0), (n1, g1) = previous, (point["tokens"], point["gain"])
            gain = g1 if n1 == n0 else g0 + (tokens - n0) * (g1 - g0) / (n1 - n0)
            return gain, index > 0 or tokens == n1
        previous = (point["tokens"], point["gain"])
    return math.nan, False


def equal_tokens(ours: list[dict], peer: list[dict]) -> dict | None:
    """Which learns more per token. At each seed both ran, ours' gain is read off its own curve of gain against
    tokens trained (gain_at_tokens) at the tokens the peer trained by its last point, and the peer's gain there is
    subtracted; the differences are paired over seeds (mean ± SE, t interval). A gain per million tokens would not
    do: the gain is not linear in tokens (ours gains more per token early than late), so a rate depends on where on
    its curve each way is read; here both are read at the same amount of data (at a seed and equal batch, the same
    rows). None without a seed that both ran, or if ours was never probed at the peer's tokens."""
    ours_by_seed = {run["seed"]: run for run in ours}
    seeds, tokens, our_gains, peer_gains, bracketed = [], [], [], [], []
    for run in sorted(peer, key=lambda run: run["seed"]):
        if run["seed"] not in ours_by_seed:
            continue
        last = run["points"][-1]
        gain, between_probes = gain_at_tokens(ours_by_seed[run["seed"]]["points"], last["tokens"])
        if math.isnan(gain):
            continue
        seeds.append(run["seed"])
        tokens.append(last["tokens"])
        our_gains.append(gain)
        peer_gains.append(last["gain"])
        bracketed.append(between_probes)
    if not seeds:
        return None
    differences = [mine - theirs for mine, theirs in zip(our_gains, peer_gains, strict=True)]
    difference, error = mean_and_error(differences)
    return {
        "seeds": seeds,
        "tokens": float(np.mean(tokens)),
        "ours": float(np.mean(our_gains)),
        "peer": float(np.mean(peer_gains)),
        "differences": differences,
        "difference": difference,
        "standard_error": error,
        "interval": list(t_interval(differences) if math.isfinite(difference) else (math.nan, math.nan)),
        "between_probes": bracketed,  # per seed: ours probed on both sides of the peer's tokens
    }


def per_token_line(label: str, comparison: dict | None, last: float) -> str:
    """The equal-tokens comparison in words: which learns more per token, and how sure that is over the seeds."""
    if comparison is None:
        return f"- at equal tokens: ours was not probed at as many tokens as {label} trained, on any seed it ran"
    n, difference = len(comparison["seeds"]), comparison["difference"]
    low, high = comparison["interval"]
    if math.isnan(difference):
        verdict = "a run went non-finite: no comparison"
    elif low > 0:
        verdict = "ours learns more per token"
    elif high < 0:
        verdict = f"{label} learns more per token"
    elif difference == 0:
        verdict = "neither is ahead"
    elif n < 2:
        verdict = f"{'ours' if difference > 0 else label} is ahead on the one seed (no interval)"
    else:
        ahead = sum((each > 0) == (difference > 0) for each in comparison["differences"])
        verdict = (
            f"{'ours' if difference > 0 else label} is ahead in {ahead} of {n} seeds, not significant at {n} seeds"
        )
    each = ", ".join(_points(value) for value in comparison["differences"])
    seeds = ", ".join(map(str, comparison["seeds"]))
    interval = "" if n < 2 else f"; 95% t interval [{_points(low)}, {_points(high)}]"
    line = (
        f"- at equal tokens (the {comparison['tokens'] / 1e6:.2f}M {label} trained in {last:g} s): ours "
        f"{_points(comparison['ours'])}, {label} {_points(comparison['peer'])}; ours - {label} {_points(difference)}"
        f" ± {100 * comparison['standard_error']:.1f} points (seeds {seeds}: {each}{interval}): {verdict}"
    )
    before = [
        seed for seed, inside in zip(comparison["seeds"], comparison["between_probes"], strict=True) if not inside
    ]
    if before:
        line += (
            f"; at seed(s) {', '.join(map(str, before))} ours' gain there lies before its first probe, read off a line "
            "from its random init (not measured)"
        )
    return line


def best_of_sweep(summary: dict) -> str | None:
    """The sweep's row with the highest mean gain at the longest point (the lower LR on a tie; a non-finite one
    never)."""
    gains = {
        label: figures["points"][-1]["gain"]
        for label, figures in summary.items()
        if figures["way"] == SWEEP and math.isfinite(figures["points"][-1]["gain"])
    }
    return max(gains, key=gains.get) if gains else None


def _points(value: float) -> str:
    return "non-finite" if math.isnan(value) else f"{100 * value:+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--points", type=numbers(float), default=",".join(map(str, POINTS)), help="seconds of training to probe at"
    )
    parser.add_argument("--seeds", type=numbers(int), default=",".join(map(str, SEEDS)))
    parser.add_argument("--ways", type=way_names, default=",".join(WAYS), help=f"some of: {', '.join(WAYS)}")
    parser.add_argument(
        "--peer_learning_rates",
        type=numbers(float),
        default=",".join(map(str, PEER_LEARNING_RATES)),
        help=f"the LRs of {SWEEP}'s sweep, one run each per seed",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (1: in this process)")
    parser.add_argument("--work", default="studies/bench/time_to_gain", help="the finished runs, read back on a rerun")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast for every way")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, every way")
    parser.add_argument("--probe_rows", type=int, help="probe a class-balanced subset of train.csv (default: all)")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    points, seeds, ways = sorted(args.points), args.seeds, args.ways
    work = Path(args.work).resolve()
    os.environ["CI"] = "1"  # no progress bars
    setting = Setting(args.device, tuple(args.set), args.probe_rows)
    plan = [
        (Way(name, rate), seed)
        for seed in seeds
        for name in ways
        for rate in (sorted(args.peer_learning_rates) if name == SWEEP else [None])
    ]
    cached = sum(run_path(way, seed, points, work, setting).exists() for way, seed in plan)
    print(f"{len(plan)} runs: {cached} read back from {work}, {len(plan) - cached} to run", flush=True)
    if args.jobs == 1:
        runs = [run(way, seed, points, work, setting) for way, seed in plan]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run, way, seed, points, work, setting) for way, seed in plan]
            runs = [future.result() for future in futures]
    table, summary = report(runs, ways, seeds, points)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "time_to_gain.md").write_text(table)
    (output / "time_to_gain.json").write_text(json.dumps({"runs": runs, "summary": summary, "table": table}, indent=1))
    plot(summary, output / "time_to_gain.png", args.device)
    print(table)


def way_names(text: str) -> list[str]:
    """An argparse type: comma-separated names of ways, each one of WAYS."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in WAYS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown way(s) {', '.join(map(repr, unknown))}; the ways: {', '.join(WAYS)}")
    return names


def report(runs: list[dict], ways: list[str], seeds: list[int], points: list[float]) -> tuple[str, dict]:
    """The table and the lines under it, and the summary they come from (by row label: each way, each LR of the
    sweep)."""
    rows: dict[str, list[dict]] = {}
    for name in ways:
        mine = [run for run in runs if run["way"] == name]
        for run in sorted(mine, key=lambda run: run.get("learning_rate") or 0.0):
            rows.setdefault(Way(name, run.get("learning_rate")).label, []).append(run)
    summary = {}
    for label, mine in rows.items():
        means = []
        for index, point in enumerate(points):
            gain, error = mean_and_error([run["points"][index]["gain"] for run in mine])
            tokens = float(np.mean([run["points"][index]["tokens"] for run in mine]))
            means.append({"seconds": point, "gain": gain, "standard_error": error, "tokens": tokens})
        summary[label] = {
            "way": mine[0]["way"],
            "learning_rate": mine[0].get("learning_rate"),
            "points": means,
            "random_init_accuracy": float(np.mean([run["random_init_accuracy"] for run in mine])),
            "reach": {str(target): seconds_to_reach(means, target) for target in TARGETS},
        }
    best = best_of_sweep(summary)
    if best is not None:
        summary[best]["best_of_sweep"] = True
    header = "| way | random init | " + " | ".join(f"gain at {point:g} s" for point in points)
    header += " | " + " | ".join(f"s to +{100 * target:.0f}" for target in TARGETS) + " |"
    lines = [header, "|---|---:|" + "---:|" * (len(points) + len(TARGETS))]
    last = points[-1]
    for label, figures in summary.items():
        cells = [
            ("non-finite" if math.isnan(p["gain"]) else f"{100 * p['gain']:+.1f} ± {100 * p['standard_error']:.1f}")
            + f" ({p['tokens'] / 1e6:.2f}M tok)"
            for p in figures["points"]
        ]
        reach = [
            f"> {last:g}" if math.isnan(seconds) else f"{seconds:.0f}"
            for seconds in (figures["reach"][str(target)] for target in TARGETS)
        ]
        name = f"{label} (best)" if label == best else label
        lines.append(f"| {name} | {100 * figures['random_init_accuracy']:.2f}% | " + " | ".join(cells + reach) + " |")
    lines.append("")
    compared = [label for label, figures in summary.items() if figures["way"] not in ("ours", SWEEP) or label == best]
    if "ours" in summary:
        for label in compared:
            lines += comparison_lines(label, summary, rows, points)
    elif compared:
        lines.append("- ours was not run: no comparison")
    lines += sweep_lines(summary, best, seeds, last)
    lines.append("")
    lines.append(
        f"Gains in points over each way's own random-init encoder, mean ± SE over seeds {', '.join(map(str, seeds))}."
    )
    return "\n".join(lines) + "\n", summary


def comparison_lines(label: str, summary: dict, rows: dict[str, list[dict]], points: list[float]) -> list[str]:
    """Ours against one peer: seconds to each target, when ours reaches the peer's final gain, and which learns more
    per token (recorded in the summary under the peer's "equal_tokens")."""
    lines, ours, last, first = [], summary["ours"], points[-1], points[0]
    for target in TARGETS:
        theirs, mine = summary[label]["reach"][str(target)], ours["reach"][str(target)]
        if math.isnan(mine):
            said = "reaches it" if not math.isnan(theirs) else "does not reach it either"
            lines.append(f"- to +{100 * target:.0f} points: ours does not reach it in {last:g} s; {label} {said}")
        elif math.isnan(theirs):
            lines.append(
                f"- to +{100 * target:.0f} points: {label} does not reach it in {last:g} s, ours needs "
                f"{mine:.0f} s: ratio above {last / mine:.1f}"
            )
        else:
            lines.append(
                f"- to +{100 * target:.0f} points: {label} needs {theirs:.0f} s, ours {mine:.0f} s: "
                f"ratio {theirs / mine:.2f}"
            )
    their_gain = summary[label]["points"][-1]["gain"]
    if not their_gain > 0:
        lines.append(
            f"- the gain of {label} at {last:g} s ({_points(their_gain)} points) is none: its encoder probes "
            "no better than its random init, so there is nothing for ours to reach"
        )
    else:
        when = seconds_to_reach(ours["points"], their_gain)
        if math.isnan(when):
            lines.append(f"- the gain of {label} at {last:g} s ({_points(their_gain)} points) is not reached by ours")
        else:
            before = (
                f", before ours' first probe at {first:g} s: read off a line from its random init, not measured"
                if when < first
                else ""
            )
            lines.append(
                f"- the gain of {label} at {last:g} s ({_points(their_gain)} points) is reached by ours at "
                f"{when:.0f} s: {when / last:.2f} of the time{before}"
            )
    comparison = equal_tokens(rows["ours"], rows[label])
    summary[label]["equal_tokens"] = comparison
    lines.append(per_token_line(label, comparison, last))
    return lines


def sweep_lines(summary: dict, best: str | None, seeds: list[int], last: float) -> list[str]:
    """Which LR of the sweep is compared with ours, and what choosing it on these seeds does."""
    swept = {label: figures for label, figures in summary.items() if figures["way"] == SWEEP}
    if not swept:
        return []
    if best is None:
        return [f"- {SWEEP}: no LR of the sweep kept a finite gain at {last:g} s, so none is compared"]
    rates = [figures["learning_rate"] for figures in swept.values()]
    others = "; ".join(
        f"{figures['learning_rate']:g}: {_points(figures['points'][-1]['gain'])}"
        for label, figures in swept.items()
        if label != best
    )
    chosen = summary[best]["learning_rate"]
    line = (
        f"- {SWEEP}: one LR for every parameter, chosen from {', '.join(f'{rate:g}' for rate in rates)} by the mean "
        f"gain at {last:g} s over seeds {', '.join(map(str, seeds))}: {chosen:g} "
        f"({_points(summary[best]['points'][-1]['gain'])} points{'; ' + others if others else ''}). "
        f"It is chosen on the seeds it is compared on, and the best of {len(rates)} noisy means is biased up: the "
        "comparison above is the peer's favourable case"
    )
    if len(rates) > 1 and chosen in (min(rates), max(rates)):
        edge = "lowest" if chosen == min(rates) else "highest"
        line += f". {chosen:g} is the sweep's {edge} LR: a wider sweep may find a better one"
    return [line]


def plot(summary: dict, path: Path, device: str = "cpu") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, figures in summary.items():
        seconds = [point["seconds"] for point in figures["points"]]
        gains = [100 * point["gain"] for point in figures["points"]]
        errors = [100 * point["standard_error"] for point in figures["points"]]
        faint = figures["way"] == SWEEP and not figures.get("best_of_sweep")  # the LRs not compared
        style = {"linestyle": "--", "alpha": 0.5, "linewidth": 0.8} if faint else {}
        axes.errorbar(seconds, gains, yerr=errors, marker="o", capsize=3, label=label, **style)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xscale("log")
    seconds = [point["seconds"] for point in next(iter(summary.values()))["points"]]
    axes.set_xticks(seconds, [f"{value:g}" for value in seconds])
    axes.minorticks_off()
    axes.set_xlabel("seconds of training (" + ("one CPU thread" if device == "cpu" else "one GPU, bf16") + ")")
    axes.set_ylabel("probe gain over random init (points)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    run_cli(main)
