"""A study -> one self-contained HTML report: history, importances, plots, top trials, choice statistics.

The statistics answer "does choice A beat choice B in this study?": per categorical dimension, each
choice's mean value (accuracy, or gain over random init) with a t-based 95% interval, and
Mann-Whitney U tests between choices, Holm-corrected within the dimension.
"""

import datetime
import html
import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from hpo import comparison as grid_study
from hpo.confirmation import load_confirmation, probability_text
from hpo.curves import curves_figure, trial_curves
from hpo.export import study_base_config
from hpo.statistics import holm_adjust, t_interval
from hpo.storage import displayed_url, load_existing_study
from hpo.study_values import (
    format_metric,
    format_value,
    metric_label,
    objective_name,
    ranked_trials,
    value_error,
    value_label,
)
from training.config import PROBE_TARGETS
from training.curves import CURVE_EVERY_STEPS
from training.results import format_accuracy

MIN_TRIALS_PER_CHOICE = 3  # fewer completed trials than this: no interval, no test
SIGNIFICANCE_LEVEL = 0.05  # for the Holm-adjusted p-values
TOP_TRIALS = 10
PED_ANOVA_RELIABLE_TRIALS = 20  # PED-ANOVA contrasts the top 10% with all: below this it is a hint
SLICE_COLUMNS = 3  # slice plots per row, so that each keeps a readable width inside the page (body max-width)
SLICE_HEIGHT = 360  # pixels


# Statistics of the categorical choices -----------------------------------------------------------


@dataclass
class ChoiceSummary:
    """Completed-trial values of one choice of one categorical dimension."""

    choice: str
    values: list[float]
    pruned: int

    @property
    def enough(self) -> bool:
        return len(self.values) >= MIN_TRIALS_PER_CHOICE

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))


@dataclass
class Comparison:
    """A two-sided Mann-Whitney U test between two choices; `better` has the higher mean."""

    better: ChoiceSummary
    worse: ChoiceSummary
    p_value: float
    adjusted_p_value: float = math.nan

    @property
    def significant(self) -> bool:
        return self.adjusted_p_value < SIGNIFICANCE_LEVEL

    def verdict(self, metric: str = PROBE_TARGETS["accuracy"]) -> str:
        better, worse = self.better, self.worse
        means = f"mean {format_metric(metric, better.mean)} vs {format_metric(metric, worse.mean)}"
        detail = f"Holm-adjusted p={self.adjusted_p_value:.3g}, raw p={self.p_value:.3g}"
        if self.significant:
            return f"{better.choice} beats {worse.choice} here: {means}, {detail}"
        verdict = f"no difference yet between {better.choice} and {worse.choice}: {means}, {detail}; need more trials"
        # The exact test's smallest two-sided p-value, reached when the two groups do not overlap at all.
        smallest = 2 / math.comb(len(better.values) + len(worse.values), len(better.values))
        if smallest >= SIGNIFICANCE_LEVEL:
            verdict += (
                f" (with {len(better.values)} and {len(worse.values)} trials even complete separation "
                f"gives p={smallest:.2g})"
            )
        return verdict


def summarise_choices(trials: list[FrozenTrial], name: str, choices: list) -> list[ChoiceSummary]:
    """Per choice of dimension `name`: completed values and the number pruned."""
    return [
        ChoiceSummary(
            str(choice),
            [t.value for t in trials if t.state == TrialState.COMPLETE and t.params.get(name) == choice],
            sum(t.state == TrialState.PRUNED and t.params.get(name) == choice for t in trials),
        )
        for choice in choices
    ]


def compare_choices(summaries: list[ChoiceSummary]) -> list[Comparison]:
    """All pairs of choices with enough trials, tested and Holm-corrected together."""
    testable = [summary for summary in summaries if summary.enough]
    comparisons = []
    for first, second in itertools.combinations(testable, 2):
        better, worse = (first, second) if first.mean >= second.mean else (second, first)
        test = stats.mannwhitneyu(better.values, worse.values, alternative="two-sided")
        comparisons.append(Comparison(better, worse, float(test.pvalue)))
    for comparison, adjusted in zip(comparisons, holm_adjust([c.p_value for c in comparisons]), strict=True):
        comparison.adjusted_p_value = adjusted
    return sorted(comparisons, key=lambda comparison: comparison.adjusted_p_value)


