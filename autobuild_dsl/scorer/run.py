"""Run folders: train an ensemble of scorers into a folder, load it back, predict with it.

Layout of a run folder (every file written whole or not at all: temp file + rename):

    config.json            RunConfig: space (JSON), target, hyper-parameters, encoder
                           categories, soft-rank backend, the planned members
    members/<name>.pt      one member's weights (state dict)
    members/<name>.json    MemberRecord: its rows, held-out metrics, and the statistics
                           ranking needs (label mean/sd overall and per (stage, depth),
                           node-embedding norm mean/sd per hop, over its training split)
    metrics.json           RunMetrics: every member's metrics and their mean

A member counts as done when its .json exists (written after its .pt), so an interrupted
run resumes by training only the members without one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from autobuild_dsl import io as abc_io
from autobuild_dsl.data.dataset import LabeledDataset
from autobuild_dsl.data.splits import label_stats
from autobuild_dsl.data.target import Target, TargetError, parse_target
from autobuild_dsl.errors import OVERWRITE, START_OVER, Remedy
from autobuild_dsl.scorer.ensemble import MemberResult, plan_members, run_members
from autobuild_dsl.scorer.model import (
    FeatureScore,
    PackedGraphs,
    ScorerModel,
    check_codes,
    feature_importance,
    pack_graphs,
)
from autobuild_dsl.scorer.records import (  # noqa: F401  (re-exported: run.py was their home)
    RUN_FORMAT,
    RUN_VERSION,
    CategoryInfo,
    EnsembleConfig,
    GlobalCount,
    LoadedMember,
    MemberDone,
    MemberRecord,
    ProgressEvent,
    RunConfig,
    RunError,
    RunMetrics,
    RunProgress,
    SummaryMetrics,
    TrainedRun,
    _read_record,
    ensemble_moments,
    in_target_units,
    load_run,
    normalised_weights,
    summarise,
    summary_json,
)
from autobuild_dsl.scorer.shared import predict_members
from autobuild_dsl.scorer.softrank import resolve_backend
from autobuild_dsl.scorer.train import (
    TrainConfig,
    embed,
)
from autobuild_dsl.space.expr import Value
from autobuild_dsl.space.model import Space

# Settings that change nothing about the result: a resumed run may differ in them.
_NOT_IDENTITY = {"threads", "eval_every"}
# Informational config fields (added later; absent from older runs): not compared on resume.
_INFORMATIONAL = ("data", "space_file", "globals_seen")


# ----- atomic files ------------------------------------------------------------------------


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    abc_io.write_atomic(path, data)


def _write_json(path: Path, model: BaseModel) -> None:
    _write_bytes_atomic(path, (model.model_dump_json(indent=2) + "\n").encode())


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write_bytes_atomic(path, buffer.getvalue())


# ----- training a run ----------------------------------------------------------------------


def _fingerprint(dataset: LabeledDataset, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    for arch in dataset.architectures:
        digest.update(arch.key().encode())
    digest.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return digest.hexdigest()[:32]


def _globals_seen(dataset: LabeledDataset) -> list[GlobalCount]:
    """The global-choice assignments of the rows, most frequent first (ties: first seen)."""
    counts: dict[str, tuple[dict[str, Value], int]] = {}
    for arch in dataset.architectures:
        key = json.dumps(arch.globals, sort_keys=True)
        values, count = counts.get(key, (dict(arch.globals), 0))
        counts[key] = (values, count + 1)
    ordered = sorted(counts.values(), key=lambda item: -item[1])
    return [GlobalCount(values=values, count=count) for values, count in ordered]


def default_num_layers(space: Space, graphs: Sequence[Any] | None = None) -> int:
    """Message-passing layers: enough hops to span the longest module, at least 4.

    The longest module is counted in graph nodes (a U-Net layer can hold two nodes), from
    the graphs when given, else from the stages' depths. The floor of 4 is the paper's
    setting for OFA (modules of up to 4 layers); U-Net output stages of 7 nodes give 6.
    """
    stage_unit = {s: u.name for u in space.module_units() for s in u.stages}
    index_unit = {stage.index: stage_unit[stage.name] for stage in space.stages}
    longest = 0
    for unit in space.module_units():
        longest = max(longest, sum(max(space.stage(s).depths) for s in unit.stages))
    for graph in graphs or []:
        stage_index = getattr(graph, "stage_index", None)
        if stage_index is None:
            continue
        counts: dict[str, int] = {}
        for value in stage_index.tolist():
            unit = index_unit.get(int(value))
            if unit is not None:
                counts[unit] = counts.get(unit, 0) + 1
        if counts:
            longest = max(longest, max(counts.values()))
    return max(4, longest - 1)


def _prepare_folder(out: Path, config: RunConfig, *, force: bool, resume: bool) -> set[str]:
    """Create or reuse the run folder; returns the names of members already finished."""
    config_path = out / "config.json"
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder")
    if resume and config_path.exists():
        try:
            old = RunConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise RunError(f"{config_path}: not a run configuration: {error}") from None
        differences = _config_differences(old, config)
        if differences:
            raise RunError(
                f"{out}: cannot resume, the run was started with other settings "
                f"({'; '.join(differences[:4])})",
                remedies=(START_OVER,),
            )
        return {
            name
            for name in config.members
            if (out / "members" / f"{name}.json").exists()
            and (out / "members" / f"{name}.pt").exists()
        }
    if out.exists() and any(out.iterdir()):
        if not force:
            raise RunError(
                f"{out} exists and is not empty",
                remedies=(OVERWRITE, Remedy("resume", "to finish an interrupted run")),
            )
        # Remove only what a run writes: a mistyped -o must not wipe unrelated files.
        shutil.rmtree(out / "members", ignore_errors=True)
        for name in ("config.json", "metrics.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(config_path, config)
    return set()


def _config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    a = old.model_dump(mode="json")
    b = new.model_dump(mode="json")
    for dump in (a, b):
        for key in _NOT_IDENTITY:
            dump["train"].pop(key, None)
        for key in _INFORMATIONAL:
            dump.pop(key, None)
    # The space by its meaning (Space.digest): where its text sits in a file, or which
    # checkout it was compiled from, is not part of it.
    a["space"], b["space"] = _space_digest(old.space), _space_digest(new.space)
    return [f"{key} differs" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def _space_digest(space_json: dict[str, Any]) -> str:
    try:
        return Space.model_validate(space_json).digest()
    except ValueError:  # not a Space (a hand-edited config): compare the text as it is
        return json.dumps(space_json, sort_keys=True)


def _labeled(dataset: LabeledDataset, target: Target) -> tuple[LabeledDataset, np.ndarray]:
    """The rows with a label (rows lacking a metric the target reads are left out, as
    `abc data describe --target` does: Target.labeled_rows) and their labels."""
    try:
        keep = target.labeled_rows(dataset).keep
    except TargetError as error:
        raise RunError(str(error)) from None
    if not keep.all():
        dataset = dataset.subset(np.flatnonzero(keep))
    if len(dataset) < 4:
        raise RunError(f"{len(dataset)} labeled architectures: at least 4 are needed")
    y = target.evaluate(dataset)
    finite = np.asarray(y, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size and finite.min() == finite.max():
        # Nothing to rank: every SRCC would be undefined and the scores meaningless.
        raise RunError(
            f"target `{target.text}` is {finite[0]:g} for all {len(dataset)} labeled "
            "architectures: nothing to learn; choose a target that varies"
        )
    return dataset, y


def _run_config(
    space: Space,
    dataset: LabeledDataset,
    y: np.ndarray,
    target: Target,
    encoder: Any,
    train: TrainConfig,
    ensemble: EnsembleConfig,
    members: list[str],
    paths: tuple[str, str],
) -> RunConfig:
    vocab_sizes = [len(c.vocab) for c in encoder.categories]
    return RunConfig(
        space_name=space.name,
        space=json.loads(space.to_json()),
        target=target.text,
        data=paths[0],
        space_file=paths[1],
        globals_seen=_globals_seen(dataset),
        data_fingerprint=_fingerprint(dataset, y),
        rows=len(dataset),
        train=train,
        ensemble=ensemble,
        model=train.model_config_for(vocab_sizes),
        categories=[
            CategoryInfo(name=c.name, group=c.group, vocab=list(c.vocab))
            for c in encoder.categories
        ],
        softrank_backend=resolve_backend(train.softrank_backend),
        members=members,
        encoding=getattr(encoder, "encoding", "sequence"),
        # An IR encoder's vocabularies are fitted to the data: the run keeps them.
        encoder_state=(
            encoder.run_state().model_dump(mode="json") if hasattr(encoder, "run_state") else None
        ),
    )


@dataclass
class _MemberSaver:
    """Writes each finished member (weights, then its record) and reports progress."""

    out: Path
    dataset: LabeledDataset
    y: np.ndarray
    total: int
    progress: RunProgress | None
    done: int = 0

    def skipped(self, name: str) -> None:
        """A member an earlier, interrupted run finished."""
        self.done += 1
        if self.progress is not None:
            record = _read_record(self.out, name)
            self.progress(MemberDone(name, self.done, self.total, record.metrics, skipped=True))

    def __call__(self, result: MemberResult) -> None:
        name = result.spec.name
        _save_state(self.out / "members" / f"{name}.pt", result.state)
        # A mixed-space dataset (data/mixed.py) computes its own label statistics.
        own_stats = getattr(self.dataset, "label_stats", None)
        rows = result.spec.train
        record = MemberRecord(
            name=name,
            fold=result.spec.fold,
            seed=result.spec.seed,
            weights=f"members/{name}.pt",
            train_rows=rows,
            test_rows=result.spec.test,
            metrics=result.metrics,
            label=result.label,
            label_stats=own_stats(self.y, rows)
            if own_stats is not None
            else label_stats(self.dataset, self.y, rows),
            hop_norms=result.hop_norms,
            graph_norms=result.graph_norms,
        )
        # The record last: its presence marks the member as finished.
        _write_json(self.out / "members" / f"{name}.json", record)
        self.done += 1
        if self.progress is not None:
            self.progress(MemberDone(name, self.done, self.total, result.metrics))


def train_run(
    space: Space,
    dataset: LabeledDataset,
    target: Target | str,
    out: str | Path,
    *,
    train: TrainConfig | None = None,
    ensemble: EnsembleConfig | None = None,
    num_layers: int | None = None,
    jobs: int = 1,
    ray_address: str | None = None,
    force: bool = False,
    resume: bool = False,
    data_path: str = "",
    progress: RunProgress | None = None,
    encoder: Any = None,
    space_path: str = "",
) -> TrainedRun:
    """Train the members of an ensemble (or one predictor) into the run folder `out`.

    `train.num_layers` is replaced by `num_layers` when given, else by
    `default_num_layers(space, graphs)`. Rows whose target is missing are left out.
    """
    from autobuild_dsl.graphs.encode import GraphEncoder

    out = Path(out)
    target = parse_target(target) if isinstance(target, str) else target
    ensemble = ensemble or EnsembleConfig()
    dataset, y = _labeled(dataset, target)
    encoder = encoder or GraphEncoder(space)
    graphs = dataset.graphs(encoder)
    layers = num_layers or default_num_layers(space, graphs)
    train = (train or TrainConfig()).model_copy(update={"num_layers": layers})
    if ensemble.folds > len(dataset):
        raise RunError(f"{ensemble.folds} folds need at least as many rows ({len(dataset)})")
    specs = plan_members(
        len(dataset),
        folds=ensemble.folds,
        seeds=ensemble.seeds,
        test_fraction=ensemble.test_fraction,
        seed=ensemble.seed,
    )
    config = _run_config(
        space, dataset, y, target, encoder, train, ensemble, [s.name for s in specs],
        (data_path, space_path),
    )  # fmt: skip
    finished = _prepare_folder(out, config, force=force, resume=resume)
    vocab_sizes = [len(c.vocab) for c in encoder.categories]
    packed = pack_graphs(graphs)
    check_codes(packed, vocab_sizes)
    saver = _MemberSaver(out, dataset, y, len(specs), progress)
    for spec in specs:
        if spec.name in finished:
            saver.skipped(spec.name)
    todo = [s for s in specs if s.name not in finished]
    run_members(
        todo, packed, y, vocab_sizes, train,
        on_done=saver, jobs=jobs, ray_address=ray_address, progress=progress,
    )  # fmt: skip
    run = load_run(out)
    # The encoder that made the training graphs (an IR one knows its graph cache).
    run._encoder = encoder
    run.metrics = summarise([m.record for m in run.members], run.config.softrank_backend)
    _write_json(out / "metrics.json", run.metrics)
    return run


# ----- loading and using a run ---------------------------------------------------------------


def _as_packed(graphs: Sequence[Any] | PackedGraphs, model: ScorerModel) -> PackedGraphs:
    packed = graphs if isinstance(graphs, PackedGraphs) else pack_graphs(list(graphs))
    check_codes(packed, model.config.vocab_sizes)
    return packed


def member_predictions(run: TrainedRun, graphs: Sequence[Any] | PackedGraphs) -> np.ndarray:
    """[members, graphs]: each member's prediction in target units."""
    packed = _as_packed(graphs, run.members[0].model)
    with torch.inference_mode():
        # Planned once for all members: each distinct node context is computed once.
        preds = predict_members([m.model for m in run.members], packed)
        rows = [in_target_units(m, p.numpy()) for m, p in zip(run.members, preds, strict=True)]
    return np.stack(rows)


