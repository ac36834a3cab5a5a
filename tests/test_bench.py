"""The benchmarks' own arithmetic: what they print must follow from the runs they made."""

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import fake_companion

from bench import proxy_validity
from bench.cli import numbers
from bench.lr_horizon import best_learning_rate, run_scale, summarize
from bench.proxy_validity import Recipe, panel, rank_comparisons
from bench.retrain_runs import RetrainResult
from bench.time_to_gain import report, seconds_to_reach
from training.config import ConfigError

PROJECT_DIR = Path(__file__).resolve().parents[1]


def points(*pairs: tuple[float, float]) -> list[dict]:
    return [{"seconds": seconds, "gain": gain} for seconds, gain in pairs]


def test_seconds_to_reach_interpolates_between_the_points_around_the_target():
    curve = points((30, 0.01), (75, 0.04), (150, 0.06))
    assert seconds_to_reach(curve, 0.03) == pytest.approx(30 + (0.02 / 0.03) * 45)
    assert seconds_to_reach(curve, 0.005) == pytest.approx(15.0)  # from (0 s, gain 0): the random init
    assert math.isnan(seconds_to_reach(curve, 0.07))


def test_a_target_at_or_below_zero_is_held_by_the_random_init_from_the_start():
    curve = points((30, 0.03), (75, 0.05))
    assert seconds_to_reach(curve, 0.0) == 0.0
    assert seconds_to_reach(curve, -0.1) == 0.0


def run(way: str, seed: int, gains: list[float]) -> dict:
    timeline = [{"seconds": s, "tokens": 1000 * s, "gain": g} for s, g in zip((30, 600), gains, strict=True)]
    return {"way": way, "seed": seed, "random_init_accuracy": 0.5, "points": timeline}


def test_the_report_says_when_a_peer_never_reaches_a_target_or_gains_nothing():
    runs = [run("ours", 0, [0.04, 0.12]), run("HF recipe", 0, [-0.01, -0.1]), run("HF defaults", 0, [0.0, 0.035])]
    table, summary = report(runs, ["ours", "HF recipe", "HF defaults"], [0], [30.0, 600.0])
    assert "to +3 points: HF recipe does not reach it in 600 s, ours needs 22 s: ratio above 26.7" in table
    assert "the gain of HF recipe at 600 s (-10.0 points) is none" in table
    assert table.splitlines()[3].endswith("| > 600 | > 600 |")  # HF recipe: neither target within the budget
    # HF defaults reach +3.5 at 600 s; ours passes +3.5 between 0 s and 30 s (+4 at 30 s): at 26 s.
    assert "the gain of HF defaults at 600 s (+3.5 points) is reached by ours at 26 s: 0.04 of the time" in table
    assert summary["HF defaults"]["reach"]["0.03"] == pytest.approx(30 + (0.03 / 0.035) * 570)


def sweep_run(way: str, seed: int, timeline: list[tuple[float, int, float]], learning_rate: float | None = None):
    """A run's record: (seconds, tokens, gain) at each point."""
    points = [{"seconds": s, "tokens": n, "gain": g} for s, n, g in timeline]
    return {"way": way, "learning_rate": learning_rate, "seed": seed, "random_init_accuracy": 0.5, "points": points}


def test_the_peer_sweep_compares_ours_with_its_best_learning_rate_and_per_token_at_the_peers_tokens():
    from bench.time_to_gain import gain_at_tokens

    ours = [
        sweep_run("ours", 0, [(30, 400_000, 0.02), (600, 8_000_000, 0.12)]),
        sweep_run("ours", 1, [(30, 400_000, 0.04), (600, 8_000_000, 0.10)]),
    ]
    gains = {5e-4: ((0.0, 0.01), (0.0, 0.02)), 1e-3: ((0.01, 0.04), (0.0, 0.03)), 2e-3: ((0.01, 0.03), (0.0, 0.05))}
    gains[4e-3] = ((0.02, 0.20), (0.01, math.nan))  # seed 1 went non-finite: never chosen, whatever seed 0 did
    tokens = {0: 600_000, 1: 200_000}  # what each seed's peer trained by 600 s
    sweep = [
        sweep_run("HF one LR", seed, [(30, 30_000, early), (600, tokens[seed], late)], rate)
        for rate, by_seed in gains.items()
        for seed, (early, late) in enumerate(by_seed)
    ]
    table, summary = report(ours + sweep, ["ours", "HF one LR"], [0, 1], [30.0, 600.0])
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:7]]
    assert rows == ["ours", "HF one LR 0.0005", "HF one LR 0.001", "HF one LR 0.002 (best)", "HF one LR 0.004"]
    assert [label for label, figures in summary.items() if figures.get("best_of_sweep")] == ["HF one LR 0.002"]
    assert "| non-finite (0.40M tok) |" in table  # LR 4e-3's mean at 600 s
    assert "chosen from 0.0005, 0.001, 0.002, 0.004 by the mean gain at 600 s over seeds 0, 1: 0.002 (+4.0" in table
    assert "the best of 4 noisy means is biased up: the comparison above is the peer's favourable case" in table
    assert "sweep's highest LR" not in table  # 0.002 is inside the sweep
    # Ours is compared with the best LR only.
    assert "to +3 points: HF one LR 0.002 needs" in table and "HF one LR 0.001 needs" not in table

    # Per token: ours' curve read at the peer's own tokens, seed by seed; before its first probe, from (0 tokens, 0).
    assert gain_at_tokens(ours[0]["points"], 600_000) == (pytest.approx(0.02 + 0.2 / 7.6 * 0.10), True)
    assert gain_at_tokens(ours[1]["points"], 200_000) == (pytest.approx(0.02), False)
    assert math.isnan(gain_at_tokens(ours[0]["points"], 9_000_000)[0])
    comparison = summary["HF one LR 0.002"]["equal_tokens"]
    assert comparison["seeds"] == [0, 1] and comparison["tokens"] == 400_000
    assert comparison["differences"] == pytest.approx([0.02 + 0.2 / 7.6 * 0.10 - 0.03, 0.02 - 0.05])
    assert comparison["difference"] == pytest.approx(np.mean(comparison["differences"]))
    half_width = 12.706 * abs(np.diff(comparison["differences"])[0]) / 2  # t(0.975, 1 df) x SE of two values
    assert comparison["interval"] == pytest.approx(
        [comparison["difference"] - half_width, comparison["difference"] + half_width], rel=1e-4
    )
    assert comparison["between_probes"] == [True, False]
    assert (
        "at equal tokens (the 0.40M HF one LR 0.002 trained in 600 s): ours +2.1, HF one LR 0.002 +4.0; ours - HF "
        "one LR 0.002 -1.9 ± 1.1 points (seeds 0, 1: -0.7, -3.0; 95% t interval [-16.2, +12.5]): HF one LR 0.002 is "
        "ahead in 2 of 2 seeds, not significant at 2 seeds; at seed(s) 1 ours' gain there lies before its first probe"
        in table
    )

    without_the_highest = [run for run in ours + sweep if run["learning_rate"] != 4e-3]
    table, _ = report(without_the_highest, ["ours", "HF one LR"], [0, 1], [30.0, 600.0])
    assert "0.002 is the sweep's highest LR: a wider sweep may find a better one" in table


