"""`main.py compare`: every cell of a grid of settings from the same seeds, as a study of fixed trials
(hpo/comparison.py), run with the study's workers; then the table of what it found."""

from pathlib import Path
from typing import Any

from hpo.comparison import (
    COMPARISON_ATTR,
    PairedTest,
    cell_row,
    cells,
    run_params,
    summarise,
)
from hpo.config import Config, ConfigError
from hpo.planned import run_plan
from hpo.storage import load_existing_study
from hpo.study import StudyRun, open_study
from hpo.study_values import format_metric, metric_label, unstable_note
from training.results import format_accuracy, format_gain


def run_comparison(
    study_name: str,
    storage_url: str,
    config: Config,
    grid: dict[str, list[Any]],
    seeds: int,
    budget: str,
    data_dir: Path,
    n_jobs: int,
    force: bool = False,
) -> StudyRun | None:
    """Run every (cell, seed) of the comparison (config: hpo.comparison.comparison_config's) the study does not
    hold yet; returns the run, None when every run was done. Run it again to resume, or with more --seeds."""
    study = open_study(study_name, storage_url, config, seed=0, force=force)
    recorded = study.user_attrs.get(COMPARISON_ATTR)
    if recorded is not None and (recorded["grid"] != grid or recorded["budget"] != budget):
        raise ConfigError(
            f"study {study_name!r} compares {recorded['grid']} at equal {recorded['budget']}; this command asks for "
            f"{grid} at equal {budget}: use a new --study_name"
        )
    all_seeds = sorted({*(recorded or {}).get("seeds", []), *(config.train.seed + index for index in range(seeds))})
    study.set_user_attr(COMPARISON_ATTR, {"grid": grid, "seeds": all_seeds, "budget": budget})
    # Seed by seed, so that a stopped comparison has whole seeds done.
    plan = [run_params(cell, seed) for seed in all_seeds for cell in cells(grid)]
    what = (
        f"comparing {len(cells(grid))} cell(s) x {len(all_seeds)} seed(s) (train.seed "
        f"{', '.join(map(str, all_seeds))}) at {budget_words(config, budget)}"
    )
    return run_plan(study, storage_url, config, data_dir, n_jobs, plan, what, force)


def budget_words(config: Config, budget: str) -> str:
    if budget == "tokens":
        return f"equal tokens ({config.train.budget_tokens:,} per run)"
    return f"equal seconds ({config.train.budget_seconds:g} s of training per run)"


def comparison_lines(study_name: str, storage_url: str, config: Config) -> list[str]:
    """The comparison as text: one line per cell, best first, and the significant paired differences."""
    study = load_existing_study(study_name, storage_url)
    summary = summarise(study, config)
    metric = config.probe.metric_name
    lines = [
        f"comparison {study_name!r} at {summary.budget_description}: {summary.runs_done} of {summary.runs_planned} "
        f"runs done; {metric_label(metric)}, mean ± standard error over seeds"
    ]
    rows = sorted((cell_row(cell, summary.seeds) for cell in summary.cells), key=lambda row: -row["mean"])
    for row in rows:
        lines.append(
            f"  {row['cell']}: {format_metric(metric, row['mean'], row['standard_error'])} over {row['seeds']} seed(s) "
            f"| accuracy {format_accuracy(row['accuracy'])}, random init {format_accuracy(row['random_init_accuracy'])}"
            f" | validation loss {row['validation_loss']:.3f} | {row['tokens']:,.0f} tokens at "
            f"{row['tokens_per_second']:,.0f}/s" + unstable_note(row["unstable_runs"])
        )
    if summary.effects:
        lines.append(
            "  main effects (each setting's values averaged over the other settings within each seed, then paired "
            f"over the seeds; Holm over {len(summary.effects)}):"
        )
    for test in summary.effects:
        lines.append(paired_test_line(test) + (" *" if test.significant else ""))
    significant = [test for test in summary.tests if test.significant]
    lines.append(
        f"  paired differences significant after Holm's correction over {len(summary.tests)} pairs: "
        f"{len(significant)}" + ("" if significant else " (the report lists every pair)")
    )
    for test in significant:
        lines.append(paired_test_line(test))
    if summary.tests or summary.effects:
        lines.append(f"  {TESTS_NOTE}")
    return lines


# Why the test is always the paired t-test (hpo.comparison.paired_values_test), said where the tests are listed.
TESTS_NOTE = (
    "[95% interval]: mean paired difference ± t (seeds - 1 df) x SE; d_z: that mean over the differences' SD; "
    "paired t-tests at any number of seeds (a Wilcoxon signed-rank test cannot reach p < 0.05 with 5 or fewer "
    "pairs, and a Shapiro-Wilk test at 3 has almost no power to choose between them)"
)


def paired_test_line(test: PairedTest) -> str:
    """One paired test as a line: difference in points, its t-based 95% interval, d_z, the t-test's Holm p."""
    return (
        f"    {test.first} - {test.second}: {format_gain(test.difference)} [{100 * test.interval[0]:+.2f}, "
        f"{100 * test.interval[1]:+.2f}] over {test.seeds} seeds, d_z = {test.d_z:.2f}, paired t-test "
        f"({test.degrees_of_freedom} df) p = {test.adjusted_p_value:.3g} (Holm)"
    )