def categorical_dimensions(trials: list[FrozenTrial]) -> dict[str, list]:
    """Every categorical parameter seen in the study, with its declared choices."""
    dimensions: dict[str, list] = {}
    for trial in trials:
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                dimensions.setdefault(name, list(distribution.choices))
    return dimensions


# HTML sections -----------------------------------------------------------------------------------


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escape text before)."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(make: Callable[[], go.Figure]) -> str:
    """The figure as a div (plotly.js is loaded once in the page head), with Optuna's warnings beneath."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = make()
    notes = sorted({str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)})
    return figure.to_html(full_html=False, include_plotlyjs=False) + "".join(_note(f"Optuna: {n}") for n in notes)


def _format_value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _needs_completed(study: optuna.Study, minimum: int, what: str) -> str | None:
    """A note when the study has too few completed trials for `what`, else None."""
    completed = _completed(study)
    if len(completed) < minimum:
        return f"{what} needs at least {minimum} completed trial(s); this study has {len(completed)}. Run more trials."
    if minimum > 1 and len({trial.value for trial in completed}) < 2:
        return f"{what} needs completed trials with different values; all {len(completed)} have the same value."
    return None


def summary_section(study: optuna.Study) -> str:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    lines = [
        f"objective: maximise {objective_name(study)} (Optuna's metric name)",
        f"{len(study.trials)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n),
    ]
    ranked = ranked_trials(study)
    if ranked:
        best = ranked[0]
        value = format_value(study, best.value, value_error(study, best))
        lines.append(f"best: trial {best.number}, {value_label(study)} {value} (± its standard error)")
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def history_section(study: optuna.Study) -> str:
    note = _needs_completed(study, 1, "The optimisation history")
    if note:
        return _note(note)
    return _figure(lambda: optuna.visualization.plot_optimization_history(study, target_name=value_label(study)))


def _importance_section(study: optuna.Study, evaluator: optuna.importance.BaseImportanceEvaluator, about: str) -> str:
    note = _needs_completed(study, 2, "Parameter importance")
    if note:
        return _note(note)
    try:
        figure = _figure(lambda: optuna.visualization.plot_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError) as error:  # e.g. fANOVA: "zero total variance" when no parameter varies
        return _note(
            f"{type(evaluator).__name__} could not be computed from these trials ({error}); it needs completed "
            "trials whose parameters and accuracies both vary. Run more trials."
        )
    return _note(about) + figure


def ped_anova_section(study: optuna.Study) -> str:
    about = (
        "PED-ANOVA: how much each parameter's distribution in the top 10% of completed trials differs from "
        "its distribution in all of them; conditional parameters are included."
    )
    completed = len(_completed(study))
    if completed < PED_ANOVA_RELIABLE_TRIALS:
        about += f" With {completed} completed trials (< {PED_ANOVA_RELIABLE_TRIALS}) read it as a hint."
    return _importance_section(study, optuna.importance.PedAnovaImportanceEvaluator(), about)


def fanova_section(study: optuna.Study) -> str:
    about = (
        f"fANOVA: share of the variance of the {value_label(study)} explained by each parameter in a random-forest fit "
        "(seed 0); only parameters present in every completed trial."
    )
    return _importance_section(study, optuna.importance.FanovaImportanceEvaluator(seed=0), about)


def parallel_section(study: optuna.Study) -> str:
    note = _needs_completed(study, 1, "The parallel coordinates plot")
    return _note(note) if note else _figure(lambda: optuna.visualization.plot_parallel_coordinate(study))


def slice_row_figure(study: optuna.Study, names: list[str]) -> go.Figure:
    """Optuna sizes a slice figure at 300 px per parameter, past the page's width for a whole search space;
    a row of SLICE_COLUMNS follows the page's width instead."""
    figure = optuna.visualization.plot_slice(study, params=names, target_name=value_label(study))
    return figure.update_layout(width=None, height=SLICE_HEIGHT, autosize=True)