def test_a_time_to_gain_run_is_cached_under_everything_that_shaped_it(tmp_path, monkeypatch):
    import dataclasses

    from bench import time_to_gain
    from bench.time_to_gain import PEERS, SWEEP, PeerRecipe, Setting, Way, run, run_key, run_path

    def key(way: Way, setting: Setting | None = None) -> str:
        return run_key(way, 0, [1.0, 2.0], setting or Setting())

    one_lr = Way(SWEEP, 1e-3)
    assert key(one_lr) == key(Way(SWEEP, 1e-3)) != key(Way(SWEEP, 2e-3))
    assert len({key(one_lr), key(Way("HF recipe")), key(Way("HF defaults")), key(Way("ours"))}) == 4
    assert key(one_lr) != key(one_lr, Setting(overrides=("masking.rate=0.3",)))  # the recipe reads the config
    assert key(Way("ours")) != key(Way("ours"), Setting(overrides=("train.embedding_lr_multiplier=30",)))
    assert key(one_lr) != key(one_lr, Setting(probe_rows=100)) and key(one_lr) != run_key(one_lr, 1, [1, 2], Setting())
    assert key(one_lr) != run_key(one_lr, 0, [1.0, 3.0], Setting())

    original, base = PEERS[SWEEP], key(one_lr)
    recipe = original(time_to_gain.run_config(0, [1.0, 2.0], Setting()), 1e-3)
    other_values = {"schedule": "constant", "decay_fraction": 0.5, "dropout": 0.1, "betas": (0.9, 0.98)}
    for field in dataclasses.fields(PeerRecipe):  # every setting of the Hugging Face loop is in the key
        value = other_values.get(field.name, getattr(recipe, field.name) * 2)
        monkeypatch.setitem(
            PEERS,
            SWEEP,
            lambda config, rate, name=field.name, value=value: dataclasses.replace(
                original(config, rate), **{name: value}
            ),
        )
        assert key(one_lr) != base, field.name
    monkeypatch.setitem(PEERS, SWEEP, original)

    path = run_path(one_lr, 0, [1.0, 2.0], tmp_path, Setting())
    assert path.name == f"HF_one_LR_0.001_0_{base}.json"
    path.write_text(json.dumps({"way": SWEEP, "learning_rate": 1e-3, "read": "back"}))
    monkeypatch.setattr(time_to_gain, "HuggingFaceLoop", None)  # nothing may train
    assert run(one_lr, 0, [2.0, 1.0], tmp_path)["read"] == "back"
    assert time_to_gain.way_names("ours, HF one LR") == ["ours", SWEEP]  # --ways, to split a measurement
    with pytest.raises(argparse.ArgumentTypeError, match="unknown way\\(s\\) 'HF one lr'; the ways: ours, HF recipe"):
        time_to_gain.way_names("ours,HF one lr")


@pytest.mark.slow
def test_time_to_gain_runs_the_peer_sweep_at_one_learning_rate_and_reads_it_back(tmp_path, monkeypatch, capsys):
    import itertools

    import torch
    from conftest import TINY_OVERRIDES

    from bench import time_to_gain
    from training.pretrain import Pretrainer

    ticks = itertools.count()
    fake_clock = staticmethod(lambda: 0.25 * next(ticks))  # a step's two readings: 0.25 s of training a step
    monkeypatch.setattr(Pretrainer, "clock", fake_clock)
    monkeypatch.setattr(time_to_gain.HuggingFaceLoop, "clock", fake_clock)
    rates_in_use = []
    original_step = time_to_gain.HuggingFaceLoop.train_step

    def recording_step(self):
        original_step(self)
        rates_in_use.append({group["lr"] for group in self.optimizer.param_groups})

    monkeypatch.setattr(time_to_gain.HuggingFaceLoop, "train_step", recording_step)
    monkeypatch.setenv("CI", "1")
    arguments = ["--ways", "ours,HF one LR", "--peer_learning_rates", "4e-3,1e-3", "--points", "1,2", "--seeds", "0"]
    arguments += ["--jobs", "1", "--probe_rows", "100", "--work", str(tmp_path / "work"), "--output", str(tmp_path)]
    arguments += [part for override in TINY_OVERRIDES for part in ("--set", override)]
    monkeypatch.setattr(sys, "argv", ["time_to_gain", *arguments])
    threads = torch.get_num_threads()
    try:
        time_to_gain.main()
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "3 runs: 0 read back" in printed
    assert all(len(rates) == 1 for rates in rates_in_use)  # one LR for every parameter, at every step
    assert len(rates_in_use) == 2 * 8  # two LRs, 2 s of 0.25 s steps each

    saved = json.loads((tmp_path / "time_to_gain.json").read_text())
    swept = [run for run in saved["runs"] if run["way"] == "HF one LR"]
    assert [run["learning_rate"] for run in swept] == [1e-3, 4e-3]
    assert all(run["recipe"]["table_lr_multiplier"] == 1.0 and run["recipe"]["schedule"] == "linear" for run in swept)
    assert [point["tokens"] for point in swept[0]["points"]] == [4 * 8 * 32, 8 * 8 * 32]  # batch 8 x 32 tokens
    best = max(swept, key=lambda run: run["points"][-1]["gain"])
    table = (tmp_path / "time_to_gain.md").read_text()
    assert f"| HF one LR {best['learning_rate']:g} (best) |" in table and "chosen from 0.001, 0.004" in table
    assert saved["summary"][f"HF one LR {best['learning_rate']:g}"]["equal_tokens"]["seeds"] == [0]
    assert sorted(path.name.split("_0_")[0] for path in (tmp_path / "work").glob("*.json")) == [
        "HF_one_LR_0.001",
        "HF_one_LR_0.004",
        "ours",
    ]

    monkeypatch.setattr(time_to_gain, "HuggingFaceLoop", None)  # a rerun trains nothing: every run is read back
    monkeypatch.setattr(time_to_gain, "OurLoop", None)
    time_to_gain.main()
    assert "3 runs: 3 read back" in capsys.readouterr().out
    assert (tmp_path / "time_to_gain.md").read_text() == table


def test_the_proxy_panel_takes_the_top_and_spreads_the_rest_down_to_the_last():
    ranked = list(range(14))  # trial numbers in study order, best first
    assert panel(ranked, top=5, spread=3) == [0, 1, 2, 3, 4, 8, 10, 13]  # rest 5..13 at thirds
    assert panel(ranked[:7], top=5, spread=3) == list(range(7))  # too few left to spread: all of them


def test_the_proxy_compares_each_short_ranking_with_the_long_one_and_seed_with_seed():
    from types import SimpleNamespace

    # Four recipes; at 10x seed 1 ranks them a > b > c > d, seed 2 a > b > d > c; at 1x the order is reversed.
    gains = {"a": ([0.01, 0.01], [0.9, 0.9]), "b": ([0.02, 0.02], [0.8, 0.8]), "c": ([0.03, 0.03], [0.7, 0.55])}
    gains["d"] = ([0.04, 0.04], [0.6, 0.6])
    recipes = [
        Recipe(SimpleNamespace(value=value), rank, {1: short, 10: long})
        for rank, (value, (short, long)) in enumerate(zip([4, 3, 2, 1], gains.values(), strict=True), start=1)
    ]
    comparisons = rank_comparisons(recipes, [1, 10], [1, 2])
    assert list(comparisons) == [
        ("study (seed 0)", "10x"),
        ("1x", "10x"),
        ("1x seed 1", "1x seed 2"),
        ("10x seed 1", "10x seed 2"),
    ]
    assert comparisons["study (seed 0)", "10x"]["spearman"] == pytest.approx(1.0)  # 10x means: a > b > c > d
    assert comparisons["1x", "10x"]["spearman"] == pytest.approx(-1.0)
    assert comparisons["1x", "10x"]["pairwise"] == 0.0
    assert comparisons["1x seed 1", "1x seed 2"]["spearman"] == pytest.approx(1.0)
    assert comparisons["10x seed 1", "10x seed 2"]["pairwise"] == pytest.approx(5 / 6)  # c, d swapped
    assert comparisons["10x seed 1", "10x seed 2"]["spearman"] == pytest.approx(0.8)


