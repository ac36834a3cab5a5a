"""Does the study's verdict hold at the size of the full run? The proxy panel's recipes (PANEL: the study `proxy`'s
8 recipes, ranked by the study and retrained at 1x, 3x and 10x its tokens by bench/proxy_validity.py) retrained at a
larger width with their learning rates carried by muP, on paired seeds (issue 28, item 6).

    python -m bench.width_verdict                           # 8 recipes at 512 wide, mup, seeds 1 and 2 (+ standard
                                                            # for the confirmed leader); about 2.5 h on 2 threads
    python -m bench.width_verdict --recipes 0,9,4 --standard all --width 256 --multiple 2

Each run is config.yaml (with the --set overrides) with a recipe's params, as the study sampled them
(hpo.space.suggest on a FixedTrial), at WIDTH: heads grow so that the head size stays the recipe's, depth stays
the recipe's. The budget is the recipe's own 1x tokens (what its 150 s trial reached at its own width, from PANEL)
times MULTIPLE: the trial's tokens at least, as the issue asks. Under mup the run's model.base_width is the width
the recipe was tuned at (the study ran under standard, which equals mup there but for the attention), so its
learning rates are carried by the parametrisation (the hidden matrices' LR divided by WIDTH / its width); under
standard, the naive carry (the same learning rates: what `export` refuses), run for the recipes of --standard
(default: the confirmed leader). One train.seed a run; every recipe the same seeds (PANEL's, whose 1x and 10x
gains stand on them). Scored as bench/width_transfer.py scores: validation loss, and the probe's gain over the
run's own random-init encoder; a run that goes non-finite counts at chance accuracy (0.25) minus that random init,
the rule of `confirm`. Resumable as width_transfer is (its runner): WORK/NAME_KEY.json, KEY a digest of every
setting that shapes the run; an interrupted run resumes from its checkpoint.

Writes OUTPUT/width_verdict.md and .json: per recipe its study value and rank, its gains at its own width (1x
and 10x, PANEL's), and at WIDTH its gain ± SE under mup (and under standard, with mup minus standard paired over
seeds); Spearman (Fisher z 95% interval) of the study's ranking, the 1x and the 10x retrains against the ranking
at WIDTH, over all recipes and the study's top 5, beside WIDTH's seed against seed (the noise's ceiling); where
the confirmed leader and the study's best land at WIDTH.
"""

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import numbers, run_cli
from bench.width_transfer import CHECKPOINT_SECONDS, PARAMETRIZATIONS, Sweep, run_all
from hpo.config import Config
from hpo.statistics import mean_and_standard_error, rank_agreement, ranks
from training.config import ConfigError

PANEL = Path("bench/results/proxy_validity.json")
WIDTH = 512  # BERT-small's width: 4x the study's tiny, 2.7x its mini
MULTIPLE = 1.0
CHANCE = 0.25  # AG News has 4 balanced classes
TOP = 5  # the choice `export` makes is among the study's top few


@dataclass(frozen=True)
class Run:
    """One recipe at the verdict's width, under one parametrisation, on one seed."""

    trial: int
    params: tuple[tuple[str, Any], ...]  # the recipe, as the study sampled it
    tokens: int
    parametrization: str
    width: int
    seed: int

    @property
    def name(self) -> str:
        return f"trial{self.trial}_{self.parametrization}_w{self.width}_seed{self.seed}"

    @property
    def cost(self) -> int:
        """Proportional to the run's compute at a fixed depth: what orders the runs and paces the time left."""
        return self.width**2 * self.tokens


