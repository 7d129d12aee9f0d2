"""Evaluators: what gives an architecture its metrics during a search.

One interface (`Evaluator.evaluate(archs) -> list[dict[str, float]]`), one pydantic config
per kind, and a one-line spec syntax for the command line:

    lookup:DATA.jsonl                exact lookup in a labeled dataset
    predictor:RUN                    a trained scorer run or ensemble (mean and std)
    measure[:METRIC,...]             compile and measure (params, macs, latency, ...)
    python:MODULE:FUNCTION           the user's function, `f(arch) -> {metric: value}`
    python:path/to/file.py:FUNCTION  (same, loaded from a file)
    command:TEMPLATE                 the user's shell command: the architecture as JSON on
                                     stdin, or in a file whose path replaces `{arch}`; it
                                     prints a JSON object of metrics (its last stdout line)
    @config.json / {"kind": ...}     the full pydantic config (timeouts, tags, ...)

Each evaluator has an `identity`: the cache key prefix. It changes when what the evaluator
would answer can change (the data file, the run's files, the user's source file).
"""

from __future__ import annotations

import hashlib
import importlib
import platform
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from autobuild_dsl import io as abc_io
from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import ArchitectureError, canonicalize
from autobuild_dsl.space.equivalence import network_keyer
from autobuild_dsl.space.model import Space
from autobuild_dsl.space.resolve import ResolveError

ARCH_PLACEHOLDER = "{arch}"


class EvaluationError(AbcError, RuntimeError):
    """An evaluator could not produce metrics for an architecture (or was misconfigured)."""

    code = "evaluation"


# --------------------------------------------------------------------------- configs


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LookupConfig(_Config):
    kind: Literal["lookup"] = "lookup"
    data: str = Field(description="a labeled dataset (JSON lines) of this space")


class PredictorConfig(_Config):
    kind: Literal["predictor"] = "predictor"
    run: str = Field(description="a scorer run folder (one predictor or an ensemble)")
    batch_size: int = Field(default=1024, ge=1)


class MeasureConfig(_Config):
    kind: Literal["measure"] = "measure"
    metrics: list[str] = Field(default_factory=lambda: ["params", "macs"])
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments passed on to `measure`"
    )


class PythonConfig(_Config):
    kind: Literal["python"] = "python"
    function: str = Field(description="MODULE:FUNCTION or path/to/file.py:FUNCTION")
    tag: str = Field(default="", description="change it to invalidate cached results")


class CommandConfig(_Config):
    kind: Literal["command"] = "command"
    command: str = Field(description="a shell command; `{arch}` becomes a JSON file's path")
    timeout: float | None = Field(default=None, gt=0, description="seconds per architecture")
    cwd: str | None = None
    tag: str = Field(default="", description="change it to invalidate cached results")


EvaluatorConfig = Annotated[
    LookupConfig | PredictorConfig | MeasureConfig | PythonConfig | CommandConfig,
    Field(discriminator="kind"),
]
_CONFIG_ADAPTER: TypeAdapter[Any] = TypeAdapter(EvaluatorConfig)


def config_from_json(text: str) -> Any:
    try:
        return _CONFIG_ADAPTER.validate_json(text)
    except ValidationError as error:
        raise EvaluationError(f"not a valid evaluator config: {_pydantic_message(error)}") from None


def config_to_json(config: Any) -> str:
    return config.model_dump_json()


def parse_evaluator_spec(spec: str, base: Path | None = None) -> Any:
    """Turn a command-line spec into a config; relative paths are made absolute against
    `base` (default: the current directory) so workers and cache keys do not depend on it."""
    base = Path.cwd() if base is None else base
    text = spec.strip()
    if text.startswith("@"):
        path = _absolute(text[1:], base)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise EvaluationError(f"{path}: cannot read the evaluator config: {error}") from None
        return _absolutise(config_from_json(text), Path(path).parent)
    if text.startswith("{"):
        return _absolutise(config_from_json(text), base)
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind == "measure":
        metrics = [m.strip() for m in rest.split(",") if m.strip()] if sep else []
        return MeasureConfig(metrics=metrics) if metrics else MeasureConfig()
    if not sep or not rest.strip():
        raise EvaluationError(
            f"evaluator '{spec}': expected KIND:ARGUMENT with KIND one of lookup, predictor, "
            "measure, python, command (or @config.json)"
        )
    if kind == "lookup":
        return LookupConfig(data=_absolute(rest, base))
    if kind == "predictor":
        return PredictorConfig(run=_absolute(rest, base))
    if kind == "python":
        target, colon, function = rest.rpartition(":")
        if not colon or not target or not function:
            raise EvaluationError(f"evaluator '{spec}': expected python:MODULE:FUNCTION")
        if target.endswith(".py"):
            target = _absolute(target, base)
        return PythonConfig(function=f"{target}:{function}")
    if kind in ("command", "cmd"):
        return CommandConfig(command=rest.strip(), cwd=str(base))
    raise EvaluationError(
        f"evaluator '{spec}': unknown kind '{kind}' "
        "(lookup, predictor, measure, python, command, or @config.json)"
    )


