"""Located syntax -> a mutable Draft: `extends`, declarations, stages and their families.

Every mistake is collected (not raised one by one) with its source position, so a user
sees all of them in one run. Lowering works on a mutable draft so that a derived space
(`extends`) can patch what it inherits before the draft is frozen into a `Space` (see
`lang/finalise.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from autobuild_dsl.lang.diagnostics import DiagnosticSink, Location, SourceFile
from autobuild_dsl.lang.draft import (
    Draft,
    DraftFixed,
    DraftNode,
    DraftOption,
    DraftStage,
    Placed,
    Scope,
    same_value,
)
from autobuild_dsl.lang.syntax import (
    Alternative,
    Arg,
    CallNode,
    ChoiceDecl,
    CodeDecl,
    DepthDecl,
    Description,
    Domain,
    EdgeDecl,
    ExtendsClause,
    FixedDecl,
    InputDecl,
    LayerDecl,
    LetDecl,
    LocatedExpr,
    Module,
    NodeBlock,
    NodeItem,
    RangeDomain,
    RequireDecl,
    ResidualClause,
    RestrictDecl,
    SectionDecl,
    SkipDecl,
    SpaceDecl,
    StageDecl,
    StagesDecl,
    UnitDecl,
)
from autobuild_dsl.lang.transform import parse_module, unquote
from autobuild_dsl.space.expr import Const, Expr, LayerRef, Ref, Value, format_value
from autobuild_dsl.space.model import ArchitectureCode, Residual
from autobuild_dsl.space.ops import ACTIVATIONS

INPUT_KEYS = {
    "channels": "int",
    "size": "int",
    "context": "int",
    "tokens": "int",
    "timestep": "bool",
}

Declared = dict[tuple[str, str], tuple[str, Location]]


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


class Lowerer:
    """Lowers the spaces of one or more files; errors go to one shared sink."""

    def __init__(self, sink: DiagnosticSink) -> None:
        self.sink = sink
        self._files: dict[str, tuple[SourceFile, Module | None]] = {}
        self._in_progress: set[tuple[str, str]] = set()
        self._names_checked: set[str] = set()
        self._space_items: dict[type, Callable[[Draft, Any, str | None], None]] = {
            Description: self._description,
            InputDecl: self._input,
            ChoiceDecl: lambda draft, item, _: self._choice(draft, draft.local, item),
            LetDecl: lambda draft, item, _: self._let(draft, draft.local, item),
            FixedDecl: self._fixed_block,
            StageDecl: self._stage_decl,
            StagesDecl: self._stages_decl,
            SectionDecl: self._section,
            SkipDecl: self._skip,
            RequireDecl: self._require,
            UnitDecl: self._unit,
            RestrictDecl: lambda draft, item, _: draft.restrictions.append(item),
            CodeDecl: self._code,
        }

    # ----- entry points -------------------------------------------------------------

    def load_file(self, path: str, text: str | None = None) -> tuple[SourceFile, Module | None]:
        key = str(Path(path))
        if key not in self._files:
            if text is None:
                text = Path(path).read_text(encoding="utf-8")
            source = SourceFile(path=path, text=normalize_newlines(text))
            self._files[key] = (source, parse_module(source, self.sink))
        return self._files[key]

    def check_space_names(self, module: Module) -> None:
        """Two spaces of one name in a file: an error at the second, naming the first."""
        if not module.spaces or module.spaces[0].loc.path in self._names_checked:
            return
        self._names_checked.add(module.spaces[0].loc.path)
        first: dict[str, Location] = {}
        for decl in module.spaces:
            name, loc = decl.name.text, decl.name.loc
            if name in first:
                self._error(loc, f"space '{name}' is defined twice (first at {first[name]})")
            else:
                first[name] = loc

    def draft(self, source: SourceFile, module: Module, name: str | None) -> Draft | None:
        spaces = module.spaces
        if not spaces:
            return None
        self.check_space_names(module)
        if name is None:
            return self._lower_space(module, spaces[0])
        chosen = next((decl for decl in spaces if decl.name.text == name), None)
        if chosen is None:
            known = ", ".join(decl.name.text for decl in spaces)
            self.sink.error(source, 1, 1, f"no space named '{name}' here (spaces: {known})")
            return None
        return self._lower_space(module, chosen)

    # ----- spaces -------------------------------------------------------------------

    def _lower_space(self, module: Module, decl: SpaceDecl) -> Draft | None:
        name, loc = decl.name.text, decl.name.loc
        guard = (loc.path, name)
        if guard in self._in_progress:
            self._error(loc, f"space '{name}' extends itself")
            return None
        self._in_progress.add(guard)
        try:
            if decl.extends is None:
                draft = Draft(name=name, loc=loc)
            else:
                inherited = self._inherit(module, decl.extends)
                if inherited is None:
                    return None
                draft = inherited
                draft.extends = draft.name
                draft.name = name
                draft.loc = Location(loc.path, loc.line, loc.column, loc.end_line, draft.loc)
            # Only this space's own body counts for "declared twice"; it may restate
            # what it inherits.
            draft.local = {}
            for item in decl.items:
                self._space_item(draft, item, None)
            return draft
        finally:
            self._in_progress.discard(guard)

    def _error(self, loc: Location, message: str) -> None:
        self.sink.at(loc, message)

    def _declare(self, local: Declared, key: tuple[str, str], what: str, loc: Location) -> bool:
        """Record a declaration of one body; a second one is an error naming both places."""
        previous = local.get(key)
        if previous is None:
            local[key] = (what, loc)
            return True
        first_what, first_loc = previous
        name = key[1]
        if not name:
            self._error(loc, f"{what} is given twice (first at {first_loc})")
        elif first_what == what:
            verb = "given" if what == "input setting" else "declared"
            self._error(loc, f"{what} '{name}' is {verb} twice (first at {first_loc})")
        else:
            self._error(
                loc,
                f"'{name}' is already a {first_what} (at {first_loc}); a {what} needs another name",
            )
        return False

    def _reserved(self, name: str, loc: Location, what: str) -> bool:
        if name != "depth":
            return False
        self._error(
            loc,
            f"'depth' cannot name a {what}: it is reserved for a stage's depth (`depth`, `s1.depth`)",
        )
        return True

    def _inherit(self, module: Module, clause: ExtendsClause) -> Draft | None:
        parent_name = clause.name.text
        parent_module: Module | None = module
        if clause.path is not None:
            raw = clause.path.text[1:-1]
            parent_path = Path(clause.loc.path).parent / raw
            at = clause.path.loc
            if not parent_path.is_file():
                self._error(at, f"cannot read '{raw}': no such file")
                return None
            try:
                _, parent_module = self.load_file(str(parent_path))
            except (OSError, UnicodeDecodeError) as error:
                self._error(at, f"cannot read '{raw}': {error}")
                return None
            if parent_module is None:
                self._error(at, f"'{raw}' has errors (shown above)")
                return None
            self.check_space_names(parent_module)
        assert parent_module is not None
        for decl in parent_module.spaces:
            if decl.name.text == parent_name:
                return self._lower_space(parent_module, decl)
        where = "in this file" if clause.path is None else f"in {clause.path.text}"
        self._error(clause.name.loc, f"no space named '{parent_name}' {where}")
        return None

    def _space_item(self, draft: Draft, item: Any, section: str | None) -> None:
        self._space_items[type(item)](draft, item, section)

    def _description(self, draft: Draft, item: Description, section: str | None) -> None:
        if self._declare(draft.local, ("description", ""), "description", item.loc):
            draft.description = unquote(item.text)

    def _input(self, draft: Draft, item: InputDecl, section: str | None) -> None:
        for arg in item.args:
            value = self._one_value(arg)
            if value is None:
                continue
            key, loc = arg.name.text, arg.loc
            if key not in INPUT_KEYS:
                known = ", ".join(INPUT_KEYS)
                self._error(loc, f"unknown input setting '{key}' (settings: {known})")
                continue
            if self._declare(draft.local, ("input", key), "input setting", loc):
                draft.input[key] = Placed(value, loc)

    def _choice(self, scope: Scope, local: Declared, item: ChoiceDecl) -> None:
        name, loc = item.name.text, item.name.loc
        domain = self._domain(item.domain)
        if self._reserved(name, loc, "choice") or not self._declare(
            local, ("name", name), "choice", loc
        ):
            return
        if domain is not None:
            scope.choices[name] = Placed(domain, loc)

    def _let(self, scope: Scope, local: Declared, item: LetDecl) -> None:
        name, loc = item.name.text, item.name.loc
        expr = self._expr(item.value)
        if self._reserved(name, loc, "let") or not self._declare(local, ("name", name), "let", loc):
            return
        scope.lets[name] = Placed(expr, loc)

    def _section(self, draft: Draft, item: SectionDecl, section: str | None) -> None:
        for sub in item.items:
            self._space_item(draft, sub, item.name.text)

    def _skip(self, draft: Draft, item: SkipDecl, section: str | None) -> None:
        text = f"{item.source} -> {item.target}"
        if self._declare(draft.local, ("skip", text), "skip", item.loc):
            draft.skips.append((item.source, item.target, item.loc))

    def _require(self, draft: Draft, item: RequireDecl, section: str | None) -> None:
        draft.requires.append((self._expr(item.expr), item.expr.loc))

    def _unit(self, draft: Draft, item: UnitDecl, section: str | None) -> None:
        if self._declare(draft.local, ("unit", item.name), "unit", item.loc):
            draft.units.append((item.name, list(item.members), item.loc))

    # ----- fixed parts and stages ---------------------------------------------------

    def _fixed_block(self, draft: Draft, item: FixedDecl, section: str | None) -> None:
        kind = item.kind
        name = item.name or kind
        if item.name is None and kind == "fixed":
            self._error(item.loc, "a fixed block needs a name: `fixed NAME { ... }`")
            return
        where = f"a `{kind}`" if name == kind else f"`{kind} {name}`"
        nodes = [self._node_item(k, where=where) for k in item.nodes]
        block = DraftFixed(kind=kind, name=name, section=section, nodes=nodes, loc=item.loc)
        if kind in ("stem", "head"):
            # One stem and one head per space, whatever their names.
            first = draft.local.get(("part", f"@{kind}"))
            if first is not None:
                self._error(
                    block.loc, f"a second `{kind}` (the first is at {first[1]}): a space has one"
                )
                return
            draft.local[("part", f"@{kind}")] = (kind, block.loc)
        what = "fixed block" if kind == "fixed" else kind
        if not self._declare(draft.local, ("part", name), what, block.loc):
            return
        for index, part in enumerate(draft.parts):
            if isinstance(part, DraftFixed) and part.name == name:
                block.section = section or part.section
                draft.parts[index] = block
                return
            if isinstance(part, DraftStage) and part.name == name:
                self._error(block.loc, f"'{name}' is already a stage")
                return
        if draft.extends is not None:
            self._error(
                block.loc,
                f"'{name}' is not a part of '{draft.extends}'; a derived space can only change its parts",
            )
            return
        draft.parts.append(block)

    def _stage_for(
        self, draft: Draft, name: str, loc: Location, section: str | None
    ) -> DraftStage | None:
        existing = draft.stage(name)
        if existing is not None:
            first = draft.local.get(("part", name))
            if draft.extends is None or first is not None:
                where = first[1] if first is not None else existing.loc
                self._error(loc, f"stage '{name}' is defined twice (first at {where})")
                return None
            # A derived space patches the inherited stage: what the patch does not
            # restate (depth, layers, choices, lets, before, after) is kept.
            draft.local[("part", name)] = ("stage", loc)
            return existing
        if any(isinstance(p, DraftFixed) and p.name == name for p in draft.parts):
            self._error(loc, f"'{name}' is already a fixed block")
            return None
        if draft.extends is not None:
            self._error(
                loc,
                f"stage '{name}' is not in '{draft.extends}'; a derived space can only change its stages",
            )
            return None
        stage = DraftStage(name=name, section=section, loc=loc)
        draft.local[("part", name)] = ("stage", loc)
        draft.parts.append(stage)
        return stage

    def _stage_decl(self, draft: Draft, item: StageDecl, section: str | None) -> None:
        stage = self._stage_for(draft, item.name.text, item.name.loc, section)
        if stage is not None:
            self._stage_body(stage, item.items, local={})

    def _stages_decl(self, draft: Draft, item: StagesDecl, section: str | None) -> None:
        names = [c.text for c in item.columns]
        column_locs: Declared = {}
        for column in item.columns:
            if not self._declare(column_locs, ("name", column.text), "column", column.loc):
                return
        for row in item.rows:
            if len(row.values) != len(names):
                self._error(
                    row.loc,
                    f"stage '{row.name}' gives {len(row.values)} values for {len(names)} columns ({', '.join(names)})",
                )
                continue
            loc = row.name.loc
            # The stage's place is its row; its body is the family's, shared by the rows.
            loc = Location(loc.path, loc.line, loc.column, loc.end_line, item.loc)
            stage = self._stage_for(draft, row.name.text, loc, section)
            if stage is None:
                continue
            for column, value in zip(names, row.values, strict=True):
                self._stage_column(stage, column, value)
            # The body's names must differ from the columns (a `let` would hide one).
            self._stage_body(stage, item.items, keep_depth=True, local=dict(column_locs))

    def _stage_column(self, stage: DraftStage, column: str, value: LocatedExpr) -> None:
        expr = self._expr(value)
        if column != "depth":
            stage.lets[column] = Placed(expr, value.loc)
            return
        depth = expr.value if isinstance(expr, Const) else None
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            self._error(value.loc, "a depth column needs a positive integer")
            return
        stage.depth = Placed([depth], value.loc)
        stage.depth_from_row = True

    def _stage_body(
        self,
        stage: DraftStage,
        items: list,
        keep_depth: bool = False,
        local: Declared | None = None,
    ) -> None:
        """Fill (or, in a derived space, patch) a stage from its body items.

        A patch replaces only what it restates: `depth`; all layer alternatives (with
        its first `layer`); all `before` operations (with its first `before`); all
        `after` operations (with its first `after`); a choice or let by name.
        """
        local = {} if local is None else local
        replaced: set[str] = set()
        for item in items:
            if isinstance(item, DepthDecl):
                if self._declare(local, ("depth", ""), "depth", item.loc) and not (
                    keep_depth and stage.depth_from_row
                ):
                    self._depth(stage, item)
            elif isinstance(item, ChoiceDecl):
                self._choice(stage, local, item)
            elif isinstance(item, LetDecl):
                self._let(stage, local, item)
            elif isinstance(item, LayerDecl):
                options = [self._alternative(a) for a in item.alternatives]
                _patch(stage, "options", replaced, options)
            elif isinstance(item, EdgeDecl):
                node = self._node_item(item.node, where=f"`{item.word}`")
                _patch(stage, item.word, replaced, [node])

    def _depth(self, stage: DraftStage, item: DepthDecl) -> None:
        low = int(item.low.text)
        high = int(item.high.text) if item.high is not None else low
        if high < low:
            self._error(item.low.loc, f"depth range {low}..{high} is empty")
            stage.depth_error = True
            return
        if high < 1:
            self._error(
                item.low.loc,
                "a stage needs at least one layer in some architecture (depth >= 1; "
                "`depth 0..N` makes it optional)",
            )
            stage.depth_error = True
            return
        stage.depth = Placed(list(range(low, high + 1)), item.loc)

    def _alternative(self, alternative: Alternative) -> DraftOption:
        residual = None
        if alternative.residual is not None:
            residual = self._residual(alternative.residual)
        body = alternative.body
        if isinstance(body, NodeBlock):
            nodes = [self._node_item(k, where=None) for k in body.items]
        else:
            nodes = [self._call(body, None, where=None)]
        return DraftOption(
            label=alternative.label, nodes=nodes, loc=alternative.loc, residual=residual
        )

    def _code(self, draft: Draft, item: CodeDecl, section: str | None) -> None:
        name, kind, loc = item.name.text, item.kind.text, item.name.loc
        if not self._declare(draft.local, ("code", name), "code", loc):
            return
        if kind not in ("layers", "stages"):
            self._error(item.kind.loc, "a code is `layers` or `stages`")
            return
        tokens: dict[str, dict[str, Value]] = {}
        for entry in item.entries:
            value = entry.token.value
            token = format_value(value) if not isinstance(value, str) else value
            if token in tokens:
                self._error(entry.loc, f"token '{token}' is given twice")
                continue
            tokens[token] = entry.assignment.values()
        if not tokens:
            self._error(loc, f"code '{name}' lists no token")
            return
        draft.codes[name] = ArchitectureCode(kind=kind, tokens=tokens)  # type: ignore[arg-type]

    def _residual(self, clause: ResidualClause) -> Residual:
        """`residual(shortcut = auto|conv|identity, act = ACTIVATION)`: literal names only."""
        allowed = {"shortcut": ("auto", "conv", "identity"), "act": ACTIVATIONS}
        values: dict[str, str] = {}
        for arg in clause.args:
            key, loc = arg.name.text, arg.name.loc
            if key not in allowed:
                self._error(loc, f"residual has no setting '{key}' (settings: shortcut, act)")
                continue
            if key in values:
                self._error(loc, f"'{key}' is given twice")
                continue
            expr = self._expr(arg.value) if isinstance(arg.value, LocatedExpr) else None
            name = expr.name if isinstance(expr, Ref) and "." not in expr.name else None
            if name not in allowed[key]:
                self._error(
                    arg.value.loc, f"residual {key} must be one of {', '.join(allowed[key])}"
                )
                continue
            values[key] = name
        return Residual(**values)  # type: ignore[arg-type]

    def _node_item(self, item: NodeItem, where: str | None) -> DraftNode:
        condition = self._expr(item.condition) if item.condition is not None else None
        return self._call(item.call, condition, where)

    def _call(self, call: CallNode, condition: Expr | None, where: str | None) -> DraftNode:
        """One operation; `where` names the fixed part it is in (None: inside a `layer`)."""
        node = DraftNode(op=call.op, args={}, domains={}, condition=condition, loc=call.loc)
        for arg in call.args:
            key, loc = arg.name.text, arg.name.loc
            if key in node.args:
                self._error(loc, f"'{key}' is given twice")
                continue
            value = arg.value
            if isinstance(value, LocatedExpr):
                node.args[key] = Placed(self._expr(value), loc)
                continue
            if where is not None:
                # Per-layer choices exist only in layers; say so here, not at the shape check.
                self._error(
                    value.loc,
                    f"a set of values is not allowed in {where}: per-layer choices belong "
                    f"in a `layer`; for one decision, declare `choice NAME = ...` and use "
                    f"its name ({key} = NAME)",
                )
            domain = self._domain(value)
            if domain is None:
                continue
            node.domains[key] = domain
            node.args[key] = Placed(LayerRef(name=key), loc)
        return node

    def _one_value(self, arg: Arg) -> Expr | None:
        if isinstance(arg.value, LocatedExpr):
            return self._expr(arg.value)
        self._error(arg.value.loc, "a set of values is not allowed here; give one value")
        return None

    # ----- domains and expressions --------------------------------------------------

    def _domain(self, domain: Domain) -> list[Value] | None:
        if isinstance(domain, RangeDomain):
            low, high, step = domain.low, domain.high, domain.step
            if step < 1:
                self._error(domain.loc, "a range step must be at least 1")
                return None
            if high < low:
                self._error(domain.loc, f"range {low}..{high} is empty")
                return None
            return list(range(low, high + 1, step))
        seen: list[Value] = []
        for node in domain.values:
            if any(same_value(node.value, v) for v in seen):
                self._error(node.loc, f"{format_value(node.value)} is listed twice")
                continue
            seen.append(node.value)
        return seen

    def _expr(self, located: LocatedExpr) -> Expr:
        """The expression, with its unknown functions (and wrong argument counts) reported."""
        for loc, message in located.problems:
            self._error(loc, message)
        return located.strict()


def _patch(stage: DraftStage, field: str, replaced: set[str], found: list) -> None:
    """Add a stage's layer alternatives (`before`, `after` operations) from one item."""
    if field not in replaced:
        # In a derived space the first `layer` (`before`, `after`) replaces the inherited ones.
        setattr(stage, field, [])
        replaced.add(field)
    getattr(stage, field).extend(found)
