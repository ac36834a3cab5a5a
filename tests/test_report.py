"""The HTML report and its statistics, on fake studies in the real search space (no pretraining)."""

import math
import re
from pathlib import Path

import numpy as np
import plotly.offline
import pytest
from conftest import FAKE_RANDOM_INIT_ACCURACY
from optuna.trial import TrialState

import main
from hpo.config import ConfigError
from hpo.report import (
    MIN_TRIALS_PER_CHOICE,
    SLICE_COLUMNS,
    ChoiceSummary,
    compare_choices,
    render_report,
    slice_row_figure,
)
from hpo.storage import load_existing_study


def summary(choice: str, values: list[float]) -> ChoiceSummary:
    return ChoiceSummary(choice, values, pruned=0)


def test_clear_winner_is_named_and_overlapping_choices_need_more_trials():
    steps = [0.002 * k for k in range(8)]
    rope = summary("rope", [0.600 + step for step in steps])
    standard = summary("standard", [0.550 + step for step in steps])
    absolute = summary("absolute", [0.551 + step for step in steps])  # interleaves with standard
    exposb = summary("exposb", [0.70, 0.71])  # best of all, but too few trials to test

    comparisons = compare_choices([rope, standard, absolute, exposb])

    assert len(comparisons) == 3 and all("exposb" not in c.verdict() for c in comparisons)
    verdicts = {(c.better.choice, c.worse.choice): c for c in comparisons}
    assert verdicts["rope", "standard"].significant
    assert verdicts["rope", "standard"].verdict().startswith("rope beats standard here")
    assert verdicts["rope", "absolute"].significant
    pair = next(c for c in comparisons if {c.better.choice, c.worse.choice} == {"standard", "absolute"})
    assert not pair.significant and "no difference yet" in pair.verdict() and "need more trials" in pair.verdict()
    # Holm never lowers a p-value.
    assert all(c.adjusted_p_value >= c.p_value for c in comparisons)


def test_three_against_three_says_the_test_cannot_yet_be_significant():
    (comparison,) = compare_choices([summary("span", [0.6, 0.61, 0.62]), summary("standard", [0.5, 0.51, 0.52])])
    assert not comparison.significant
    assert "even complete separation gives p=0.1" in comparison.verdict()


def choice_rows(page: str, choice: str) -> list[str]:
    return re.findall(rf"<tr><td>{choice}</td>(.*?)</tr>", page)


@pytest.mark.parametrize("completed", [0, 1, 2])
def test_report_of_a_nearly_empty_study_skips_sections_with_a_note(tmp_path, completed, make_study):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5 + 0.01 * i) for i in range(completed)] + [({}, None)])
    page = render_report(load_existing_study("fake", storage), storage)

    assert page.count(plotly.offline.get_plotlyjs()[:300]) == 1, "plotly.js must be inlined exactly once"
    assert "<script src=" not in page, "the report must open offline"
    importance_notes = page.count("Parameter importance needs at least 2 completed trial(s)")
    assert importance_notes == (2 if completed < 2 else 0)
    assert "fewer than two choices have 3 completed trials" in page
    study = load_existing_study("fake", storage)
    parameters = {name for trial in study.get_trials(states=(TrialState.COMPLETE,)) for name in trial.params}
    slice_rows = math.ceil(len(parameters) / SLICE_COLUMNS)  # one figure per row of slices
    assert page.count("Plotly.newPlot") == (0 if completed == 0 else 2 + slice_rows + 2 * (completed >= 2)) + 1


def test_slice_plots_come_in_rows_that_fit_the_page(tmp_path, make_study):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5), ({}, 0.6)])
    study = load_existing_study("fake", storage)
    names = sorted(study.trials[0].params)[:SLICE_COLUMNS]
    figure = slice_row_figure(study, names)
    assert figure.layout.width is None and figure.layout.autosize  # Optuna's own: 300 px per parameter
    assert len([axis for axis in figure.layout if axis.startswith("xaxis")]) == len(names)


