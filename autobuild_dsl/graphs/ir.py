"""Architecture -> fine-grained ONNX-IR graph (the AutoBuild paper's second format), as PyG.

Each architecture is compiled (`compile.build_module`) and exported to ONNX in memory
(TorchScript exporter, opset 17, eval mode, constant folding, no weights), so BatchNorm is
folded into its convolution and every node left is a primitive operation: Conv, Relu,
HardSwish, Add, Mul, Div, Clip, ReduceMean, GlobalAveragePool, Gemm, ... The graph keeps
the nodes that compute on the data (those downstream of a network input); weight plumbing
(Constant, Identity of initializers) is dropped. Edges run producer -> consumer along
every tensor, so a node's hop-h embedding summarises the operations up to h steps before it.

Node features are integer codes, one column per feature category (code = 1 + index in the
category's vocabulary, 0 = does not apply):
  op        the ONNX operation type;
  channels  output channels (dim 1 of a [N, C, H, W] or [N, C] output, the last dim of a
            [N, T, C] one);
  size      output height = width, when every output seen is square; otherwise two
            categories, height and width;
  kernel, stride   of Conv / ConvTranspose / pooling nodes;
  groups    of Conv nodes: dense, depthwise (one group per input channel) or grouped.
Vocabularies are not derived from the space (an exported graph has no per-space template)
but fitted once over a set of architectures, which may come from several spaces (their
union), and then kept fixed: they are saved in the run folder (`state()` / `from_state`).
Numeric categories keep their exact values up to `max_values` of them (else that many
representative values, quantiles in log scale); a value not in the vocabulary takes the
code of the nearest one in log scale. An operation type the vocabulary lacks is an error.

Exporting is the slow step (about 0.3 s per OFA network), so raw graphs are cached on disk
by (space JSON hash, architecture key, encoder version), one JSON file each, written
atomically; `jobs > 1` exports misses in spawned worker processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch_geometric.data import Data

from autobuild_dsl import io as abc_io
from autobuild_dsl.graphs.encode import EncodeError, FeatureCategory
from autobuild_dsl.parallel import Fanout
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space

# Bump when the graph extraction changes: old cache entries and runs are then refused.
IR_VERSION = 1
IR_FORMAT = "autobuild-ir-encoder"
DEFAULT_MAX_VALUES = 64

Progress = Callable[[int, int], None]

_KERNEL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})
_MODULE_NAME = re.compile(r"^/nodes\.(\d+)/")


class IrError(EncodeError):
    """An architecture cannot be turned into an IR graph (or encoded with these vocabularies)."""

    code = "ir"


# ----- the raw graph (vocabulary-free; what the disk cache holds) ---------------------------


class IrGraph(BaseModel):
    """One exported network: per node its op, output shape and attributes; edges; places.

    Lists are parallel (one entry per node, in the ONNX graph's topological order). `module`
    is the index of the compiled network node (layer) an op belongs to, and `places[m]`
    names that layer (`stem`, `s3.1` = stage s3 layer 1, `head`)."""

    model_config = ConfigDict(frozen=True)

    space: str
    ops: list[str]
    channels: list[int | None]
    height: list[int | None]
    width: list[int | None]
    kernel: list[int | None]
    stride: list[int | None]
    groups: list[str | None]
    module: list[int | None]
    places: list[str]
    edges: list[tuple[int, int]]

    @property
    def num_nodes(self) -> int:
        return len(self.ops)

    def place(self, node: int) -> str | None:
        m = self.module[node]
        return self.places[m] if m is not None and 0 <= m < len(self.places) else None


def _place_label(position: Any) -> str:
    if position.layer_index is not None:
        return f"{position.block}.{position.layer_index}"
    if position.role in ("before", "after"):
        return f"{position.block}.{position.role}"
    return str(position.block)


def _dims(value_info: Any) -> list[int | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def _shape_features(dims: list[int | None] | None) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of an output tensor shape."""
    if not dims or len(dims) < 2:
        return None, None, None
    if len(dims) == 2:
        return dims[1], None, None
    if len(dims) == 3:  # [N, T, C]: tokens x features
        return dims[2], dims[1], None
    return dims[1], dims[2], dims[3]


def export_ir(space: Space, arch: Architecture) -> IrGraph:
    """Compile `arch`, export it to ONNX in memory and read its IR graph."""
    import onnx

    from autobuild_dsl.compile.network import NetworkBuildError, build_module, example_inputs
    from autobuild_dsl.compile.onnx_export import OPSET
    from autobuild_dsl.space.resolve import ResolveError, resolve

    try:
        net = resolve(space, arch)
        # Built on meta and given empty storage: no weight initialisation (the values do
        # not matter, only the graph); zeroed below so no uninitialised NaN is traced.
        module = build_module(net, device="meta").to_empty(device="cpu").eval()
    except (ResolveError, NetworkBuildError, ValueError) as error:
        raise IrError(f"{space.name}: cannot compile the architecture: {error}") from None
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.zero_()
    inputs = example_inputs(net, batch=1, device="cpu", seed=0)
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (),
                buffer,
                kwargs=inputs,
                input_names=list(inputs),
                output_names=["out"],
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,  # with eval mode: Conv + BatchNorm fold into Conv
                export_params=False,  # the graph only: no 20 MB of weights to write and parse
            )
    except Exception as error:  # the exporter raises many types; name the space
        raise IrError(f"{space.name}: ONNX export failed: {error}") from error
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue()))
    return _read_graph(
        model, set(inputs), space.name, [_place_label(n.position) for n in net.nodes]
    )


