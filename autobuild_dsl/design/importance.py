"""Feature importance (paper Sec. 4.3): the FE-MLP score of every value of every category.

The scores come from the run (`scorer.run_feature_importance`: members weighted by their
held-out hop-0 SRCC); this module draws them as a bar chart (matplotlib, Agg backend).

A value that never occurs in the labeled data (a resolution of 160 when every label is at
224) still gets a score from the FE-MLP, but one no label ever shaped: each row says
whether its value was seen (`seen`), read from the run's data file, and the chart and
table mark unseen values instead of showing them as learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from autobuild_dsl import io
from autobuild_dsl.design import rank_cache
from autobuild_dsl.errors import AbcError
from autobuild_dsl.scorer.config import FeatureScore
from autobuild_dsl.scorer.records import TrainedRun
from autobuild_dsl.space.expr import format_value

if TYPE_CHECKING:
    from autobuild_dsl.data.dataset import LabeledDataset

CHART_FORMATS = (".png", ".svg", ".pdf")


class ChartError(AbcError, ValueError):
    """The chart cannot be written (unknown format)."""

    code = "chart"


def feature_importance(
    run: TrainedRun, data: str | Path | None = None, *, loaded: LabeledDataset | None = None
) -> list[FeatureScore]:
    """Every (category, value) of the run's node features with its FE-MLP score, each
    marked seen or unseen in the labeled data (`data`, default the file the run records;
    `seen` stays None when it cannot be read). `loaded`: that file's rows, already loaded."""
    from autobuild_dsl.space.values import value_key as _vkey

    rows = run_importance(run)
    seen = seen_values(run, data, loaded=loaded)
    if seen is None:
        return rows
    names = [c.name for c in run.config.categories]
    vocab_index = {
        name: {_vkey(v): i for i, v in enumerate(c.vocab)}
        for name, c in zip(names, run.config.categories, strict=True)
    }
    marked = []
    for row in rows:
        c = names.index(row.category)
        index = vocab_index[row.category].get(_vkey(row.value))
        marked.append(row.model_copy(update={"seen": index in seen[c]}))
    return marked


def run_importance(run: TrainedRun) -> list[FeatureScore]:
    """`scorer.run_feature_importance`, kept in RUN/cache/ (keyed on the run's content):
    reading the members' FE-MLP tables needs their models, and so torch."""
    key = rank_cache.cache_key("importance", rank_cache.run_digest(run))
    stored = rank_cache.load_json(run.path, "importance", key)
    if stored is not None:
        try:
            return [FeatureScore.model_validate(row) for row in stored]
        except (TypeError, ValueError):
            pass  # damaged: recompute
    from autobuild_dsl.scorer.run import run_feature_importance

    rows = run_feature_importance(run)
    if rank_cache.cache_key("importance", rank_cache.run_digest(run)) == key:
        rank_cache.save_json(run.path, "importance", key, [r.model_dump(mode="json") for r in rows])
    return rows


def seen_values(
    run: TrainedRun, data: str | Path | None = None, *, loaded: LabeledDataset | None = None
) -> list[set[int]] | None:
    """Per feature category (in column order), the vocabulary indices some node of the
    labeled data holds; None when the data cannot be read (or the run is not a sequence
    encoding). `loaded`: the data file's rows, already loaded (not read again)."""
    if run.config.encoding != "sequence":
        return None
    path = Path(data if data is not None else run.config.data)
    if not str(path) or not path.is_file():
        return None
    # A pure function of the data file's bytes and the run's features: kept in the run.
    try:
        key = rank_cache.cache_key(
            "seen",
            rank_cache.file_digest(path),
            run.space.digest(),
            run.config.model_dump_json(include={"categories"}),
        )
    except OSError:
        return None
    stored = rank_cache.load_json(run.path, "seen-values", key)
    if stored is not None:
        return [set(values) for values in stored]
    seen = _read_seen(run, path, loaded)
    if seen is not None:
        rank_cache.save_json(run.path, "seen-values", key, [sorted(s) for s in seen])
    return seen


def _read_seen(run: TrainedRun, path: Path, loaded: LabeledDataset | None) -> list[set[int]] | None:
    from autobuild_dsl.data.dataset import DatasetError, load_dataset

    try:
        dataset = loaded if loaded is not None else load_dataset(path, run.space)
    except DatasetError:
        return None
    encoder = run.encoder()
    seen: list[set[int]] = [set() for _ in run.config.categories]
    # Plain tensors, not PyG graphs: importing PyG alone cost ~1 s of every `abc rank`.
    for graph in encoder.encode_many(dataset.architectures, as_data=False):
        codes = graph.x.numpy()
        for c in range(codes.shape[1]):
            # code = vocabulary index + 1; 0 is "n/a" (the category does not apply).
            seen[c].update(int(v) - 1 for v in set(codes[:, c].tolist()) if v > 0)
    return seen


def value_text(value: object) -> str:
    if isinstance(value, bool | int | float | str):
        return format_value(value)
    return str(value)


def importance_chart(rows: Sequence[FeatureScore], out: str | Path, title: str = "") -> Path:
    """A horizontal bar per (category, value), grouped and coloured by category."""
    out = Path(out)
    if out.suffix.lower() not in CHART_FORMATS:
        raise ChartError(
            f"{out}: chart format '{out.suffix or '(none)'}' is not one of "
            f"{', '.join(CHART_FORMATS)}"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories: list[str] = []
    for row in rows:
        if row.category not in categories:
            categories.append(row.category)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels, scores, bar_colours = [], [], []
    for c, category in enumerate(categories):
        for row in rows:
            if row.category == category:
                unseen = row.seen is False
                mark = "  (unseen in data)" if unseen else ""
                labels.append(f"{category} = {value_text(row.value)}{mark}")
                scores.append(row.score)
                bar_colours.append("#cccccc" if unseen else colours[c % len(colours)])
    height = max(2.5, 0.22 * len(labels) + 1.2)
    figure, axes = plt.subplots(figsize=(7.0, height), dpi=150)
    positions = list(range(len(labels)))[::-1]  # first row on top
    axes.barh(positions, scores, color=bar_colours, height=0.75)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=7 if len(labels) > 40 else 8)
    axes.set_xlabel(
        "FE-MLP importance (|scalar|: contribution to the hop-0 norm)"
        + (
            "; grey: values no label holds, not learned"
            if any(r.seen is False for r in rows)
            else ""
        )
    )
    axes.set_ylim(-0.75, len(labels) - 0.25)
    axes.grid(True, axis="x", alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    try:
        _save_atomic(figure, out)
    finally:
        plt.close(figure)
    return out


def _save_atomic(figure: object, out: Path) -> None:
    suffix = out.suffix.lower()
    with io.atomic_path(out, suffix=suffix) as tmp:
        figure.savefig(tmp, format=suffix.lstrip("."))  # type: ignore[attr-defined]


__all__ = [
    "CHART_FORMATS",
    "ChartError",
    "feature_importance",
    "importance_chart",
    "run_importance",
    "seen_values",
    "value_text",
]