def predict(run: TrainedRun, graphs: Sequence[Any] | PackedGraphs) -> tuple[np.ndarray, np.ndarray]:
    """(mean, spread) of the members' predictions, in target units (weighted by their
    held-out SRCC: records.ensemble_moments)."""
    return ensemble_moments(run.members, member_predictions(run, graphs))


def node_norms(
    model: ScorerModel, graphs: Sequence[Any] | PackedGraphs
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norms [hops, nodes], node_ptr [graphs + 1]): every node's embedding norm per hop.

    Graph g's nodes are `node_ptr[g]:node_ptr[g + 1]`; a module's score is the norm of its
    last node at hop = (its nodes - 1).
    """
    packed = _as_packed(graphs, model)
    _, _, per_hop = embed(model, packed)
    return torch.stack(per_hop), packed.node_ptr


def run_feature_importance(run: TrainedRun) -> list[FeatureScore]:
    """FE-MLP scores averaged over members, weighted by their held-out hop-0 SRCC."""
    w = normalised_weights([m.hop_weight(0) for m in run.members])
    tables = [feature_importance(m.model, run.config.categories) for m in run.members]
    merged = []
    for i, row in enumerate(tables[0]):
        score = float(sum(wk * t[i].score for wk, t in zip(w, tables, strict=True)))
        raw = float(sum(wk * t[i].raw for wk, t in zip(w, tables, strict=True)))
        merged.append(row.model_copy(update={"score": score, "raw": raw}))
    return merged


__all__ = [
    "CategoryInfo",
    "EnsembleConfig",
    "GlobalCount",
    "LoadedMember",
    "MemberDone",
    "MemberRecord",
    "RunConfig",
    "RunError",
    "RunMetrics",
    "SummaryMetrics",
    "TrainedRun",
    "default_num_layers",
    "load_run",
    "member_predictions",
    "node_norms",
    "predict",
    "run_feature_importance",
    "summary_json",
    "train_run",
]