def _read_graph(model: Any, data_inputs: set[str], space: str, places: list[str]) -> IrGraph:
    import onnx

    graph = model.graph
    shapes: dict[str, list[int | None] | None] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        shapes[info.name] = _dims(info)
    live = set(data_inputs)  # tensors computed from a network input
    producer: dict[str, int] = {}
    columns: dict[str, list[Any]] = {
        k: [] for k in ("ops", "channels", "height", "width", "kernel", "stride", "groups")
    }
    modules: list[int | None] = []
    edges: list[tuple[int, int]] = []
    for node in graph.node:
        if not any(name in live for name in node.input):
            continue  # weight plumbing: Constant, Identity of an initializer, ...
        index = len(modules)
        sources = sorted({producer[n] for n in node.input if n in producer})
        edges.extend((s, index) for s in sources)
        for name in node.output:
            live.add(name)
            producer[name] = index
        channels, height, width = _shape_features(shapes.get(node.output[0]))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = stride = None
        group: str | None = None
        if node.op_type in _KERNEL_OPS:
            shape = attrs.get("kernel_shape")
            if shape is None and node.op_type.startswith("Conv") and len(node.input) > 1:
                weight = shapes.get(node.input[1])
                shape = weight[2:] if weight else None
            kernel = int(max(shape)) if shape else None
            strides = attrs.get("strides")
            stride = int(max(strides)) if strides else 1
        if node.op_type in ("Conv", "ConvTranspose"):
            count = int(attrs.get("group", 1))
            in_dims = shapes.get(node.input[0])
            in_channels = in_dims[1] if in_dims and len(in_dims) > 1 else None
            if count == 1:
                group = "dense"
            elif in_channels is not None and count == in_channels:
                group = "depthwise"
            else:
                group = "grouped"
        match = _MODULE_NAME.match(node.name)
        columns["ops"].append(node.op_type)
        columns["channels"].append(channels)
        columns["height"].append(height)
        columns["width"].append(width)
        columns["kernel"].append(kernel)
        columns["stride"].append(stride)
        columns["groups"].append(group)
        modules.append(int(match.group(1)) if match else None)
    if not modules:
        raise IrError(f"{space}: the exported graph has no operation on the input")
    return IrGraph(space=space, module=modules, places=places, edges=edges, **columns)