def test_importance_of_trials_that_share_every_parameter_is_a_note_not_a_crash(tmp_path, make_study):
    same = {"model.attention_kind": "rope", "model.size": "tiny", "model.dropout": 0.1, "masking.strategy": "span"}
    same |= {"train.objective": "mlm", "train.learning_rate": 1e-3, "train.layer_lr_decay": 0.9}
    same |= {"train.embedding_lr_multiplier": 100.0, "masking.rate": 0.4}
    storage = make_study(tmp_path / "fake.db", [(same, 0.50), (same, 0.52), (same, 0.60)])
    page = render_report(load_existing_study("fake", storage), storage)
    assert "FanovaImportanceEvaluator could not be computed from these trials" in page


def test_report_names_the_better_attention_kind_and_lists_the_top_trials(tmp_path, make_study):
    rng = np.random.default_rng(0)
    trials = [({"model.attention_kind": "rope"}, 0.60 + rng.normal(0, 0.004)) for _ in range(6)]
    trials += [({"model.attention_kind": "standard"}, 0.55 + rng.normal(0, 0.004)) for _ in range(6)]
    trials += [({"model.attention_kind": "exposb"}, 0.58), ({"model.attention_kind": "exposb"}, None)]
    storage = make_study(tmp_path / "fake.db", trials)
    study = load_existing_study("fake", storage)
    page = render_report(study, storage)

    assert "rope beats standard here" in page
    exposb = choice_rows(page, "exposb")[0]
    assert "<td>1</td><td>1</td><td>58.00%</td>" in exposb  # completed, pruned, best (a fake study: accuracy)
    assert f"too few completed trials (1 &lt; {MIN_TRIALS_PER_CHOICE})" in exposb
    assert "<td>0</td><td>0</td><td>–</td>" in choice_rows(page, "absolute")[0]
    best = max(study.trials, key=lambda t: t.value or 0)
    top_row = re.search(
        r"<tr><td>1</td><td>(\d+)</td><td>([\d.]+)% ± 1.20</td><td>([\d.]+)%</td><td>([\d.]+)%</td>", page
    )
    assert top_row and int(top_row[1]) == best.number and float(top_row[2]) == pytest.approx(100 * best.value, abs=0.01)
    assert float(top_row[3]) == pytest.approx(100 * best.value, abs=0.01)
    assert float(top_row[4]) == pytest.approx(100 * FAKE_RANDOM_INIT_ACCURACY)
    assert f"{best.user_attrs['tokens_per_second']:,.0f}" in page
    for heading in ("PED-ANOVA", "fANOVA", "Parallel coordinates", "Slices", "Intermediate values"):
        assert f"<h2>{heading}" in page or f": {heading}</h2>" in page


def test_report_command_writes_the_file_and_prints_its_path(tmp_path, monkeypatch, capsys, make_study):
    storage = make_study(tmp_path / "fake.db", [({}, 0.5), ({}, 0.52), ({}, 0.51)])
    monkeypatch.chdir(tmp_path)
    assert main.main(["report", "--study_name", "fake", "--storage", storage]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == Path("studies/fake/report.html") and (tmp_path / path).stat().st_size > 1_000_000


def test_missing_study_is_a_one_line_error_listing_the_studies_there(tmp_path, capsys, make_study):
    storage = make_study(tmp_path / "fake.db", [])
    assert main.main(["report", "--study_name", "nope", "--storage", storage]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'nope'" in error and storage in error and "studies there: fake" in error


def test_missing_storage_file_is_not_created(tmp_path, make_study):
    make_study(tmp_path / "fake.db", [])
    missing = tmp_path / "other.db"
    with pytest.raises(ConfigError, match=r"does not exist; study files in .*: fake\.db"):
        load_existing_study("other", f"sqlite:///{missing}")
    assert not missing.exists()
