"""Retrain of an exported config: bit-identical resume, DDP on two CPU processes, atomic and pruned
checkpoints, one-line refusals; and the time budget of a study trial."""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import main
from data.corpus import load_corpus
from hpo.config import load_config
from hpo.export import write_config
from hpo.trial import PretrainAndProbe, Resources
from training.pretrain import FIRST_STEP_SHARE, Execution, Pretrainer, learning_rate_multiplier
from training.retrain import CheckpointFolder, run_config

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONFIG_PATH = PROJECT_DIR / "config.yaml"
SEQ_LEN, BATCH_SIZE = 32, 8
TINY = [
    "data.sources=[wikipedia]",
    f"data.seq_len={SEQ_LEN}",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.dropout=0.1",  # so that a resumed run must restore the random state its dropout draws from
    f"train.batch_size={BATCH_SIZE}",
    "train.budget_seconds=null",
    "train.validation_sequences=16",
    "probe.max_length=32",
    "probe.folds=2",
    "probe.quick_rows=200",
    "probe.quick_folds=2",
    "probe.max_iter=100",
    "search_space={}",  # the trial of the time-budget test runs the tiny model as it is
    f"retrain.budget_tokens={6 * BATCH_SIZE * SEQ_LEN}",  # 6 steps
    "retrain.checkpoint_every_steps=4",
    "retrain.log_every_steps=2",
]


@pytest.fixture(autouse=True)
def one_thread():
    """One PyTorch thread: on a loaded 2-core machine two threads per process are many times slower,
    and CPU results stay independent of the thread count, so runs in and out of this process agree."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_overrides(tmp_path_factory) -> list[str]:
    """TINY with a corpus cache shared by this module's tests (the corpus is tokenised once)."""
    return [*TINY, f"data.cache_dir={tmp_path_factory.mktemp('retrain-cache')}"]


@pytest.fixture
def config_file(tmp_path, tiny_overrides) -> Path:
    """A tiny exported config, as `main.py export` writes it; a retrain writes beside it by default."""
    path = tmp_path / "best_config.yaml"
    config = load_config(CONFIG_PATH, tiny_overrides)
    attributes = {"probe_accuracy": 0.55, "random_init_accuracy": 0.5, "budget_tokens": 1024}
    config.provenance = {"study": "demo", "trial": 7, "trial_attributes": attributes}
    write_config(config, path)
    return path


def retrain(config_file: Path, *flags: str) -> int:
    return main.main(["retrain", "--config", str(config_file), *flags])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    unequal = [name for name in left if not torch.equal(left[name], right[name])]
    assert not unequal, f"parameters differ: {unequal}"


