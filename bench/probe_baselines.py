"""What pretraining bought: the study's best recipe, re-run from several seeds, beside the same
encoders randomly initialised and a TF-IDF + logistic regression baseline, all on the same stratified
k-fold split of AG News train.csv.

    python -m bench.probe_baselines --study_name demo [--seeds 3]

A study's best trial is the maximum of noisy values (the winner's curse): its own gain overstates
what its recipe buys. Here the recipe is pretrained again from `--seeds` initialisations (train.seed
0, 1, ...) on as many tokens as the trial consumed, and each run's gain is measured against its own
random-init encoder (the weights it starts from). Printed: every seed's figures, the mean gain with
its standard error over seeds, and TF-IDF.
"""

import argparse
import math
import statistics
import time
from dataclasses import replace

import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from bench.cli import run_cli
from data.agnews import load_agnews
from data.corpus import load_corpus
from data.files_location import resolve_data_dir
from data.tokenizer import Tokenizer
from hpo.export import trial_config
from hpo.storage import default_storage_url, load_existing_study
from hpo.study_values import format_value, trial_tokens, value_label
from training.pretrain import Pretrainer, resolve_device
from training.probe import Probe


def tfidf_accuracy(texts: list[str], labels, folds: int, seed: int) -> float:
    """TF-IDF word 1-2 grams (sublinear tf, min_df=2) + logistic regression C=10, as in the data card."""
    features = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit_transform(texts)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predictions = cross_val_predict(LogisticRegression(C=10, max_iter=1000), features, labels, cv=splitter)
    return float((predictions == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study_name", required=True)
    parser.add_argument("--storage")
    parser.add_argument("--data_dir", "--data-dir", dest="data_dir")
    parser.add_argument("--seeds", type=int, default=3, help="initialisations of the best recipe to pretrain")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    storage = args.storage or default_storage_url(args.study_name)
    study = load_existing_study(args.study_name, storage)
    best = study.best_trial
    config = trial_config(study, best)
    tokens = trial_tokens(best)
    config.train = replace(config.train, budget_seconds=None, budget_tokens=tokens)
    data_dir = resolve_data_dir(args.data_dir)
    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    selection, _ = load_agnews(data_dir)
    probe = Probe(selection, tokenizer, config.probe)
    device = resolve_device(config.train.device)
    params = " ".join(f"{name.split('.')[-1]}={value}" for name, value in best.params.items())
    error = best.user_attrs.get("probe_standard_error", math.nan)
    print(
        f"study {args.study_name!r}, best trial {best.number}: {value_label(study)} "
        f"{format_value(study, best.value)} ± {error:.4f} | {params}"
    )
    print(
        f"its recipe re-run on {tokens:,} tokens (as the trial) from {args.seeds} seeds; AG News train.csv, "
        f"{config.probe.folds}-fold stratified CV, {len(selection.labels)} rows"
    )
    print("| train.seed | random init | pretrained | gain | validation loss | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    gains = []
    corpus = load_corpus(data_dir, config.data, tokenizer)
    for seed in range(args.seeds):
        seeded = replace(config, train=replace(config.train, seed=seed))
        started = time.perf_counter()
        trainer = Pretrainer(seeded, corpus, tokenizer, device)
        random_init = probe.score(trainer.model, device, config.probe.folds)
        while not trainer.finished:
            trainer.train_step()
        pretrained = probe.score(trainer.model, device, config.probe.folds)
        gains.append(pretrained.accuracy - random_init.accuracy)
        print(
            f"| {seed} | {random_init.accuracy:.4f} | {pretrained.accuracy:.4f} ± {pretrained.standard_error:.4f} "
            f"| {gains[-1]:+.4f} | {trainer.validation_loss():.3f} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )
    spread = statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else math.nan
    print(f"mean gain over random init: {statistics.mean(gains):+.4f} ± {spread:.4f} (standard error over seeds)")
    tfidf = tfidf_accuracy(selection.texts, selection.labels, config.probe.folds, config.probe.seed)
    print(f"TF-IDF + logistic regression (no neural network), same folds: {tfidf:.4f}")


if __name__ == "__main__":
    run_cli(main)