def test_proxy_validity_retrains_each_panel_recipe_at_each_multiple_and_seed_and_reports_how_ranks_agree(
    tmp_path, make_study, monkeypatch
):
    # Six trials, best first (value 0.10 - 0.01 i); the panel (top 3, spread 1) is trials 0, 1, 2, 5. Each trial
    # trained 30,000 + i tokens (make_study). Faked retrains: at 1x the gains keep the study's order, at 10x
    # trials 2 and 5 swap; seed 2 adds a tenth of a point everywhere (the order within a budget holds).
    storage = make_study(tmp_path / "fake.db", [({}, 0.10 - 0.01 * index) for index in range(6)])
    fake_companion(tmp_path, {0: {1: 0.07, 2: 0.07}, 1: {1: 0.08, 2: 0.08}, 2: {1: 0.06, 2: 0.06}})  # 1 > 0 > 2
    long_gain = {0: 0.20, 1: 0.19, 2: 0.15, 5: 0.16}
    requests = []

    def retrain_all(runs, jobs):
        requests.extend(runs)
        results = []
        for run in runs:
            trial, seed = int(run.folder.parent.name.removeprefix("trial_")), int(run.overrides[0].split("=")[1])
            multiple = run.tokens // (30_000 + trial)
            gain = (long_gain[trial] if multiple == 10 else 0.10 - 0.01 * trial) + 0.001 * (seed - 1)
            results.append(RetrainResult(run.tokens, 5.0, 0.5 + gain, 0.5, 0.5 + gain, 0.5, 1.0))
        return results

    monkeypatch.setattr(proxy_validity, "retrain_all", retrain_all)
    work, output = tmp_path / "work", tmp_path / "results"
    arguments = ["--study_name", "fake", "--storage", storage, "--top", "3", "--spread", "1", "--multiples", "1,10"]
    monkeypatch.setattr(sys, "argv", ["proxy_validity", *arguments, "--work", str(work), "--output", str(output)])
    proxy_validity.main()

    assert [(run.folder.relative_to(work).as_posix(), run.tokens) for run in requests[:4]] == [
        ("trial_0/x1_seed1", 30_000),
        ("trial_0/x1_seed2", 30_000),
        ("trial_0/x10_seed1", 300_000),
        ("trial_0/x10_seed2", 300_000),
    ]
    assert len(requests) == 16 and {run.folder.parent.name for run in requests} == {f"trial_{n}" for n in (0, 1, 2, 5)}
    assert all(run.config == work / "configs" / f"{run.folder.parent.name}.yaml" for run in requests)
    assert all(run.config.exists() for run in requests)
    table = (output / "proxy_validity.md").read_text()
    # Ranks at 1x: 1, 2, 3, 4; at 10x: 1, 2, 4, 3. rho = 1 - 6 * 2 / (4 * 15) = 0.8; 5 of 6 pairs agree.
    assert re.search(r"\| all 4 \| 1x \| 10x \| 0\.80 \[.*\] \| 83% \|", table)
    assert re.search(r"\| all 4 \| study \(seed 0\) \| 10x \| 0\.80 \[.*\] \| 83% \|", table)
    assert re.search(r"\| all 4 \| 10x seed 1 \| 10x seed 2 \| 1\.00 \[.*\] \| 100% \|", table)
    assert "| top 3 | 1x | 10x | 1.00 (no interval) | 100% |" in table  # 0 > 1 > 2 at both; 3 items: no interval
    assert "The study's best trial (0) ranks 1 of 4 at 10x." in table
    assert "The confirmed leader (trial 1, over 2 seeds) ranks 2 of 4 at 10x." in table
    # The confirmation orders 1 > 0 > 2, the 10x runs 0 > 1 > 2: rho 0.5, 2 of 3 pairs.
    assert "| confirmed 3 | confirm (1x, 2 seeds) | 10x | 0.50 (no interval) | 67% |" in table
    assert "Intervals: Fisher's z with Bonett and Wright's standard error" in table
    assert "| 5 | " in table and "+16.1 ± 0.1 (3)" in table  # trial 5 at 10x: (16.0 + 16.1) / 2, third
    assert (output / "proxy_validity.png").stat().st_size > 0
    assert json.loads((output / "proxy_validity.json").read_text())["table"] == table


def test_the_best_learning_rate_is_the_parabola_vertex_or_says_why_not():
    log_rates = np.log([1e-3, 1.5e-3, 2.25e-3, 3.375e-3])
    peaked = -((log_rates - np.log(2e-3)) ** 2)
    vertex, how = best_learning_rate(log_rates, peaked)
    assert vertex == pytest.approx(np.log(2e-3)) and how == "parabola vertex"
    rising = -((log_rates - np.log(1e-2)) ** 2)  # the best lies beyond the grid: its edge, and it says so
    assert best_learning_rate(log_rates, rising) == (
        pytest.approx(log_rates[-1]),
        "parabola vertex beyond the grid: its edge",
    )
    valley = (log_rates - log_rates.mean()) ** 2 + 0.1 * np.arange(4)
    assert best_learning_rate(log_rates, valley)[1] == "best grid point (the parabola opens upwards)"


def test_the_lr_horizon_fits_a_vertex_from_3_lrs_and_beta_from_2_budgets_and_says_so_otherwise():
    def run(scale, seed, gains):
        return {"scale": scale, "seed": seed, "budgets": {str(b): {"gain": g} for b, g in gains.items()}}

    # Gains peak at x1 for 1,000 tokens and at x0.5 for 4,000 (log-symmetric parabolas): beta = log 2 / log 4.
    scales, budgets = [0.25, 0.5, 1.0, 2.0, 4.0], [1_000, 4_000]
    runs = [
        run(s, seed, {1_000: 0.1 - 0.01 * np.log(s) ** 2 + 0.001 * seed, 4_000: 0.2 - 0.01 * np.log(2 * s) ** 2})
        for seed in (1, 2)
        for s in scales
    ]
    lines, best, beta = summarize(runs, scales, budgets, [1, 2], 1e-3, 100)
    assert best[1_000] == pytest.approx(1e-3) and best[4_000] == pytest.approx(5e-4)
    assert beta == pytest.approx(0.5)
    table = "\n".join(lines)
    assert "+10.2 ± 0.1" in table  # x1 at 1,000 tokens: 10.1 and 10.2 points over the two seeds
    assert "| 1.00e-03 (x1.00) | parabola vertex | x1.00 | x1.00 |" in table
    assert "beta = 0.50; from 1,000 to 4,000 tokens the best LR changes x0.50" in table

    # Two LRs: no parabola (the grid's better point, and why); one budget: no beta, and why.
    two = [r for r in runs if r["scale"] in (0.5, 1.0) and r["seed"] == 1]
    lines, best, beta = summarize(two, [0.5, 1.0], [1_000], [1], 1e-3, 100)
    assert beta is None and best[1_000] == pytest.approx(1e-3)
    assert "best grid point (a parabola needs 3 LRs)" in lines[-3]
    assert lines[-1] == "beta needs the best LR at 2 budgets or more (`--tokens`): not fitted."


