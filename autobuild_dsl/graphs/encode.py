"""Architecture -> sequence graph (the AutoBuild paper's format), as a PyG `Data`.

One node per resolved node of the searchable stages (layers, and per-stage extras such as
a U-Net's downsample/upsample), in forward order; edges run i -> i+1, plus one edge per
skip link from an encoder stage's last node to its mirrored decoder stage's first node.
The fixed stem, head and middle blocks are left out: they are the same in every
architecture, except where a global choice shapes them, and globals are on every node.

Node features are integer codes, one column per `FeatureCategory`:
  op        the operation (`mbconv`, `identity`, `resblock`, ...); an alternative label
            (`mb_e3k3`) is encoded as its op plus the attribute columns that tell it apart;
  attr      one column per operation attribute that varies at some position of the space
            (kernel, expand, out, ...); attributes fixed by position carry no information;
  position  section (when stages sit in several sections), stage index, layer index;
  global    each global choice (resolution), the same on every node.
A column holds 1 + the value's index in the category's vocabulary, or 0 where the category
does not apply (the kernel of an identity, the layer index of a downsample). Categories with
fewer than two states are dropped: a constant column carries no information.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autobuild_dsl.errors import AbcError

if TYPE_CHECKING:
    from torch_geometric.data import Data

from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import index_of, stage_module_choices
from autobuild_dsl.space.expr import Value, names_in
from autobuild_dsl.space.keys import DEPTH, DecisionKey
from autobuild_dsl.space.layers import layer_names
from autobuild_dsl.space.model import (
    INPUT_NAMES,
    LayerOption,
    NodeTemplate,
    Space,
    Stage,
    StageModule,
)
from autobuild_dsl.space.resolve import ResolveError, resolve_node
from autobuild_dsl.space.resolved import NodePosition
from autobuild_dsl.space.values import ValueKey, value_key

Progress = Callable[[int, int], None]

# Above this many value combinations for one node template, the vocabulary scan refuses.
_MAX_TEMPLATE_COMBINATIONS = 200_000


class EncodeError(AbcError, ValueError):
    """An architecture (or module) cannot be encoded for this space; the message says why."""

    code = "encode"


class FeatureCategory(BaseModel):
    """One column of `Data.x`: its name, kind and the values it can hold (code = index + 1)."""

    model_config = ConfigDict(frozen=True)

    name: str
    group: Literal["op", "attr", "position", "global"]
    vocab: list[Value]
    ops: list[str] = Field(
        default_factory=list, description="attr categories: the ops the attribute applies to"
    )


def _sorted_values(values: Iterable[Value]) -> list[Value]:
    """Distinct values (3 and 3.0 are two: space/values.py) in a fixed order whatever the
    input order: booleans, then numbers by magnitude, then strings."""
    unique: dict[ValueKey, Value] = {}
    for value in values:
        unique.setdefault(value_key(value), value)
    rank = {"b": 0, "i": 1, "f": 1, "s": 2}
    return [unique[k] for k in sorted(unique, key=lambda k: (rank[k[0]], k[1], k[0]))]


def _template_names(template: NodeTemplate) -> tuple[set[str], set[str]]:
    """The scalar names and the layer-choice names a template reads."""
    exprs = [e for e in (template.condition, *template.attrs.values()) if e is not None]
    scalars = {name for expr in exprs for name in names_in(expr)}
    layer: set[str] = set().union(*(layer_names(expr) for expr in exprs))
    # The layer's input is no decision: attributes that follow it are not features.
    return scalars - set(INPUT_NAMES), layer


# torch and PyG are imported on first use, not with this module: PyG pulls in
# torch._dynamo (~1 s), and the CLI imports `EncodeError` and `GraphEncoder` on paths that
# never build a graph. `SequenceGraph` is importable from here (module `__getattr__`).
_SEQUENCE_GRAPH: type | None = None


def _sequence_graph_class() -> type:
    global _SEQUENCE_GRAPH
    if _SEQUENCE_GRAPH is None:
        from torch_geometric.data import Data

        class SequenceGraph(Data):
            """A PyG `Data` whose per-node `stage_index`/`layer_index` survive batching.

            PyG offsets every attribute named `*index*` by the node count when it batches
            graphs (right for `edge_index`); these two are labels, not node references,
            so they are not.
            """

            def __inc__(self, key: str, value: object, *args: object, **kwargs: object) -> Any:
                if key in ("stage_index", "layer_index"):
                    return 0
                return super().__inc__(key, value, *args, **kwargs)

            def __cat_dim__(self, key: str, value: object, *args: object, **kwargs: object) -> Any:
                if key in ("stage_index", "layer_index"):
                    return 0
                return super().__cat_dim__(key, value, *args, **kwargs)

        SequenceGraph.__module__ = __name__
        SequenceGraph.__qualname__ = "SequenceGraph"
        _SEQUENCE_GRAPH = SequenceGraph
    return _SEQUENCE_GRAPH


@dataclass(frozen=True)
class GraphTensors:
    """A sequence graph as plain tensors (the attributes a `SequenceGraph` has), without
    PyG: what the scorer packs directly (module graphs, prediction-only encoding). From
    `encode_arrays` the fields are numpy int64 arrays (no torch needed); `tensors()`."""

    x: Any  # torch.Tensor [nodes, categories] long
    edge_index: Any  # [2, edges] long
    stage_index: Any  # [nodes] long
    layer_index: Any  # [nodes] long, -1 for a stage's extra nodes

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def tensors(self) -> GraphTensors:
        """The same graph with torch tensors (sharing the numpy arrays' memory)."""
        import torch

        return GraphTensors(**{name: torch.as_tensor(a) for name, a in vars(self).items()})

    def to_data(self) -> Data:
        """The same graph as a PyG `SequenceGraph` (imports PyG)."""
        return _sequence_graph_class()(**vars(self), num_nodes=self.num_nodes)


def __getattr__(name: str) -> Any:
    if name == "SequenceGraph":
        return _sequence_graph_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _StagePlan:
    """What encoding needs of one stage: its templates, the scalars they read, its options."""

    def __init__(self, space: Space, stage: Stage, position: int) -> None:
        self.stage = stage
        self.position = position  # index among the space's stages (= graph order)
        self.options: dict[str, LayerOption] = {o.label: o for o in stage.options}
        self.several = len(stage.options) > 1
        names: set[str] = set()
        templates = [*stage.before, *stage.after]
        templates += [t for option in stage.options for t in option.nodes]
        for template in templates:
            scalars, _ = _template_names(template)
            names |= scalars
        self.refs: tuple[str, ...] = tuple(sorted(names))


class GraphEncoder:
    """Turns architectures (and single modules) of one space into sequence graphs."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self._index = index_of(space)
        self._plans = [_StagePlan(space, s, i) for i, s in enumerate(space.stages)]
        self._plan_of = {p.stage.name: p for p in self._plans}
        self._ties = dict(space.ties)
        self._scan()
        self._row_cache: dict[tuple, np.ndarray] = {}
        self._edge_cache: dict[tuple, np.ndarray] = {}

    # ----- categories (derived once from the space) --------------------------------

    def _domain(self, name: str) -> list[Value]:
        space = self.space
        if name in space.choices:
            return list(space.choices[name])
        owner, choice = DecisionKey.parse(name)
        if choice == DEPTH:
            return list(space.stage(owner).depths)
        if choice:
            domains = stage_module_choices(space, space.stage(owner))
            if choice in domains:
                return list(domains[choice])
        raise EncodeError(f"the space gives '{name}' no domain; cannot derive features")

    def _template_nodes(
        self, plan: _StagePlan, template: NodeTemplate, option: LayerOption | None, role: str
    ) -> Iterable[tuple[bool, str, dict[str, Value]]]:
        """Every (first layer?, op, attrs) the template can produce, over all its inputs."""
        scalars, layer_names = _template_names(template)
        scalar_names = sorted(scalars)
        layer_list = sorted(layer_names)
        domains = [self._domain(n) for n in scalar_names]
        if option is None and layer_list:
            raise EncodeError(
                f"{template.where}: {template.op} outside a layer reads a layer choice"
            )
        layer_domains = [list(option.choices[n]) for n in layer_list] if option else []
        total = 1
        for domain in (*domains, *layer_domains):
            total *= len(domain)
        if total > _MAX_TEMPLATE_COMBINATIONS:
            raise EncodeError(
                f"{template.where}: {template.op} reads {total:,} value combinations; "
                "too many to derive its feature vocabulary"
            )
        firsts = (True, False) if role == "layer" else (True,)
        position = NodePosition(
            part="stage", block=plan.stage.name, stage_index=plan.stage.index, role=role
        )  # type: ignore[arg-type]
        for values in itertools.product(*domains):
            env = dict(zip(scalar_names, values, strict=True))
            for layer_values in itertools.product(*layer_domains):
                layer = dict(zip(layer_list, layer_values, strict=True)) if option else None
                for first in firsts:
                    try:
                        node = resolve_node(
                            template, env, layer, position, first_layer=first, skip_input_attrs=True
                        )
                    except ResolveError:
                        continue  # a combination the rules exclude may not evaluate
                    if node is not None:
                        yield first, node.op, dict(node.attrs)

    def _scan(self) -> None:
        """Derive the categories: which ops exist, which attributes vary, their values."""
        ops: set[str] = set()
        values: dict[tuple[str, str], list[Value]] = {}
        varying: set[tuple[str, str]] = set()
        for plan in self._plans:
            stage = plan.stage
            slots: list[tuple[str, int, NodeTemplate, LayerOption | None]] = []
            slots += [("before", i, t, None) for i, t in enumerate(stage.before)]
            slots += [("after", i, t, None) for i, t in enumerate(stage.after)]
            for option in stage.options:
                slots += [("layer", i, t, option) for i, t in enumerate(option.nodes)]
            # Values seen at one position (same slot, same first-layer flag), per op/attr.
            groups: dict[tuple, set[ValueKey]] = {}
            for role, slot, template, option in slots:
                for first, op, attrs in self._template_nodes(plan, template, option, role):
                    ops.add(op)
                    for attr, value in attrs.items():
                        values.setdefault((op, attr), []).append(value)
                        groups.setdefault((role, slot, first, op, attr), set()).add(
                            value_key(value)
                        )
            for (_, _, _, op, attr), seen in groups.items():
                if len(seen) > 1:
                    varying.add((op, attr))
        categories: list[FeatureCategory] = []
        if len(ops) > 1:
            categories.append(FeatureCategory(name="op", group="op", vocab=_sorted_values(ops)))
        for attr in sorted({a for _, a in varying}):
            applies = sorted(op for op, a in varying if a == attr)
            vocab = _sorted_values(v for op in applies for v in values[(op, attr)])
            categories.append(FeatureCategory(name=attr, group="attr", vocab=vocab, ops=applies))
        stages = self.space.stages
        sections = {s.section for s in stages}
        if len(sections) > 1:
            vocab = _sorted_values(s for s in sections if s is not None)
            categories.append(FeatureCategory(name="section", group="position", vocab=vocab))
        if len(stages) > 1:
            vocab = [s.index for s in stages]
            categories.append(FeatureCategory(name="stage", group="position", vocab=vocab))
        max_depth = max(max(s.depths) for s in stages)
        has_extras = any(s.before or s.after for s in stages)
        if max_depth > 1 or (has_extras and max_depth >= 1):
            vocab = list(range(max_depth))
            categories.append(FeatureCategory(name="layer", group="position", vocab=vocab))
        taken = {c.name for c in categories}
        global_names: list[tuple[int, str]] = []
        for name, domain in self.space.choices.items():
            if len(domain) < 2:
                continue  # a global with one value is the same on every graph
            shown = name if name not in taken else f"global_{name}"
            global_names.append((len(categories), name))
            categories.append(
                FeatureCategory(name=shown, group="global", vocab=_sorted_values(domain))
            )
        self.categories: list[FeatureCategory] = categories
        self._codes = [{value_key(v): i + 1 for i, v in enumerate(c.vocab)} for c in categories]
        column = {(c.group, c.name): i for i, c in enumerate(categories)}
        self._op_col = column.get(("op", "op"))
        self._attr_cols = [
            (i, c.name, frozenset(c.ops)) for i, c in enumerate(categories) if c.group == "attr"
        ]
        self._section_col = column.get(("position", "section"))
        self._stage_col = column.get(("position", "stage"))
        self._layer_col = column.get(("position", "layer"))
        self._global_columns = [(col, name, self._codes[col]) for col, name in global_names]

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    def _code(self, col: int, value: object, what: str) -> int:
        code = self._codes[col].get(value_key(value))
        if code is None:
            category = self.categories[col]
            shown = ", ".join(str(v) for v in category.vocab)
            raise EncodeError(
                f"{what}: {category.name} = {value!r} is not in the space (values: {shown})"
            )
        return code

    # ----- rows (cached per stage, scalar inputs, layer and position) ---------------

    def _rows(
        self,
        plan: _StagePlan,
        env: dict[str, Value],
        role: str,
        layer_index: int,
        layer: dict[str, Value] | None,
    ) -> np.ndarray:
        """Feature rows of one layer (or the stage's before/after extras), plus 2 columns:
        stage index and layer index. Global columns are left 0 and filled per graph."""
        env_key = tuple((type(env.get(n)), env.get(n)) for n in plan.refs)
        layer_key = (
            tuple(sorted((k, type(v).__name__, v) for k, v in layer.items()))
            if layer is not None
            else None
        )
        key = (plan.position, env_key, role, layer_index, layer_key)
        cached = self._row_cache.get(key)
        if cached is not None:
            return cached
        stage = plan.stage
        where = f"stage {stage.name}" + (f" layer {layer_index}" if role == "layer" else "")
        if role == "layer":
            assert layer is not None
            if plan.several:
                label = layer.get("op")
                option = plan.options.get(label)  # type: ignore[arg-type]
                if option is None:
                    raise EncodeError(
                        f"{where}: op {label!r} is not one of {', '.join(plan.options)}"
                    )
            else:
                option = stage.options[0]
            templates = option.nodes
        else:
            templates = stage.before if role == "before" else stage.after
        position = NodePosition(
            part="stage",
            block=stage.name,
            section=stage.section,
            stage_index=stage.index,
            layer_index=layer_index if role == "layer" else None,
            role=role,  # type: ignore[arg-type]
        )
        rows: list[list[int]] = []
        width = len(self.categories)
        for template in templates:
            try:
                node = resolve_node(
                    template,
                    env,
                    layer,
                    position,
                    first_layer=layer_index == 0,
                    skip_input_attrs=True,
                )
            except (ResolveError, KeyError) as error:
                raise EncodeError(f"{where}: {error}") from None
            if node is None:
                continue
            row = [0] * (width + 2)
            if self._op_col is not None:
                row[self._op_col] = self._code(self._op_col, node.op, where)
            for col, attr, ops in self._attr_cols:
                if node.op in ops and attr in node.attrs:
                    row[col] = self._code(col, node.attrs[attr], f"{where} ({node.op})")
            if self._section_col is not None and stage.section is not None:
                row[self._section_col] = self._code(self._section_col, stage.section, where)
            if self._stage_col is not None:
                row[self._stage_col] = self._code(self._stage_col, stage.index, where)
            if self._layer_col is not None and role == "layer":
                row[self._layer_col] = self._code(self._layer_col, layer_index, where)
            row[width] = stage.index
            row[width + 1] = layer_index if role == "layer" else -1
            rows.append(row)
        block = np.array(rows, dtype=np.int64).reshape(len(rows), width + 2)
        block.setflags(write=False)
        self._row_cache[key] = block
        return block

    def _stage_block(
        self, plan: _StagePlan, env: dict[str, Value], layers: Sequence[dict[str, Value]]
    ) -> list[np.ndarray]:
        if not layers:
            return []  # an absent stage (depth 0) is no node, not even its extras
        # The whole stage as one cached block (a 3-tuple key; rows have 5): one lookup per
        # stage instead of one per row, for exhaustive search. _graph copies it.
        env_key = tuple((type(env.get(n)), env.get(n)) for n in plan.refs)
        shapes = [tuple(sorted((k, type(v).__name__, v) for k, v in x.items())) for x in layers]
        key = (plan.position, env_key, tuple(shapes))
        if (cached := self._row_cache.get(key)) is None:
            before = [self._rows(plan, env, "before", -1, None)] if plan.stage.before else []
            after = [self._rows(plan, env, "after", -1, None)] if plan.stage.after else []
            rows = [self._rows(plan, env, "layer", i, x) for i, x in enumerate(layers)]
            cached = self._row_cache[key] = np.concatenate(before + rows + after)
        return [cached]

    def _graph(
        self,
        plans: Sequence[_StagePlan],
        env: dict[str, Value],
        stage_layers: Sequence[Sequence[dict[str, Value]]],
        globals_: dict[str, Value],
    ) -> GraphTensors:
        blocks: list[np.ndarray] = []
        spans: dict[str, tuple[int, int]] = {}
        count = 0
        for plan, layers in zip(plans, stage_layers, strict=True):
            start = count
            for block in self._stage_block(plan, env, layers):
                if len(block):
                    blocks.append(block)
                    count += len(block)
            if count > start:
                spans[plan.stage.name] = (start, count - 1)
        width = len(self.categories)
        # concatenate copies, so the cached (read-only) blocks are never written to.
        table = np.concatenate(blocks) if blocks else np.zeros((0, width + 2), dtype=np.int64)
        for col, name, codes in self._global_columns:
            value = globals_.get(name)
            code = codes.get(value_key(value))
            if code is None:
                shown = ", ".join(str(v) for v in self.categories[col].vocab)
                raise EncodeError(f"globals.{name} = {value!r} is not one of {shown}")
            table[:, col] = code
        skips = tuple(
            (spans[s.source][1], spans[s.target][0])
            for s in self.space.skips
            if s.source in spans and s.target in spans
        )
        edges = self._edges(count, skips)
        return GraphTensors(  # numpy arrays: callers that want tensors call .tensors()
            x=np.ascontiguousarray(table[:, :width]),
            edge_index=edges.copy(),
            stage_index=table[:, width].copy(),
            layer_index=table[:, width + 1].copy(),
        )

    def _edges(self, count: int, skips: tuple[tuple[int, int], ...]) -> np.ndarray:
        key = (count, skips)
        cached = self._edge_cache.get(key)
        if cached is None:
            chain = np.stack([np.arange(count - 1), np.arange(1, count)]) if count > 1 else None
            parts = [chain] if chain is not None else []
            # A skip between adjacent nodes is already the chain edge: no double edge.
            extra = [(a, b) for a, b in skips if b != a + 1]
            if extra:
                parts.append(np.array(extra, dtype=np.int64).T)
            parts = parts or [np.zeros((2, 0), dtype=np.int64)]
            cached = self._edge_cache[key] = np.concatenate(parts, axis=1).astype(np.int64)
        return cached

    # ----- public API ----------------------------------------------------------------

    def encode_tensors(self, arch: Architecture) -> GraphTensors:
        """The sequence graph of one (canonical) architecture, as plain tensors."""
        return self.encode_arrays(arch).tensors()

    def encode_arrays(self, arch: Architecture) -> GraphTensors:
        """`encode_tensors` with numpy arrays: needs no torch (scorer.numpy_predict)."""
        env = self._index.with_ties(self._index.scalars(arch))
        layers = []
        for plan in self._plans:
            chosen = arch.stages.get(plan.stage.name)
            if chosen is None:
                raise EncodeError(f"stages.{plan.stage.name}: missing from the architecture")
            # Slots past the depth are unused: they never reach the graph.
            layers.append(chosen.layers[: chosen.depth])
        return self._graph(self._plans, env, layers, arch.globals)

    def encode(self, arch: Architecture) -> Data:
        """The sequence graph of one (canonical) architecture of the space."""
        return self.encode_tensors(arch).to_data()

    def encode_many(
        self,
        archs: Iterable[Architecture],
        progress: Progress | None = None,
        *,
        as_data: bool = True,
    ) -> list[Data] | list[GraphTensors]:
        """Every architecture's graph; `as_data=False` gives `GraphTensors` (no PyG
        objects: ~2x cheaper, for callers that only pack them for the scorer)."""
        archs = list(archs)
        graphs: list[Any] = []
        step = max(1, len(archs) // 100)
        one = self.encode if as_data else self.encode_tensors
        for i, arch in enumerate(archs):
            graphs.append(one(arch))
            if progress is not None and ((i + 1) % step == 0 or i + 1 == len(archs)):
                progress(i + 1, len(archs))
        return graphs

    def stage_refs(self, stage_name: str) -> tuple[str, ...]:
        """The scalar names (globals, `stage.choice`, `stage.depth`) a stage's nodes read."""
        plan = self._plan_of.get(stage_name)
        if plan is None:
            raise EncodeError(f"no stage '{stage_name}'")
        return plan.refs

    def encode_module(
        self,
        unit_name: str,
        module: list[StageModule],
        globals: dict[str, Value] | None = None,
        *,
        context: dict[str, Value] | None = None,
    ) -> GraphTensors:
        """The graph of one unit's module alone, with its stages' real positions, as plain
        tensors (module graphs go straight to the scorer; `.to_data()` gives a PyG graph).

        Global choices default to the first value of each domain. `context` gives the
        decisions of stages outside the unit that its nodes read (`s1.width`); a module
        whose nodes read one that is not given is refused, never built in a made-up context.
        """
        unit = next((u for u in self._index.units if u.name == unit_name), None)
        if unit is None:
            names = ", ".join(u.name for u in self._index.units)
            raise EncodeError(f"no unit or stage '{unit_name}' (units: {names})")
        if len(module) != len(unit.stages):
            raise EncodeError(
                f"unit {unit_name} has {len(unit.stages)} stage(s), the module gives {len(module)}"
            )
        globals_ = {name: domain[0] for name, domain in self.space.choices.items()}
        globals_.update(globals or {})
        scalars: dict[str, Value] = dict(globals_)
        for stage in self.space.stages:
            scalars[DecisionKey.depth(stage.name)] = stage.depths[0]
            for name, domain in stage_module_choices(self.space, stage).items():
                scalars[DecisionKey.choice(stage.name, name)] = domain[0]
        mine: dict[str, Value] = {}
        for stage_name, part in zip(unit.stages, module, strict=True):
            mine[DecisionKey.depth(stage_name)] = part.depth
            for name, value in part.choices.items():
                mine[DecisionKey.choice(stage_name, name)] = value
        given = dict(context or {})
        scalars.update(given)
        scalars.update(mine)
        # A tied choice given on this unit's side decides the other side too.
        for alias, keeper in self._ties.items():
            if alias in mine and keeper not in mine:
                scalars[keeper] = mine[alias]
        decided = set(mine) | set(given) | set(globals_)
        decided |= {k for a, k in self._ties.items() if a in decided}
        missing = sorted(
            ref
            for stage_name in unit.stages
            for ref in self._plan_of[stage_name].refs
            if ref not in decided and self._ties.get(ref, ref) not in decided
        )
        if missing:
            raise EncodeError(
                f"unit {unit_name} reads {', '.join(missing)} of other stages: give them as "
                "its context"
            )
        env = self._index.with_ties(scalars)
        plans = [self._plan_of[s] for s in unit.stages]
        layers = [part.layers[: part.depth] for part in module]
        return self._graph(plans, env, layers, globals_).tensors()


__all__ = [  # noqa: F822
    "EncodeError",
    "FeatureCategory",
    "GraphEncoder",
    "GraphTensors",
    "SequenceGraph",
]
