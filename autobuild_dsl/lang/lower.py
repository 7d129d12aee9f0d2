"""Syntax tree -> Space: lowering, `extends`, name resolution, ties and semantic checks.

Every mistake is collected (not raised one by one) with its source position, so a user
sees all of them in one run. Lowering works on a mutable draft so that a derived space
(`extends`) can patch what it inherits before the draft is frozen into a `Space`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from lark import Token, Tree

from autobuild_dsl.lang.diagnostics import DiagnosticSink, SourceFile
from autobuild_dsl.lang.parser import parse
from autobuild_dsl.space.expr import (
    FUNCTIONS,
    Binary,
    Call,
    Const,
    Expr,
    ExprError,
    LayerRef,
    Ref,
    Unary,
    Value,
    evaluate,
    format_expr,
    format_value,
    names_in,
)
from autobuild_dsl.space.model import (
    INPUT_NAMES,
    ArchitectureCode,
    FixedBlock,
    LayerOption,
    NodeTemplate,
    Residual,
    Rule,
    SkipSpec,
    Space,
    Stage,
    StageModule,
    Unit,
)
from autobuild_dsl.space.ops import ACTIVATIONS, CATALOG

_PUNCTUATION = {
    "LBRACE", "RBRACE", "LPAR", "RPAR", "LSQB", "RSQB", "COMMA", "EQUAL", "DOTDOT",
    "DOT", "BAR", "ARROW",
}  # fmt: skip
_INPUT_KEYS = {
    "channels": "int",
    "size": "int",
    "context": "int",
    "tokens": "int",
    "timestep": "bool",
}
_MAX_TYPECHECK_COMBINATIONS = 4096


@dataclass
class Loc:
    source: SourceFile
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.column}"


@dataclass
class DraftNode:
    op: str
    args: dict[str, Expr]
    arg_locs: dict[str, Loc]
    domains: dict[str, list[Value]]
    condition: Expr | None
    loc: Loc


@dataclass
class DraftOption:
    label: str | None
    nodes: list[DraftNode]
    loc: Loc
    residual: Residual | None = None


@dataclass
class DraftStage:
    name: str
    section: str | None
    loc: Loc
    depths: list[int] | None = None
    depth_loc: Loc | None = None
    options: list[DraftOption] = field(default_factory=list)
    choices: dict[str, list[Value]] = field(default_factory=dict)
    choice_locs: dict[str, Loc] = field(default_factory=dict)
    lets: dict[str, Expr] = field(default_factory=dict)
    let_locs: dict[str, Loc] = field(default_factory=dict)
    before: list[DraftNode] = field(default_factory=list)
    after: list[DraftNode] = field(default_factory=list)


@dataclass
class DraftFixed:
    kind: str
    name: str
    section: str | None
    nodes: list[DraftNode]
    loc: Loc


@dataclass
class DraftRestriction:
    target: str
    modules: list[list[tuple[dict[str, Value], list[dict[str, Value]]]]]
    loc: Loc
    # Where each module, and each stage part of it, is written (diagnostics point there).
    module_locs: list[Loc] = field(default_factory=list)
    part_locs: list[list[Loc]] = field(default_factory=list)
    layer_locs: list[list[list[Loc]]] = field(default_factory=list)


@dataclass
class Draft:
    name: str
    loc: Loc
    description: str = ""
    extends: str | None = None
    input: dict[str, Expr] = field(default_factory=dict)
    input_locs: dict[str, Loc] = field(default_factory=dict)
    lets: dict[str, Expr] = field(default_factory=dict)
    let_locs: dict[str, Loc] = field(default_factory=dict)
    choices: dict[str, list[Value]] = field(default_factory=dict)
    choice_locs: dict[str, Loc] = field(default_factory=dict)
    parts: list[DraftStage | DraftFixed] = field(default_factory=list)
    skips: list[tuple[str, str, Loc]] = field(default_factory=list)
    units: list[tuple[str, list[str], Loc]] = field(default_factory=list)
    requires: list[tuple[Expr, Loc]] = field(default_factory=list)
    restrictions: list[DraftRestriction] = field(default_factory=list)
    codes: dict[str, ArchitectureCode] = field(default_factory=dict)
    # What the space being lowered declares in its own body (not what it inherits):
    # (namespace, name) -> (what it is, where). Declaring a name twice is an error.
    local: dict[tuple[str, str], tuple[str, Loc]] = field(default_factory=dict)


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _loc(source: SourceFile, item: Tree | Token) -> Loc:
    if isinstance(item, Token):
        return Loc(source, item.line or 1, item.column or 1)
    meta = item.meta
    return Loc(source, getattr(meta, "line", 1), getattr(meta, "column", 1))


def _kids(tree: Tree) -> list[Tree | Token]:
    return [c for c in tree.children if not (isinstance(c, Token) and c.type in _PUNCTUATION)]


class Lowerer:
    """Lowers the spaces of one or more files; errors go to one shared sink."""

    def __init__(self, sink: DiagnosticSink, lenient: bool = False) -> None:
        self.sink = sink
        # Lenient (for `abc fmt`): keep calls of unknown functions as written.
        self.lenient = lenient
        self._files: dict[str, tuple[SourceFile, Tree | None]] = {}
        self._in_progress: set[tuple[str, str]] = set()
        self._names_checked: set[str] = set()

    # ----- entry points -------------------------------------------------------------

    def load_file(self, path: str, text: str | None = None) -> tuple[SourceFile, Tree | None]:
        key = str(Path(path))
        if key not in self._files:
            if text is None:
                text = Path(path).read_text(encoding="utf-8")
            source = SourceFile(path=path, text=normalize_newlines(text))
            self._files[key] = (source, parse(source, self.sink))
        return self._files[key]

    def space_names(self, tree: Tree) -> list[tuple[str, Tree]]:
        result = []
        for decl in tree.children:
            if isinstance(decl, Tree) and decl.data == "space_decl":
                result.append((str(_kids(decl)[1]), decl))
        return result

    def check_space_names(self, source: SourceFile, tree: Tree) -> None:
        """Two spaces of one name in a file: an error at the second, naming the first."""
        if source.path in self._names_checked:
            return
        self._names_checked.add(source.path)
        first: dict[str, Loc] = {}
        for name, decl in self.space_names(tree):
            loc = _loc(source, _kids(decl)[1])
            if name in first:
                self._error(loc, f"space '{name}' is defined twice (first at {first[name]})")
            else:
                first[name] = loc

    def draft(self, source: SourceFile, tree: Tree, name: str | None) -> Draft | None:
        spaces = self.space_names(tree)
        if not spaces:
            return None
        self.check_space_names(source, tree)
        if name is None:
            chosen = spaces[0][1]
        else:
            matches = [decl for n, decl in spaces if n == name]
            if not matches:
                known = ", ".join(n for n, _ in spaces)
                self.sink.error(source, 1, 1, f"no space named '{name}' here (spaces: {known})")
                return None
            chosen = matches[0]
        return self._lower_space(source, tree, chosen)

    # ----- spaces -------------------------------------------------------------------

    def _lower_space(self, source: SourceFile, tree: Tree, decl: Tree) -> Draft | None:
        kids = _kids(decl)
        name_token = kids[1]
        name = str(name_token)
        guard = (source.path, name)
        if guard in self._in_progress:
            self.sink.error(*self._pos(_loc(source, name_token)), f"space '{name}' extends itself")
            return None
        self._in_progress.add(guard)
        try:
            items = kids[2:]
            draft: Draft | None = None
            if items and isinstance(items[0], Tree) and items[0].data == "extends_clause":
                draft = self._inherit(source, tree, items[0])
                items = items[1:]
                if draft is None:
                    return None
                draft.extends = draft.name
                draft.name = name
                draft.loc = _loc(source, name_token)
            if draft is None:
                draft = Draft(name=name, loc=_loc(source, name_token))
            # Only this space's own body counts for "declared twice"; it may restate
            # what it inherits.
            draft.local = {}
            for item in items:
                self._space_item(source, draft, item, section=None)
            return draft
        finally:
            self._in_progress.discard(guard)

    def _pos(self, loc: Loc) -> tuple[SourceFile, int, int]:
        return loc.source, loc.line, loc.column

    def _error(self, loc: Loc, message: str) -> None:
        self.sink.error(loc.source, loc.line, loc.column, message)

    def _declare(
        self,
        local: dict[tuple[str, str], tuple[str, Loc]],
        key: tuple[str, str],
        what: str,
        loc: Loc,
    ) -> bool:
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

    def _reserved(self, name: str, loc: Loc, what: str) -> bool:
        if name != "depth":
            return False
        self._error(
            loc,
            f"'depth' cannot name a {what}: it is reserved for a stage's depth (`depth`, `s1.depth`)",
        )
        return True

    def _inherit(self, source: SourceFile, tree: Tree, clause: Tree) -> Draft | None:
        kids = _kids(clause)
        parent_name = str(kids[1])
        if len(kids) > 3:
            raw = str(kids[3])[1:-1]
            parent_path = Path(source.path).parent / raw
            if not parent_path.is_file():
                self._error(_loc(source, kids[3]), f"cannot read '{raw}': no such file")
                return None
            try:
                parent_source, parent_tree = self.load_file(str(parent_path))
            except (OSError, UnicodeDecodeError) as error:
                self._error(_loc(source, kids[3]), f"cannot read '{raw}': {error}")
                return None
            if parent_tree is None:
                self._error(_loc(source, kids[3]), f"'{raw}' has errors (shown above)")
                return None
            self.check_space_names(parent_source, parent_tree)
        else:
            parent_source, parent_tree = source, tree
        for name, decl in self.space_names(parent_tree):
            if name == parent_name:
                return self._lower_space(parent_source, parent_tree, decl)
        where = "in this file" if len(kids) <= 3 else f"in {kids[3]}"
        self._error(_loc(source, kids[1]), f"no space named '{parent_name}' {where}")
        return None

    def _space_item(
        self, source: SourceFile, draft: Draft, item: Tree, section: str | None
    ) -> None:
        kind = item.data
        kids = _kids(item)
        if kind == "description":
            if self._declare(draft.local, ("description", ""), "description", _loc(source, item)):
                draft.description = _unquote(str(kids[1]))
        elif kind == "input_decl":
            for arg in kids[1:]:
                key, value = self._arg(source, arg, allow_domain=False)
                if key is None:
                    continue
                loc = _loc(source, arg)
                if key not in _INPUT_KEYS:
                    known = ", ".join(_INPUT_KEYS)
                    self._error(loc, f"unknown input setting '{key}' (settings: {known})")
                    continue
                if not self._declare(draft.local, ("input", key), "input setting", loc):
                    continue
                draft.input[key] = value
                draft.input_locs[key] = loc
        elif kind == "choice_decl":
            name = str(kids[1])
            loc = _loc(source, kids[1])
            domain = self._domain(source, kids[2])
            if self._reserved(name, loc, "choice"):
                return
            if not self._declare(draft.local, ("name", name), "choice", loc):
                return
            if domain is not None:
                draft.choices[name] = domain
                draft.choice_locs[name] = loc
        elif kind == "let_decl":
            name = str(kids[1])
            loc = _loc(source, kids[1])
            expr = self._expr(source, kids[2])
            if self._reserved(name, loc, "let"):
                return
            if not self._declare(draft.local, ("name", name), "let", loc):
                return
            draft.lets[name] = expr
            draft.let_locs[name] = loc
        elif kind == "fixed_block":
            self._fixed_block(source, draft, item, section)
        elif kind == "stage_decl":
            self._stage_decl(source, draft, item, section)
        elif kind == "stages_decl":
            self._stages_decl(source, draft, item, section)
        elif kind == "section_decl":
            name = str(kids[1])
            for sub in kids[2:]:
                self._space_item(source, draft, sub, section=name)
        elif kind == "skip_decl":
            loc = _loc(source, item)
            text = f"{kids[1]} -> {kids[2]}"
            if self._declare(draft.local, ("skip", text), "skip", loc):
                draft.skips.append((str(kids[1]), str(kids[2]), loc))
        elif kind == "require_decl":
            draft.requires.append((self._expr(source, kids[1]), _loc(source, kids[1])))
        elif kind == "unit_decl":
            names = [str(k) for k in kids[2:] if not (isinstance(k, Token) and k.type == "PLUS")]
            loc = _loc(source, item)
            if self._declare(draft.local, ("unit", str(kids[1])), "unit", loc):
                draft.units.append((str(kids[1]), names, loc))
        elif kind == "restrict_decl":
            draft.restrictions.append(self._restrict(source, item))
        elif kind == "code_decl":
            self._code(source, draft, item)
        else:  # pragma: no cover - the grammar has no other items
            self._error(_loc(source, item), f"unsupported item '{kind}'")

    # ----- fixed parts and stages ---------------------------------------------------

    def _fixed_block(
        self, source: SourceFile, draft: Draft, item: Tree, section: str | None
    ) -> None:
        kids = _kids(item)
        kind = str(kids[0])
        rest = kids[1:]
        name = kind
        if rest and isinstance(rest[0], Token) and rest[0].type == "NAME":
            name = str(rest[0])
            rest = rest[1:]
        elif kind == "fixed":
            self._error(_loc(source, item), "a fixed block needs a name: `fixed NAME { ... }`")
            return
        where = f"a `{kind}`" if name == kind else f"`{kind} {name}`"
        nodes = [
            n for n in (self._node_item(source, k, where=where) for k in rest) if n is not None
        ]
        block = DraftFixed(
            kind=kind, name=name, section=section, nodes=nodes, loc=_loc(source, item)
        )
        if kind in ("stem", "head"):
            # One stem and one head per space, whatever their names.
            first = draft.local.get(("part", f"@{kind}"))
            if first is not None:
                self._error(
                    block.loc, f"a second `{kind}` (the first is at {first[1]}): a space has one"
                )
                return
            draft.local[("part", f"@{kind}")] = (kind, block.loc)
        if not self._declare(
            draft.local, ("part", name), "fixed block" if kind == "fixed" else kind, block.loc
        ):
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

    def _find_stage(self, draft: Draft, name: str) -> DraftStage | None:
        for part in draft.parts:
            if isinstance(part, DraftStage) and part.name == name:
                return part
        return None

    def _stage_for(
        self, source: SourceFile, draft: Draft, name_token: Token, section: str | None
    ) -> DraftStage | None:
        name = str(name_token)
        loc = _loc(source, name_token)
        existing = self._find_stage(draft, name)
        if existing is not None:
            first = draft.local.get(("part", name))
            if draft.extends is None or first is not None:
                where = first[1] if first is not None else existing.loc
                self._error(loc, f"stage '{name}' is defined twice (first at {where})")
                return None
            # A derived space patches the inherited stage: what the patch does not
            # restate (depth, layers, choices, lets, before, after) is kept.
            draft.local[("part", name)] = ("stage", loc)
            existing._patched = True  # type: ignore[attr-defined]
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

    def _stage_decl(
        self, source: SourceFile, draft: Draft, item: Tree, section: str | None
    ) -> None:
        kids = _kids(item)
        stage = self._stage_for(source, draft, kids[1], section)
        if stage is None:
            return
        self._stage_body(source, stage, kids[2:], local={})

    def _stages_decl(
        self, source: SourceFile, draft: Draft, item: Tree, section: str | None
    ) -> None:
        kids = _kids(item)
        columns: list[Token] = []
        index = 1
        while isinstance(kids[index], Token) and kids[index].type == "NAME":
            columns.append(kids[index])
            index += 1
        rows = [k for k in kids[index:] if isinstance(k, Tree) and k.data == "stage_row"]
        body = [k for k in kids[index:] if not (isinstance(k, Tree) and k.data == "stage_row")]
        names = [str(c) for c in columns]
        column_locs: dict[tuple[str, str], tuple[str, Loc]] = {}
        for column in columns:
            if not self._declare(
                column_locs, ("name", str(column)), "column", _loc(source, column)
            ):
                return
        for row in rows:
            row_kids = _kids(row)
            values = row_kids[1:]
            if len(values) != len(columns):
                self._error(
                    _loc(source, row),
                    f"stage '{row_kids[0]}' gives {len(values)} values for {len(columns)} columns ({', '.join(names)})",
                )
                continue
            stage = self._stage_for(source, draft, row_kids[0], section)
            if stage is None:
                continue
            for column, value in zip(names, values, strict=True):
                expr = self._expr(source, value)
                if column == "depth":
                    depth = _const_int(expr)
                    if depth is None or depth < 1:
                        self._error(_loc(source, value), "a depth column needs a positive integer")
                        continue
                    stage.depths = [depth]
                    stage.depth_loc = _loc(source, value)
                    stage._depth_from_row = True  # type: ignore[attr-defined]
                else:
                    stage.lets[column] = expr
                    stage.let_locs[column] = _loc(source, value)
            # The body's names must differ from the columns (a `let` would hide one).
            self._stage_body(source, stage, body, keep_depth=True, local=dict(column_locs))

    def _stage_body(
        self,
        source: SourceFile,
        stage: DraftStage,
        items: list,
        keep_depth: bool = False,
        local: dict[tuple[str, str], tuple[str, Loc]] | None = None,
    ) -> None:
        """Fill (or, in a derived space, patch) a stage from its body items.

        A patch replaces only what it restates: `depth`; all layer alternatives (with
        its first `layer`); all `before` operations (with its first `before`); all
        `after` operations (with its first `after`); a choice or let by name.
        """
        local = {} if local is None else local
        replaced: set[str] = set()
        for item in items:
            kids = _kids(item)
            kind = item.data
            if kind == "depth_decl":
                if not self._declare(local, ("depth", ""), "depth", _loc(source, item)):
                    continue
                if keep_depth and getattr(stage, "_depth_from_row", False):
                    continue
                low = int(kids[1])
                high = int(kids[2]) if len(kids) > 2 else low
                if high < low:
                    self._error(_loc(source, kids[1]), f"depth range {low}..{high} is empty")
                    stage._depth_error = True  # type: ignore[attr-defined]
                    continue
                if high < 1:
                    self._error(
                        _loc(source, kids[1]),
                        "a stage needs at least one layer in some architecture (depth >= 1; "
                        "`depth 0..N` makes it optional)",
                    )
                    stage._depth_error = True  # type: ignore[attr-defined]
                    continue
                stage.depths = list(range(low, high + 1))
                stage.depth_loc = _loc(source, item)
            elif kind == "layer_decl":
                if "layer" not in replaced:
                    stage.options = []
                    replaced.add("layer")
                for alternative in kids[1:]:
                    option = self._alternative(source, alternative)
                    if option is not None:
                        stage.options.append(option)
            elif kind == "choice_decl":
                name = str(kids[1])
                loc = _loc(source, kids[1])
                domain = self._domain(source, kids[2])
                if self._reserved(name, loc, "choice") or not self._declare(
                    local, ("name", name), "choice", loc
                ):
                    continue
                if domain is not None:
                    stage.choices[name] = domain
                    stage.choice_locs[name] = loc
            elif kind == "let_decl":
                name = str(kids[1])
                loc = _loc(source, kids[1])
                expr = self._expr(source, kids[2])
                if self._reserved(name, loc, "let") or not self._declare(
                    local, ("name", name), "let", loc
                ):
                    continue
                stage.lets[name] = expr
                stage.let_locs[name] = loc
            elif kind in ("before_decl", "after_decl"):
                word = "before" if kind == "before_decl" else "after"
                node = self._node_item(source, kids[1], where=f"`{word}`")
                if node is None:
                    continue
                if word not in replaced:
                    # In a derived space the first `before`/`after` replaces the inherited ones.
                    setattr(stage, word, [])
                    replaced.add(word)
                getattr(stage, word).append(node)

    def _alternative(self, source: SourceFile, alternative: Tree) -> DraftOption | None:
        kids = _kids(alternative)
        label = None
        if len(kids) >= 3 and isinstance(kids[-2], Token) and kids[-2].type == "AS":
            label = str(kids[-1])
        residual = None
        clause = next(
            (k for k in kids if isinstance(k, Tree) and k.data == "residual_clause"), None
        )
        if clause is not None:
            residual = self._residual(source, clause)
        body = kids[0]
        if isinstance(body, Tree) and body.data == "node_block":
            nodes = [self._node_item(source, k, where=None) for k in _kids(body)]
        else:
            nodes = [self._call(source, body, None, where=None)]
        clean = [n for n in nodes if n is not None]
        if not clean:
            return None
        return DraftOption(
            label=label, nodes=clean, loc=_loc(source, alternative), residual=residual
        )

    def _code(self, source: SourceFile, draft: Draft, item: Tree) -> None:
        kids = _kids(item)
        name, kind = str(kids[1]), str(kids[2])
        loc = _loc(source, kids[1])
        if not self._declare(draft.local, ("code", name), "code", loc):
            return
        if kind not in ("layers", "stages"):
            self._error(_loc(source, kids[2]), "a code is `layers` or `stages`")
            return
        tokens: dict[str, dict[str, Value]] = {}
        for entry in kids[3:]:
            entry_kids = _kids(entry)
            value = self._value(source, entry_kids[0])
            token = format_value(value) if not isinstance(value, str) else value
            if token in tokens:
                self._error(_loc(source, entry), f"token '{token}' is given twice")
                continue
            tokens[token] = self._assignment(source, entry_kids[1])
        if not tokens:
            self._error(loc, f"code '{name}' lists no token")
            return
        draft.codes[name] = ArchitectureCode(kind=kind, tokens=tokens)  # type: ignore[arg-type]

    def _residual(self, source: SourceFile, clause: Tree) -> Residual:
        """`residual(shortcut = auto|conv|identity, act = ACTIVATION)`: literal names only."""
        allowed = {"shortcut": ("auto", "conv", "identity"), "act": ACTIVATIONS}
        values: dict[str, str] = {}
        for arg in _kids(clause)[1:]:
            arg_kids = _kids(arg)
            key, value = str(arg_kids[0]), arg_kids[1]
            loc = _loc(source, arg_kids[0])
            if key not in allowed:
                self._error(loc, f"residual has no setting '{key}' (settings: shortcut, act)")
                continue
            if key in values:
                self._error(loc, f"'{key}' is given twice")
                continue
            expr = None
            if not (isinstance(value, Tree) and "domain" in value.data):
                expr = self._expr(source, value)
            name = expr.name if isinstance(expr, Ref) and "." not in expr.name else None
            if name not in allowed[key]:
                self._error(
                    _loc(source, value),
                    f"residual {key} must be one of {', '.join(allowed[key])}",
                )
                continue
            values[key] = name
        return Residual(**values)  # type: ignore[arg-type]

    def _node_item(self, source: SourceFile, item: Tree, where: str | None) -> DraftNode | None:
        kids = _kids(item)
        condition = self._expr(source, kids[2]) if len(kids) > 2 else None
        return self._call(source, kids[0], condition, where)

    def _call(
        self, source: SourceFile, call: Tree, condition: Expr | None, where: str | None
    ) -> DraftNode | None:
        """One operation; `where` names the fixed part it is in (None: inside a `layer`)."""
        kids = _kids(call)
        op = str(kids[0])
        node = DraftNode(
            op=op, args={}, arg_locs={}, domains={}, condition=condition, loc=_loc(source, call)
        )
        for arg in kids[1:]:
            arg_kids = _kids(arg)
            key = str(arg_kids[0])
            loc = _loc(source, arg_kids[0])
            if key in node.args:
                self._error(loc, f"'{key}' is given twice")
                continue
            value = arg_kids[1]
            if isinstance(value, Tree) and value.data in ("set_domain", "range_domain"):
                if where is not None:
                    # Per-layer choices exist only in layers; say so here, not at the shape check.
                    self._error(
                        _loc(source, value),
                        f"a set of values is not allowed in {where}: per-layer choices belong "
                        f"in a `layer`; for one decision, declare `choice NAME = ...` and use "
                        f"its name ({key} = NAME)",
                    )
                domain = self._domain(source, value)
                if domain is None:
                    continue
                node.domains[key] = domain
                node.args[key] = LayerRef(name=key)
            else:
                node.args[key] = self._expr(source, value)
            node.arg_locs[key] = loc
        return node

    def _arg(self, source: SourceFile, arg: Tree, allow_domain: bool) -> tuple[str | None, Expr]:
        kids = _kids(arg)
        value = kids[1]
        if isinstance(value, Tree) and value.data in ("set_domain", "range_domain"):
            self._error(_loc(source, value), "a set of values is not allowed here; give one value")
            return None, Const(value=0)
        return str(kids[0]), self._expr(source, value)

    def _restrict(self, source: SourceFile, item: Tree) -> DraftRestriction:
        kids = _kids(item)
        target = str(kids[1])
        modules = []
        module_locs: list[Loc] = []
        part_locs: list[list[Loc]] = []
        layer_locs: list[list[list[Loc]]] = []
        for module in kids[3:]:
            parts = []
            module_locs.append(_loc(source, module))
            part_locs.append([])
            layer_locs.append([])
            for stage_module in _kids(module):
                if isinstance(stage_module, Token):
                    continue
                part_locs[-1].append(_loc(source, stage_module))
                sm_kids = _kids(stage_module)
                choices: dict[str, Value] = {}
                if (
                    len(sm_kids)
                    and isinstance(sm_kids[0], Tree)
                    and sm_kids[0].data == "assignment"
                    and len(sm_kids) > 1
                    and _is_stage_assignment(stage_module)
                ):
                    choices = self._assignment(source, sm_kids[0])
                    sm_kids = sm_kids[1:]
                layers = [self._assignment(source, a) for a in sm_kids]
                layer_locs[-1].append([_loc(source, a) for a in sm_kids])
                parts.append((choices, layers))
            modules.append(parts)
        return DraftRestriction(
            target=target,
            modules=modules,
            loc=_loc(source, kids[1]),
            module_locs=module_locs,
            part_locs=part_locs,
            layer_locs=layer_locs,
        )

    def _assignment(self, source: SourceFile, tree: Tree) -> dict[str, Value]:
        result: dict[str, Value] = {}
        for pair in _kids(tree):
            pair_kids = _kids(pair)
            result[str(pair_kids[0])] = self._value(source, pair_kids[1])
        return result

    # ----- values, domains and expressions ------------------------------------------

    def _value(self, source: SourceFile, tree: Tree | Token) -> Value:
        if isinstance(tree, Token):
            return str(tree)
        kind = tree.data
        if kind == "true":
            return True
        if kind == "false":
            return False
        if kind == "symbol":
            return str(tree.children[0])
        if kind == "string":
            return _unquote(str(tree.children[0]))
        if kind == "signed_number":
            kids = tree.children
            negative = isinstance(kids[0], Token) and kids[0].type == "MINUS"
            number = self._value(source, kids[-1])
            assert isinstance(number, int | float)
            return -number if negative else number
        if kind == "int":
            return int(tree.children[0])
        if kind == "float":
            return float(tree.children[0])
        self._error(_loc(source, tree), "expected a value")
        return 0

    def _domain(self, source: SourceFile, tree: Tree) -> list[Value] | None:
        kids = _kids(tree)
        loc = _loc(source, tree)
        if tree.data == "range_domain":
            low, high = int(kids[0]), int(kids[1])
            step = int(kids[3]) if len(kids) > 3 else 1
            if step < 1:
                self._error(loc, "a range step must be at least 1")
                return None
            if high < low:
                self._error(loc, f"range {low}..{high} is empty")
                return None
            return list(range(low, high + 1, step))
        values = [self._value(source, k) for k in kids]
        seen: list[Value] = []
        for value, kid in zip(values, kids, strict=True):
            if any(_same(value, v) for v in seen):
                self._error(_loc(source, kid), f"{format_value(value)} is listed twice")
                continue
            seen.append(value)
        return seen

    def _expr(self, source: SourceFile, tree: Tree | Token) -> Expr:
        if isinstance(tree, Token):
            if tree.type == "NAME":
                return Ref(name=str(tree))
            return Const(value=str(tree))
        kind = tree.data
        kids = tree.children
        if kind == "int":
            return Const(value=int(kids[0]))
        if kind == "float":
            return Const(value=float(kids[0]))
        if kind == "true":
            return Const(value=True)
        if kind == "false":
            return Const(value=False)
        if kind == "string":
            return Const(value=_unquote(str(kids[0])))
        if kind == "ref":
            names = [str(k) for k in kids if isinstance(k, Token) and k.type == "NAME"]
            return Ref(name=".".join(names))
        if kind == "neg":
            return Unary(op="-", operand=self._expr(source, kids[1]))
        if kind == "not_op":
            return Unary(op="not", operand=self._expr(source, kids[1]))
        if kind == "func_call":
            name = str(kids[0])
            args = [self._expr(source, k) for k in _kids(tree)[1:]]
            if self.lenient:
                return Call(func=name, args=args)
            if name not in FUNCTIONS:
                self._error(
                    _loc(source, tree),
                    f"unknown function '{name}' (functions: {', '.join(FUNCTIONS)})",
                )
                return Const(value=0)
            low, high = FUNCTIONS[name]
            if len(args) < low or (high is not None and len(args) > high):
                self._error(
                    _loc(source, tree),
                    f"{name}() takes {low if high == low else f'at least {low}'} argument(s), got {len(args)}",
                )
            return Call(func=name, args=args)
        if kind in ("or_expr", "and_expr", "sum", "product", "comparison"):
            result = self._expr(source, kids[0])
            for op_token, operand in zip(kids[1::2], kids[2::2], strict=True):
                result = Binary(op=str(op_token), left=result, right=self._expr(source, operand))  # type: ignore[arg-type]
            return result
        if kind in ("atom", "signed_number"):
            inner = [k for k in kids if not (isinstance(k, Token) and k.type in _PUNCTUATION)]
            if kind == "signed_number" and len(inner) == 2:
                return Unary(op="-", operand=self._expr(source, inner[1]))
            return self._expr(source, inner[0])
        if kind == "symbol":
            return Ref(name=str(kids[0]))
        self._error(_loc(source, tree), f"expected an expression, found {kind}")
        return Const(value=0)


def _is_stage_assignment(stage_module: Tree) -> bool:
    kids = [
        k for k in stage_module.children if not (isinstance(k, Token) and k.type in _PUNCTUATION)
    ]
    # `(attn = true) [ ... ]`: the first assignment stands before the opening bracket.
    first_bracket = next(
        (
            i
            for i, k in enumerate(stage_module.children)
            if isinstance(k, Token) and k.type == "LSQB"
        ),
        0,
    )
    return first_bracket > 0 and len(kids) > 1


def _unquote(text: str) -> str:
    # One pass, so `\\"` is a backslash then a quote (the inverse of `quote_string`).
    return re.sub(r'\\(["\\])', r"\1", text[1:-1])


def _same(a: Value, b: Value) -> bool:
    return type(a) is type(b) and a == b


def _const_int(expr: Expr) -> int | None:
    if isinstance(expr, Const) and isinstance(expr.value, int) and not isinstance(expr.value, bool):
        return expr.value
    return None


# ======================================================================================
# Finalising: resolve names, merge ties, check against the op catalog, freeze.
# ======================================================================================


class Finaliser:
    def __init__(self, draft: Draft, sink: DiagnosticSink) -> None:
        self.draft = draft
        self.sink = sink
        self.stages = [p for p in draft.parts if isinstance(p, DraftStage)]
        self.stage_names = {s.name for s in self.stages}

    def error(self, loc: Loc, message: str) -> None:
        self.sink.error(loc.source, loc.line, loc.column, message)

    # Decisions are named by keys: `name` (global), `stage.name` (stage choice), `stage.depth`.
    def decision_domains(self) -> dict[str, list[Value]]:
        domains: dict[str, list[Value]] = dict(self.draft.choices)
        for stage in self.stages:
            for name, domain in stage.choices.items():
                domains[f"{stage.name}.{name}"] = domain
            if stage.depths:
                domains[f"{stage.name}.depth"] = list(stage.depths)
        return domains

    def run(self) -> Space | None:
        draft = self.draft
        before = len(self.sink.items)
        if not self.stages:
            self.error(draft.loc, f"space '{draft.name}' has no stage: nothing to search")
        for stage in self.stages:
            if not stage.depths and not getattr(stage, "_depth_error", False):
                self.error(
                    stage.loc, f"stage '{stage.name}' needs a depth (`depth 2..4` or `depth 3`)"
                )
            if not stage.options:
                self.error(stage.loc, f"stage '{stage.name}' needs a layer (`layer OP(...)`)")
        for key in ("channels", "size"):
            if key not in draft.input:
                self.error(draft.loc, f"space '{draft.name}' needs `input({key} = ...)`")
        domains = self.decision_domains()
        ties, rules = self._requires(domains)
        space_lets = self._resolve_lets(draft.lets, None, domains, draft.loc)
        input_exprs = {
            k: self._resolve(v, None, space_lets, {}, domains, draft.input_locs[k], context="input")
            for k, v in draft.input.items()
        }
        for key, expr in input_exprs.items():
            self._check_typed(
                expr, _INPUT_KEYS[key], domains, draft.input_locs[key], f"input {key}"
            )
        parts = []
        stage_index = 0
        for part in draft.parts:
            if isinstance(part, DraftStage):
                parts.append(self._stage(part, stage_index, space_lets, domains))
                stage_index += 1
            else:
                nodes = [self._node(n, None, space_lets, domains) for n in part.nodes]
                parts.append(
                    FixedBlock(
                        kind=part.kind,
                        name=part.name,
                        section=part.section,
                        nodes=nodes,
                        where=str(part.loc),
                    )  # type: ignore[arg-type]
                )
        skips = self._skips()
        units = self._units()
        # Merged decisions: the representative's domain is the intersection of both.
        choices = dict(draft.choices)
        stage_choices = {s.name: dict(s.choices) for s in self.stages}
        for alias, keeper in ties.items():
            keeper_domain = domains[keeper]
            _set_domain(choices, stage_choices, keeper, keeper_domain)
            _drop_domain(choices, stage_choices, alias)
        parts = [
            p.model_copy(update={"choices": stage_choices[p.name]}) if isinstance(p, Stage) else p
            for p in parts
        ]
        if len(self.sink.items) > before:
            return None
        space = Space(
            name=draft.name,
            description=draft.description,
            extends=draft.extends,
            input=input_exprs,
            lets={},
            choices=choices,
            parts=parts,
            skips=skips,
            units=units,
            ties=ties,
            rules=rules,
        )
        restrictions = self._restrictions(space)
        if restrictions:
            space = space.model_copy(update={"restrictions": restrictions})
        if draft.codes:
            space = space.model_copy(update={"codes": dict(draft.codes)})
        if len(self.sink.items) > before:
            return None
        return space

    # ----- rules and ties -----------------------------------------------------------

    def _canonical_key(
        self, name: str, stage: DraftStage | None, domains: dict[str, list[Value]]
    ) -> str | None:
        if "." in name:
            return name if name in domains else None
        if stage is not None and name == "depth" and f"{stage.name}.depth" in domains:
            # A bare `depth` inside a stage (or a family's body) is that stage's depth.
            return f"{stage.name}.depth"
        if stage is not None and f"{stage.name}.{name}" in domains and name in stage.choices:
            return f"{stage.name}.{name}"
        if name in self.draft.choices:
            return name
        return None

    def _rank(self, key: str) -> int:
        if "." not in key:
            return list(self.draft.choices).index(key) if key in self.draft.choices else -1
        order = [s.name for s in self.stages]
        stage = key.split(".", 1)[0]
        return len(self.draft.choices) + (order.index(stage) if stage in order else 0)

    def _requires(self, domains: dict[str, list[Value]]) -> tuple[dict[str, str], list[Rule]]:
        ties: dict[str, str] = {}
        rules: list[Rule] = []

        def find(key: str) -> str:
            while key in ties:
                key = ties[key]
            return key

        inline = self._rule_inliner(domains)
        for written, loc in self.draft.requires:
            expr = inline(written, loc)
            if expr is None:
                continue
            if not names_in(expr):
                # No decision in it (constants only): it holds for all or for none.
                try:
                    holds = bool(evaluate(expr, lambda name: 0))
                except ExprError:
                    holds = False
                if not holds:
                    self.error(
                        loc,
                        f"no architecture satisfies `{format_expr(written, source=True)}`: "
                        "it names no choice and is always false",
                    )
                    continue
            if (
                isinstance(expr, Binary)
                and expr.op == "=="
                and isinstance(expr.left, Ref)
                and isinstance(expr.right, Ref)
                and not expr.left.name.endswith(".depth")
                and not expr.right.name.endswith(".depth")
            ):
                a, b = find(expr.left.name), find(expr.right.name)
                if a == b:
                    continue
                # The decision declared first (globals, then stages in order) keeps the value.
                if self._rank(b) < self._rank(a):
                    a, b = b, a
                merged = [v for v in domains[a] if any(_same(v, w) for w in domains[b])]
                if not merged:
                    self.error(
                        loc,
                        f"no architecture satisfies this rule: {a} takes {_show(domains[a])} and {b} takes {_show(domains[b])}, with no value in common",
                    )
                    continue
                domains[a] = merged
                ties[b] = a
                continue
            # The text is the rule as written (with its `let` names); the expr is inlined.
            rules.append(Rule(expr=expr, text=format_expr(written, source=True), where=str(loc)))
        # Flatten chains so every alias points straight at its keeper.
        ties = {alias: find(alias) for alias in ties}
        # Rules are stored over keeper keys.
        rules = [
            Rule(expr=_substitute_refs(rule.expr, ties), text=rule.text, where=rule.where)
            for rule in rules
        ]
        self._ties = ties
        return ties, rules

    def _rule_inliner(self, domains: dict[str, list[Value]]):  # type: ignore[no-untyped-def]
        """A function that inlines `let`s into a rule, or reports what the rule names wrongly.

        A top-level `let` is a shorthand for its expression, so a rule may name it
        (`require doubled > 32` with `let doubled = width * 2`); a stage's constants (its
        columns and `let`s) are named with the stage, `s1.hidden`. Returns None (after
        reporting) for a rule that names something a rule cannot see.
        """
        real_sink = self.sink
        self.sink = DiagnosticSink()  # the lets' own mistakes are reported where they are
        poisoned: set[str] = set()
        try:
            top: dict[str, Expr] = {}
            for name, expr in self.draft.lets.items():
                before = len(self.sink.items)
                top[name] = self._resolve(
                    expr, None, top, {}, domains, self.draft.loc, context="let"
                )
                if len(self.sink.items) > before or poisoned & set(names_in(expr)):
                    poisoned.add(name)
            per_stage: dict[str, dict[str, Expr]] = {}
            for stage in self.stages:
                own: dict[str, Expr] = dict(top)
                bad = set(poisoned)
                for name, expr in stage.lets.items():
                    before = len(self.sink.items)
                    own[name] = self._resolve(expr, stage, own, {}, domains, stage.loc, "let")
                    if len(self.sink.items) > before or bad & set(names_in(expr)):
                        bad.add(name)
                        poisoned.add(f"{stage.name}.{name}")
                per_stage[stage.name] = {name: own[name] for name in stage.lets}
        finally:
            self.sink = real_sink

        def inline(expr: Expr, loc: Loc) -> Expr | None:
            problems: list[str] = []
            skip = False

            def walk(node: Expr) -> Expr:
                nonlocal skip
                if isinstance(node, Ref):
                    name = node.name
                    if name in domains:
                        return node
                    owner, _, member = name.partition(".")
                    if not member and name in top:
                        skip = skip or name in poisoned
                        return top[name]
                    if member and member in per_stage.get(owner, {}):
                        skip = skip or name in poisoned
                        return per_stage[owner][member]
                    problems.append(self._rule_name_problem(name, domains))
                    return node
                if isinstance(node, Unary):
                    return Unary(op=node.op, operand=walk(node.operand))
                if isinstance(node, Binary):
                    return Binary(op=node.op, left=walk(node.left), right=walk(node.right))
                if isinstance(node, Call):
                    return Call(func=node.func, args=[walk(a) for a in node.args])
                return node

            result = walk(expr)
            for problem in dict.fromkeys(problems):
                self.error(loc, problem)
            return None if problems or skip else result

        return inline

    def _rule_name_problem(self, name: str, domains: dict[str, list[Value]]) -> str:
        """Why a rule cannot name `name`, in the user's terms."""
        choices = ", ".join(sorted(domains)) or "none"
        owner, _, member = name.partition(".")
        if member:
            if owner not in self.stage_names:
                return f"rule names an unknown choice '{name}': there is no stage '{owner}' (choices: {choices})"
            return (
                f"rule names an unknown choice '{name}': stage '{owner}' has no choice or "
                f"constant '{member}' (choices: {choices})"
            )
        if name == "depth":
            return "a rule names a bare `depth`; in a rule write the stage's depth as STAGE.depth (e.g. s1.depth)"
        with_choice = [s.name for s in self.stages if name in s.choices]
        if with_choice:
            return (
                f"rule names '{name}', a choice of stage {', '.join(with_choice)}; in a rule "
                f"write it with its stage: {with_choice[0]}.{name}"
            )
        with_let = [s.name for s in self.stages if name in s.lets]
        if with_let:
            return (
                f"rule names '{name}', a constant (column or `let`) of stage "
                f"{', '.join(with_let)}; in a rule write it with its stage: {with_let[0]}.{name}"
            )
        return f"rule names an unknown choice '{name}'; choices: {choices}"

    # ----- names --------------------------------------------------------------------

    def _resolve_lets(
        self,
        lets: dict[str, Expr],
        stage: DraftStage | None,
        domains: dict[str, list[Value]],
        loc: Loc,
        outer: dict[str, Expr] | None = None,
    ) -> dict[str, Expr]:
        resolved: dict[str, Expr] = dict(outer or {})
        locs = stage.let_locs if stage is not None else self.draft.let_locs
        for name, expr in lets.items():
            where = locs.get(name, loc)
            resolved[name] = self._resolve(expr, stage, resolved, {}, domains, where, context="let")
        return resolved

    def _resolve(
        self,
        expr: Expr,
        stage: DraftStage | None,
        lets: dict[str, Expr],
        layer_domains: dict[str, list[Value]],
        domains: dict[str, list[Value]],
        loc: Loc,
        context: str,
    ) -> Expr:
        """Inline constants, turn names into decision keys, and unknown bare names into symbols."""
        ties = getattr(self, "_ties", {})

        def walk(node: Expr) -> Expr:
            if isinstance(node, Ref):
                name = node.name
                if name in lets:
                    return lets[name]
                key = self._canonical_key(name, stage, domains)
                if key is not None:
                    return Ref(name=ties.get(key, key))
                if "." in name:
                    stage_name = name.split(".", 1)[0]
                    if stage_name not in self.stage_names:
                        self.error(loc, f"unknown stage '{stage_name}' in '{name}'")
                    else:
                        self.error(
                            loc, f"stage '{stage_name}' has no choice '{name.split('.', 1)[1]}'"
                        )
                    return Const(value=0)
                if name in INPUT_NAMES and context in ("attr", "let"):
                    # What enters the layer: known when the network is built.
                    return Ref(name=name)
                if name == "depth" and stage is None:
                    self.error(
                        loc,
                        "a bare `depth` is the depth of the stage it is written in; "
                        "outside a stage write STAGE.depth (e.g. s1.depth)",
                    )
                    return Const(value=0)
                if context == "condition":
                    self.error(loc, f"unknown name '{name}' in a condition")
                    return Const(value=False)
                # A bare word such as `relu` is a symbol value; attribute checks catch typos.
                return Const(value=name)
            if isinstance(node, Unary):
                return Unary(op=node.op, operand=walk(node.operand))
            if isinstance(node, Binary):
                return Binary(op=node.op, left=walk(node.left), right=walk(node.right))
            if isinstance(node, Call):
                return Call(func=node.func, args=[walk(a) for a in node.args])
            return node

        return walk(expr)

    # ----- stages and nodes ---------------------------------------------------------

    def _stage(
        self,
        stage: DraftStage,
        index: int,
        space_lets: dict[str, Expr],
        domains: dict[str, list[Value]],
    ) -> Stage:
        lets = self._resolve_lets(stage.lets, stage, domains, stage.loc, outer=space_lets)
        options = []
        labels_seen: dict[str, Loc] = {}
        ops = [o.nodes[0].op for o in stage.options]
        for number, option in enumerate(stage.options, start=1):
            label = option.label
            if label is None:
                first = option.nodes[0].op
                label = first if ops.count(first) == 1 else f"{first}{number}"
            if label in labels_seen:
                self.error(
                    option.loc,
                    f"two layer alternatives are labelled '{label}'; name them with `as NAME`",
                )
            labels_seen[label] = option.loc
            layer_domains: dict[str, list[Value]] = {}
            for node in option.nodes:
                for key, domain in node.domains.items():
                    if key in layer_domains:
                        self.error(
                            node.arg_locs[key], f"two per-layer choices named '{key}' in one layer"
                        )
                    layer_domains[key] = domain
            nodes = [self._node(n, stage, lets, domains, layer_domains) for n in option.nodes]
            options.append(
                LayerOption(
                    label=label, nodes=nodes, choices=layer_domains, residual=option.residual
                )
            )
        before = [self._node(n, stage, lets, domains) for n in stage.before]
        after = [self._node(n, stage, lets, domains) for n in stage.after]
        for name, domain in stage.choices.items():
            if not domain:
                self.error(stage.choice_locs[name], f"choice '{name}' has no value")
        return Stage(
            name=stage.name,
            section=stage.section,
            index=index,
            depths=list(stage.depths or [1]),
            options=options,
            choices=dict(stage.choices),
            lets={},
            before=before,
            after=after,
            where=str(stage.loc),
        )

    def _node(
        self,
        node: DraftNode,
        stage: DraftStage | None,
        lets: dict[str, Expr],
        domains: dict[str, list[Value]],
        layer_domains: dict[str, list[Value]] | None = None,
    ) -> NodeTemplate:
        spec = CATALOG.get(node.op)
        attrs: dict[str, Expr] = {}
        if spec is None:
            known = ", ".join(sorted(CATALOG))
            self.error(node.loc, f"unknown operation '{node.op}' (operations: {known})")
        for key, expr in node.args.items():
            loc = node.arg_locs[key]
            resolved = self._resolve(
                expr, stage, lets, layer_domains or {}, domains, loc, context="attr"
            )
            attrs[key] = resolved
            if spec is None:
                continue
            attr = spec.attrs.get(key)
            if attr is None:
                known = ", ".join(spec.attrs)
                self.error(loc, f"'{node.op}' has no attribute '{key}' (attributes: {known})")
                continue
            if isinstance(resolved, LayerRef):
                for value in (layer_domains or {}).get(key, []):
                    if not attr.accepts(value):
                        self.error(
                            loc,
                            f"{node.op}.{key} must be {attr.type_name()}, got {format_value(value)}",
                        )
                        break
                continue
            self._check_typed(resolved, attr.kind, domains, loc, f"{node.op}.{key}", attr)
        if spec is not None:
            for key, attr in spec.attrs.items():
                if attr.required and key not in node.args:
                    self.error(node.loc, f"'{node.op}' needs the attribute '{key}' ({attr.doc})")
        condition = None
        if node.condition is not None:
            condition = self._resolve(
                node.condition, stage, lets, {}, domains, node.loc, context="condition"
            )
            self._check_typed(condition, "bool", domains, node.loc, "the condition")
        return NodeTemplate(op=node.op, attrs=attrs, condition=condition, where=str(node.loc))

    def _check_typed(
        self, expr: Expr, kind: str, domains: dict[str, list[Value]], loc: Loc, what: str, attr=None
    ) -> None:
        """Evaluate the expression for the choices it uses and check every result's type."""
        names = names_in(expr)
        # The layer's input is known only when a network is built: check with a typical one.
        domains = {**domains, "in_channels": [64], "in_size": [32]}
        combos = 1
        for name in names:
            combos *= len(domains.get(name, [0]))
        if combos > _MAX_TYPECHECK_COMBINATIONS:
            return
        spaces = [domains.get(name, [0]) for name in names]
        for values in itertools.product(*spaces):
            env = dict(zip(names, values, strict=True))
            try:
                value = evaluate(expr, env.__getitem__)
            except (ExprError, KeyError) as error:
                self.error(loc, f"{what}: {error}")
                return
            ok = attr.accepts(value) if attr is not None else _kind_accepts(kind, value)
            if not ok:
                expected = (
                    attr.type_name()
                    if attr is not None
                    else {"int": "an integer", "bool": "true or false"}.get(kind, kind)
                )
                if isinstance(value, str) and (attr is None or attr.kind != "enum"):
                    self.error(
                        loc,
                        f"{what}: unknown name '{value}' (not a choice, a constant or a stage value here)",
                    )
                else:
                    when = ", ".join(f"{n} = {format_value(v)}" for n, v in env.items())
                    suffix = f" (when {when})" if when else ""
                    self.error(loc, f"{what} must be {expected}, got {format_value(value)}{suffix}")
                return

    # ----- skips, units, restrictions -----------------------------------------------

    def _skips(self) -> list[SkipSpec]:
        result = []
        for source, target, loc in self.draft.skips:
            ok = True
            for name in (source, target):
                if name not in self.stage_names:
                    self.error(loc, f"skip names an unknown stage '{name}'")
                    ok = False
            if ok and source == target:
                self.error(loc, "a skip connects two different stages")
                ok = False
            if ok:
                order = [s.name for s in self.stages]
                if order.index(source) > order.index(target):
                    self.error(loc, f"a skip runs forward: '{source}' comes after '{target}'")
                    ok = False
            if ok:
                result.append(SkipSpec(source=source, target=target))
        return result

    def _units(self) -> list[Unit]:
        result = []
        taken: dict[str, str] = {}
        order = [s.name for s in self.stages]
        for name, members, loc in self.draft.units:
            if name in self.stage_names and name not in members:
                self.error(loc, f"unit '{name}' has the name of a stage")
                continue
            bad = [m for m in members if m not in self.stage_names]
            if bad:
                self.error(loc, f"unit '{name}' names an unknown stage '{bad[0]}'")
                continue
            positions = [order.index(m) for m in members]
            if positions != list(range(positions[0], positions[0] + len(positions))):
                self.error(loc, f"unit '{name}' must list consecutive stages in order")
                continue
            clash = [m for m in members if m in taken]
            if clash:
                self.error(loc, f"stage '{clash[0]}' is already in unit '{taken[clash[0]]}'")
                continue
            for m in members:
                taken[m] = name
            result.append(Unit(name=name, stages=members))
        return result

    def _restrictions(self, space: Space) -> dict[str, list[list[StageModule]]]:
        from autobuild_dsl.space.decisions import ArchitectureError, check_stage_module

        result: dict[str, list[list[StageModule]]] = {}
        first_at: dict[str, Loc] = {}
        units = {u.name: u for u in space.module_units()}
        for restriction in self.draft.restrictions:
            unit = units.get(restriction.target)
            if unit is None:
                self.error(
                    restriction.loc,
                    f"restrict names an unknown stage or unit '{restriction.target}' (units: {', '.join(units)})",
                )
                continue
            modules: list[list[StageModule]] = []
            seen: dict[str, int] = {}
            for number, module in enumerate(restriction.modules, start=1):
                # Point at the module (and the stage part of it) that is wrong.
                module_loc = _at_index(restriction.module_locs, number - 1, restriction.loc)
                part_locs = _at_index(restriction.part_locs, number - 1, [])
                layer_locs = _at_index(restriction.layer_locs, number - 1, [])
                if len(module) != len(unit.stages):
                    self.error(
                        module_loc,
                        f"module {number} has {len(module)} stage part(s); unit '{unit.name}' has {len(unit.stages)} ({' + '.join(unit.stages)})",
                    )
                    continue
                parts = []
                for position, (stage_name, (choices, layers)) in enumerate(
                    zip(unit.stages, module, strict=True)
                ):
                    part = StageModule(depth=len(layers), choices=choices, layers=layers)
                    try:
                        part = check_stage_module(space, space.stage(stage_name), part)
                    except ArchitectureError as error:
                        where = (
                            f"module {number} of '{unit.name}'"
                            if len(unit.stages) == 1
                            else f"module {number} of '{unit.name}', stage '{stage_name}'"
                        )
                        at = _at_index(part_locs, position, module_loc)
                        layer = re.match(r"layer (\d+):", str(error))
                        if layer:
                            layers_here = _at_index(layer_locs, position, [])
                            at = _at_index(layers_here, int(layer.group(1)), at)
                        self.error(at, f"{where}: {error}")
                        part = None
                    parts.append(part)
                if any(p is None for p in parts):
                    continue
                key = repr([p.model_dump() for p in parts])
                if key in seen:
                    self.error(
                        module_loc,
                        f"module {number} of '{unit.name}' is listed twice (first as module {seen[key]})",
                    )
                    continue
                seen[key] = number
                modules.append(parts)  # type: ignore[arg-type]
            if restriction.target in result:
                self.error(
                    restriction.loc,
                    f"'{restriction.target}' is restricted twice (first at {first_at[restriction.target]})",
                )
            first_at.setdefault(unit.name, restriction.loc)
            result[unit.name] = modules
        return result