def test_resumed_run_reaches_the_weights_of_an_uninterrupted_run(config_file, tmp_path, monkeypatch, capsys):
    assert retrain(config_file) == 0  # default output: retrain_<config name>/ beside the config
    uninterrupted = tmp_path / "retrain_best_config"
    printed = capsys.readouterr().out
    trial = "trial 7 of study 'demo': gain +5.00 points (accuracy 55.00%, random init 50.00%) after 1,024 tokens"
    assert f"the recipe's {trial}" in printed  # from the export's provenance, before and after the run
    assert re.search(
        rf"gain [+-]\d+\.\d\d ± \d+\.\d\d points \(CV\) after 1,536 tokens, where the study's {re.escape(trial)}",
        printed,
    )
    assert re.search(
        r"step 2/6 \| loss \d+\.\d{4} \| lr \d\.\d{3}e-0\d \| [\d,]+ tokens/s \| ETA \d:\d\d:\d\d", printed
    )
    # Every 4 steps, and the last step's: a stop during the final probes resumes with no step to redo.
    assert [path.name for path in CheckpointFolder(uninterrupted / "checkpoints", 3).paths()] == [
        "step_4.pt",
        "step_6.pt",
    ]

    original_step = Pretrainer.train_step

    def stop_after_step_five(trainer):
        result = original_step(trainer)
        if trainer.step == 5:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(Pretrainer, "train_step", stop_after_step_five)
    resumed = tmp_path / "resumed"
    assert retrain(config_file, "--output", str(resumed)) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (resumed / "model.pt").exists()
    monkeypatch.undo()

    assert retrain(config_file, "--output", str(resumed), "--resume") == 0

    assert "from step 4" in capsys.readouterr().out
    # Dropout (0.1 here) draws from the restored random state; masking is reseeded per step.
    assert_same_weights(weights(resumed / "model.pt"), weights(uninterrupted / "model.pt"))
    first, second = (yaml.safe_load((folder / "results.yaml").read_text()) for folder in (uninterrupted, resumed))
    assert first["study_trial"] == {**first["study_trial"], "trial": 7, "tokens": 1024, "gain": pytest.approx(0.05)}
    assert first["validation_loss"] == second["validation_loss"] and first["steps"] == second["steps"] == 6
    assert first["test_accuracy"] == second["test_accuracy"] and first["test_accuracy"]["rows"] == 7600
    assert first["selection_accuracy"]["rows"] == 4983 and 0.25 < first["selection_accuracy"]["accuracy"] < 1
    for split in ("selection_accuracy", "test_accuracy"):  # each score stands beside the encoder's starting point
        start = first["random_init"][split]
        assert start["rows"] == first[split]["rows"] and start["accuracy"] != first[split]["accuracy"]
        gain = first[split]["accuracy"] - start["accuracy"]  # the paired gain: the same, up to rounding
        assert first["gain_over_random_init"][split] == pytest.approx(gain, abs=1e-12)


def test_a_stop_during_the_final_probes_resumes_without_retraining(config_file, tmp_path, monkeypatch, capsys):
    import training.retrain

    def stopped_while_probing(trainer, data_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.retrain, "evaluate", stopped_while_probing)
    output = tmp_path / "stopped"
    assert retrain(config_file, "--output", str(output)) == 130
    monkeypatch.undo()
    steps_run = []
    original_step = Pretrainer.train_step
    monkeypatch.setattr(Pretrainer, "train_step", lambda trainer: steps_run.append(1) or original_step(trainer))

    assert retrain(config_file, "--output", str(output), "--resume") == 0

    assert "from step 6" in capsys.readouterr().out and steps_run == []
    assert (output / "results.yaml").exists()