def _absolute(path: str, base: Path) -> str:
    expanded = Path(path.strip()).expanduser()
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _absolutise(config: Any, base: Path) -> Any:
    if isinstance(config, LookupConfig):
        return config.model_copy(update={"data": _absolute(config.data, base)})
    if isinstance(config, PredictorConfig):
        return config.model_copy(update={"run": _absolute(config.run, base)})
    if isinstance(config, PythonConfig):
        target, _, function = config.function.rpartition(":")
        if target.endswith(".py"):
            return config.model_copy(update={"function": f"{_absolute(target, base)}:{function}"})
    if isinstance(config, CommandConfig):
        cwd = _absolute(config.cwd, base) if config.cwd else str(base)
        return config.model_copy(update={"cwd": cwd})
    return config


def _pydantic_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(x) for x in item["loc"]) or "config"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- interface


class Evaluator(ABC):
    """Gives architectures metrics. Subclasses are built from their config and the space."""

    #: worth caching on disk (a table lookup is not)
    cacheable: bool = True
    #: worth spreading over worker processes (a lookup is not)
    parallel: bool = True

    def __init__(self, config: Any, space: Space) -> None:
        self.config = config
        self.space = space
        #: things the user should hear about once (the CLI prints them), e.g. skipped rows
        self.notes: list[str] = []

    @cached_property
    def identity(self) -> str:
        """What the cache key starts with: the config, the space and what can change.
        Computed once (the first time it is needed), so it describes what was loaded."""
        space_hash = self.space.digest()[:16]
        extra = self._fingerprint()
        return f"{config_to_json(self.config)}|space={space_hash}|{extra}"

    def _fingerprint(self) -> str:
        return ""

    @abstractmethod
    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        """Metrics for each architecture, in order; raises EvaluationError."""

    def close(self) -> None:  # noqa: B027 - optional hook, most evaluators hold nothing
        """Release resources (worker processes, files)."""


def make_evaluator(config: Any, space: Space) -> Evaluator:
    # The user's-code kinds live in their own module, which builds on this one.
    from autobuild_dsl.search.evaluators_user import CommandEvaluator, PythonEvaluator

    kinds: dict[str, type[Evaluator]] = {
        "lookup": LookupEvaluator,
        "predictor": PredictorEvaluator,
        "measure": MeasureEvaluator,
        "python": PythonEvaluator,
        "command": CommandEvaluator,
    }
    return kinds[config.kind](config, space)


def _needed(kind: str, module: str, *names: str) -> list[Any]:
    """What an evaluator kind imports from a module; a clear error where it cannot."""
    try:
        loaded = importlib.import_module(module)
        return [getattr(loaded, name) for name in names]
    except (ImportError, AttributeError) as error:
        raise EvaluationError(f"the {kind} evaluator needs {module} ({error})") from None


def _metrics_of(value: object, where: str) -> dict[str, float]:
    """Check and convert what an evaluator returned: a mapping of names to numbers."""
    if not isinstance(value, Mapping) or not value:
        raise EvaluationError(
            f"{where}: expected a non-empty JSON object of metrics, got {value!r}"
        )
    metrics: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str) or isinstance(number, bool):
            raise EvaluationError(f"{where}: metric {name!r} = {number!r} is not a number")
        try:
            metrics[name] = float(number)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise EvaluationError(
                f"{where}: metric {name!r} = {number!r} is not a number"
            ) from None
    return metrics


def _file_digest(path: Path) -> str:
    return abc_io.file_digest(path)[:16]  # short: it is part of a cache key prefix


# --------------------------------------------------------------------------- lookup


