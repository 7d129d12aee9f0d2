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

Exporting a whole network is slow (0.2-0.3 s per OFA network), so a graph is assembled
from per-layer ONNX fragments where the network allows it (`ir_fragments`; the whole
export is the fallback), and raw graphs are cached on disk by (space digest, architecture
key, encoder version), one JSON file each, written atomically; `jobs > 1` exports what
fragments cannot give in spawned worker processes.

Modules: `ir_export` (the raw graph and its ONNX reading), `ir_fragments` (assembly),
`ir_vocab` (vocabularies and coding), this one (cache and encoder).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch_geometric.data import Data

from autobuild_dsl import io as abc_io
from autobuild_dsl.graphs.encode import FeatureCategory
from autobuild_dsl.graphs.ir_export import IrError, IrGraph, export_ir
from autobuild_dsl.graphs.ir_fragments import FragmentAssembler
from autobuild_dsl.graphs.ir_vocab import (
    DEFAULT_MAX_VALUES,
    IrCategory,
    _Coder,
    _column,
    fit_categories,
)
from autobuild_dsl.parallel import Fanout
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space

# Bump when the graph extraction changes: old cache entries and runs are then refused.
IR_VERSION = 1
IR_FORMAT = "autobuild-ir-encoder"

Progress = Callable[[int, int], None]


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
    abc_io.write_atomic(path, text, durable=False)  # a lost file is only exported again


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
    assembled: int = Field(default=0, description="graphs assembled from layer fragments")
    fragments: int = Field(default=0, description="layer fragments exported (new contexts)")
    checked: int = Field(default=0, description="whole exports compared with an assembled graph")
    fragment_cpu_seconds: float = Field(default=0.0, description="fragments and checks")


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


class IrEncoderState(BaseModel):
    """Everything needed to rebuild an encoder that codes graphs exactly as before."""

    format: Literal["autobuild-ir-encoder"] = IR_FORMAT
    version: int = IR_VERSION
    spaces: list[dict[str, Any]] = Field(description="every space the encoder accepts, as JSON")
    max_values: int
    categories: list[IrCategory]


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
        fragments: bool = True,
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
        # None: every graph is a whole-network export (the reference the fragments match).
        self._fragments = FragmentAssembler(self._fragment_folder) if fragments else None
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

    def _fragment_folder(self, space: Space) -> Path | None:
        if not self.use_cache:
            return None
        return self.cache_dir / cache_tag() / self._hash[space.name] / "fragments"

    def _assemble(
        self,
        todo: list[tuple[Architecture, list[int]]],
        deliver: Callable[[Architecture, list[int], IrGraph], None],
        stats: BuildStats,
    ) -> list[tuple[Architecture, list[int]]]:
        """Deliver what per-layer fragments give; returns the rest (to export whole)."""
        if self._fragments is None or not todo:
            return todo
        before = self._fragments.stats.model_copy()
        rest = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # fragment exports: tiny ops, one thread is fastest
        try:
            for arch, rows in todo:
                graph = self._fragments.assemble(self.space_of(arch), arch)
                if graph is None:
                    rest.append((arch, rows))
                else:
                    deliver(arch, rows, graph)
        finally:
            torch.set_num_threads(threads)
        after = self._fragments.stats
        stats.assembled = after.assembled - before.assembled
        stats.fragments = after.fragments - before.fragments
        stats.checked = after.checked - before.checked
        stats.fragment_cpu_seconds = after.cpu_seconds - before.cpu_seconds
        stats.exported = len(rest)
        return rest

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

        todo = self._assemble(todo, deliver, stats)  # what fragments cannot give is exported
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
