"""Linear probe: sentence embeddings -> standardised -> logistic regression -> accuracy.

Selection uses stratified k-fold cross-validation over AG News train.csv (every row is scored
once, out of fold, so the standard error is that of ~5,000 predictions, not of one small split).
The official test split is scored only for exported or retrained configurations.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from data.agnews import LabelledTexts
from data.progress import progress_bar
from data.tokenizer import Tokenizer
from model.bert import Encoder
from training.config import ProbeConfig


@dataclass
class ProbeResult:
    accuracy: float
    standard_error: float  # binomial, of the accuracy
    rows: int
    correct: np.ndarray | None = None  # (rows,) bool: each row right or wrong (out of fold), for paired comparisons

    def summary(self) -> dict:
        """The figures without the rows, for a results file."""
        return {"accuracy": self.accuracy, "standard_error": self.standard_error, "rows": self.rows}


def encode_texts(texts: list[str], tokenizer: Tokenizer, max_length: int) -> list[list[int]]:
    """[CLS] + tokens, truncated to max_length (as in pretraining, sequences start with [CLS])."""
    return [[tokenizer.cls_id, *ids[: max_length - 1]] for ids in tokenizer.encode_batch(texts)]


@torch.no_grad()
def embed(
    model: Encoder, token_lists: list[list[int]], pad_id: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """(N, H) float32 sentence embeddings; batches are length-sorted to waste little padding."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(ids) for ids in token_lists])
    features = np.empty((len(token_lists), model.config.hidden_size), dtype=np.float32)
    with progress_bar(len(token_lists), "probe embedding", unit="text") as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(token_lists[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            for slot, row in enumerate(rows):
                input_ids[slot, : len(token_lists[row])] = torch.tensor(token_lists[row])
            input_ids = input_ids.to(device)
            key_padding_mask = input_ids != pad_id
            features[rows] = model.sentence_embedding(input_ids, key_padding_mask).float().cpu().numpy()
            bar.update(len(rows))
    model.train(was_training)
    return features


def _classifier(config: ProbeConfig):
    return make_pipeline(StandardScaler(), LogisticRegression(C=config.regularization, max_iter=config.max_iter))


def _one_thread():
    """The probe's fits are small (about 5,000 x H, four classes): more than one BLAS or OpenMP thread only makes
    them wait on each other. Measured on 2 cores: a 5-fold CV in 0.16 s on one thread, 1.07 s on two (the
    same predictions)."""
    return threadpool_limits(limits=1)


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray, folds: int, config: ProbeConfig) -> ProbeResult:
    """Out-of-fold accuracy of a stratified, seeded k-fold CV, with its binomial standard error."""
    if not np.isfinite(features).all():
        return ProbeResult(accuracy=float("nan"), standard_error=float("nan"), rows=len(labels))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    with warnings.catch_warnings(), _one_thread():
        # probe.max_iter bounds the probe's cost; an unconverged fit still scores what the features hold.
        warnings.simplefilter("ignore", ConvergenceWarning)
        predictions = cross_val_predict(_classifier(config), features, labels, cv=splitter)
    correct = predictions == labels
    accuracy = float(correct.mean())
    return ProbeResult(accuracy, math.sqrt(accuracy * (1 - accuracy) / len(labels)), len(labels), correct)


def held_out_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    config: ProbeConfig,
) -> ProbeResult:
    """Fit on one split, score on another (the final AG News test report)."""
    with warnings.catch_warnings(), _one_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = _classifier(config).fit(train_features, train_labels)
        correct = classifier.predict(test_features) == test_labels
    accuracy = float(correct.mean())
    return ProbeResult(accuracy, math.sqrt(accuracy * (1 - accuracy) / len(test_labels)), len(test_labels), correct)


class Probe:
    """Tokenises the probe texts once; scores any encoder on them."""

    def __init__(self, split: LabelledTexts, tokenizer: Tokenizer, config: ProbeConfig):
        self.config = config
        self.pad_id = tokenizer.pad_id
        self.labels = split.labels
        self.token_lists = encode_texts(split.texts, tokenizer, config.max_length)

    def features(self, model: Encoder, device: torch.device) -> np.ndarray:
        return embed(model, self.token_lists, self.pad_id, self.config.batch_size, device)

    def score(self, model: Encoder, device: torch.device, folds: int) -> ProbeResult:
        return cross_validated_accuracy(self.features(model, device), self.labels, folds, self.config)