# ----- the on-disk cache -----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`$ABC_IR_CACHE`, else `$XDG_CACHE_HOME/autobuild-dsl/ir` (~/.cache/autobuild-dsl/ir)."""
    explicit = os.environ.get("ABC_IR_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autobuild-dsl" / "ir"


def cache_tag() -> str:
    """What else an exported graph depends on: this encoder, the opset, torch's exporter."""
    from autobuild_dsl.compile.onnx_export import OPSET

    torch_version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"v{IR_VERSION}-opset{OPSET}-torch{torch_version}"


def space_hash(space: Space) -> str:
    return space.digest()[:20]


def _arch_hash(arch: Architecture) -> str:
    return hashlib.sha256(arch.key().encode("utf-8")).hexdigest()[:32]


def _write_atomic(path: Path, text: str) -> None:
    abc_io.write_atomic(path, text)


class _CacheEntry(BaseModel):
    key: str  # the architecture's key: a hash collision can never return another graph
    graph: IrGraph


class BuildStats(BaseModel):
    """How the last `graphs()` call got its graphs."""

    total: int = 0
    memory: int = 0
    disk: int = 0
    exported: int = 0
    seconds: float = 0.0
    export_cpu_seconds: float = Field(
        default=0.0, description="CPU time of the exports (all processes): steady on a busy host"
    )


# ----- worker processes (autobuild_dsl.parallel) ------------------------------------------


def _worker_spaces(space_jsons: dict[str, str]) -> dict[str, Space]:
    """A worker's state: every space the encoder accepts, parsed once, by name."""
    return {name: Space.from_json(text) for name, text in space_jsons.items()}


def _worker_export(spaces: dict[str, Space], arch_json: str) -> tuple[str, float]:
    start = time.process_time()
    arch = Architecture.model_validate_json(arch_json)
    graph = export_ir(spaces[arch.space], arch).model_dump_json()
    return graph, time.process_time() - start


# ----- vocabularies --------------------------------------------------------------------------


class IrCategory(BaseModel):
    """A feature category of IR graphs and its fitted vocabulary."""

    model_config = ConfigDict(frozen=True)

    name: str
    group: Literal["op", "attr"]
    kind: Literal["label", "number"]
    vocab: list[Any]
    ops: list[str] = Field(default_factory=list, description="op types the category applies to")


class IrEncoderState(BaseModel):
    """Everything needed to rebuild an encoder that codes graphs exactly as before."""

    format: Literal["autobuild-ir-encoder"] = IR_FORMAT
    version: int = IR_VERSION
    spaces: list[dict[str, Any]] = Field(description="every space the encoder accepts, as JSON")
    max_values: int
    categories: list[IrCategory]


def _column(graph: IrGraph, name: str) -> list[Any]:
    if name == "op":
        return graph.ops
    if name == "size":
        return graph.height
    return getattr(graph, name)


def _representatives(values: list[float], limit: int) -> list[int | float]:
    """At most `limit` values standing for `values`: all of them, or log-scale quantiles."""
    ordered = sorted(set(values))
    if len(ordered) <= limit:
        return ordered
    logs = np.log2(np.maximum(np.asarray(ordered, dtype=np.float64), 1e-9))
    picks = np.quantile(logs, np.linspace(0.0, 1.0, limit))
    chosen = {ordered[int(np.argmin(np.abs(logs - p)))] for p in picks}
    return sorted(chosen)


def fit_categories(
    graphs: Iterable[IrGraph], max_values: int = DEFAULT_MAX_VALUES
) -> list[IrCategory]:
    """The categories and vocabularies over `graphs` (several spaces: their union)."""
    if max_values < 2:
        raise ValueError("max_values must be at least 2")
    seen: dict[str, set[Any]] = {n: set() for n in ("op", "channels", "height", "width")}
    seen.update({n: set() for n in ("kernel", "stride", "groups")})
    applies: dict[str, set[str]] = {n: set() for n in seen}
    square = True
    count = 0
    for graph in graphs:
        count += 1
        for name in seen:
            for op, value in zip(graph.ops, _column(graph, name), strict=True):
                if value is not None:
                    seen[name].add(value)
                    applies[name].add(op)
        square = square and all(
            h == w for h, w in zip(graph.height, graph.width, strict=True) if w is not None
        )
    if count == 0:
        raise IrError("no architectures to fit the IR vocabularies on")
    categories = [IrCategory(name="op", group="op", kind="label", vocab=sorted(seen["op"]))]
    numeric = ["channels", "size"] if square else ["channels", "height", "width"]
    numeric += ["kernel", "stride"]
    for name in numeric:
        source = "height" if name == "size" else name
        values = seen[source]
        if len(values) < 2:
            continue  # the same everywhere: carries no information
        categories.append(
            IrCategory(
                name=name,
                group="attr",
                kind="number",
                vocab=_representatives(sorted(values), max_values),
                ops=sorted(applies[source]),
            )
        )
    if len(seen["groups"]) >= 2:
        categories.append(
            IrCategory(
                name="groups",
                group="attr",
                kind="label",
                vocab=sorted(seen["groups"]),
                ops=sorted(applies["groups"]),
            )
        )
    return categories


class _Coder:
    """Value -> code for one category (exact labels; nearest value in log scale for numbers)."""

    def __init__(self, category: IrCategory) -> None:
        self.category = category
        if category.kind == "label":
            self.codes = {v: i + 1 for i, v in enumerate(category.vocab)}
            return
        logs = np.log2(np.maximum(np.asarray(category.vocab, dtype=np.float64), 1e-9))
        self.cuts = (logs[1:] + logs[:-1]) / 2.0

    def column(self, values: Sequence[Any], where: str) -> np.ndarray:
        out = np.zeros(len(values), dtype=np.int64)
        if self.category.kind == "label":
            for i, value in enumerate(values):
                if value is None:
                    continue
                code = self.codes.get(value)
                if code is None:
                    known = ", ".join(str(v) for v in self.category.vocab)
                    raise IrError(
                        f"{where}: {self.category.name} {value!r} was not in the data the "
                        f"encoder was fitted on (known: {known})"
                    )
                out[i] = code
            return out
        present = np.array([v is not None for v in values], dtype=bool)
        if present.any():
            numbers = np.array([v for v in values if v is not None], dtype=np.float64)
            logs = np.log2(np.maximum(numbers, 1e-9))
            out[present] = np.searchsorted(self.cuts, logs) + 1
        return out


# ----- the encoder -------------------------------------------------------------------------------


class IrEncoder:
    """Turns architectures of one or more spaces into ONNX-IR graphs for the scorer.

    The same interface as `GraphEncoder` where the scorer needs it: `categories`,
    `encode(arch)`, `encode_many(archs, progress)`. Vocabularies are fitted by `fit` (or on
    the first `encode_many`) and then fixed.
    """

    encoding = "ir"

    def __init__(
        self,
        spaces: Space | Sequence[Space],
        *,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        jobs: int = 1,
        max_values: int = DEFAULT_MAX_VALUES,
        categories: Sequence[IrCategory] | None = None,
    ) -> None:
        listed = [spaces] if isinstance(spaces, Space) else list(spaces)
        if not listed:
            raise IrError("an IR encoder needs at least one space")
        self.spaces: list[Space] = listed
        self._by_name: dict[str, Space] = {}
        for space in listed:
            if space.name in self._by_name:
                raise IrError(f"two spaces are named {space.name}; space names must differ")
            self._by_name[space.name] = space
        self._hash = {s.name: space_hash(s) for s in listed}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.use_cache = use_cache
        self.jobs = max(1, int(jobs))
        self.max_values = max_values
        self._memory: dict[tuple[str, str], IrGraph] = {}
        self.stats = BuildStats()
        self._categories: list[IrCategory] | None = None
        if categories is not None:
            self._set_categories(list(categories))

    # ----- identity ------------------------------------------------------------------------

    @property
    def space(self) -> Space:
        """The first space (the run's space)."""
        return self.spaces[0]

    def space_of(self, arch: Architecture) -> Space:
        space = self._by_name.get(arch.space)
        if space is None:
            known = ", ".join(self._by_name)
            raise IrError(f"architecture of space '{arch.space}'; this encoder knows: {known}")
        return space

    def run_state(self) -> IrEncoderState:
        """What a run folder keeps to rebuild this encoder (`from_state`)."""
        return IrEncoderState(
            spaces=[json.loads(s.to_json()) for s in self.spaces],
            max_values=self.max_values,
            categories=self._fitted(),
        )

    @classmethod
    def from_state(
        cls,
        state: IrEncoderState | dict[str, Any],
        *,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        jobs: int = 1,
    ) -> IrEncoder:
        if not isinstance(state, IrEncoderState):
            state = IrEncoderState.model_validate(state)
        if state.version != IR_VERSION:
            raise IrError(
                f"the IR encoder state is version {state.version}, this encoder is "
                f"version {IR_VERSION}; retrain the run"
            )
        spaces = [Space.model_validate(s) for s in state.spaces]
        return cls(
            spaces,
            cache_dir=cache_dir,
            use_cache=use_cache,
            jobs=jobs,
            max_values=state.max_values,
            categories=state.categories,
        )

    # ----- vocabularies ----------------------------------------------------------------------

    def _set_categories(self, categories: list[IrCategory]) -> None:
        self._categories = categories
        self._coders = [_Coder(c) for c in categories]
        self._feature_categories = [
            FeatureCategory(name=c.name, group=c.group, vocab=list(c.vocab), ops=list(c.ops))
            for c in categories
        ]

    def _fitted(self) -> list[IrCategory]:
        if self._categories is None:
            raise IrError("the IR encoder has no vocabularies yet: fit it on architectures first")
        return self._categories

    @property
    def fitted(self) -> bool:
        return self._categories is not None

    @property
    def categories(self) -> list[FeatureCategory]:
        self._fitted()
        return self._feature_categories

    @property
    def ir_categories(self) -> list[IrCategory]:
        return self._fitted()

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    def fit(self, archs: Iterable[Architecture], progress: Progress | None = None) -> IrEncoder:
        """Build (or read) the graphs of `archs` and fix the vocabularies over them."""
        graphs = self.graphs(archs, progress)
        self._set_categories(fit_categories(graphs, self.max_values))
        return self

    # ----- raw graphs ------------------------------------------------------------------------

    def _cache_path(self, space: Space, arch: Architecture) -> Path:
        return self.cache_dir / cache_tag() / self._hash[space.name] / f"{_arch_hash(arch)}.json"

    def _read_cached(self, space: Space, arch: Architecture) -> IrGraph | None:
        if not self.use_cache:
            return None
        path = self._cache_path(space, arch)
        try:
            entry = _CacheEntry.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            return None  # absent, or torn/corrupt: export again and overwrite
        return entry.graph if entry.key == arch.key() else None

    def _store(self, space: Space, arch: Architecture, graph: IrGraph) -> None:
        self._memory[(space.name, arch.key())] = graph
        if self.use_cache:
            entry = _CacheEntry(key=arch.key(), graph=graph)
            _write_atomic(self._cache_path(space, arch), entry.model_dump_json())

    def graph(self, arch: Architecture) -> IrGraph:
        """The raw IR graph of one architecture (memory, then disk cache, then export)."""
        return self.graphs([arch])[0]

    def graphs(
        self, archs: Iterable[Architecture], progress: Progress | None = None
    ) -> list[IrGraph]:
        """Raw IR graphs of `archs`, in order; exports only what no cache holds."""
        archs = list(archs)
        start = time.perf_counter()
        stats = BuildStats(total=len(archs))
        out: list[IrGraph | None] = [None] * len(archs)
        missing: dict[tuple[str, str], list[int]] = {}
        done = 0
        step = max(1, len(archs) // 200)

        def tick(force: bool = False) -> None:
            if progress is not None and (force or done % step == 0 or done == len(archs)):
                progress(done, len(archs))

        for i, arch in enumerate(archs):
            space = self.space_of(arch)
            key = (space.name, arch.key())
            graph = self._memory.get(key)
            if graph is not None:
                stats.memory += 1
            else:
                graph = self._read_cached(space, arch)
                if graph is not None:
                    stats.disk += 1
                    self._memory[key] = graph
            if graph is None:
                missing.setdefault(key, []).append(i)
                continue
            out[i] = graph
            done += 1
            tick()
        todo = [(archs[rows[0]], rows) for rows in missing.values()]
        stats.exported = len(todo)

        def deliver(arch: Architecture, rows: list[int], graph: IrGraph) -> None:
            nonlocal done
            self._store(self.space_of(arch), arch, graph)
            for row in rows:
                out[row] = graph
                done += 1
                tick()

        if len(todo) >= 8 and self.jobs > 1:
            stats.export_cpu_seconds = self._export_parallel(todo, deliver)
        elif todo:
            # One thread: tracing runs many tiny convolutions, which extra threads only slow
            # down (badly so on a busy machine).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for arch, rows in todo:
                    cpu = time.process_time()
                    graph = export_ir(self.space_of(arch), arch)
                    stats.export_cpu_seconds += time.process_time() - cpu
                    deliver(arch, rows, graph)
            finally:
                torch.set_num_threads(threads)
        tick(force=True)
        stats.seconds = time.perf_counter() - start
        self.stats = stats
        assert all(g is not None for g in out), "every row is delivered"
        return out  # type: ignore[return-value]

    def _export_parallel(
        self,
        todo: list[tuple[Architecture, list[int]]],
        deliver: Callable[[Architecture, list[int], IrGraph], None],
    ) -> float:
        """Export `todo` in worker processes (one torch thread each); returns their CPU
        seconds."""
        spaces = {s.name: s.to_json() for s in self.spaces}
        cpu = 0.0
        with Fanout(_worker_spaces, (spaces,), jobs=min(self.jobs, len(todo))) as fanout:
            tasks = (((arch, rows), arch.to_json()) for arch, rows in todo)
            for (arch, rows), (text, seconds) in fanout.map(_worker_export, tasks):
                cpu += seconds
                deliver(arch, rows, IrGraph.model_validate_json(text))
        return cpu

    # ----- encoding -------------------------------------------------------------------------

    def encode_graph(self, graph: IrGraph) -> Data:
        """The PyG graph (codes per category) of a raw IR graph."""
        categories = self._fitted()
        n = graph.num_nodes
        x = np.zeros((n, len(categories)), dtype=np.int64)
        where = f"{graph.space} IR graph"
        for col, (category, coder) in enumerate(zip(categories, self._coders, strict=True)):
            x[:, col] = coder.column(_column(graph, category.name), where)
        edges = (
            np.asarray(graph.edges, dtype=np.int64).T
            if graph.edges
            else np.zeros((2, 0), dtype=np.int64)
        )
        return Data(
            x=torch.from_numpy(x),
            edge_index=torch.from_numpy(np.ascontiguousarray(edges)),
            num_nodes=n,
        )

    def encode(self, arch: Architecture) -> Data:
        return self.encode_graph(self.graph(arch))

    def encode_many(
        self, archs: Iterable[Architecture], progress: Progress | None = None
    ) -> list[Data]:
        """Graphs of `archs`; an encoder without vocabularies is fitted on them first."""
        graphs = self.graphs(archs, progress)
        if self._categories is None:
            self._set_categories(fit_categories(graphs, self.max_values))
        return [self.encode_graph(g) for g in graphs]

    def encode_module(self, *args: object, **kwargs: object) -> Data:
        raise IrError(
            "IR graphs have no per-module graphs (module scores need a sequence-graph run); "
            "IR runs report top rooted subgraphs instead (autobuild_dsl.design.ir_rank)"
        )


def op_presence(graphs: Iterable[IrGraph]) -> dict[str, set[str]]:
    """Op type -> the spaces whose graphs hold it (to tell space-specific ops from shared)."""
    presence: dict[str, set[str]] = {}
    for graph in graphs:
        for op in set(graph.ops):
            presence.setdefault(op, set()).add(graph.space)
    return presence


__all__ = [
    "DEFAULT_MAX_VALUES",
    "IR_VERSION",
    "BuildStats",
    "IrCategory",
    "IrEncoder",
    "IrEncoderState",
    "IrError",
    "IrGraph",
    "cache_tag",
    "default_cache_dir",
    "export_ir",
    "fit_categories",
    "op_presence",
    "space_hash",
]
