"""How many seconds until an encoder has learned a given amount? The default recipe trained for equal seconds three
ways on the same corpus, tokenizer and packed sequences, each probed by the project's probe beside its own
random-init encoder:

  ours         the trial's training loop (training.pretrain.Pretrainer), config.yaml's recipe;
  HF recipe    Hugging Face BertForMaskedLM of the same shape (vocabulary, width, depth, heads, feed-forward,
               tied decoder, attn_implementation="sdpa") with the same recipe: DataCollatorForLanguageModeling at
               the same masking rate and 80/10/10 rule, the same batch, peak LR, token-table LR multiplier (AdamW
               parameter groups), weight-decay rule (matrices only), warm-up and constant LR, dropout 0;
  HF defaults  the same model with the common BERT defaults: 15% masking, LR 1e-4, batch 32, linear decay to zero
               over the budget after a 1% warm-up, dropout 0.1, one LR for every parameter.

    python -m bench.time_to_gain                        # 30, 75, 150, 300, 600 s; seeds 0 and 1; two at a time
    python -m bench.time_to_gain --points 20,60 --seeds 0 --jobs 1
    python -m bench.time_to_gain --device cuda --points 10,30,60 --jobs 3   # the GPU machine (bench/gpu_check.sh)

Each run trains one torch thread for the longest point's seconds of training time (probes not counted; the LR
schedules follow the share of the budget spent) and stops at each point for the probe (AG News, 5-fold CV over
train.csv, mean-pooled final hidden states, the same code for all three). Runs go `--jobs` at a time (two:
one per core of this machine, so the ways meet the same load). Printed and written (OUTPUT/time_to_gain.md,
.json, .png): each way's gain at each point (mean over seeds ± SE), the seconds each needs to reach +3 and
+5 points (linear interpolation of the mean gain between points), and the ratios to ours.
"""

import argparse
import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.cli import numbers, run_cli
from hpo.statistics import mean_and_standard_error

PROJECT_DIR = Path(__file__).resolve().parents[1]
POINTS = (30, 75, 150, 300, 600)
SEEDS = (0, 1)
WAYS = ("ours", "HF recipe", "HF defaults")
TARGETS = (0.03, 0.05)
HF_DEFAULTS = {"masking_rate": 0.15, "learning_rate": 1e-4, "batch_size": 32, "warmup": 0.01, "dropout": 0.1}


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


def run(way: str, seed: int, points: list[float], work: Path, setting: Setting = Setting()) -> dict:
    """One way from one seed, probed at each point (cached in WORK/<way>_<seed>_<key>.json, the key a digest of
    the points and the setting, so a run with other points or settings never reads this one)."""
    key = hashlib.sha256(repr((sorted(points), setting)).encode()).hexdigest()[:10]
    path = work / f"{way.replace(' ', '_')}_{seed}_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from data.agnews import load_agnews, stratified_subset
    from data.corpus import load_corpus
    from data.files_location import resolve_data_dir
    from data.tokenizer import Tokenizer
    from hpo.config import load_config
    from training.probe import Probe

    if setting.device == "cpu":
        torch.set_num_threads(1)
    data_dir = resolve_data_dir()
    config = load_config(
        PROJECT_DIR / "config.yaml",
        [*setting.overrides, f"train.seed={seed}", f"train.budget_seconds={max(points)}"],
    )
    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    corpus = load_corpus(data_dir, config.data, tokenizer)
    probe_texts = load_agnews(data_dir)[0]
    if setting.probe_rows:
        probe_texts = stratified_subset(probe_texts, setting.probe_rows, config.probe.seed)
    probe = Probe(probe_texts, tokenizer, config.probe)
    device = torch.device(setting.device)
    trainer = (ours if way == "ours" else hugging_face)(way, config, corpus, tokenizer, device)

    def score() -> float:
        return probe.score(trainer.encoder, device, config.probe.folds).accuracy

    random_init = score()
    figures = {"way": way, "seed": seed, "random_init_accuracy": random_init, "points": []}
    for point in sorted(points):
        while trainer.train_seconds < point:
            trainer.train_step()
        accuracy = score()
        figures["points"].append(
            {
                "seconds": point,
                "train_seconds": trainer.train_seconds,
                "tokens": trainer.tokens_seen,
                "accuracy": accuracy,
                "gain": accuracy - random_init,
            }
        )
        gain = 100 * (accuracy - random_init)
        print(f"{way} seed {seed}: {point:g} s, {trainer.tokens_seen:,} tokens: gain {gain:+.1f}", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1))
    return figures


