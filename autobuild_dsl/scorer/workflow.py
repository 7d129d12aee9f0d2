"""The training workflow `abc train` runs, as one library call: data file in, run folder out.

    run = train_from_file(space, "data.jsonl", "acc - 0.5*lat", "runs/acc_lat",
                          train=TrainConfig(epochs=200), ensemble=EnsembleConfig(folds=5))

It reads the labeled data (of one space, or of several for an ONNX-IR run), parses the
target, fits the IR encoder when asked, and trains the ensemble (`scorer.run.train_run`).
What a caller may want to show on the way comes as `TrainNote`s and progress callbacks;
nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autobuild_dsl.data.dataset import LabeledDataset, load_dataset
from autobuild_dsl.data.target import Target, parse_target
from autobuild_dsl.errors import Remedy
from autobuild_dsl.scorer.run import EnsembleConfig, RunError, TrainedRun, train_run
from autobuild_dsl.scorer.train import TrainConfig, thread_note
from autobuild_dsl.space.model import Space

Encoding = Literal["sequence", "ir"]


@dataclass(frozen=True)
class TrainNote:
    """Something worth telling: before training, rows left out for the target (`rows`),
    torch threads that would share busy cores (`threads`) or where the ONNX-IR graphs came
    from (`ir`); after it, a prediction head no member got better than chance (`head`)."""

    kind: Literal["rows", "threads", "ir", "head"]
    text: str


@dataclass(frozen=True)
class TrainOutcome:
    """A trained run and the dataset it was trained from (`rows_given` rows in the file)."""

    run: TrainedRun
    rows_given: int
    # The file's rows as loaded (before rows lacking the target were left out): what
    # `design.ranking_workflow.prime_cache` reads instead of loading the file again.
    dataset: LabeledDataset | None = None

    @property
    def left_out(self) -> int:
        """Rows of the file that lack a metric of the target (not trained on)."""
        return self.rows_given - self.run.config.rows


def load_training_data(
    space: Space,
    data_file: str,
    extra_spaces: Sequence[Space] = (),
    encoding: Encoding = "sequence",
) -> LabeledDataset:
    """The labeled rows of `data_file`: of `space`, or (IR runs) of several spaces, each
    row naming its space in `arch.space`."""
    if extra_spaces and encoding != "ir":
        raise RunError(
            "architectures of several spaces need the ONNX-IR encoding",
            remedies=(Remedy("encoding", "to train on several spaces", value="ir"),),
        )
    if extra_spaces:
        from autobuild_dsl.data.mixed import load_mixed_dataset

        return load_mixed_dataset(data_file, [space, *extra_spaces])
    return load_dataset(data_file, space)


def fit_ir_encoder(
    spaces: Sequence[Space],
    archs: Sequence[Any],
    *,
    cache: str | None = None,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """An IrEncoder over `spaces`, its vocabularies fitted on `archs` (graphs exported or
    read from the cache; `progress(done, total)` follows them)."""
    from autobuild_dsl.graphs.ir import IrEncoder

    encoder = IrEncoder(list(spaces), cache_dir=Path(cache) if cache else None, jobs=jobs)
    if progress is None:
        return encoder.fit(archs)
    return encoder.fit(archs, progress=progress)


def ir_note(encoder: Any) -> TrainNote:
    stats = encoder.stats
    cached = stats.disk + stats.memory
    return TrainNote(
        "ir",
        f"IR graphs: {stats.total:,} ({cached:,} from the cache, {stats.assembled:,} from layer "
        f"fragments, {stats.exported:,} exported whole) in {stats.seconds:.1f} s · cache "
        f"{encoder.cache_dir}",
    )


def train_from_file(
    space: Space,
    data_file: str,
    target: str | Target,
    output: str,
    *,
    extra_spaces: Sequence[Space] = (),
    encoding: Encoding = "sequence",
    ir_cache: str | None = None,
    export_jobs: int = 1,
    train: TrainConfig | None = None,
    ensemble: EnsembleConfig | None = None,
    jobs: int = 1,
    ray_address: str | None = None,
    notes: Callable[[TrainNote], None] | None = None,
    ir_progress: Callable[[int, int], None] | None = None,
    **run_options: Any,
) -> TrainOutcome:
    """Train AutoBuild scorers on the labeled architectures of `data_file` into `output`.

    `run_options` go to `scorer.run.train_run` as they are: `num_layers`, `force` (replace
    an existing run folder), `resume` (finish an interrupted one), `space_path`, `progress`.
    """
    if run_options.get("force") and run_options.get("resume"):
        raise RunError("force and resume contradict each other; pick one")
    train = train or TrainConfig()
    tell = notes or (lambda note: None)
    parsed = parse_target(target) if isinstance(target, str) else target
    dataset = load_training_data(space, data_file, extra_spaces, encoding)
    # Rows lacking a metric the target reads are left out (as `abc data describe
    # --target` leaves them out); say how many, and why.
    if hasattr(dataset, "metric_names"):
        left_out = parsed.labeled_rows(dataset).note()
        if left_out:
            tell(TrainNote("rows", left_out))
    encoder = None
    if encoding == "ir":
        spaces = [space, *extra_spaces]
        encoder = fit_ir_encoder(
            spaces, dataset.architectures, cache=ir_cache, jobs=export_jobs, progress=ir_progress
        )
        tell(ir_note(encoder))
    busy = thread_note(train.threads) if jobs <= 1 and not ray_address else None
    if busy:
        tell(TrainNote("threads", busy))
    run = train_run(
        space,
        dataset,
        parsed,
        output,
        train=train,
        ensemble=ensemble,
        jobs=jobs,
        ray_address=ray_address,
        data_path=data_file,
        encoder=encoder,
        **run_options,
    )
    head = head_note(run)
    if head:
        tell(TrainNote("head", head))
    return TrainOutcome(run=run, rows_given=len(dataset), dataset=dataset)


def head_note(run: TrainedRun) -> str | None:
    """Why to distrust the run's predictions, when every member's prediction head ranks its
    held-out rows no better than chance; None otherwise (or with no held-out SRCC).

    Seen with few optimiser steps (e.g. 30 epochs of 133 rows: 60 steps): the ranked loss
    grows the embeddings faster than the MSE term turns the head, whose starting sign then
    decides, and the head can end anti-ranked (SRCC -0.9) while the embedding norms, which
    module scores read, rank well."""
    if run.metrics is None:
        return None
    heads = [m.pred_srcc for m in run.metrics.members.values() if m.pred_srcc is not None]
    if not heads or max(heads) > 0:
        return None
    return (
        f"no member's prediction head ranks its held-out rows better than chance (SRCC "
        f"{min(heads):.2f} to {max(heads):.2f}): the run's predictions (a build's tie-breaks, "
        "predicted values, a predictor evaluator) are unreliable; module scores read the "
        "embedding norms and are not affected. More training epochs usually fix the head."
    )


__all__ = [
    "TrainNote",
    "TrainOutcome",
    "fit_ir_encoder",
    "head_note",
    "ir_note",
    "load_training_data",
    "train_from_file",
]