def slice_section(study: optuna.Study) -> str:
    note = _needs_completed(study, 1, "The slice plot")
    if note:
        return _note(note)
    names = sorted({name for trial in _completed(study) for name in trial.params})
    rows = [names[start : start + SLICE_COLUMNS] for start in range(0, len(names), SLICE_COLUMNS)]
    return "".join(_figure(lambda row=row: slice_row_figure(study, row)) for row in rows)


def intermediate_section(study: optuna.Study) -> str:
    if not any(trial.intermediate_values for trial in study.get_trials(deepcopy=False)):
        return _note("No trial has reported a quick-probe score yet.")
    about = f"Quick-probe {value_label(study)} at each report point (0, 1, ...); pruned trials end early."
    return _note(about) + _figure(lambda: optuna.visualization.plot_intermediate_values(study))


def top_trials_section(study: optuna.Study) -> str:
    ranked = ranked_trials(study)[:TOP_TRIALS]
    if not ranked:
        return _note("No completed trial yet.")
    rows = []
    for rank, trial in enumerate(ranked, start=1):
        attrs = trial.user_attrs
        params = "<br>".join(html.escape(f"{name} = {_format_value(v)}") for name, v in trial.params.items())
        rows.append(
            [
                str(rank),
                str(trial.number),
                format_value(study, trial.value, value_error(study, trial)),
                _accuracy(attrs.get("probe_accuracy")),
                _accuracy(attrs.get("random_init_accuracy")),
                params,
                f"{attrs.get('tokens_per_second', math.nan):,.0f}",
                f"{attrs.get('wall_seconds', math.nan):.0f}",
            ]
        )
    header = [
        "rank",
        "trial",
        f"{html.escape(value_label(study))} ± s.e.",
        "probe accuracy",
        "random init accuracy",  # the same encoder before pretraining: what the accuracy is read against
        "parameters",
        "tokens/s",
        "wall time (s)",
    ]
    return _table(header, rows)


def _accuracy(value: float | None) -> str:
    return "–" if value is None else format_accuracy(value)


def _choice_row(summary: ChoiceSummary, metric: str) -> list[str]:
    completed = len(summary.values)
    best = format_metric(metric, max(summary.values)) if summary.values else "–"
    if summary.enough:
        low, high = t_interval(summary.values)
        mean = f"{format_metric(metric, summary.mean)} [{100 * low:.2f}, {100 * high:.2f}]"
    else:
        mean = f"too few completed trials ({completed} &lt; {MIN_TRIALS_PER_CHOICE}): not tested"
    return [html.escape(summary.choice), str(completed), str(summary.pruned), best, mean]


def dimension_statistics(
    trials: list[FrozenTrial], name: str, choices: list, metric: str = PROBE_TARGETS["accuracy"]
) -> str:
    """Table of the choices of one dimension and the verdicts of their pairwise tests."""
    summaries = summarise_choices(trials, name, choices)
    label = html.escape(metric_label(metric))
    header = ["choice", "completed", "pruned", "best", f"mean {label} [t-based 95% CI, points]"]
    table = _table(header, [_choice_row(summary, metric) for summary in summaries])
    comparisons = compare_choices(summaries)
    if not comparisons:
        return table + _note(
            f"No test yet: fewer than two choices have {MIN_TRIALS_PER_CHOICE} completed trials; run more trials."
        )
    verdicts = "".join(f"<li>{html.escape(comparison.verdict(metric))}</li>" for comparison in comparisons)
    return table + f"<ul>{verdicts}</ul>"