@pytest.mark.slow
def test_an_interrupted_lr_horizon_run_resumes_to_the_figures_of_an_uninterrupted_one(tmp_path, monkeypatch):
    from conftest import TINY_OVERRIDES

    from training.pretrain import Pretrainer

    # 256 tokens a step: budgets of 16 and 32 steps, branching at steps 13 and 26; a checkpoint every 4.
    arguments = (1.0, 1, [4_096, 8_192], 512)
    overrides = (*TINY_OVERRIDES, f"data.cache_dir={tmp_path / 'cache'}")
    whole = run_scale(*arguments, tmp_path / "whole", overrides, checkpoint_every=4)
    assert sorted(whole["budgets"]) == ["4096", "8192"]

    original, calls = Pretrainer.train_step, []

    def stopped_at_the_22nd_step(self):  # stable at step 18, its last checkpoint at 16, the 4,096 branch done
        calls.append(self.step)
        if len(calls) == 22:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Pretrainer, "train_step", stopped_at_the_22nd_step)
    with pytest.raises(KeyboardInterrupt):
        run_scale(*arguments, tmp_path / "stopped", overrides, checkpoint_every=4)
    (partial,) = (tmp_path / "stopped").glob("*.partial.pt")
    calls.clear()
    monkeypatch.setattr(Pretrainer, "train_step", lambda self: calls.append(self.step) or original(self))
    resumed = run_scale(*arguments, tmp_path / "stopped", overrides, checkpoint_every=4)
    assert calls == list(range(16, 32))  # from the checkpoint, and the finished branch not run again
    assert resumed == whole and not partial.exists()  # bit for bit: the same gains and validation losses


def test_the_benchmarks_read_number_lists_and_say_a_bad_one_or_a_missing_study_in_one_line(tmp_path):
    assert numbers(int)("1,3,10") == [1, 3, 10] and numbers(int)("1e6,4e6") == [1_000_000, 4_000_000]
    assert numbers(float)("0.5,1") == [0.5, 1.0]
    for kind, text in ((int, "1,x"), (int, "1.5"), (float, "")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated"):
            numbers(kind)(text)
    for arguments in (["--multiples", "1,x"], ["--study_name", "nope", "--storage", f"sqlite:///{tmp_path}/none.db"]):
        command = [sys.executable, "-m", "bench.proxy_validity", "--study_name", "nope", *arguments]
        finished = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 2 and "Traceback" not in finished.stderr
        assert "error: " in finished.stderr.strip().splitlines()[-1]  # argparse's usage and its error, or ours


def test_a_long_benchmark_counts_its_runs_and_the_time_left(tmp_path, capsys):
    from bench.retrain_runs import Progress, RetrainRun

    runs = [RetrainRun(tmp_path / "c.yaml", tmp_path / name, tokens) for name, tokens in (("a", 100), ("b", 300))]
    runs.append(RetrainRun(tmp_path / "c.yaml", tmp_path / "done", 50))
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.yaml").write_text("{}")
    progress = Progress(runs, jobs=2)
    assert capsys.readouterr().out == "1 of 3 runs finished before; 2 to run, 2 at a time\n"
    assert re.fullmatch(r"1 of 2 runs, about \d+\.\d h left at this pace", progress.finished(100))
    assert progress.finished(300).startswith("2 of 2 runs, about 0.0 h left")


def test_retrain_schedules_runs_each_schedule_and_peak_lr_on_the_same_seeds_and_pairs_them_with_the_first(
    tmp_path, monkeypatch
):
    from bench import retrain_schedules
    from bench.retrain_runs import RetrainResult

    # config.yaml's peak LR is 2e-3: asked for again it is the reference arm (no override, the plain folder).
    # Faked gains: the lower LR gains 1 point more on seed 1 and 3 on seed 2 (CV), 2 more on the test set.
    requests = []

    def retrain_all(runs, jobs):
        requests.extend(runs)
        results = []
        for run in runs:
            seed = int(next(o for o in run.overrides if o.startswith("train.seed="))[-1])
            lower = any(o.startswith("train.learning_rate=") for o in run.overrides)
            accuracy = 0.6 + 0.01 * seed + (0.01 * (2 * seed - 1) if lower else 0)
            test = 0.6 + (0.02 if lower else 0)
            results.append(RetrainResult(run.tokens, 5.0, accuracy, 0.5, test, 0.5, 1.0))
        return results

    monkeypatch.setattr(retrain_schedules, "retrain_all", retrain_all)
    output = tmp_path / "out"
    arguments = ["--schedules", "inherit", "--learning_rates", "2e-3,1.3333e-3", "--tokens", "1e6", "--seeds", "1,2"]
    monkeypatch.setattr(sys, "argv", ["rs", *arguments, "--work", str(tmp_path), "--output", str(output)])
    retrain_schedules.main()
    assert [(run.folder.name, run.overrides) for run in requests] == [
        ("inherit_1000000_1", ("retrain.schedule=inherit", "train.seed=1")),
        (
            "inherit_lr0.0013333_1000000_1",
            ("retrain.schedule=inherit", "train.seed=1", "train.learning_rate=0.0013333"),
        ),
        ("inherit_1000000_2", ("retrain.schedule=inherit", "train.seed=2")),
        (
            "inherit_lr0.0013333_1000000_2",
            ("retrain.schedule=inherit", "train.seed=2", "train.learning_rate=0.0013333"),
        ),
    ]
    table = (output / "retrain_schedules.md").read_text()
    assert "| inherit | 1,000,000 | +11.0, +12.0 | +11.5 ± 0.5 | – |" in table
    assert "| inherit, LR 0.0013333 | 1,000,000 | +12.0, +15.0 | +13.5 ± 1.5 | +2.0 ± 1.0 (test +2.0 ± 0.0) |" in table
    saved = json.loads((output / "retrain_schedules.json").read_text())
    assert [run["learning_rate"] for run in saved["runs"]] == [2e-3, 1.3333e-3, 2e-3, 1.3333e-3]


def test_a_cached_retrain_is_reused_only_for_the_run_that_made_it(tmp_path, monkeypatch):
    # A rerun with other settings once reported the old run's numbers: a folder is keyed by what shaped its run.
    from bench import retrain_runs
    from bench.retrain_runs import KEY_FILE, RetrainRun, check_folder, retrain_all, run_key
    from training.config import ConfigError

    config = PROJECT_DIR / "config.yaml"
    made = RetrainRun(config, tmp_path / "run", 1000, ("train.seed=1",))
    made.folder.mkdir()
    (made.folder / "results.yaml").write_text("{}")
    (made.folder / KEY_FILE).write_text(yaml.safe_dump(run_key(made)))
    check_folder(made)  # the same run: read back
    check_folder(RetrainRun(config, tmp_path / "new", 1000, ("train.seed=2",)))  # nothing there yet

    other_seed = RetrainRun(config, made.folder, 1000, ("train.seed=2",))
    with pytest.raises(ConfigError, match=r"run holds a run with other settings \(settings\.train\.seed differ\)"):
        check_folder(other_seed)
    with pytest.raises(ConfigError, match=r"\(tokens differ\)"):
        check_folder(RetrainRun(config, made.folder, 2000, ("train.seed=1",)))
    (made.folder / KEY_FILE).unlink()
    with pytest.raises(ConfigError, match=f"no {KEY_FILE}: its settings are unknown"):
        check_folder(made)

    ran = []
    monkeypatch.setattr(retrain_runs, "retrain_once", lambda run, progress=None: ran.append(run))
    with pytest.raises(ConfigError):  # refused before any run starts, not hours into the benchmark
        retrain_all([RetrainRun(config, tmp_path / "fresh", 1000), other_seed], jobs=1)
    assert ran == []


@pytest.mark.slow
def test_the_search_pool_runs_its_design_resumes_and_exports_its_table(tmp_path, monkeypatch, capsys, tiny_study_flags):
    import csv

    from bench import search_pool
    from hpo.config import load_config
    from hpo.space import base_params

    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'pool.db'}"
    arguments = ["--study_name", "pool", "--storage", storage, "--recipes", "2", "--second_seed", "1"]
    arguments += ["--calibration_seconds", "0.5", "--trial_seconds", "0.5", "--output", str(tmp_path / "out")]
    arguments += tiny_study_flags
    monkeypatch.setattr(sys, "argv", ["search_pool", *arguments])
    search_pool.main()
    printed = capsys.readouterr().out
    assert "search pool: config.yaml's recipe and 2 of a Sobol design, 5 runs on" in printed
    assert "5 run(s) queued now, 5 to run" in printed and "5 of 5 runs finished (0 non-finite)" in printed

    with (tmp_path / "out" / "search_pool.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert sorted((int(row["recipe"]), int(row["seed"])) for row in rows) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    config = load_config(PROJECT_DIR / "config.yaml", [o for o in tiny_study_flags if o != "--set"])
    baseline = next(row for row in rows if row["recipe"] == "0")
    assert all(str(value) == baseline[name] for name, value in base_params(config).items())  # config.yaml's recipe
    for row in rows:  # no pruning: every report point's quick value kept, and the run's own figures
        assert all(row[f"quick_{index}"] != "" for index in range(3)) and row["state"] == "complete"
        assert float(row["value"]) == pytest.approx(float(row["probe_accuracy"]) - float(row["random_init_accuracy"]))
    by_architecture = {}
    for row in rows:  # one token budget per architecture, from its calibration
        by_architecture.setdefault((row["model.size"], row["model.attention_kind"]), set()).add(row["tokens"])
    assert all(len(tokens) == 1 for tokens in by_architecture.values())
    assert (tmp_path / "out" / "search_pool.db").exists()

    search_pool.main()  # resumed: the plan is kept, nothing runs again
    assert "0 run(s) queued now, 0 to run" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["search_pool", *arguments, "--design_seed", "1"])
    with pytest.raises(search_pool.ConfigError, match="holds another pool"):
        search_pool.main()


