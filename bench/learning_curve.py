"""What a pretraining recipe buys, token by token: one run probed along the way.

    python -m bench.learning_curve                       # default recipe: 0.3M, 1M, 3M, 10M tokens
    python -m bench.learning_curve --quick               # 0.3M and 1M tokens (CPU minutes)
    python -m bench.learning_curve --recipe default --recipe session2 --output bench/results
    python -m bench.learning_curve --budget_seconds 120  # probe at 3%, 10%, 30%, 100% of 2 minutes
    python -m bench.learning_curve --combine DIR1 DIR2 --output DIR  # one table and plot of earlier runs

For each recipe, one pretraining run (its LR schedule spans the whole run) stops at each checkpoint
for the validation loss (exact softmax, held-out corpus rows) and the study's probe (stratified
k-fold CV over AG News train.csv, with its standard error). Beside it, on the same probe rows and
folds:
- the same encoder randomly initialised: the weights the run starts from (step 0);
- a count-based reference on the very tokens the run has consumed: positive PMI of word-window
  co-occurrences (window 5, context smoothing 0.75), truncated SVD to the encoder's width,
  mean-pooled over each text: what these tokens can teach a bag-of-embeddings probe at all;
- TF-IDF + logistic regression on the raw text (no pretraining, no width limit).
Writes DIR/learning_curve.md (the table), DIR/learning_curve.png (the plot) and
DIR/learning_curve.json (every figure).
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from sklearn.utils.extmath import randomized_svd

from bench.probe_baselines import tfidf_accuracy
from data.agnews import load_agnews
from data.corpus import load_corpus
from data.files_location import resolve_data_dir
from data.tokenizer import Tokenizer
from hpo.config import Config, load_config
from training.pretrain import Pretrainer, resolve_device
from training.probe import Probe, ProbeResult, cross_validated_accuracy

PROJECT_DIR = Path(__file__).resolve().parents[1]
TOKENS = (300_000, 1_000_000, 3_000_000, 10_000_000)
QUICK_TOKENS = (300_000, 1_000_000)
TIME_FRACTIONS = (0.03, 0.1, 0.3, 1.0)  # probe points of a --budget_seconds run
WINDOW = 5  # words either side, for the count-based reference
CONTEXT_SMOOTHING = 0.75  # Levy et al. (2015): context counts raised to 0.75 before PMI
# Named recipes: overrides of config.yaml. "session2" is the default before the trials-that-learn
# work (issue 10): large batches, one learning rate for all, exact softmax, dropout, unit tables.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "session2": [
        "train.batch_size=32",
        "train.learning_rate=1e-3",
        "train.embedding_lr_multiplier=1",
        "train.sampled_softmax=null",
        "train.schedule=linear",
        "model.dropout=0.1",
        "model.embedding_std=1.0",
        "masking.rate=0.15",
    ],
}


@dataclass
class Point:
    tokens: int
    steps: int
    train_seconds: float
    validation_loss: float
    accuracy: float
    standard_error: float
    count_based_accuracy: float


@dataclass
class Curve:
    recipe: str
    overrides: list[str]
    random_init_accuracy: float
    random_init_standard_error: float
    points: list[Point] = field(default_factory=list)


class CountBasedReference:
    """Co-occurrence counts of the tokens a run has consumed so far, and the PPMI-SVD probe on them."""

    def __init__(self, vocab_size: int, special_ids: list[int]):
        self.counts = scipy.sparse.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[special_ids] = True

    def add(self, rows: np.ndarray) -> None:
        """Count every pair of tokens at most WINDOW apart within each (B, S) row, both directions."""
        rows = rows.astype(np.int64)
        left = np.concatenate([rows[:, :-offset].ravel() for offset in range(1, WINDOW + 1)])
        right = np.concatenate([rows[:, offset:].ravel() for offset in range(1, WINDOW + 1)])
        keep = ~(self.special[left] | self.special[right])
        left, right = left[keep], right[keep]
        ones = np.ones(2 * len(left))
        shape = self.counts.shape
        pairs = scipy.sparse.coo_matrix((ones, (np.r_[left, right], np.r_[right, left])), shape=shape)
        self.counts = self.counts + pairs.tocsr()

    def vectors(self, dimensions: int, seed: int) -> np.ndarray:
        """(V, dimensions) PPMI-SVD word vectors U * sqrt(S); rows of unseen tokens are zero."""
        counts = self.counts.tocoo()
        word_totals = np.asarray(self.counts.sum(axis=1)).ravel()
        context_totals = word_totals**CONTEXT_SMOOTHING
        context_share = context_totals / context_totals.sum()
        pmi = np.log(counts.data * 1.0 / (word_totals[counts.row] * context_share[counts.col]))
        positive = pmi > 0
        ppmi = scipy.sparse.csr_matrix(
            (pmi[positive], (counts.row[positive], counts.col[positive])), shape=self.counts.shape
        )
        left, singular_values, _ = randomized_svd(ppmi, dimensions, random_state=seed)
        return left * np.sqrt(singular_values)

    def probe_accuracy(self, probe: Probe, dimensions: int, folds: int) -> float:
        vectors = self.vectors(dimensions, probe.config.seed)
        bags = scipy.sparse.lil_matrix((len(probe.token_lists), len(vectors)))
        for row, ids in enumerate(probe.token_lists):
            words = [token for token in ids if not self.special[token]]
            for token in words:
                bags[row, token] += 1.0 / max(1, len(words))
        features = np.asarray(bags.tocsr() @ vectors, dtype=np.float32)
        return cross_validated_accuracy(features, probe.labels, folds, probe.config).accuracy


def recipe_config(config_path: Path, recipe: str, overrides: list[str], checkpoints, budget_seconds) -> Config:
    if budget_seconds:
        budget = [f"train.budget_seconds={budget_seconds}"]
    else:
        budget = [f"train.budget_tokens={max(checkpoints)}", "train.budget_seconds=null"]
    return load_config(config_path, [*RECIPES[recipe], *overrides, *budget])


def run_curve(config: Config, recipe: str, overrides: list[str], data_dir: Path, checkpoints, device) -> Curve:
    """One pretraining run of `config`, probed at each checkpoint (tokens, or fractions of a time budget)."""
    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    corpus = load_corpus(data_dir, config.data, tokenizer)
    selection, _ = load_agnews(data_dir)
    probe = Probe(selection, tokenizer, config.probe)
    folds = config.probe.folds
    trainer = Pretrainer(config, corpus, tokenizer, device)
    start = probe.score(trainer.model, device, folds)
    curve = Curve(recipe, overrides, start.accuracy, start.standard_error)
    print(f"[{recipe}] random init: accuracy {start.accuracy:.4f} ± {start.standard_error:.4f}", flush=True)
    specials = [tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id, tokenizer.eos_id]
    reference = CountBasedReference(tokenizer.vocab_size, specials)
    counted_steps = 0
    for checkpoint in checkpoints:
        while not trainer.finished and not _reached(trainer, checkpoint):
            trainer.train_step()
        consumed = [
            corpus.batch(step, config.train.batch_size, config.train.seed).numpy()
            for step in range(counted_steps, trainer.step)
        ]
        if consumed:
            reference.add(np.concatenate(consumed))
        counted_steps = trainer.step
        result: ProbeResult = probe.score(trainer.model, device, folds)
        point = Point(
            tokens=trainer.step * trainer.tokens_per_step,
            steps=trainer.step,
            train_seconds=trainer.train_seconds,
            validation_loss=trainer.validation_loss(),
            accuracy=result.accuracy,
            standard_error=result.standard_error,
            count_based_accuracy=reference.probe_accuracy(probe, config.model.hidden_size, folds),
        )
        curve.points.append(point)
        print(
            f"[{recipe}] {point.tokens:,} tokens ({point.steps} steps, {point.train_seconds:.0f} s): validation loss "
            f"{point.validation_loss:.3f} | probe {point.accuracy:.4f} ± {point.standard_error:.4f} "
            f"(gain {100 * (point.accuracy - curve.random_init_accuracy):+.1f} points) | "
            f"count-based {point.count_based_accuracy:.4f}",
            flush=True,
        )
    return curve


def _reached(trainer: Pretrainer, checkpoint: float) -> bool:
    """A checkpoint is a token count, or (time budget) a fraction of the training seconds."""
    if trainer.budget_seconds is None:
        return trainer.step * trainer.tokens_per_step >= checkpoint
    return trainer.progress >= checkpoint


def markdown(curves: list[Curve], tfidf: float, device: torch.device, threads: int) -> str:
    lines = [
        f"Device: {device} ({threads} torch threads). AG News train.csv, stratified k-fold CV; TF-IDF + logistic "
        f"regression on the same folds: {tfidf:.4f}.",
        "",
        "| recipe | tokens | steps | training s | tokens/s | validation loss | probe accuracy | random init "
        "| gain (points) | count-based, same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for curve in curves:
        for point in curve.points:
            rate = point.tokens / max(point.train_seconds, 1e-9)
            gain = 100 * (point.accuracy - curve.random_init_accuracy)
            lines.append(
                f"| {curve.recipe} | {point.tokens:,} | {point.steps} | {point.train_seconds:.0f} | {rate:,.0f} "
                f"| {point.validation_loss:.3f} | {point.accuracy:.4f} ± {point.standard_error:.4f} "
                f"| {curve.random_init_accuracy:.4f} | {gain:+.1f} | {point.count_based_accuracy:.4f} |"
            )
    return "\n".join(lines) + "\n"


def plot(curves: list[Curve], tfidf: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, curve in enumerate(curves):
        color = f"C{index}"
        tokens = [point.tokens for point in curve.points]
        axes.plot(tokens, [p.accuracy for p in curve.points], "o-", color=color, label=f"{curve.recipe}: encoder")
        axes.axhline(curve.random_init_accuracy, color=color, linestyle=":", label=f"{curve.recipe}: random init")
        axes.plot(
            tokens,
            [p.count_based_accuracy for p in curve.points],
            "s--",
            color=color,
            alpha=0.6,
            label=f"{curve.recipe}: count-based (PPMI-SVD)",
        )
    axes.axhline(tfidf, color="black", linestyle="-.", label="TF-IDF + logistic regression")
    axes.set_xscale("log")
    axes.set_xlabel("pretraining tokens")
    axes.set_ylabel("AG News probe accuracy (k-fold CV)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES), help="default: default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--tokens", help="comma-separated checkpoints, e.g. 3e5,1e6 (default 0.3M,1M,3M,10M)")
    parser.add_argument("--quick", action="store_true", help="checkpoints 0.3M and 1M tokens")
    parser.add_argument("--budget_seconds", type=float, help="a time budget instead, probed at 3/10/30/100%%")
    parser.add_argument("--config", default=str(PROJECT_DIR / "config.yaml"))
    parser.add_argument("--data_dir", "--data-dir", dest="data_dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default="bench/results", help="folder for the .md, .png and .json")
    parser.add_argument("--combine", nargs="+", metavar="DIR", help="merge the curves of earlier runs' folders")
    arguments = parser.parse_args()
    if arguments.combine:
        return combine([Path(folder) for folder in arguments.combine], Path(arguments.output))
    torch.set_num_threads(arguments.threads)
    if arguments.budget_seconds:
        checkpoints = TIME_FRACTIONS
    elif arguments.tokens:
        checkpoints = sorted(int(float(value)) for value in arguments.tokens.split(","))
    else:
        checkpoints = QUICK_TOKENS if arguments.quick else TOKENS
    device = resolve_device(arguments.device)
    data_dir = resolve_data_dir(arguments.data_dir)
    curves = []
    for recipe in arguments.recipe or ["default"]:
        config = recipe_config(Path(arguments.config), recipe, arguments.set, checkpoints, arguments.budget_seconds)
        config.train.device = str(device)
        curves.append(run_curve(config, recipe, arguments.set, data_dir, checkpoints, device))
    selection, _ = load_agnews(data_dir)
    tfidf = tfidf_accuracy(selection.texts, selection.labels, config.probe.folds, config.probe.seed)
    write_results(curves, tfidf, markdown(curves, tfidf, device, arguments.threads), Path(arguments.output))


def write_results(curves: list[Curve], tfidf: float, table: str, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "learning_curve.md").write_text(table)
    (output / "learning_curve.json").write_text(
        json.dumps({"tfidf_accuracy": tfidf, "table": table, "curves": [asdict(curve) for curve in curves]}, indent=1)
    )
    plot(curves, tfidf, output / "learning_curve.png")
    print(table)
    print(f"wrote {output}/learning_curve.md, .png and .json")


def combine(folders: list[Path], output: Path) -> None:
    """One table and plot of the curves of earlier runs (e.g. two recipes run side by side)."""
    curves, tables, tfidf = [], [], None
    for folder in folders:
        saved = json.loads((folder / "learning_curve.json").read_text())
        tfidf = saved["tfidf_accuracy"]
        for curve in saved["curves"]:
            points = [Point(**point) for point in curve.pop("points")]
            curves.append(Curve(**curve, points=points))
        tables.append(saved["table"])
    header, rows = tables[0].split("|---", 1)[0], []
    for table in tables:
        rows += [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| recipe")]
    separator = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    write_results(curves, tfidf, header + separator + "\n" + "\n".join(rows) + "\n", output)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"{time.perf_counter() - started:.0f} s in all")
