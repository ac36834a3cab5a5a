"""Does the best learning rate move with training length? The default recipe at several peak LRs, each probed
after warm-up-stable-decay runs of several token budgets; the best LR per budget and its power law LR* ~ D^-beta.

    python -m bench.lr_horizon                                   # LR x 0.44..2.25, budgets 1M, 4M, 16M, seed 1
    python -m bench.lr_horizon --scales 0.667,1,1.5 --tokens 1e6,4e6 --jobs 2

For each LR scale (the peak LR and, through embedding_lr_multiplier, the token table's LR, both times the
scale), one run trains under wsd with a fixed warm-up (`--warmup_tokens`) and holds the peak LR; at 80% of
each budget B it branches: a copy decays the LR linearly to zero over the last 20% of B and is probed (AG
News, 5-fold CV, beside the random-init encoder of the same seed), while the stable run goes on. Each
branch is exactly the wsd run of budget B (Hägele et al. 2024 share the stable phase the same way), so a
grid of budgets costs one run of the longest plus the decays. Runs are one thread each, `--jobs` at a time;
a finished (scale, seed) is read back from WORK/scale_S_seed_N_KEY.json instead of run again (KEY: a digest of the
budgets, the warm-up and the --set overrides), and an interrupted one resumes from its last checkpoint.

The best LR per budget is the vertex of a parabola fitted to gain against log LR (the grid's best point when
the parabola opens upwards), and beta the slope of log LR* against log tokens (Bjorck et al., ICLR 2025, find
beta about 0.32 for large GPTs, larger for small models). Writes OUTPUT/lr_horizon.md, .json and .png.
"""

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.cli import numbers, run_cli
from bench.retrain_runs import PROJECT_DIR
from hpo.statistics import mean_and_standard_error

SCALES = (0.444, 0.667, 1.0, 1.5, 2.25)  # steps of x1.5 around config.yaml's LR
TOKENS = (1_000_000, 4_000_000, 16_000_000)
SEEDS = (1,)
DECAY_FRACTION = 0.2
CHECKPOINT_EVERY = 2_000  # stable steps (about 3 minutes on one thread)
WARMUP_TOKENS = 20_480  # 2% of the shortest budget, the same for every branch (they share the warm-up)