def write_synthetic_pool(path: Path, recipes: int = 40, paired: int = 10, noise: float = 0.01) -> None:
    """A pool table over the real space whose truth is known: the gain peaks at LR 1.5e-3, absolute attention adds
    1.5 points, mini costs 2; quick values are a share of it; every run adds N(0, noise) at each point. Recipes 1-3
    are confirmed on seeds 2-4 besides."""
    import csv

    from bench.search_pool import design
    from hpo.config import DEFAULT_CONFIG_PATH, dimensions, load_config

    config = load_config(DEFAULT_CONFIG_PATH)
    rng = np.random.default_rng(0)
    names = [name for name, *_ in dimensions(config)]
    rows = []
    for index, params in enumerate(design(config, recipes, 0)):
        truth = 0.05 - 0.03 * math.log(params["train.learning_rate"] / 1.5e-3) ** 2
        truth += 0.015 * (params["model.attention_kind"] == "absolute") - 0.02 * (params["model.size"] == "mini")
        for seed in ([0, 1] if index <= paired else [0]) + ([2, 3, 4] if index in (1, 2, 3) else []):
            end = truth + rng.normal(0, noise)
            quick = {f"quick_{point}": truth * (point + 1) / 4 + rng.normal(0, noise) for point in range(3)}
            rows.append(
                {"run": len(rows), "recipe": index, "seed": seed, "tokens": 1000, "state": "complete"}
                | {name: params.get(name, "") for name in names}
                | {"value": end, **quick, "probe_accuracy": 0.5 + end, "random_init_accuracy": 0.5}
            )
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_study_picks_its_best_observed_trial_and_pays_for_pruned_ones_by_their_share():
    from bench.search_replay import compute_curve, confirmed_pick, pick, probability_lower

    records = [
        {"cost": 1.0, "state": "complete", "observed": 0.03, "true": 0.02},
        {"cost": 0.25, "state": "pruned", "observed": None, "true": 0.09},
        {"cost": 1.0, "state": "complete", "observed": 0.05, "true": 0.01},  # lucky: the winner's curse
        {"cost": 1.0, "state": "complete", "observed": 0.04, "true": 0.04},
    ]
    assert pick(records, 2)["true"] == 0.02 and pick(records, 4)["true"] == 0.01
    curve = compute_curve([records], best=0.10, grid=np.array([1.0, 1.25, 2.0, 2.25, 3.25]))
    assert curve[0] == pytest.approx([0.08, 0.08, 0.08, 0.09, 0.09])  # the third trial ends at 2.25 budgets
    # Re-run on fresh seeds with no noise, the confirmation finds the truly best of the top 3.
    assert confirmed_pick(records, 4, noise_sd=0.0, rng=np.random.default_rng(0))["true"] == 0.04
    assert probability_lower(np.array([1.0, 2.0]), np.array([2.0, 3.0]))[0] == pytest.approx(0.875)  # 3.5 of 4


def test_a_pairing_names_its_sampler_pruner_and_own_study_settings():
    from bench.search_replay import ConfigError, Pairing
    from hpo.config import DEFAULT_CONFIG_PATH, load_config

    config = load_config(DEFAULT_CONFIG_PATH, [])
    pairing = Pairing.parse("tpe+median:pruner_warmup_steps=1:pruner_startup_trials=5")
    assert pairing.name == "tpe+median:pruner_warmup_steps=1:pruner_startup_trials=5"
    study = pairing.study(config)
    assert (study.sampler, study.pruner, study.pruner_warmup_steps, study.pruner_startup_trials) == (
        "tpe",
        "median",
        1,
        5,
    )
    assert study.sampler_startup_trials == config.study.sampler_startup_trials  # the rest are config.yaml's
    assert Pairing.parse("random+none").study(config).pruner_warmup_steps == config.study.pruner_warmup_steps
    for bad in ("tpe", "tpe+nope", "tpe+median:heartbeat_seconds=3", "tpe+median:pruner_warmup_steps=-1"):
        with pytest.raises(ConfigError, match="--pairings"):
            Pairing.parse(bad)