@dataclass(frozen=True)
class Verdict(Sweep):
    """What every run shares (width_transfer's Sweep: the base config, the runs' files); `tokens` is unused here,
    each run carries its own."""

    tokens: int = 0
    work: Path = Path("studies/bench/width_verdict")

    def config(self, run: Run) -> Config:  # type: ignore[override]
        """The recipe at the run's width, parametrisation, seed and tokens."""
        import optuna

        from hpo.space import suggest

        recipe = suggest(optuna.trial.FixedTrial(dict(run.params)), self.base)
        own = recipe.model
        head_size = own.hidden_size // own.num_heads
        if run.width % head_size:
            raise ConfigError(f"--width {run.width} is not a multiple of trial {run.trial}'s head size {head_size}")
        model = dataclasses.replace(
            own,
            parametrization=run.parametrization,
            base_width=own.hidden_size,  # where the study tuned it
            hidden_size=run.width,
            num_heads=run.width // head_size,
        )
        train = dataclasses.replace(recipe.train, seed=run.seed, budget_seconds=None, budget_tokens=run.tokens)
        config = dataclasses.replace(recipe, model=model, train=train)
        config.validate_sections()
        return config


@dataclass(frozen=True)
class Recipe:
    """A recipe of the panel: its trial, params, study value and 1x tokens, and its gains by multiple and seed."""

    trial: int
    params: dict[str, Any]
    study_value: float
    tokens: int
    gains: dict[str, list[float]]  # "1", "3", "10" -> by seed
    study_rank: int  # in the whole panel, 1 the study's best

    def label(self) -> str:
        short = [str(self.params.get(key, "")) for key in ("model.attention_kind", "model.size", "masking.strategy")]
        return "/".join(part for part in short if part)