def choices_section(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    dimensions = categorical_dimensions(trials)
    if not dimensions:
        return _note("No categorical parameter in this study.")
    about = (
        f"Two-sided Mann-Whitney U tests between choices with at least {MIN_TRIALS_PER_CHOICE} completed trials, "
        f"Holm-corrected within each dimension, significance level {SIGNIFICANCE_LEVEL}. Intervals: the mean ± t "
        "(n - 1 degrees of freedom) x its standard error (a percentile bootstrap covers about 75% at 3 values). "
        "The sampler picks "
        "choices after seeing results and the other parameters vary too, so these are observations of this "
        "study, not a controlled experiment."
    )
    parts = [_note(about)]
    for name, choices in dimensions.items():
        parts.append(
            f"<h3>{html.escape(name)}</h3>" + dimension_statistics(trials, name, choices, objective_name(study))
        )
    return "".join(parts)


def confirmation_section(study: optuna.Study) -> str:
    summary = load_confirmation(study)
    if summary is None:
        return _note(
            "No confirmation yet: `python main.py confirm --study_name NAME` re-runs the top recipes over paired "
            "seeds, and export then takes the confirmed leader rather than the best single trial."
        )
    about = (
        f"The top recipes re-run in study {summary.study_name!r} with train.seed "
        f"{', '.join(map(str, summary.seeds))} (the same seeds for every recipe: paired), each on the tokens its "
        f"trial consumed, each against its own random-init encoder; {summary.runs_done} of {summary.runs_planned} "
        f"runs done. Statistics over the {len(summary.complete_seeds)} seed(s) every recipe has finished: the mean "
        "± its standard error, the paired difference to the leader ± its standard error (seed by seed) with its "
        "95% interval (± t with seeds - 1 degrees of freedom x the standard error; none from one seed), and the "
        "probability that the recipe's mean is the best (its posterior under a flat prior and normal noise paired by "
        "seed: a multivariate t with seeds - 1 degrees of freedom; for two recipes the one-sided paired t "
        "probability; none from one seed)."
    )
    if not summary.recipes:
        return _note(about) + _note("No seed is finished by every recipe yet.")
    label = html.escape(value_label(study))
    rows = [
        [
            str(line.recipe.trial),
            format_value(study, line.recipe.value),
            ", ".join(format_value(study, value) for value in line.values),
            format_value(study, line.mean, line.standard_error),
            "leader" if line is summary.leader else line.difference_text(),
            probability_text(line.probability_best),
            f"{line.recipe.tokens:,}",
        ]
        for line in summary.recipes
    ]
    header = [
        "trial",
        f"study {label} (one seed)",
        "by seed",
        f"mean {label} ± s.e.",
        "paired difference to the leader ± s.e. [95% CI]",
        "P(best)",
        "tokens",
    ]
    return _note(about) + _table(header, rows)


def comparison_cells_section(study: optuna.Study) -> str:
    """A comparison study's cells: the table, then the heatmap of their mean values."""
    summary = grid_study.summarise(study, study_base_config(study))
    metric = objective_name(study)
    about = (
        f"Every cell of the grid from the same seeds (train.seed {', '.join(map(str, summary.seeds))}), all other "
        f"settings fixed, at {summary.budget_description}; {summary.runs_done} of {summary.runs_planned} runs done. "
        f"Each run is scored against its own random-init encoder; means ± standard errors over seeds (points), "
        "and the mean of each run's own paired standard error of the probe (the probe's part of the noise)."
    )
    rows = [grid_study.cell_row(cell, summary.seeds) for cell in summary.cells]
    table_rows = [
        [
            html.escape(row["cell"]),
            str(row["seeds"]),
            format_metric(metric, row["mean"], row["standard_error"]),
            f"{100 * row['probe_error']:.2f}",
            format_accuracy(row["accuracy"]),
            format_accuracy(row["random_init_accuracy"]),
            f"{row['validation_loss']:.3f}",
            f"{row['tokens']:,.0f}",
            f"{row['tokens_per_second']:,.0f}",
        ]
        for row in rows
    ]
    header = [
        "cell",
        "seeds",
        f"mean {html.escape(metric_label(metric))} ± s.e.",
        "probe s.e. (points)",
        "probe accuracy",
        "random init accuracy",
        "validation loss",
        "tokens",
        "tokens/s",
    ]
    return _note(about) + _table(header, table_rows) + _figure(lambda: comparison_heatmap(summary, rows, metric))


def comparison_heatmap(summary: "grid_study.ComparisonSummary", rows: list[dict], metric: str) -> go.Figure:
    """Mean value per cell: the first grid key down, the others' combinations across."""
    keys = list(summary.grid)
    first, rest = keys[0], keys[1:]
    columns = [
        ", ".join(f"{key.split('.')[-1]}={value}" for key, value in zip(rest, values, strict=True)) or "all"
        for values in itertools.product(*(summary.grid[key] for key in rest))
    ]
    by_cell = {cell.label: row for cell, row in zip(summary.cells, rows, strict=True)}
    z, text = [], []
    for value in summary.grid[first]:
        z_row, text_row = [], []
        for cell in summary.cells:
            if cell.settings[first] != value:
                continue
            row = by_cell[cell.label]
            z_row.append(100 * row["mean"])
            text_row.append(format_metric(metric, row["mean"], row["standard_error"]))
        z.append(z_row)
        text.append(text_row)
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=columns,
            y=[f"{first.split('.')[-1]}={value}" for value in summary.grid[first]],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": "points"},
        )
    )
    figure.update_layout(
        title=f"mean {metric_label(metric)} by cell, at {summary.budget_description}", height=120 + 60 * len(z)
    )
    return figure


