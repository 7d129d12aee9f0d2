"""IR graphs assembled from cached per-layer ONNX fragments.

Exporting a whole network is slow (0.2-0.3 s, nearly all of it in `torch.onnx.export`),
yet networks of a space share their layers: the 2162 DyNAS-T networks hold ~47k layers but
under a hundred distinct layer *contexts* (op, input shape, attributes). So each context
is exported once, alone (the layer wrapped so that its ops are named as in the whole
network), read with the same reader as a whole export, and kept on disk; a network's IR
graph is then stitched together from its layers' fragments in forward order, each
fragment's inputs wired to the nodes producing them.

Fragment-safe networks only: no U-Net skip links and no side inputs (timestep, context),
so every layer takes one tensor and a residual shortcut takes two. Anything else (or a
layer whose export fails) gets the whole-network export. The first network assembled for a
space (per cache) is also exported whole and compared; a mismatch turns fragments off for
that space, and the outcome is kept next to the fragments (`check.json`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from autobuild_dsl import io as abc_io
from autobuild_dsl.graphs.ir_export import (
    COLUMNS,
    IrGraph,
    OpColumns,
    empty_weights,
    export_ir,
    place_label,
    read_nodes,
    to_onnx,
)
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.model import Space

# Bump when the fragment format or the wrapping changes.
FRAGMENT_VERSION = 1


class Fragment(OpColumns):
    """The ops of one layer context. `sources[i]`: producers of op i (-1-k = the layer's
    input k); `output`: the op producing the layer's output (-1-k: it is input k itself);
    `scoped[i]`: op i is named inside the layer (its IR node gets the layer's index)."""

    scoped: list[bool]
    sources: list[list[int]]
    output: int


class _Entry(BaseModel):
    key: str  # the full context: a file-name hash collision can never return another layer
    fragment: Fragment


@dataclass(frozen=True)
class _Context:
    """One layer (or residual shortcut) as its fragment depends on it."""

    key: tuple[Any, ...]  # hashable; as JSON it names the fragment on disk
    build: Callable[[], nn.Module]
    shapes: tuple[tuple[int, int], ...]  # (channels, size) of each input


class _Node(nn.Module):
    """A compiled-network node alone, named `nodes.0` as `nodes.N` in the whole network."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.nodes = nn.ModuleList([module])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from autobuild_dsl.compile.registry import Cond

        return self.nodes[0](x, Cond())


class _Shortcut(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.shortcuts = nn.ModuleList([module])

    def forward(self, skip: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.shortcuts[0](skip, y)


def _node_context(index: int, op: str, shape: Any, attrs: dict[str, Any], dims: Any) -> _Context:
    from autobuild_dsl.compile.registry import get_factory

    if dims.temb is not None or dims.context is not None or dims.timestep:
        raise _Unsafe  # the layer reads side inputs
    key = ("node", op, shape.channels, shape.size, tuple(sorted(attrs.items())))
    return _Context(
        key, lambda: get_factory(op)(shape, attrs, dims), ((shape.channels, shape.size),)
    )


def _shortcut_context(number: int, in_shape: Any, out: Any, kind: str, act: str) -> _Context:
    from autobuild_dsl.compile.torch_ops import Shortcut

    key = ("shortcut", in_shape.channels, in_shape.size, out.channels, out.size, kind, act)
    shapes = ((in_shape.channels, in_shape.size), (out.channels, out.size))
    return _Context(key, lambda: Shortcut(in_shape, out, kind, act), shapes)


class _Unsafe(Exception):
    """This network is not fragment-safe: export it whole."""


def export_fragment(context: _Context) -> Fragment:
    """Export one layer context alone and read its ops."""
    with torch.device("meta"):
        built = context.build()
        module = _Node(built) if len(context.shapes) == 1 else _Shortcut(built)
    module = empty_weights(module)
    names = ["x"] if len(context.shapes) == 1 else ["skip", "y"]
    # Zeros: only the graph matters (no op of the library branches on values).
    inputs = {
        name: torch.zeros(1, c, s, s) for name, (c, s) in zip(names, context.shapes, strict=True)
    }
    nodes = read_nodes(to_onnx(module, inputs), names)
    if nodes.columns["ops"] == ["Identity"] and nodes.sources == [[-1]]:
        # The layer returns its input (an identity layer): the exporter adds an Identity
        # to name the output; in the whole network the next layer reads the input itself.
        return Fragment(**{k: [] for k in COLUMNS}, scoped=[], sources=[], output=-1)
    if nodes.output is None:
        raise _Unsafe  # the output does not come from the inputs
    return Fragment(
        **nodes.columns,
        scoped=[m is not None for m in nodes.module],
        sources=nodes.sources,
        output=nodes.output,
    )


@dataclass
class _Stitch:
    """An IR graph under construction."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in COLUMNS})
    module: list[int | None] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)

    def add(
        self, fragment: Fragment, inputs: Sequence[int | None], layer: int | None
    ) -> int | None:
        """Append `fragment` fed by `inputs` (producing node, None = a network input);
        returns the node producing its output."""
        base = len(self.module)
        for name in COLUMNS:
            self.columns[name].extend(getattr(fragment, name))
        self.module.extend([layer if scoped else None for scoped in fragment.scoped])
        edges = self.edges
        for node, sources in enumerate(fragment.sources, base):
            if len(sources) == 1:  # most ops: the fast path
                s = sources[0]
                producer = base + s if s >= 0 else inputs[-1 - s]
                if producer is not None:
                    edges.append((producer, node))
                continue
            producers = {base + s if s >= 0 else inputs[-1 - s] for s in sources}
            edges.extend((p, node) for p in sorted(p for p in producers if p is not None))
        out = fragment.output
        return base + out if out >= 0 else inputs[-1 - out]