class ours:  # noqa: N801 (a trainer factory named for its row of the table)
    """The trial's loop: a Pretrainer with a time budget of the longest point."""

    def __init__(self, way, config, corpus, tokenizer, device):
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

    def train_step(self) -> None:
        self.trainer.train_step()


class hugging_face:  # noqa: N801
    """BertForMaskedLM under the recipe (way "HF recipe") or the common BERT defaults ("HF defaults"), with the
    LR schedule following the share of the time budget spent, as ours does."""

    def __init__(self, way, config, corpus, tokenizer, device):
        import time

        import torch
        from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

        train, model_config = config.train, config.model
        recipe = way == "HF recipe"
        self.clock = time.perf_counter
        self.corpus, self.seed, self.budget = corpus, train.seed, train.budget_seconds
        self.batch_size = train.batch_size if recipe else HF_DEFAULTS["batch_size"]
        self.warmup = train.warmup_fraction if recipe else HF_DEFAULTS["warmup"]
        self.decays = not recipe  # the recipe's LR is constant after warm-up; BERT's decays linearly to zero
        dropout = model_config.dropout if recipe else HF_DEFAULTS["dropout"]
        torch.manual_seed(train.seed)
        hf_config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=model_config.hidden_size,
            num_hidden_layers=model_config.num_layers,
            num_attention_heads=model_config.num_heads,
            intermediate_size=model_config.ffn_multiple * model_config.hidden_size,
            max_position_embeddings=model_config.max_seq_len,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            pad_token_id=tokenizer.pad_id,
            attn_implementation="sdpa",
        )
        self.model = BertForMaskedLM(hf_config).to(device).train()
        self.device = device
        self.encoder = MeanPooledHuggingFace(self.model)
        peak = train.learning_rate if recipe else HF_DEFAULTS["learning_rate"]
        table_rate = peak * (train.embedding_lr_multiplier if recipe else 1.0)
        tables, decayed, undecayed = [], [], []
        for name, parameter in self.model.named_parameters():
            if "embeddings" in name and parameter.ndim == 2:
                tables.append(parameter)
            elif parameter.ndim >= 2:
                decayed.append(parameter)
            else:
                undecayed.append(parameter)
        betas, eps = ((0.9, 0.98), 1e-6) if recipe else ((0.9, 0.999), 1e-6)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": tables, "lr": table_rate, "weight_decay": 0.0},
                {"params": decayed, "lr": peak, "weight_decay": train.weight_decay},
                {"params": undecayed, "lr": peak, "weight_decay": 0.0},
            ],
            betas=betas,
            eps=eps,
        )
        self.peaks = [group["lr"] for group in self.optimizer.param_groups]
        rate = config.masking.rate if recipe else HF_DEFAULTS["masking_rate"]
        self.collator = DataCollatorForLanguageModeling(CollatorTokenizer(tokenizer), mlm_probability=rate)
        self.collator.generator = torch.Generator().manual_seed(train.seed)
        self.specials = torch.tensor(
            [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.eos_id]
        )
        self.grad_clip = train.grad_clip
        self.step = 0
        self.train_seconds = 0.0
        self.tokens_per_step = self.batch_size * corpus.seq_len

    @property
    def tokens_seen(self) -> int:
        return self.step * self.tokens_per_step

    def multiplier(self) -> float:
        progress = self.train_seconds * (self.step + 1) / max(self.step, 1) / self.budget if self.step else 1e-3
        if progress < self.warmup:
            return progress / self.warmup
        if not self.decays:
            return 1.0
        return max(0.0, 1.0 - (progress - self.warmup) / (1.0 - self.warmup))

    def train_step(self) -> None:
        import torch

        started = self.clock()
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = peak * self.multiplier()
        rows = self.corpus.batch(self.step, self.batch_size, self.seed)  # (B, S), the same packed rows as ours
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--points", type=numbers(float), default=",".join(map(str, POINTS)), help="seconds of training to probe at"
    )
    parser.add_argument("--seeds", type=numbers(int), default=",".join(map(str, SEEDS)))
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", default="studies/bench/time_to_gain")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast for every way")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, every way")
    parser.add_argument("--probe_rows", type=int, help="probe a class-balanced subset of train.csv (default: all)")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    points, seeds = sorted(args.points), args.seeds
    ways = args.ways.split(",")
    work = Path(args.work).resolve()
    os.environ["CI"] = "1"  # no progress bars
    plan = [(way, seed) for seed in seeds for way in ways]
    setting = Setting(args.device, tuple(args.set), args.probe_rows)
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