def test_two_retrains_cannot_write_into_one_folder(config_file, tmp_path, capsys):
    import fcntl

    output = tmp_path / "shared"
    output.mkdir()
    folder = os.open(output, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # as a first retrain into this folder holds it
        assert retrain(config_file, "--output", str(output)) == 2
    finally:
        os.close(folder)
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"another retrain is writing to {output}" in error
    assert not list(output.iterdir())
    assert retrain(config_file, "--output", str(output)) == 0  # once the first one is done


def test_each_exported_file_has_its_own_default_output_folder(tmp_path):
    arguments = main.parse_args(["retrain", "--config", "studies/demo/top_3/rank_2.yaml"])
    assert arguments.output is None
    folders = {
        name: main.retrain_output_folder(main.parse_args(["retrain", "--config", f"studies/demo/{name}"]))
        for name in ("best_config.yaml", "top_3/rank_1.yaml", "top_3/rank_2.yaml")
    }
    assert folders == {
        "best_config.yaml": Path("studies/demo/retrain_best_config"),
        "top_3/rank_1.yaml": Path("studies/demo/top_3/retrain_rank_1"),
        "top_3/rank_2.yaml": Path("studies/demo/top_3/retrain_rank_2"),
    }


@pytest.mark.slow  # two processes started by torchrun: about 30 s on a loaded 2-core machine
def test_two_process_ddp_matches_one_process_with_two_micro_batches(config_file, tmp_path, data_dir, tokenizer):
    # Dropout off: each DDP process draws its own dropout masks, one process would draw them in sequence.
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["main.py", "retrain", "--config", str(config_file), "--output", str(output)]
    command += ["--set", "model.dropout=0.0", "--set", "train.device=cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("retrain:") == 1, "only rank 0 logs"
    results = yaml.safe_load((output / "results.yaml").read_text())
    assert results["world_size"] == 2 and results["steps"] == 6
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == ["step_4.pt", "step_6.pt"]

    config = run_config(load_config(config_file, ["model.dropout=0.0", "train.device=cpu"]))
    corpus = load_corpus(data_dir, config.data, tokenizer)
    execution = Execution(accumulation_steps=2, dense_embedding_gradients=True)  # as DDP has them
    single = Pretrainer(config, corpus, tokenizer, torch.device("cpu"), execution)
    while not single.finished:
        single.train_step()
    # Tolerance zero, by derivation: the two runs cut the global batch into the same two micro-batches,
    # mask each with the same seed and run the same single-threaded CPU kernels on them; the step's
    # gradient is g0 / 2 + g1 / 2 in both (halving is exact in binary floating point, and a sum of two
    # numbers rounds the same in either order, as gloo's all-reduce may take them); clipping and AdamW
    # then run on equal inputs.
    assert config.train.sampled_softmax is not None  # the token table's rows: dense under DDP, then row-sparse
    assert_same_weights(weights(output / "model.pt"), single.model.state_dict())
    # One process with row-sparse table gradients (a study trial's way) takes the same steps up to rounding.
    sparse = Pretrainer(config, corpus, tokenizer, torch.device("cpu"), Execution(accumulation_steps=2))
    while not sparse.finished:
        sparse.train_step()
    for name, tensor in sparse.model.state_dict().items():
        torch.testing.assert_close(tensor, single.model.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)


def test_checkpoint_write_is_atomic_and_keeps_the_newest(tmp_path, monkeypatch):
    folder = CheckpointFolder(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3, 10):
        folder.save({"step": step, "weights": torch.full((4,), float(step))}, step)
    assert [path.name for path in folder.paths()] == ["step_3.pt", "step_10.pt"]

    def save_half_then_fail(state, handle):
        handle.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        folder.save({"step": 11, "weights": torch.zeros(4)}, 11)
    monkeypatch.undo()

    assert sorted(path.name for path in folder.folder.iterdir()) == ["step_10.pt", "step_3.pt"]  # no partial file
    newest = torch.load(folder.paths()[-1], weights_only=True)
    assert newest["step"] == 10 and torch.equal(newest["weights"], torch.full((4,), 10.0))


def _write_foreign_checkpoint(folder: Path) -> None:
    CheckpointFolder(folder, keep=1).save({"config_hash": "0" * 16, "world_size": 1, "trainer": {}}, 4)


def _write_torn_checkpoint(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "step_4.pt").write_bytes(b"not a whole checkpoint")


@pytest.mark.parametrize(
    "flags, prepare, message",
    [
        (["--resume"], None, r"--resume: no checkpoint in .*retrain_best_config/checkpoints; run without --resume"),
        (["--resume"], _write_foreign_checkpoint, r"step_4.pt was written by another run configuration"),
        (["--resume"], _write_torn_checkpoint, r"--resume: cannot read .*step_4.pt .*delete it"),
        ([], _write_foreign_checkpoint, r"retrain_best_config/checkpoints already holds checkpoints .*add --resume"),
        (["--budget_tokens", "0"], None, r"retrain.budget_tokens = 0; expected a positive integer"),
        (["--checkpoint_every", "-1"], None, r"retrain.checkpoint_every_steps = -1; expected a positive integer"),
        (["--set", "retrain.precision=fp64"], None, r"retrain.precision = 'fp64'; expected one of auto"),
        (["--set", "train.device=cpu", "--set", "retrain.precision=fp16"], None, r"'fp16' needs a CUDA GPU"),
        (["--set", "retrain.grad_accumulation_steps=3"], None, r"train.batch_size = 8 does not split into 3"),
        (
            ["--set", "search_space.retrain.budget_tokens={type: int, low: 1, high: 2}"],
            None,
            r"section 'retrain' is not searchable",
        ),
    ],
)
def test_bad_retrain_requests_are_one_line_errors(config_file, flags, prepare, message, capsys):
    if prepare:
        prepare(config_file.parent / "retrain_best_config" / "checkpoints")
    assert retrain(config_file, *flags) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and re.search(message, error), error


def test_missing_config_file_is_a_one_line_error(tmp_path, capsys):
    assert main.main(["retrain", "--config", str(tmp_path / "nope.yaml")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot read config file" in error and "nope.yaml" in error


def test_time_budget_schedule_follows_elapsed_training_time(tiny_overrides, data_dir, tokenizer):
    overrides = [*tiny_overrides, "train.budget_seconds=1.0", "train.schedule=linear", "train.warmup_fraction=0.25"]
    config = load_config(CONFIG_PATH, overrides)
    corpus = load_corpus(data_dir, config.data, tokenizer)
    trainer = Pretrainer(config, corpus, tokenizer, torch.device("cpu"))
    ticks = itertools.count()
    trainer.clock = lambda: next(ticks) * 0.0625  # read twice a step: every step lasts 0.0625 s

    rates = []
    while not trainer.finished:
        rates.append(trainer.train_step().learning_rate)

    assert trainer.step == 16 and trainer.tokens_seen == 16 * BATCH_SIZE * SEQ_LEN
    peak = config.train.learning_rate
    # Each step runs at the rate of its end: 1/16 of the budget per step, estimated from the steps before.
    ends = [FIRST_STEP_SHARE] + [(step + 1) / 16 for step in range(1, 16)]
    assert rates == pytest.approx([peak * learning_rate_multiplier("linear", end, 0.25, 0.2) for end in ends])
    assert rates[:4] == pytest.approx([peak * FIRST_STEP_SHARE / 0.25, peak / 2, 3 * peak / 4, peak])  # warm-up
    assert learning_rate_multiplier("cosine", 0.625, 0.25, 0.2) == pytest.approx(0.5)  # half-way through the decay


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(0.05, 0.5), (0.1, 1.0), (0.5, 1.0), (0.8, 1.0), (0.9, 0.5), (0.95, 0.25), (1.0, 0.0), (1.2, 0.0)],
)
def test_wsd_warms_up_holds_the_peak_then_decays_linearly_to_zero(progress, expected):
    assert learning_rate_multiplier("wsd", progress, 0.1, 0.2) == pytest.approx(expected)


def test_retrain_schedule_inherit_keeps_the_trials_schedule_and_the_others_replace_it(config_file):
    trial = ["train.schedule=constant", "train.warmup_fraction=0.05", "train.decay_fraction=0.3"]
    inherited = run_config(load_config(config_file, [*trial, "retrain.schedule=inherit"])).train
    assert (inherited.schedule, inherited.warmup_fraction, inherited.decay_fraction) == ("constant", 0.05, 0.3)
    assert inherited.budget_seconds is None and inherited.budget_tokens == 6 * BATCH_SIZE * SEQ_LEN
    replaced = ["retrain.schedule=wsd", "retrain.warmup_fraction=0.02", "retrain.decay_fraction=0.1"]
    wsd = run_config(load_config(config_file, [*trial, *replaced])).train
    assert (wsd.schedule, wsd.warmup_fraction, wsd.decay_fraction) == ("wsd", 0.02, 0.1)


def test_trial_with_a_time_budget_trains_for_its_seconds(tiny_overrides, data_dir):
    budget_seconds = 2.0
    config = load_config(CONFIG_PATH, [*tiny_overrides, f"train.budget_seconds={budget_seconds}"])
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(PretrainAndProbe(config, Resources.load(config, data_dir)), n_trials=1)

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.system_attrs
    steps = trial.user_attrs["steps"]
    assert trial.user_attrs["tokens_seen"] == steps * BATCH_SIZE * SEQ_LEN > 0
    train_seconds = trial.user_attrs["tokens_seen"] / trial.user_attrs["tokens_per_second"]
    # Training stops at the first step that ends past the budget; quick probes do not count.
    assert budget_seconds <= train_seconds < budget_seconds + 1.0
    assert sorted(trial.intermediate_values) == [0, 1, 2]  # report points by index: a time budget can prune