class FragmentStats(BaseModel):
    assembled: int = 0
    fragments: int = 0  # layer contexts exported
    cpu_seconds: float = 0.0  # exporting fragments and the check
    checked: int = 0  # whole exports compared with an assembled graph


class FragmentAssembler:
    """Assembles IR graphs from fragments kept under `folder(space)` (None: memory only)."""

    def __init__(self, folder: Callable[[Space], Path | None]) -> None:
        self._folder = folder
        self._memory: dict[
            tuple[str, tuple[Any, ...]], Fragment | None
        ] = {}  # None: failed to export
        self._checked: dict[str, bool] = {}
        self.stats = FragmentStats()

    def assemble(self, space: Space, arch: Architecture) -> IrGraph | None:
        """The IR graph of `arch` from fragments, or None: export it whole instead."""
        if self._check_result(space) is False:
            return None
        try:
            graph = self._assemble(space, arch)
        except _Unsafe:
            return None
        if graph is None:
            return None
        self.stats.assembled += 1
        if self._check_result(space) is None:
            return self._check(space, arch, graph)
        return graph

    def _assemble(self, space: Space, arch: Architecture) -> IrGraph | None:
        from autobuild_dsl.compile.network import NetworkBuildError, _plan
        from autobuild_dsl.space.resolve import ResolveError, resolve

        try:
            net = resolve(space, arch)
            if net.skips or net.input.timestep or net.input.context_dim is not None:
                return None
            plan = _plan(net, _node_context, _shortcut_context)
        except (ResolveError, NetworkBuildError, ValueError):
            return None  # the whole export reports it
        shortcuts = dict(zip(_ending_spans(plan.steps), plan.shortcuts, strict=True))
        stitch = _Stitch()
        x: int | None = None  # the node producing the current tensor; None: the input
        saved: dict[int, int | None] = {}
        for i, (context, step) in enumerate(zip(plan.built, plan.steps, strict=True)):
            for span in step.save:
                saved[span] = x
            x = stitch.add(self._fragment(space, context), [x], i)
            for span in step.add:
                fragment = self._fragment(space, shortcuts[span])  # type: ignore[arg-type]
                x = stitch.add(fragment, [saved.pop(span), x], None)
        if not stitch.module:
            return None
        places = [place_label(n.position) for n in net.nodes]
        return IrGraph(
            space=space.name,
            module=stitch.module,
            places=places,
            edges=stitch.edges,
            **stitch.columns,
        )

    def _fragment(self, space: Space, context: _Context) -> Fragment:
        memo = (space.name, context.key)
        if memo in self._memory:
            fragment = self._memory[memo]
            if fragment is None:
                raise _Unsafe
            return fragment
        folder = self._folder(space)
        text = json.dumps(context.key)
        name = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
        path = folder / f"{name}.json" if folder is not None else None
        fragment = _read_entry(path, text)
        if fragment is None:
            start = time.process_time()
            try:
                fragment = export_fragment(context)
            except Exception as error:  # the exporter raises many types: export whole
                self._memory[memo] = None
                raise _Unsafe from error
            finally:
                self.stats.cpu_seconds += time.process_time() - start
            self.stats.fragments += 1
            if path is not None:
                entry = _Entry(key=text, fragment=fragment)
                abc_io.write_atomic(path, entry.model_dump_json(), durable=False)
        self._memory[memo] = fragment
        return fragment

    def _check_result(self, space: Space) -> bool | None:
        if space.name not in self._checked:
            folder = self._folder(space)
            try:
                if folder is not None:
                    text = (folder / "check.json").read_text(encoding="utf-8")
                    self._checked[space.name] = bool(json.loads(text)["match"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # not checked yet (or a torn file): check again
        return self._checked.get(space.name)

    def _check(self, space: Space, arch: Architecture, graph: IrGraph) -> IrGraph:
        """Export `arch` whole, compare, remember; the whole export is returned."""
        start = time.process_time()
        whole = export_ir(space, arch)
        self.stats.cpu_seconds += time.process_time() - start
        self.stats.checked += 1
        match = whole == graph
        self._checked[space.name] = match
        folder = self._folder(space)
        if folder is not None:
            record = {"version": FRAGMENT_VERSION, "arch": arch.key(), "match": match}
            abc_io.write_atomic(folder / "check.json", json.dumps(record), durable=False)
        return whole


def _ending_spans(steps: Sequence[Any]) -> list[int]:
    """Residual span numbers in the order `_plan` built their shortcuts."""
    return [span for step in steps for span in step.add]


def _read_entry(path: Path | None, key: str) -> Fragment | None:
    if path is None:
        return None
    try:
        entry = _Entry.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None  # absent, or torn/corrupt: export again and overwrite
    return entry.fragment if entry.key == key else None