def _at_index(items: list, index: int, default):  # type: ignore[no-untyped-def]
    return items[index] if 0 <= index < len(items) else default


def _show(domain: list[Value]) -> str:
    return "{" + ", ".join(format_value(v) for v in domain) + "}"


def _kind_accepts(kind: str, value: Value) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    return True


def _substitute_refs(expr: Expr, ties: dict[str, str]) -> Expr:
    if isinstance(expr, Ref):
        return Ref(name=ties.get(expr.name, expr.name))
    if isinstance(expr, Unary):
        return Unary(op=expr.op, operand=_substitute_refs(expr.operand, ties))
    if isinstance(expr, Binary):
        return Binary(
            op=expr.op,
            left=_substitute_refs(expr.left, ties),
            right=_substitute_refs(expr.right, ties),
        )
    if isinstance(expr, Call):
        return Call(func=expr.func, args=[_substitute_refs(a, ties) for a in expr.args])
    return expr


def _set_domain(choices: dict, stage_choices: dict, key: str, domain: list[Value]) -> None:
    if "." in key:
        stage, name = key.split(".", 1)
        if name != "depth":
            stage_choices[stage][name] = domain
    else:
        choices[key] = domain


def _drop_domain(choices: dict, stage_choices: dict, key: str) -> None:
    if "." in key:
        stage, name = key.split(".", 1)
        stage_choices[stage].pop(name, None)
    else:
        choices.pop(key, None)


def _kind_of(value: Value) -> str:
    return type(value).__name__
