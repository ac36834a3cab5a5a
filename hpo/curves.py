"""The training curves of a study's trials (training/curves.py writes them beside the trial logs): a plotly figure
for the report and the dashboard, a picture and the raw points as each trial's artifacts in the dashboard, and
the latest point of a running trial for `status`. No torch here."""

import math
from pathlib import Path

import optuna
import optuna_dashboard
import plotly.graph_objects as go
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial
from plotly.subplots import make_subplots

from hpo.trial_logs import logs_folder
from training.curves import CurvePoint, read_curve

PANELS = (  # (attribute of CurvePoint, title, log scale)
    ("loss", "training loss", False),
    ("learning_rate", "learning rate", False),
    ("gradient_norm", "gradient norm (before clipping)", True),
    ("tokens_per_second", "tokens/s", False),
)
MAX_POINTS = 300  # per trace: a long run's curve thinned for the page
DASHBOARD_FIGURE_ID = "training_curves"
DASHBOARD_TRIALS = 10


def curve_path(study_name: str, number: int, studies_dir: Path = Path("studies")) -> Path:
    """Where trial `number` of a study writes its training curve: beside its log."""
    return logs_folder(study_name, studies_dir) / f"trial_{number:04d}.curve.jsonl"


def artifacts_folder(study_name: str, studies_dir: Path = Path("studies")) -> Path:
    """Where a study's trial artifacts go (the dashboard serves them from there)."""
    return studies_dir / study_name / "artifacts"


def thinned(points: list[CurvePoint]) -> list[CurvePoint]:
    stride = max(1, math.ceil(len(points) / MAX_POINTS))
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def curves_figure(curves: dict[str, list[CurvePoint]], title: str) -> go.Figure:
    """One line per run (label -> points) in each panel of PANELS, against tokens."""
    figure = make_subplots(rows=2, cols=2, subplot_titles=[panel[1] for panel in PANELS], horizontal_spacing=0.08)
    for index, (label, points) in enumerate(curves.items()):
        shown = thinned(points)
        tokens = [point.tokens for point in shown]
        for panel, (attribute, _, log) in enumerate(PANELS):
            row, column = divmod(panel, 2)
            figure.add_trace(
                go.Scatter(
                    x=tokens,
                    y=[getattr(point, attribute) for point in shown],
                    name=label,
                    legendgroup=label,
                    showlegend=panel == 0,
                    mode="lines",
                    line={"color": f"hsl({(index * 47) % 360}, 60%, 45%)", "width": 1.5},
                ),
                row=row + 1,
                col=column + 1,
            )
            if log:
                figure.update_yaxes(type="log", row=row + 1, col=column + 1)
    figure.update_xaxes(title_text="tokens")
    return figure.update_layout(title=title, height=640)


def trial_curves(study: optuna.Study, trials: list[FrozenTrial], studies_dir: Path = Path("studies")) -> dict:
    """label -> points of each trial that wrote a curve."""
    found = {}
    for trial in trials:
        points = read_curve(curve_path(study.study_name, trial.number, studies_dir))
        if points:
            found[f"trial {trial.number}"] = points
    return found


def publish_trial_curve(trial: optuna.Trial) -> None:
    """A trial's curve as its artifacts, a picture and the raw points (the dashboard's trial page shows them):
    uploaded at the end of its run, while it still runs (a finished trial takes no artifact)."""
    study = trial.study
    path = curve_path(study.study_name, trial.number)
    points = read_curve(path)
    if not points:
        return
    store_folder = artifacts_folder(study.study_name)
    store_folder.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_folder))
    picture = path.with_suffix(".png")
    curve_picture(points, f"trial {trial.number}", picture)
    for file_path, mimetype in ((picture, "image/png"), (path, "application/jsonl")):
        upload_artifact(artifact_store=store, file_path=str(file_path), study_or_trial=trial, mimetype=mimetype)


def save_study_figure(study: optuna.Study, top: list[FrozenTrial]) -> None:
    """The training curves of the `top` trials as the study's plotly figure in optuna-dashboard."""
    curves = trial_curves(study, top[:DASHBOARD_TRIALS])
    if curves:
        figure = curves_figure(curves, f"training curves of the top {len(curves)} trials")
        optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id=DASHBOARD_FIGURE_ID)


def curve_picture(points: list[CurvePoint], title: str, path: Path) -> None:
    """A PNG of one run's curve, the four panels of PANELS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(8, 5))
    tokens = [point.tokens for point in points]
    for axis, (attribute, label, log) in zip(axes.flat, PANELS, strict=True):
        axis.plot(tokens, [getattr(point, attribute) for point in points], linewidth=1)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("tokens", fontsize=8)
        axis.tick_params(labelsize=7)
        if log:
            axis.set_yscale("log")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def latest_point(study_name: str, number: int) -> CurvePoint | None:
    points = read_curve(curve_path(study_name, number))
    return points[-1] if points else None