def paired_test_rows(tests: list["grid_study.PairedTest"]) -> list[list[str]]:
    """Table rows of paired tests (pairs of cells, or main effects): difference in points with its interval."""
    return [
        [
            html.escape(test.first),
            html.escape(test.second),
            str(test.seeds),
            f"{100 * test.difference:+.2f} [{100 * test.interval[0]:+.2f}, {100 * test.interval[1]:+.2f}]",
            f"{test.d_z:.2f}",
            str(test.degrees_of_freedom),
            f"{test.p_value:.3g}",
            f"{test.adjusted_p_value:.3g}" + (" (significant)" if test.significant else ""),
        ]
        for test in tests
    ]


# Why the paired t-test at any number of seeds (hpo.comparison.paired_values_test): what a reader may expect instead.
TEST_CHOICE = (
    "The test does not change with a normality test: a Shapiro-Wilk test at n = 3 has almost no power (it rejects "
    "exponential differences 7% of the time, against 5% for normal ones), and a Wilcoxon signed-rank test cannot "
    "reach p < 0.05 with 5 or fewer pairs (its smallest two-sided p is 2 / 2^n). With 3 seeds the t-test has 2 "
    "degrees of freedom and rests on the differences being roughly normal: read small-seed verdicts as such."
)


def comparison_tests_section(study: optuna.Study) -> str:
    summary = grid_study.summarise(study, study_base_config(study))
    if not summary.tests:
        return _note("No pair of cells has two seeds done by both yet: no test.")
    about = (
        f"Every pair of cells on the seeds both finished, at {summary.budget_description}: the mean paired "
        "difference (first minus second, points) with its 95% interval (± t with seeds - 1 degrees of freedom x "
        "its standard error), d_z (the mean paired difference over the differences' standard deviation: an effect "
        "size of the pairs, larger than Cohen's d of two groups when the seeds move both cells alike), and a "
        f"paired t-test; p-values Holm-corrected over all {len(summary.tests)} pairs, significance level "
        f"{grid_study.SIGNIFICANCE_LEVEL}. {TEST_CHOICE}"
    )
    rows = paired_test_rows(sorted(summary.tests, key=lambda test: test.adjusted_p_value))
    header = ["first", "second", "seeds", "difference [95% CI]", "d_z", "df", "p", "Holm p"]
    return _note(about) + _table(header, rows)