class LookupEvaluator(Evaluator):
    """Exact lookup: an evaluated architecture absent from the table is an error, never a
    guess.

    The table may hold more than the searched space (the full benchmark while a reduced
    space is searched): rows outside the space are no error; they are counted in `outside`
    and named once in `notes`. Rows are matched by network (`space.equivalence`), so the
    row of an equivalent architecture (the same compiled network) answers, even one outside
    the space as written, and repeated rows of one network are averaged. Malformed rows
    are still an error.
    """

    cacheable = False
    parallel = False

    def __init__(self, config: LookupConfig, space: Space) -> None:
        super().__init__(config, space)
        path = Path(config.data)
        if not path.exists():
            raise EvaluationError(f"{path}: no such labeled dataset")
        self._digest = _file_digest(path)  # before loading: the identity of what is read
        self._keyer = network_keyer(space)
        self._table, self.outside, example = _load_table(path, space, self._keyer)
        if self.outside:
            rows = "1 row is" if self.outside == 1 else f"{self.outside:,} rows are"
            self.notes.append(
                f"{path}: {rows} outside space {space.name} (e.g. "
                f"{example}); they answer only for an equivalent network of the space"
            )

    def _fingerprint(self) -> str:
        return f"data={self._digest}"

    def __len__(self) -> int:
        return len(self._table)

    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        results = []
        for arch in archs:
            try:
                found = self._table.get(self._keyer(arch))
            except (ResolveError, KeyError, ValueError):  # not even a network of the space
                found = None
            if found is None:
                outside = f", {self.outside:,} rows outside the space" if self.outside else ""
                raise EvaluationError(
                    f"{self.config.data}: the architecture is not in the table "
                    f"({len(self._table):,} networks{outside}): {arch.key()}"
                )
            results.append(dict(found))
        return results


def _load_table(
    path: Path, space: Space, keyer: Callable[[Architecture], str]
) -> tuple[dict[str, dict[str, float]], int, str]:
    """Metrics by network key, the number of rows outside the space, and the first of them.

    A row outside the space may still be an equivalent of an architecture inside it (a
    reduced space from `abc build` restricts its modules: the row of a full-space
    architecture that compiles to a kept network answers), so such rows are keyed in the
    space without its restrictions and rules; rows that are not even that are dropped.
    """
    try:
        from autobuild_dsl.data import DatasetError, from_records
        from autobuild_dsl.data.dataset import parse_record
    except ImportError as error:
        raise EvaluationError(f"the lookup evaluator needs autobuild_dsl.data ({error})") from None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path}: cannot read: {error}") from None
    relaxed = space.model_copy(update={"restrictions": {}, "rules": []})
    relaxed_keyer = network_keyer(relaxed)
    keys: dict[str, str] = {}  # canonical architecture key -> network key
    records = []
    bad: list[str] = []
    outside, example = 0, ""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            raw, metrics, count = parse_record(str(path), number, line)
        except DatasetError as error:
            bad.append(str(error))
            continue
        try:
            arch = canonicalize(space, raw)
            keys.setdefault(arch.key(), keyer(arch))
        except (ArchitectureError, ResolveError) as error:
            outside += 1
            example = example or f"{path}:{number}: {error}"
            try:
                arch = canonicalize(relaxed, raw)
                keys.setdefault(arch.key(), relaxed_keyer(arch))
            except (ArchitectureError, ResolveError):
                continue  # no network of the space can be this row's
        records.append((arch, metrics, count, None))
    if bad:
        shown = "\n".join(bad[:5]) + (f"\n... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise EvaluationError(f"{path}: {len(bad)} malformed rows:\n{shown}")
    if not records:
        raise EvaluationError(
            f"{path}: no row is an architecture of space {space.name}"
            + (f" ({outside:,} rows outside it, e.g. {example})" if outside else "")
        )
    # The loader merges repeated rows of one network (mean per metric, weighted by count).
    dataset, _ = from_records(space, records, key=lambda arch: keys[arch.key()])
    table = {
        keys[arch.key()]: dataset.row_metrics(i) for i, arch in enumerate(dataset.architectures)
    }
    return table, outside, example


# --------------------------------------------------------------------------- predictor


class PredictorEvaluator(Evaluator):
    """A trained scorer run (one predictor or an ensemble): metric `<target>` is the
    ensemble's (SRCC-weighted) mean prediction and `<target>_std` the members' spread; an
    expression target (`acc - 0.5*lat`) goes by `score` / `score_std`.

    Graphs come from the run's own encoder (the features it was trained on), so a reduced
    space that `extends` the run's space is scored consistently.
    """

    def __init__(self, config: PredictorConfig, space: Space) -> None:
        super().__init__(config, space)
        load_run, predict = _needed("predictor", "autobuild_dsl.scorer", "load_run", "predict")
        (torch_threads,) = _needed("predictor", "autobuild_dsl.scorer.train", "torch_threads")
        run_path = Path(config.run)
        if not run_path.exists():
            raise EvaluationError(f"{run_path}: no such scorer run")
        try:
            self._run = load_run(run_path)
            self._encoder = self._run.encoder()
        except ValueError as error:  # RunError: not a run, no finished member, old encoder
            raise EvaluationError(str(error)) from None
        self._predict = predict
        self._threads = torch_threads
        from autobuild_dsl.graphs.encode import GraphEncoder

        self._tensor_graphs = isinstance(self._encoder, GraphEncoder)
        self.metric = _run_metric_name(self._run)
        (doubt,) = _needed("predictor", "autobuild_dsl.scorer", "prediction_doubt")
        warning = doubt(self._run)
        self.notes = [f"{run_path}: {warning}"] if warning else []

    def _fingerprint(self) -> str:
        from autobuild_dsl.design.rank_cache import CACHE_DIR

        root = Path(self.config.run)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        # RUN/cache/ holds what `abc rank` derived from the run, not the run itself.
        files = [p for p in files if root / CACHE_DIR not in p.parents]
        digest = hashlib.sha256()
        for path in files:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root.parent)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            )
        return f"run={digest.hexdigest()[:16]}"

    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        results: list[dict[str, float]] = []
        size = self.config.batch_size
        for start in range(0, len(archs), size):
            chunk = list(archs[start : start + size])
            try:
                # Plain tensors, not PyG objects, where the encoder offers them: the
                # scorer only packs them, and building PyG `Data` doubled encoding time.
                if self._tensor_graphs:
                    graphs = self._encoder.encode_many(chunk, as_data=False)
                else:
                    graphs = self._encoder.encode_many(chunk)
            except ValueError as error:  # an architecture the run's space cannot encode
                raise EvaluationError(f"predictor:{self.config.run}: {error}") from None
            # One torch thread, here and in every worker process of a pool: a chunk's
            # small ops gain nothing from more, and N workers x T threads oversubscribe
            # the cores (--jobs 2 ran at a third of one process's rate).
            with self._threads(1):
                mean, std = self._predict(self._run, graphs)
            for m, s in zip(_floats(mean), _floats(std), strict=True):
                results.append({self.metric: m, f"{self.metric}_std": s})
        return results