def run_scale(
    scale: float,
    seed: int,
    budgets: list[int],
    warmup_tokens: int,
    work: Path,
    overrides: tuple[str, ...] = (),
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> dict:
    """One stable run of LR x scale and its decay branches; {budget: figures} (cached in WORK). An interrupted
    run resumes: the stable run and the figures of the finished branches are saved every `checkpoint_every`
    stable steps and after each branch (WORK/scale_S_seed_N_KEY.partial.pt); a branch's own decay starts over."""
    # The key: a run with other budgets, warm-up or overrides never reads this one's files.
    key = hashlib.sha256(repr((sorted(budgets), warmup_tokens, tuple(overrides))).encode()).hexdigest()[:10]
    path = work / f"scale_{scale:g}_seed_{seed}_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    partial = path.with_suffix(".partial.pt")
    import torch

    from data.agnews import load_agnews
    from data.corpus import load_corpus
    from data.files_location import resolve_data_dir
    from data.tokenizer import Tokenizer
    from hpo.config import load_config
    from training.pretrain import Pretrainer, random_init_encoder
    from training.probe import Probe
    from training.retrain import atomic_write

    torch.set_num_threads(1)
    data_dir = resolve_data_dir()
    base = load_config(PROJECT_DIR / "config.yaml", [*overrides, f"train.seed={seed}", "train.budget_seconds=null"])
    train = base.train

    def config_for(budget: int):
        return dataclasses.replace(
            base,
            train=dataclasses.replace(
                train,
                learning_rate=train.learning_rate * scale,
                budget_tokens=budget,
                schedule="wsd",
                warmup_fraction=warmup_tokens / budget,
                decay_fraction=DECAY_FRACTION,
            ),
        )

    tokenizer = Tokenizer(data_dir / "tokenizers" / "gpt2.tiktoken")
    corpus = load_corpus(data_dir, base.data, tokenizer)
    probe = Probe(load_agnews(data_dir)[0], tokenizer, base.probe)
    device = torch.device("cpu")
    longest = max(budgets)
    stable = Pretrainer(config_for(longest), corpus, tokenizer, device)
    work.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        atomic_write(partial, lambda handle: torch.save({"stable": stable.state_dict(), "figures": figures}, handle))

    if partial.exists():
        saved = torch.load(partial, map_location=device, weights_only=False)
        stable.load_state_dict(saved["stable"])
        figures = saved["figures"]
        print(f"scale {scale:g} seed {seed}: resumed at step {stable.step:,}", flush=True)
    else:
        random_init = probe.score(
            random_init_encoder(stable.config, tokenizer.vocab_size, device), device, base.probe.folds
        )
        figures = {"scale": scale, "seed": seed, "random_init_accuracy": random_init.accuracy, "budgets": {}}
    for budget in sorted(budgets):
        if str(budget) in figures["budgets"]:
            continue
        branch = Pretrainer(config_for(budget), corpus, tokenizer, device)
        branch_start = round((1 - DECAY_FRACTION) * branch.total_steps)
        while stable.step < branch_start:
            stable.train_step()
            if stable.step % checkpoint_every == 0:
                save()
        if budget == longest:
            branch = stable
        else:
            branch.load_state_dict(copy.deepcopy(stable.state_dict()))
        while not branch.finished:
            branch.train_step()
            if branch is stable and stable.step % checkpoint_every == 0:
                save()
        result = probe.score(branch.model, device, base.probe.folds)
        figures["budgets"][str(budget)] = {
            "tokens": branch.tokens_seen,
            "accuracy": result.accuracy,
            "gain": result.accuracy - figures["random_init_accuracy"],
            "validation_loss": branch.validation_loss(),
        }
        save()
        gain = figures["budgets"][str(budget)]["gain"]
        print(f"scale {scale:g} seed {seed}: {budget:,} tokens: gain {100 * gain:+.1f}", flush=True)
    path.write_text(json.dumps(figures, indent=1))
    partial.unlink()
    return figures


def best_learning_rate(log_rates: np.ndarray, gains: np.ndarray) -> tuple[float, str]:
    """The log LR at the vertex of a parabola through (log LR, gain), or the best grid point (and why)."""
    if len(log_rates) < 3:
        return float(log_rates[int(np.argmax(gains))]), "best grid point (a parabola needs 3 LRs)"
    curvature, slope, _ = np.polyfit(log_rates, gains, 2)
    if curvature < 0:
        vertex = -slope / (2 * curvature)
        if log_rates.min() <= vertex <= log_rates.max():
            return float(vertex), "parabola vertex"
        return float(np.clip(vertex, log_rates.min(), log_rates.max())), "parabola vertex beyond the grid: its edge"
    return float(log_rates[int(np.argmax(gains))]), "best grid point (the parabola opens upwards)"


def summarize(
    runs: list[dict], scales: list[float], budgets: list[int], seeds: list[int], peak: float, warmup_tokens: int
):
    """The table (markdown lines), the best LR per budget, and beta (None with fewer than 2 budgets)."""
    scales = sorted(scales)
    log_rates = np.log(np.array(scales) * peak)

    def gains_of(budget: int, seed: int | None = None) -> list[list[float]]:
        return [
            [r["budgets"][str(budget)]["gain"] for r in runs if r["scale"] == s and seed in (None, r["seed"])]
            for s in scales
        ]

    lines = [
        f"Peak LR = scale x {peak:g} (the token table's x embedding_lr_multiplier); wsd, warm-up "
        f"{warmup_tokens:,} tokens, decay over the last {DECAY_FRACTION:.0%}; gains in points over the "
        f"random-init encoder, mean over train.seed {', '.join(map(str, seeds))}"
        + (" ± standard error (every scale runs the same seeds: same init and data order)." if len(seeds) > 1 else "."),
        "",
    ]
    by_seed = len(seeds) > 1
    seed_columns = "".join(f" best, seed {seed} |" for seed in seeds) if by_seed else ""
    lines += [
        "| tokens | " + " | ".join(f"LR x{scale:g}" for scale in scales) + f" | best LR | how |{seed_columns}",
        "|---:|" + "---:|" * len(scales) + "---:|---|" + "---:|" * (len(seeds) if by_seed else 0),
    ]
    best = {}
    for budget in budgets:
        means, cells = [], []
        for values in gains_of(budget):
            mean, error = mean_and_standard_error(values)
            means.append(mean)
            cells.append(f"{100 * mean:+.1f}" + (f" ± {100 * error:.1f}" if len(values) > 1 else ""))
        log_best, how = best_learning_rate(log_rates, np.array(means))
        best[budget] = math.exp(log_best)
        row = f"| {budget:,} | {' | '.join(cells)} | {best[budget]:.2e} (x{best[budget] / peak:.2f}) | {how} |"
        if by_seed:  # each seed's own best: how far the seeds' noise alone moves it
            for seed in seeds:
                own = np.array([values[0] for values in gains_of(budget, seed)])
                row += f" x{math.exp(best_learning_rate(log_rates, own)[0]) / peak:.2f} |"
        lines.append(row)
    lines.append("")
    if len(budgets) < 2:
        lines.append("beta needs the best LR at 2 budgets or more (`--tokens`): not fitted.")
        return lines, best, None
    grid_step = math.exp(float(np.mean(np.diff(log_rates)))) if len(scales) > 1 else math.nan
    slope, _ = np.polyfit(np.log(budgets), np.log([best[budget] for budget in budgets]), 1)
    beta = float(-slope)
    moved = best[budgets[-1]] / best[budgets[0]]
    lines.append(
        f"Fit LR* ~ D^-beta over {len(budgets)} budgets: beta = {beta:.2f}; from {budgets[0]:,} to {budgets[-1]:,} "
        f"tokens the best LR changes x{moved:.2f} (a step of the grid is x{grid_step:.2f})."
    )
    return lines, best, beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scales", type=numbers(float), default=",".join(map(str, SCALES)), help="LR multiples of config.yaml's"
    )
    parser.add_argument("--tokens", type=numbers(int), default=",".join(map(str, TOKENS)))
    parser.add_argument("--seeds", type=numbers(int), default=",".join(map(str, SEEDS)))
    parser.add_argument("--warmup_tokens", type=int, default=WARMUP_TOKENS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--work", default="studies/bench/lr_horizon")
    parser.add_argument("--output", default="bench/results")
    args = parser.parse_args()
    scales, budgets, seeds = sorted(args.scales), sorted(args.tokens), args.seeds
    work = Path(args.work).resolve()
    os.environ["CI"] = "1"  # no progress bars from the workers
    plan = [(scale, seed) for seed in seeds for scale in scales]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_scale, scale, seed, budgets, args.warmup_tokens, work, tuple(args.set))
            for scale, seed in plan
        ]
        runs = [future.result() for future in futures]
    from hpo.config import load_config

    peak = load_config(PROJECT_DIR / "config.yaml", args.set).train.learning_rate
    lines, best, beta = summarize(runs, scales, budgets, seeds, peak, args.warmup_tokens)
    table = "\n".join(lines) + "\n"
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "lr_horizon.md").write_text(table)
    saved = {"scales": scales, "budgets": budgets, "seeds": seeds, "runs": runs, "best": best, "beta": beta}
    (output / "lr_horizon.json").write_text(json.dumps(saved, indent=1))
    plot(runs, scales, budgets, peak, best, output / "lr_horizon.png")
    print(table)


def plot(runs: list[dict], scales: list[float], budgets: list[int], peak: float, best: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for index, budget in enumerate(budgets):
        gains = [
            100 * mean_and_standard_error([r["budgets"][str(budget)]["gain"] for r in runs if r["scale"] == s])[0]
            for s in scales
        ]
        axes.plot([s * peak for s in scales], gains, "o-", color=f"C{index}", label=f"{budget:,} tokens")
        axes.axvline(best[budget], color=f"C{index}", linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("peak learning rate")
    axes.set_ylabel("probe gain over random init (points)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    run_cli(main)