def report(runs: list[dict], ways: list[str], seeds: list[int], points: list[float]) -> tuple[str, dict]:
    summary = {}
    for way in ways:
        mine = [run for run in runs if run["way"] == way]
        means = []
        for index, point in enumerate(points):
            gain, error = mean_and_standard_error([run["points"][index]["gain"] for run in mine])
            tokens = float(np.mean([run["points"][index]["tokens"] for run in mine]))
            means.append({"seconds": point, "gain": gain, "standard_error": error, "tokens": tokens})
        summary[way] = {
            "points": means,
            "random_init_accuracy": float(np.mean([run["random_init_accuracy"] for run in mine])),
            "reach": {str(target): seconds_to_reach(means, target) for target in TARGETS},
        }
    header = "| way | random init | " + " | ".join(f"gain at {point:g} s" for point in points)
    header += " | " + " | ".join(f"s to +{100 * target:.0f}" for target in TARGETS) + " |"
    lines = [header, "|---|---:|" + "---:|" * (len(points) + len(TARGETS))]
    for way, figures in summary.items():
        cells = [
            f"{100 * p['gain']:+.1f} ± {100 * p['standard_error']:.1f} ({p['tokens'] / 1e6:.2f}M tok)"
            for p in figures["points"]
        ]
        reach = [
            f"> {points[-1]:g}" if math.isnan(seconds) else f"{seconds:.0f}"
            for seconds in (figures["reach"][str(target)] for target in TARGETS)
        ]
        lines.append(f"| {way} | {100 * figures['random_init_accuracy']:.2f}% | " + " | ".join(cells + reach) + " |")
    ours_reach = summary.get("ours", {}).get("reach", {})
    lines.append("")
    for way in ways[1:]:
        for target in TARGETS:
            theirs, mine = summary[way]["reach"][str(target)], ours_reach.get(str(target), math.nan)
            if math.isnan(theirs):
                lines.append(
                    f"- to +{100 * target:.0f} points: {way} does not reach it in {points[-1]:g} s, ours needs "
                    f"{mine:.0f} s: ratio above {points[-1] / mine:.1f}"
                )
            else:
                lines.append(
                    f"- to +{100 * target:.0f} points: {way} needs {theirs:.0f} s, ours {mine:.0f} s: "
                    f"ratio {theirs / mine:.2f}"
                )
    last = points[-1]
    for way in ways[1:]:
        their_gain = summary[way]["points"][-1]["gain"]
        if their_gain <= 0:
            lines.append(
                f"- the gain of {way} at {last:g} s ({100 * their_gain:+.1f} points) is none: its encoder probes "
                "no better than its random init, so there is nothing for ours to reach"
            )
            continue
        when = seconds_to_reach(summary["ours"]["points"], their_gain)
        lines.append(
            f"- the gain of {way} at {last:g} s ({100 * their_gain:+.1f} points) is reached by ours at {when:.0f} s: "
            f"{when / last:.2f} of the time"
        )
    lines.append("")
    lines.append(
        f"Gains in points over each way's own random-init encoder, mean ± SE over seeds {', '.join(map(str, seeds))}."
    )
    return "\n".join(lines) + "\n", summary


def plot(summary: dict, path: Path, device: str = "cpu") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for way, figures in summary.items():
        seconds = [point["seconds"] for point in figures["points"]]
        gains = [100 * point["gain"] for point in figures["points"]]
        errors = [100 * point["standard_error"] for point in figures["points"]]
        axes.errorbar(seconds, gains, yerr=errors, marker="o", capsize=3, label=way)
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