def _run_metric_name(run: Any) -> str:
    """The name a run's prediction goes by: its target's name where the run knows it."""
    for attr in ("target_name", "metric", "target"):
        value = getattr(run, attr, None)
        name = getattr(value, "name", value)
        if isinstance(name, str) and name:
            return name if name.isidentifier() else "score"
    return "score"


def _floats(values: Any) -> list[float]:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


# --------------------------------------------------------------------------- measure


class MeasureEvaluator(Evaluator):
    """Compile each architecture and measure it (parameters, MACs, ONNX Runtime latency)."""

    def __init__(self, config: MeasureConfig, space: Space) -> None:
        super().__init__(config, space)
        (self._measure,) = _needed("measure", "autobuild_dsl.compile.measure", "measure")
        (self._resolve,) = _needed("measure", "autobuild_dsl.space.resolve", "resolve")

    def _fingerprint(self) -> str:
        # Latency depends on the machine and the runtime; counts do not, but are cheap.
        import torch

        versions = f"torch={torch.__version__}"
        if any("latency" in m for m in self.config.metrics):
            try:
                import onnxruntime

                versions += f",ort={onnxruntime.__version__}"
            except ImportError:
                pass
            versions += f",host={platform.node()},cpu={platform.processor() or platform.machine()}"
        return versions

    def evaluate(self, archs: Sequence[Architecture]) -> list[dict[str, float]]:
        results = []
        for arch in archs:
            try:
                net = self._resolve(self.space, arch)
                value = self._measure(net, metrics=list(self.config.metrics), **self.config.options)
            except (ValueError, TypeError) as error:  # unknown metric or option, bad net
                raise EvaluationError(f"measure: {error}") from None
            if hasattr(value, "model_dump"):
                value = value.model_dump()
            metrics = _metrics_of(
                {k: v for k, v in dict(value).items() if v is not None}, "measure"
            )
            results.append(metrics)
        return results