def comparison_effects_section(study: optuna.Study) -> str:
    summary = grid_study.summarise(study, study_base_config(study))
    if not summary.effects:
        return _note("Main effects need a grid of two settings or more, and two matched runs of each pair of values.")
    about = (
        "Each setting of the grid on its own: its values two by two, each value's runs averaged over the other "
        "settings within each seed, then paired over the seeds that every such cell finished (the main effect "
        f"over the grid, at {summary.budget_description}; whether it depends on the other settings shows in the "
        "cells). The seed is the unit: the runs of one seed share its data order, so they are one pair, and a test "
        "over 3 seeds has 2 degrees of freedom however many other settings the grid has. The same statistics as "
        f"the pairs of cells below, Holm-corrected over the {len(summary.effects)} comparisons here. What it does "
        "not show: the effect at settings outside the grid, or averaged with other weights than equal ones."
    )
    rows = paired_test_rows(summary.effects)
    header = ["first", "second", "seeds", "difference [95% CI]", "d_z", "df", "p", "Holm p"]
    return _note(about) + _table(header, rows)


def curves_section(study: optuna.Study) -> str:
    """The training curves of the top trials, or of every run of a comparison (labelled by cell and seed)."""
    if grid_study.COMPARISON_ATTR in study.user_attrs:
        summary = grid_study.summarise(study, study_base_config(study))
        runs = {f"{cell.label}, seed {seed}": trial for cell in summary.cells for seed, trial in cell.trials.items()}
        what = "every run of the comparison"
    else:
        runs = {f"trial {trial.number}": trial for trial in ranked_trials(study)[:TOP_TRIALS]}
        what = f"the top {len(runs)} trials"
    curves = {}
    for label, trial in runs.items():
        found = trial_curves(study, [trial])
        if found:
            curves[label] = next(iter(found.values()))
    if not curves:
        return _note("No training curve found (trials write theirs beside their logs, in studies/NAME/logs/).")
    about = (
        f"The training curves of {what}: the mean training loss and gradient norm of every {CURVE_EVERY_STEPS} "
        "steps, the learning rate and the tokens per second of training time, against tokens (each trial's "
        "studies/NAME/logs/trial_N.curve.jsonl)."
    )
    return _note(about) + _figure(lambda: curves_figure(curves, f"training curves of {what}"))


SECTIONS: dict[str, Callable[[optuna.Study], str]] = {
    "Summary": summary_section,
    "Optimisation history": history_section,
    "Parameter importances: PED-ANOVA": ped_anova_section,
    "Parameter importances: fANOVA": fanova_section,
    "Parallel coordinates": parallel_section,
    "Slices": slice_section,
    "Intermediate values (pruning curves)": intermediate_section,
    f"Top {TOP_TRIALS} trials": top_trials_section,
    "Training curves": curves_section,
    "Confirmation over seeds": confirmation_section,
    "Categorical choices: which is better?": choices_section,
}

STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
.note { color: #555; }
"""


# A comparison study (`main.py compare`) leads with these.
COMPARISON_SECTIONS: dict[str, Callable[[optuna.Study], str]] = {
    "Comparison: cells": comparison_cells_section,
    "Comparison: main effects": comparison_effects_section,
    "Comparison: paired tests between cells": comparison_tests_section,
}


def render_report(study: optuna.Study, storage_url: str) -> str:
    """The whole report as one HTML page, plotly.js inlined once so that it opens offline."""
    generated = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    about = _note(f"storage {displayed_url(storage_url)}; generated {generated}")
    title = html.escape(f"Study {study.study_name}")
    sections = {**COMPARISON_SECTIONS, **SECTIONS} if grid_study.COMPARISON_ATTR in study.user_attrs else SECTIONS
    body = "".join(f"<h2>{html.escape(heading)}</h2>{section(study)}" for heading, section in sections.items())
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>'
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>'
        f"<body><h1>{title}</h1>{about}{body}</body></html>"
    )


def write_report(study_name: str, storage_url: str, output_dir: Path) -> Path:
    """Write output_dir/report.html for the study; returns its path."""
    study = load_existing_study(study_name, storage_url)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "report.html"
    path.write_text(render_report(study, storage_url), encoding="utf-8")
    return path
