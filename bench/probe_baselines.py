"""What pretraining bought: the study's best probe accuracy beside a randomly initialised encoder
of the same configuration and a TF-IDF + logistic regression baseline, all on the same
stratified k-fold split of AG News train.csv.

    python -m bench.probe_baselines --study_name demo
"""

import argparse
import time

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from data.agnews import load_agnews
from data.files_location import resolve_data_dir
from data.tokenizer import Tokenizer
from hpo.export import study_base_config, trial_config
from hpo.pretrain import initial_encoder
from hpo.probe import Probe
from hpo.study import default_storage_url, load_existing_study


def tfidf_accuracy(texts: list[str], labels: np.ndarray, folds: int, seed: int) -> float:
    """TF-IDF word 1-2 grams (sublinear tf, min_df=2) + logistic regression C=10, as in the data card."""
    features = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit_transform(texts)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predictions = cross_val_predict(LogisticRegression(C=10, max_iter=1000), features, labels, cv=splitter)
    return float((predictions == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study_name", required=True)
    parser.add_argument("--storage")
    parser.add_argument("--data-dir", dest="data_dir")
    parser.add_argument("--seeds", type=int, default=3, help="random initialisations to average")
    args = parser.parse_args()
    storage = args.storage or default_storage_url(args.study_name)
    study = load_existing_study(args.study_name, storage)
    best = study.best_trial
    config = trial_config(study_base_config(study), best)
    data_dir = resolve_data_dir(args.data_dir)
    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    selection, _ = load_agnews(data_dir)
    probe = Probe(selection, tokenizer, config.probe)
    torch.set_num_threads(2)
    random_scores = []
    for seed in range(args.seeds):
        model = initial_encoder(config, tokenizer.vocab_size, seed)
        random_scores.append(probe.score(model, torch.device("cpu"), config.probe.folds).accuracy)
    started = time.perf_counter()
    tfidf = tfidf_accuracy(selection.texts, selection.labels, config.probe.folds, config.probe.seed)
    standard_error = best.user_attrs.get("probe_standard_error", float("nan"))
    print(f"AG News train.csv, {config.probe.folds}-fold stratified CV, {len(selection.labels)} rows")
    print("| encoder | accuracy |")
    print("|---|---|")
    categorical = ", ".join(f"{k}={v}" for k, v in best.params.items() if not isinstance(v, float))
    mean, low, high = np.mean(random_scores), min(random_scores), max(random_scores)
    best_label = f"study {args.study_name!r} best trial {best.number} ({categorical})"
    print(f"| {best_label} | {best.value:.4f} ± {standard_error:.4f} |")
    random_label = f"same configuration, randomly initialised ({args.seeds} seeds)"
    print(f"| {random_label} | {mean:.4f} (min {low:.4f}, max {high:.4f}) |")
    print(f"| TF-IDF + logistic regression (no neural network) | {tfidf:.4f} ({time.perf_counter() - started:.0f} s) |")


if __name__ == "__main__":
    main()