def read_panel(path: Path) -> tuple[list[Recipe], list[int], int | None]:
    """The panel's recipes (by study value, best first), its seeds, and its confirmed leader's trial (None if the
    panel does not name one)."""
    try:
        panel = json.loads(path.read_text())
        ranked = sorted(panel["recipes"], key=lambda recipe: -recipe["study_value"])
        recipes = [
            Recipe(recipe["trial"], recipe["params"], recipe["study_value"], recipe["tokens"], recipe["gains"], rank)
            for rank, recipe in enumerate(ranked, start=1)
        ]
        seeds = list(panel["seeds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"--panel {path}: not a panel of bench/proxy_validity.py ({type(error).__name__}: {error}); "
            "run python -m bench.proxy_validity first, or name its .json"
        ) from error
    leader = None
    for line in panel.get("landing", []):
        found = re.search(r"confirmed leader \(trial (\d+)", line)
        if found:
            leader = int(found.group(1))
    return recipes, seeds, leader


def score(figures: dict) -> float:
    """A run's gain; a non-finite run at chance accuracy minus its random init (the rule of `confirm`)."""
    return figures["gain"] if figures["gain"] is not None else CHANCE - figures["random_init_accuracy"]


def comparisons(members: list[Recipe], at_width: dict[int, float], by_key: dict, width: int, seeds: list[int]):
    """(name, first, second): the rankings set against the one at the width (the study's values, the panel's 1x and
    10x retrains), and the width's first seed against its second (the ceiling its noise allows)."""
    target = [at_width[recipe.trial] for recipe in members]
    yield "the study's values", [recipe.study_value for recipe in members], target
    for multiple in ("1", "10"):
        if all(recipe.gains.get(multiple) for recipe in members):
            yield f"{multiple}x at own width", [float(np.mean(recipe.gains[multiple])) for recipe in members], target
    if len(seeds) == 2:
        first, second = ([score(by_key[(recipe.trial, "mup", seed)]) for recipe in members] for seed in seeds)
        yield f"{width} wide seed {seeds[0]} vs seed {seeds[1]}", first, second


def summarize(recipes: list[Recipe], figures: list[dict], width: int, seeds: list[int], leader: int | None):
    """The markdown lines and the verdict's figures (JSON-ready)."""
    by_key = {(run["trial"], run["parametrization"], run["seed"]): run for run in figures}

    def gains(trial: int, parametrization: str) -> list[float] | None:
        runs = [by_key.get((trial, parametrization, seed)) for seed in seeds]
        return None if None in runs else [score(run) for run in runs]

    complete = [recipe for recipe in recipes if gains(recipe.trial, "mup") is not None]
    at_width = {recipe.trial: float(np.mean(gains(recipe.trial, "mup"))) for recipe in complete}
    width_rank = dict(zip(at_width, ranks(list(at_width.values())), strict=True))
    seeds_text = ", ".join(map(str, seeds))
    lines = [
        f"Each recipe at {width} wide (heads grow, head size kept; depth kept), on its own 1x tokens x the run's "
        f"multiple; mean ± SE over train.seed {seeds_text} (paired: every recipe and parametrisation the same seeds). "
        "mup: the LRs carried from the width the study tuned it at (model.base_width = that width); standard: the "
        "same LRs (the naive carry). Gains in points over each run's own random-init encoder; 1x and 10x: the "
        "panel's, at the recipe's own width, same seeds.",
        "",
        f"| study rank | trial | recipe | study value | own width 1x | own width 10x | {width} wide, mup | "
        f"rank at {width} | {width} wide, standard | mup - standard (paired) | validation loss, mup |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def shown(values: list[float] | None) -> str:
        if values is None:
            return "–"
        mean, error = mean_and_standard_error(values)
        return f"{100 * mean:+.1f}" + (f" ± {100 * error:.1f}" if len(values) > 1 else "")

    rows = []
    for recipe in recipes:
        mup, standard = gains(recipe.trial, "mup"), gains(recipe.trial, "standard")
        difference = None if mup is None or standard is None else [m - s for m, s in zip(mup, standard, strict=True)]
        losses = [by_key.get((recipe.trial, "mup", seed), {}).get("validation_loss") for seed in seeds]
        loss = "–" if None in losses else f"{np.mean(losses):.3f}"
        diverged = sum(
            by_key.get((recipe.trial, p, seed), {}).get("diverged_at_step") is not None
            for p in PARAMETRIZATIONS
            for seed in seeds
        )
        flag = f" ({diverged} run(s) diverged: at chance)" if diverged else ""
        rank = width_rank.get(recipe.trial)
        lines.append(
            f"| {recipe.study_rank} | {recipe.trial} | {recipe.label()}{flag} | "
            f"{100 * recipe.study_value:+.1f} | {shown(recipe.gains.get('1'))} | {shown(recipe.gains.get('10'))} | "
            f"{shown(mup)} | {rank if rank else '–'} | {shown(standard)} | {shown(difference)} | {loss} |"
        )
        rows.append(
            {
                "trial": recipe.trial,
                "study_rank": recipe.study_rank,
                "mup": mup,
                "standard": standard,
                "mup_minus_standard": difference,
                "rank_at_width": rank,
            }
        )
    lines.append("")
    agreements: dict[str, dict] = {}
    if len(complete) >= 4:
        lines += [
            f"Rank agreement with the ranking at {width} wide (mup, mean over seeds): Spearman with its 95% interval "
            "(Fisher z) and the share of pairs ordered alike. Target: the study's ranking >= 0.7 over the panel.",
            "",
            "| recipes | against | Spearman | 95% interval | pairs alike |",
            "|---|---|---:|---:|---:|",
        ]
        top = [recipe for recipe in complete if recipe.study_rank <= TOP]
        for group, members in (("all", complete), (f"study's top {TOP}", top)):
            if len(members) >= 4:
                for name, first, second in comparisons(members, at_width, by_key, width, seeds):
                    agreement = rank_agreement(first, second)
                    agreements[f"{group}: {name}"] = agreement
                    interval = f"[{agreement['spearman_low']:+.2f}, {agreement['spearman_high']:+.2f}]"
                    lines.append(
                        f"| {group} ({len(members)}) | {name} | {agreement['spearman']:+.2f} | {interval} | "
                        f"{agreement['pairwise']:.0%} |"
                    )
        lines.append("")
    landing = []
    if complete:
        best = recipes[0].trial
        if recipes[0].study_rank == 1 and best in width_rank:
            landing.append(
                f"The study's best trial ({best}) ranks {width_rank[best]} of {len(complete)} at {width} wide."
            )
        if leader is not None and leader in width_rank:
            landing.append(
                f"The confirmed leader (trial {leader}) ranks {width_rank[leader]} of {len(complete)} at {width} wide "
                "(target: top 2)."
            )
    lines += [*landing, ""] if landing else []
    return lines, {"rows": rows, "agreements": agreements, "landing": landing}


def trials_of(text: str) -> list[int] | str:
    """An argparse type for --standard: "all", "leader", "none" or comma-separated trials."""
    if text in ("all", "leader", "none"):
        return text
    return numbers(int)(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panel", type=Path, default=PANEL, help="bench/proxy_validity.py's .json")
    parser.add_argument("--recipes", type=numbers(int), help="trials of the panel (default: all)")
    parser.add_argument("--width", type=int, default=WIDTH, help="hidden size of the runs (512)")
    parser.add_argument("--multiple", type=float, default=MULTIPLE, help="of each recipe's 1x tokens (1)")
    parser.add_argument("--seeds", type=numbers(int), help="train.seed (default: the panel's)")
    parser.add_argument(
        "--standard",
        type=trials_of,
        default="leader",
        help="recipes also run under standard: leader, all, none or trials",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--checkpoint_seconds", type=float, default=CHECKPOINT_SECONDS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work", default="studies/bench/width_verdict", help="the runs' files (resumable)")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    if args.width <= 0 or args.multiple <= 0 or args.jobs < 1:
        parser.error("--width and --multiple take a positive number, --jobs at least 1")
    recipes, panel_seeds, leader = read_panel(args.panel)
    seeds = sorted(args.seeds or panel_seeds)
    if args.recipes:
        unknown = sorted(set(args.recipes) - {recipe.trial for recipe in recipes})
        if unknown:
            known = ", ".join(str(recipe.trial) for recipe in recipes)
            parser.error(f"--recipes {','.join(map(str, unknown))}: not in {args.panel} (its trials: {known})")
        recipes = [recipe for recipe in recipes if recipe.trial in args.recipes]
    if args.standard == "leader" and leader is None:
        parser.error(f"{args.panel} names no confirmed leader: give --standard TRIALS, all or none")
    if isinstance(args.standard, list):
        standard = set(args.standard)
    else:
        standard = {"all": {recipe.trial for recipe in recipes}, "none": set(), "leader": {leader}}[args.standard]
    verdict = Verdict(
        tokens=0,
        overrides=tuple(args.set),
        work=Path(args.work).resolve(),
        checkpoint_seconds=args.checkpoint_seconds,
    )
    runs = [
        Run(
            recipe.trial,
            tuple(sorted(recipe.params.items())),
            max(1, round(recipe.tokens * args.multiple)),
            parametrization,
            args.width,
            seed,
        )
        for recipe in recipes
        for parametrization in (["mup", "standard"] if recipe.trial in standard else ["mup"])
        for seed in seeds
    ]
    for run in runs:
        verdict.path(run)  # a recipe the space cannot take, a width that does not fit: said now, not hours later
    try:
        figures = run_all(runs, verdict, args.jobs)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept, a stopped one resumes from its checkpoint; run the same command")
        sys.exit(130)
    if not figures:
        return
    lines, verdict_figures = summarize(recipes, figures, args.width, seeds, leader)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    header = f"# The study's verdict at {args.width} wide (bench/width_verdict.py, {args.multiple:g}x tokens)\n\n"
    (output / "width_verdict.md").write_text(header + "\n".join(lines) + "\n")
    saved = {
        "panel": str(args.panel),
        "width": args.width,
        "multiple": args.multiple,
        "seeds": seeds,
        "leader": leader,
        "overrides": list(args.set),
        **verdict_figures,
        "runs": figures,
    }
    (output / "width_verdict.json").write_text(json.dumps(saved, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main)