@pytest.mark.slow
def test_the_search_replay_fits_its_surrogate_replays_pairings_and_resumes(tmp_path, monkeypatch, capsys):
    from bench import search_replay

    pool = tmp_path / "pool.csv"
    write_synthetic_pool(pool)
    pairings = "random+none,tpe+median,tpe+median:pruner_warmup_steps=3"  # warm-up 3: no pruning at 3 points
    arguments = ["--pool", str(pool), "--repeats", "2", "--trials", "8", "--pairings", pairings]
    arguments += ["--work", str(tmp_path / "work"), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", ["search_replay", *arguments])
    search_replay.main()
    printed = capsys.readouterr().out
    assert "0 replays read back; 6 to run" in printed
    assert "Pool: 52 runs of 41 recipes, 11 of them on two seeds" in printed
    saved = json.loads((tmp_path / "out" / "search_replay.json").read_text())
    fit, summary = saved["fit"], saved["summary"]
    assert fit["surrogates"][fit["chosen"]]["spearman"] > 0.5  # a strong, smooth truth is learnt from 41 recipes
    assert fit["noise_sd"][-1] == pytest.approx(0.01, rel=0.5)  # the noise put in, read back from 11 seed pairs
    for name in ("random+none", "tpe+median"):
        rows = summary["pairings"][name]["checkpoints"]
        assert set(rows) == {"6"} and rows["6"]["regret"] >= 0
    assert summary["pairings"]["random+none"]["pruned_share"] == 0
    assert summary["pairings"]["tpe+median:pruner_warmup_steps=3"]["pruned_share"] == 0
    assert (tmp_path / "out" / "search_replay.png").exists()
    assert saved["recipes"][0]["surrogate"] == max(recipe["surrogate"] for recipe in saved["recipes"])
    check = saved["confirmation"]  # the confirmation runs are checked against the surrogate, not fitted on
    assert check["seeds"] == [2, 3, 4] and sorted(row["recipe"] for row in check["recipes"]) == [1, 2, 3]
    assert "re-run on fresh seeds (2, 3, 4)" in (tmp_path / "out" / "search_replay.md").read_text()

    search_replay.main()  # cached: nothing runs again
    assert "6 replays read back; 0 to run" in capsys.readouterr().out


def fake_transfer_figures(run, peak: float = 2e-3) -> dict:
    """Figures of a width_transfer run whose metrics peak at a known LR: standard's best LR halves per doubling of
    the width (x1 at 128, x0.25 at 512), mup's stays at x1 (seed 2 alone prefers x2 at 512 wide); mup gains 1 point
    more and loses 0.05 less everywhere (so at the base width the attention's effect reads +1.0 and -0.050); and
    standard's 512-wide x4 run diverges on seed 1."""
    if (run.parametrization, run.width, run.scale, run.seed) == ("standard", 512, 4.0, 1):
        return {**vars(run), "tokens": 1000, "gain": None, "validation_loss": None, "diverged_at_step": 3}
    optimum = -math.log2(run.width / 128) if run.parametrization == "standard" else 0.0
    if (run.parametrization, run.width, run.seed) == ("mup", 512, 2):
        optimum = 0.6
    distance = (math.log2(run.scale) - optimum) ** 2
    offset = 0.01 if run.parametrization == "mup" else 0.0
    return {
        **vars(run),
        "tokens": 1000,
        "gain": 0.05 - 0.01 * distance + 0.002 * run.seed + offset,
        "validation_loss": 7.0 + 0.1 * distance - 0.001 * run.seed - 5 * offset,
        "diverged_at_step": None,
    }


def test_the_width_transfer_table_reads_the_best_lr_per_width_and_how_many_grid_steps_it_moves():
    from bench.width_transfer import Plan, summarize

    plan = Plan("width", [128, 256, 512], [2], [0.25, 0.5, 1.0, 2.0, 4.0], [1, 2], ["standard", "mup"], 2e-3, 128)
    lines, chosen = summarize([fake_transfer_figures(run) for run in plan.runs()], plan)
    best, moves = chosen["best"], chosen["moves"]
    for metric in ("gain", "validation_loss"):
        assert [best["standard"][metric][width]["mean"] for width in (128, 256, 512)] == [1.0, 0.5, 0.25]
        assert moves["standard"][metric] == {"mean": -2, 1: -2, 2: -2}
        assert [best["mup"][metric][width]["mean"] for width in (128, 256, 512)] == [1.0, 1.0, 1.0]
    assert best["mup"]["gain"][512] == {"mean": 1.0, 1: 1.0, 2: 2.0}  # one seed's noise, not the mean's
    assert moves["mup"]["gain"] == moves["mup"]["validation_loss"] == {"mean": 0, 1: 0, 2: 1}
    table = "\n".join(lines)
    assert "| 5.00e-04 (x0.25) | +1.3 ± 0.1 | +4.3 ± 0.1 | **+5.3 ± 0.1** |" in table  # standard's gains
    assert "| 8.00e-03 (x4) | +1.3 ± 0.1 | -3.7 ± 0.1 | diverged (1 of 2) |" in table
    assert "| best, seed 2 | x1 | x1 | x2 |" in table
    assert "| standard | probe gain over random init (points) | x1 | x0.25 | -2 | -2 | -2 |" in table
    assert "| mup | validation loss | x1 | x1 | +0 | +0 | +1 |" in table
    assert "### mup minus standard at the base width (128): the attention's effect alone" in table
    assert "| x1 | -0.050 ± 0.000 | +1.0 ± 0.0 |" in table
    # 128 wide's best LR carried to 512 wide, against 512's own best: standard's lands two steps off, mup's on it
    assert "| standard | probe gain over random init (points) | x1 | x0.25 | -4.0 ± 0.0 | no |" in table
    assert "| standard | validation loss | x1 | x0.25 | +0.400 ± 0.000 | no |" in table
    assert "| mup | probe gain over random init (points) | x1 | x1 | +0.0 ± 0.0 | yes |" in table
    assert chosen["carried"]["standard"]["gain"]["within_one_se"] is False
    assert chosen["carried"]["mup"]["validation_loss"]["difference"] == [0.0, 0.0]


def test_the_width_transfer_sweep_runs_the_costliest_first_and_never_reruns_a_finished_run(
    tmp_path, monkeypatch, capsys
):
    from bench import width_transfer
    from training.config import ConfigError

    ran = []

    def run_once(run, sweep):  # a run's figures, saved where a finished run is read back from
        ran.append(run)
        figures = fake_transfer_figures(run)
        sweep.path(run).parent.mkdir(parents=True, exist_ok=True)
        sweep.path(run).write_text(json.dumps(figures))
        return figures

    monkeypatch.setattr(width_transfer, "run_once", run_once)

    def sweep(*flags: str) -> str:
        arguments = ["--scales", "0.5,1", "--seeds", "1", "--jobs", "1", "--work", str(tmp_path / "work"), *flags]
        monkeypatch.setattr(sys, "argv", ["width_transfer", *arguments, "--output", str(tmp_path / "out")])
        width_transfer.main()
        return capsys.readouterr().out

    printed = sweep("--widths", "128,256")
    assert "0 of 8 runs finished before; 8 to run, 1 at a time" in printed
    assert [run.width for run in ran] == [256] * 4 + [128] * 4  # the costliest first
    assert re.search(r"done  mup_w128_d2_lr1_seed1: validation loss 6\.949, gain \+\d\.\d points; 8 of 8 runs", printed)
    saved = json.loads((tmp_path / "out" / "width_transfer.json").read_text())
    assert len(saved["runs"]) == 8 and saved["moves"]["standard"]["gain"]["mean"] == -1
    assert (tmp_path / "out" / "width_transfer.png").stat().st_size > 0
    ran.clear()
    assert "8 of 8 runs finished before; 0 to run" in sweep("--widths", "128,256") and ran == []
    assert "0 of 8 runs finished before" in sweep("--widths", "128,256", "--set", "train.batch_size=16")
    # a saved sweep's tables written again from its .json alone (another config.yaml's keys would not find its runs)
    ran.clear()
    table = (tmp_path / "out" / "width_transfer.md").read_text()
    saved = tmp_path / "out" / "width_transfer.json"
    monkeypatch.setattr(sys, "argv", ["width_transfer", "--summarize", str(saved), "--output", str(tmp_path / "again")])
    width_transfer.main()
    assert (tmp_path / "again" / "width_transfer.md").read_text() == table and ran == []
    monkeypatch.setattr(sys, "argv", ["width_transfer", "--summarize", str(tmp_path / "out" / "width_transfer.md")])
    with pytest.raises(ConfigError, match=r"--summarize .*width_transfer\.md: not a sweep saved by"):
        width_transfer.main()

    ran.clear()  # depth: at config.yaml's width, 128; its own files
    printed = sweep("--depths", "2,4", "--parametrizations", "mup")
    assert "2 of 4 runs finished before" in printed and {(run.width, run.depth) for run in ran} == {(128, 4)}
    assert "| LR | 2 layers | 4 layers |" in (tmp_path / "out" / "depth_transfer.md").read_text()

    def out_of_memory_at_depth_8(run, sweep):
        if run.depth == 8:
            raise RuntimeError("out of memory")
        return run_once(run, sweep)

    monkeypatch.setattr(width_transfer, "run_once", out_of_memory_at_depth_8)
    printed = sweep("--depths", "2,8", "--parametrizations", "mup")  # the others go on, and the table is written
    assert "failed mup_w128_d8_lr0.5_seed1: RuntimeError: out of memory" in printed
    assert "2 run(s) failed (mup_w128_d8_lr0.5_seed1, mup_w128_d8_lr1_seed1): run the same command" in printed
    assert "| 1.00e-03 (x0.5) | 7.049 | – |" in (tmp_path / "out" / "depth_transfer.md").read_text()
    with pytest.raises(SystemExit):
        sweep("--widths", "128,256", "--depths", "2,4")
    assert "vary --widths or --depths, not both" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="width 100 is not a multiple of the head size 64"):
        sweep("--widths", "100,128")


@pytest.mark.slow  # 5 toy runs, 2 processes: about 20 s on a loaded 2-core machine
def test_a_toy_width_transfer_sweep_runs_in_parallel_reads_back_and_resumes_an_interrupted_run(tmp_path, monkeypatch):
    from conftest import TINY_OVERRIDES

    from bench.width_transfer import Run, Sweep, run_once
    from training.pretrain import Pretrainer

    # Head size 32 (128 / 4): widths 32 and 64, base width 32; 256 tokens a step, 4 steps.
    overrides = (*TINY_OVERRIDES, f"data.cache_dir={tmp_path / 'cache'}", "model.num_heads=4", "model.base_width=32")
    command = [sys.executable, "-m", "bench.width_transfer", "--widths", "32,64", "--scales", "1,2", "--seeds", "1"]
    command += ["--parametrizations", "mup", "--tokens", "1024", "--jobs", "2", "--work", str(tmp_path / "work")]
    command += ["--output", str(tmp_path / "out"), *(flag for override in overrides for flag in ("--set", override))]
    first = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "0 of 4 runs finished before; 4 to run, 2 at a time" in first.stdout
    assert first.stdout.count("start mup_w") == 4 and "4 of 4 runs, about" in first.stdout
    saved = json.loads((tmp_path / "out" / "width_transfer.json").read_text())
    runs = {(run["width"], run["scale"]): run for run in saved["runs"]}
    assert sorted(runs) == [(32, 1.0), (32, 2.0), (64, 1.0), (64, 2.0)]
    for run in runs.values():  # trained, validated and probed beside its own random init
        assert (run["steps"], run["tokens"], run["diverged_at_step"]) == (4, 1024, None)
        assert (
            run["gain"] == pytest.approx(run["accuracy"] - run["random_init_accuracy"]) and run["validation_loss"] > 0
        )
    assert runs[(64, 1.0)]["random_init_accuracy"] == runs[(64, 2.0)]["random_init_accuracy"]  # the same weights
    second = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert "4 of 4 runs finished before; 0 to run" in second.stdout and "start " not in second.stdout

    original, calls = Pretrainer.train_step, []

    def stopped_at_the_third_step(self):
        calls.append(self.step)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self)

    stopped = Sweep(1024, overrides, tmp_path / "stopped", checkpoint_seconds=0)  # a checkpoint after every step
    monkeypatch.setattr(Pretrainer, "train_step", stopped_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        run_once(Run("mup", 64, 2, 2.0, 1), stopped)
    calls.clear()
    monkeypatch.setattr(Pretrainer, "train_step", lambda self: calls.append(self.step) or original(self))
    resumed = run_once(Run("mup", 64, 2, 2.0, 1), stopped)
    assert calls == [2, 3]  # from the checkpoint after step 2
    assert {**resumed, "train_seconds": None} == {**runs[(64, 2.0)], "train_seconds": None}  # bit for bit
    assert not list((tmp_path / "stopped").glob("*.partial.pt"))


def test_a_benchmark_stopped_by_ctrl_c_says_it_resumes_and_a_background_one_can_be_stopped(capsys, monkeypatch):
    import signal

    from bench.cli import run_cli

    def stopped() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(signal, "signal", lambda number, handler: handled.append((number, handler)))
    monkeypatch.setattr(signal, "getsignal", lambda number: signal.SIG_IGN)  # as a shell starts a background job
    handled = []
    with pytest.raises(SystemExit) as stop:
        run_cli(stopped)
    assert stop.value.code == 130 and handled == [(signal.SIGINT, signal.default_int_handler)]
    assert capsys.readouterr().err == "interrupted: what finished is kept; run the same command to resume\n"


def test_the_width_verdict_runs_each_recipe_at_the_width_with_its_learning_rates_carried_from_its_own(tmp_path):
    from bench.width_verdict import PANEL, Run, Verdict, read_panel

    recipes, seeds, leader = read_panel(PROJECT_DIR / PANEL)
    assert seeds == [1, 2] and leader == 0 and [recipe.trial for recipe in recipes][:3] == [9, 4, 0]
    verdict = Verdict(work=tmp_path)
    for recipe in recipes:
        run = Run(recipe.trial, tuple(sorted(recipe.params.items())), recipe.tokens, "mup", 512, 1)
        config = verdict.config(run)
        tuned_at = {"tiny": 128, "mini": 192}[recipe.params["model.size"]]
        assert (config.model.hidden_size, config.model.num_heads, config.model.base_width) == (512, 8, tuned_at)
        assert config.model.attention_kind == recipe.params["model.attention_kind"]
        assert config.masking.strategy == recipe.params["masking.strategy"]
        assert config.train.learning_rate == recipe.params["train.learning_rate"]  # carried by the parametrisation
        assert (config.train.budget_tokens, config.train.budget_seconds, config.train.seed) == (recipe.tokens, None, 1)
        standard = verdict.config(dataclasses.replace(run, parametrization="standard"))
        assert standard.model.parametrization == "standard" and verdict.path(run) != verdict.path(
            dataclasses.replace(run, parametrization="standard")
        )
    with pytest.raises(ConfigError, match="--width 500 is not a multiple of trial 9's head size 64"):
        verdict.config(Run(9, tuple(sorted(recipes[0].params.items())), 1000, "mup", 500, 1))


def fake_verdict_panel(path: Path) -> None:
    """Five recipes ranked by the study 0 > 1 > 2 > 3 > 4, trial 2 the confirmed leader."""
    recipes = [
        {
            "trial": trial,
            "params": {"model.size": "tiny", "train.learning_rate": 1e-3},
            "study_value": 0.05 - 0.01 * trial,
            "tokens": 1000 + trial,
            "gains": {"1": [0.03 - 0.01 * trial, 0.04 - 0.01 * trial], "10": [0.1, 0.12 - 0.01 * trial]},
        }
        for trial in range(5)
    ]
    landing = ["The study's best trial (0) ranks 1 of 5 at 10x.", "The confirmed leader (trial 2, over 3 seeds) ..."]
    path.write_text(json.dumps({"seeds": [1, 2], "recipes": recipes, "landing": landing}))


def test_the_width_verdict_ranks_the_recipes_at_the_width_beside_the_study_and_reads_back_its_runs(
    tmp_path, monkeypatch, capsys
):
    from bench import width_transfer, width_verdict

    ran = []

    def run_once(run, verdict):  # at 512 wide the leader (2) moves to the top; trial 4 diverges on seed 2
        ran.append(run)
        gain = {0: 0.04, 1: 0.03, 2: 0.06, 3: 0.01, 4: 0.0}[run.trial] + 0.002 * run.seed
        if run.parametrization == "standard":
            gain -= 0.05 + 0.01 * run.seed
        diverged = (run.trial, run.seed) == (4, 2)
        figures = {
            "trial": run.trial,
            "parametrization": run.parametrization,
            "seed": run.seed,
            "tokens": run.tokens,
            "random_init_accuracy": 0.4,
            "gain": None if diverged else gain,
            "validation_loss": None if diverged else 7.0 - gain,
            "diverged_at_step": 5 if diverged else None,
        }
        verdict.path(run).parent.mkdir(parents=True, exist_ok=True)
        verdict.path(run).write_text(json.dumps(figures))
        return figures

    monkeypatch.setattr(width_transfer, "run_once", run_once)  # the runner the verdict shares
    fake_verdict_panel(tmp_path / "panel.json")

    def verdict(*flags: str) -> str:
        arguments = ["--panel", str(tmp_path / "panel.json"), "--work", str(tmp_path / "work"), "--jobs", "1", *flags]
        monkeypatch.setattr(sys, "argv", ["width_verdict", *arguments, "--output", str(tmp_path / "out")])
        width_verdict.main()
        return capsys.readouterr().out

    monkeypatch.setattr(width_verdict.Verdict, "config", lambda self, run: fake_run_config(run))
    printed = verdict("--multiple", "2")
    assert sorted((run.trial, run.parametrization) for run in ran if run.seed == 1) == [
        (0, "mup"),
        (1, "mup"),
        (2, "mup"),
        (2, "standard"),
        (3, "mup"),
        (4, "mup"),
    ]  # standard for the confirmed leader alone
    assert {run.tokens for run in ran if run.trial == 3} == {2006}  # its own 1x tokens, times 2
    assert "| 3 | 2 | tiny | +3.0 | +1.5 ± 0.5 | +10.0 ± 0.0 | +6.3 ± 0.1 | 1 | -0.2 ± 0.4 | +6.5 ± 0.5 |" in printed
    assert "| 5 | 4 | tiny (1 run(s) diverged: at chance) | +1.0 |" in printed
    assert "| -7.4 ± 7.6 | 5 |" in printed  # seed 2 at chance: 0.25 - 0.40
    assert "The confirmed leader (trial 2) ranks 1 of 5 at 512 wide (target: top 2)." in printed
    assert "The study's best trial (0) ranks 2 of 5 at 512 wide." in printed
    assert "| all (5) | the study's values | +0.70 |" in printed
    assert "| all (5) | 512 wide seed 1 vs seed 2 | +1.00 |" in printed  # the noise's ceiling
    assert "| study's top 5 (5) | 1x at own width | +0.70 |" in printed
    saved = json.loads((tmp_path / "out" / "width_verdict.json").read_text())
    assert saved["agreements"]["all: the study's values"]["spearman"] == pytest.approx(0.7)
    assert saved["leader"] == 2 and len(saved["runs"]) == 12
    ran.clear()
    assert "12 of 12 runs finished before; 0 to run" in verdict("--multiple", "2") and ran == []
    with pytest.raises(SystemExit):
        verdict("--recipes", "0,7")
    assert "--recipes 7: not in" in capsys.readouterr().err


def fake_run_config(run):
    """A config whose settings key a run's file: its trial, parametrisation, seed and tokens."""
    from hpo.config import load_config

    config = load_config(PROJECT_DIR / "config.yaml", [f"train.seed={run.seed}", f"train.budget_tokens={run.tokens}"])
    model = dataclasses.replace(config.model, parametrization=run.parametrization, dropout=run.trial / 100)
    return dataclasses.replace(config, model=model)


@pytest.mark.slow  # 4 toy runs, one process: about 30 s
def test_a_toy_width_verdict_trains_the_panels_recipes_at_another_width_and_writes_its_table(tmp_path):
    from conftest import TINY_OVERRIDES

    # Two of the panel's recipes (tiny rope, mini standard) at 128 wide: 2 heads of 64; ~2,000 tokens a run.
    overrides = [*TINY_OVERRIDES, f"data.cache_dir={tmp_path / 'cache'}"]
    command = [sys.executable, "-m", "bench.width_verdict", "--recipes", "9,8", "--width", "128", "--seeds", "1"]
    command += ["--multiple", "0.001", "--standard", "8", "--jobs", "1", "--work", str(tmp_path / "work")]
    command += ["--output", str(tmp_path / "out"), *(flag for override in overrides for flag in ("--set", override))]
    first = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "0 of 3 runs finished before; 3 to run, 1 at a time" in first.stdout
    saved = json.loads((tmp_path / "out" / "width_verdict.json").read_text())
    runs = {(run["trial"], run["parametrization"]): run for run in saved["runs"]}
    assert sorted(runs) == [(8, "mup"), (8, "standard"), (9, "mup")]
    for run in runs.values():  # trained, validated and probed beside its own random init
        assert run["diverged_at_step"] is None and run["tokens"] >= 1000 and run["validation_loss"] > 0
        assert run["gain"] == pytest.approx(run["accuracy"] - run["random_init_accuracy"])
    assert runs[(8, "mup")]["random_init_accuracy"] != runs[(8, "standard")]["random_init_accuracy"] or (
        runs[(8, "mup")]["validation_loss"] != runs[(8, "standard")]["validation_loss"]
    )  # mup's initial scales and LRs at 128 wide (from 192) are not standard's
    table = (tmp_path / "out" / "width_verdict.md").read_text()
    assert "| 6 | 8 | standard/mini/standard |" in table and "| 1 | 9 | rope/tiny/whole_word |" in table
    second = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600)
    assert "3 of 3 runs finished before; 0 to run" in second.stdout and "start " not in second.stdout
