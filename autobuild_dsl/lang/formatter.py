"""`abc fmt`: print a `.abs` file in canonical form, keeping every comment.

The formatter works on the located syntax (not the lowered Space), so families of stages,
`let` constants and derived spaces keep the shape the user gave them. Full-line comments
stay above the item that follows them; a comment on a code line stays at the end of it.
Formatting is idempotent: formatting formatted text changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobuild_dsl.lang import syntax
from autobuild_dsl.lang.diagnostics import DiagnosticSink, Location, SourceFile
from autobuild_dsl.lang.lower import normalize_newlines
from autobuild_dsl.lang.transform import parse_module
from autobuild_dsl.space.expr import Const, format_expr, quote_string

INDENT = "  "
MAX_WIDTH = 100


def format_file(path: str, text: str) -> str:
    """The canonical text; raises CompileError (with diagnostics) if the text does not parse."""
    sink = DiagnosticSink()
    source = SourceFile(path=path, text=normalize_newlines(text))
    module = parse_module(source, sink, comments=True)
    if module is None:
        sink.raise_if_any()
    assert module is not None
    printer = _Printer(module.comments)
    for index, decl in enumerate(module.spaces):
        if index:
            printer.blank()
        printer.space(decl)
    printer.flush_comments(10**9, "")
    return "\n".join(printer.lines).rstrip("\n") + "\n"


class _Printer:
    """Prints located nodes, placing each comment by the line it was written on."""

    def __init__(self, comments: list[tuple[int, str]]) -> None:
        self.comments = comments
        self.next_comment = 0
        self.lines: list[str] = []
        self.last_end_line = 0
        # Items printed on one line, and items printed by a method of their own.
        self._one_line: dict[type, Callable[[Any], str]] = {
            syntax.Description: lambda d: f"description {d.text}",
            syntax.InputDecl: lambda d: f"input({self.args(d.args)})",
            syntax.ChoiceDecl: lambda d: f"choice {d.name} = {self.domain(d.domain)}",
            syntax.LetDecl: lambda d: f"let {d.name} = {self.expr(d.value)}",
            syntax.SkipDecl: lambda d: f"skip {d.source} -> {d.target}",
            syntax.RequireDecl: lambda d: f"require {self.expr(d.expr)}",
            syntax.UnitDecl: lambda d: f"unit {d.name} = {' + '.join(d.members)}",
            syntax.DepthDecl: lambda d: f"depth {d.low}" + (f"..{d.high}" if d.high else ""),
            syntax.EdgeDecl: lambda d: f"{d.word} {self.node_item(d.node)}",
        }
        self._blocks: dict[type, Callable[[Any, str], None]] = {
            syntax.FixedDecl: self.fixed_block,
            syntax.StageDecl: self.stage_decl,
            syntax.StagesDecl: self.stages_decl,
            syntax.SectionDecl: self.section,
            syntax.RestrictDecl: self.restrict,
            syntax.CodeDecl: self.code,
            syntax.LayerDecl: self.layer,
        }

    # ----- emission -------------------------------------------------------------------

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def _keep_gap(self, line: int) -> None:
        """Keep one blank line where the user left a gap before `line`."""
        if (
            self.last_end_line
            and line > self.last_end_line + 1
            and self.lines
            and self.lines[-1] != ""
            and not self.lines[-1].endswith("{")
        ):
            self.lines.append("")

    def _trailing(self, line: int) -> str:
        """The comments written on lines up to `line` (after its code), as one suffix."""
        trailing = []
        while (
            self.next_comment < len(self.comments) and self.comments[self.next_comment][0] <= line
        ):
            trailing.append(self.comments[self.next_comment][1])
            self.next_comment += 1
        return "  " + " ".join(trailing) if trailing else ""

    def flush_comments(self, before_line: int, indent: str) -> None:
        while (
            self.next_comment < len(self.comments)
            and self.comments[self.next_comment][0] < before_line
        ):
            line, text = self.comments[self.next_comment]
            self._keep_gap(line)
            self.lines.append(indent + text)
            self.last_end_line = line
            self.next_comment += 1

    def emit(self, loc: Location, indent: str, texts: list[str]) -> None:
        self.flush_comments(loc.line, indent)
        self._keep_gap(loc.line)
        out = [indent + t for t in texts]
        out[-1] += self._trailing(loc.end_line)
        self.lines.extend(out)
        self.last_end_line = loc.end_line

    def open(self, loc: Location, indent: str, header: str) -> None:
        self.flush_comments(loc.line, indent)
        self._keep_gap(loc.line)
        self.lines.append(indent + header + self._trailing(loc.line))
        self.last_end_line = loc.line

    def close(self, loc: Location, indent: str, text: str = "}") -> None:
        self.flush_comments(loc.end_line, indent + INDENT)
        self.lines.append(indent + text + self._trailing(loc.end_line))
        self.last_end_line = loc.end_line

    # ----- structure --------------------------------------------------------------------

    def space(self, decl: syntax.SpaceDecl) -> None:
        header = f"space {decl.name}"
        if decl.extends is not None:
            header += f" extends {decl.extends.name}"
            if decl.extends.path is not None:
                header += f" from {decl.extends.path}"
        self.open(decl.loc, "", header + " {")
        for item in decl.items:
            self.item(item, INDENT)
        self.close(decl.loc, "")

    def item(self, item: Any, indent: str) -> None:
        text = self._one_line.get(type(item))
        if text is not None:
            self.emit(item.loc, indent, [text(item)])
        else:
            self._blocks[type(item)](item, indent)

    def _block(self, loc: Location, indent: str, header: str, items: list) -> None:
        self.open(loc, indent, header + " {")
        for sub in items:
            self.item(sub, indent + INDENT)
        self.close(loc, indent)

    def fixed_block(self, item: syntax.FixedDecl, indent: str) -> None:
        name = f" {item.name}" if item.name is not None else ""
        self.open(item.loc, indent, f"{item.kind}{name} {{")
        for node in item.nodes:
            self.emit(node.loc, indent + INDENT, [self.node_item(node)])
        self.close(item.loc, indent)

    def stage_decl(self, item: syntax.StageDecl, indent: str) -> None:
        self._block(item.loc, indent, f"stage {item.name}", item.items)

    def section(self, item: syntax.SectionDecl, indent: str) -> None:
        self._block(item.loc, indent, f"section {item.name}", item.items)

    def stages_decl(self, item: syntax.StagesDecl, indent: str) -> None:
        columns = ", ".join(c.text for c in item.columns)
        self.open(item.loc, indent, f"stages ({columns}) {{")
        for row in item.rows:
            values = ", ".join(self.expr(v) for v in row.values)
            self.emit(row.loc, indent + INDENT, [f"{row.name} = ({values})"])
        # The body's brace follows the rows' closing brace on one line: `} {`.
        last_row_end = item.rows[-1].loc.end_line if item.rows else item.loc.line
        self.flush_comments(last_row_end + 1, indent + INDENT)
        self.lines.append(indent + "} {")
        for sub in item.items:
            self.item(sub, indent + INDENT)
        self.close(item.loc, indent)

    def layer(self, item: syntax.LayerDecl, indent: str) -> None:
        alternatives = [self.alternative(a) for a in item.alternatives]
        if all(len(a) == 1 for a in alternatives):
            flat = [a[0] for a in alternatives]
            one_line = "layer " + " | ".join(flat)
            if len(indent) + len(one_line) <= MAX_WIDTH:
                self.emit(item.loc, indent, [one_line])
                return
            lines = ["layer " + flat[0]] + [f"{INDENT}{INDENT}| {alt}" for alt in flat[1:]]
            self.emit(item.loc, indent, lines)
            return
        lines: list[str] = []
        for number, alternative in enumerate(alternatives):
            lead = "layer " if number == 0 else "| "
            if len(alternative) == 1:
                lines.append(lead + alternative[0])
            else:
                lines.extend([lead + alternative[0], *alternative[1:]])
        self.emit(item.loc, indent, lines)

    def alternative(self, alternative: syntax.Alternative) -> list[str]:
        suffix = f" as {alternative.label}" if alternative.label is not None else ""
        if alternative.residual is not None:
            settings = self.args(alternative.residual.args)
            suffix = f" residual({settings})" + suffix if settings else " residual" + suffix
        body = alternative.body
        if isinstance(body, syntax.NodeBlock):
            nodes = [self.node_item(n) for n in body.items]
            return ["{", *[INDENT + n for n in nodes], "}" + suffix]
        return [self.call(body) + suffix]

    def restrict(self, item: syntax.RestrictDecl, indent: str) -> None:
        modules = []
        for module in item.modules:
            parts = []
            for part in module.parts:
                layers = ", ".join(self.assignment(a) for a in part.layers)
                if part.choices is not None:
                    parts.append(f"{self.assignment(part.choices)} [{layers}]")
                else:
                    parts.append(f"[{layers}]")
            modules.append(" + ".join(parts))
        lines = [f"restrict {item.target} to {{"] + [f"{INDENT}{m}," for m in modules] + ["}"]
        self.emit(item.loc, indent, lines)

    def code(self, item: syntax.CodeDecl, indent: str) -> None:
        lines = [f"code {item.name} = {item.kind} {{"]
        lines += [
            f"{INDENT}{self.value(e.token)} -> {self.assignment(e.assignment)}"
            for e in item.entries
        ]
        self.emit(item.loc, indent, [*lines, "}"])

    # ----- leaves -----------------------------------------------------------------------

    def node_item(self, item: syntax.NodeItem) -> str:
        text = self.call(item.call)
        if item.condition is not None:
            text += f" if {self.expr(item.condition)}"
        return text

    def call(self, call: syntax.CallNode) -> str:
        return f"{call.op}({self.args(call.args)})"

    def args(self, args: list[syntax.Arg]) -> str:
        parts = []
        for arg in args:
            value = arg.value
            text = self.expr(value) if isinstance(value, syntax.LocatedExpr) else self.domain(value)
            parts.append(f"{arg.name} = {text}")
        return ", ".join(parts)

    def assignment(self, assignment: syntax.Assignment) -> str:
        pairs = [f"{pair.name} = {self.value(pair.value)}" for pair in assignment.pairs]
        return "(" + ", ".join(pairs) + ")"

    def domain(self, domain: syntax.Domain) -> str:
        if isinstance(domain, syntax.RangeDomain):
            text = f"{domain.low_text}..{domain.high_text}"
            if domain.step_text is not None:
                text += f" step {domain.step_text}"
            return text
        return "{" + ", ".join(self.value(v) for v in domain.values) + "}"

    def value(self, node: syntax.ValueNode) -> str:
        if node.quoted:
            # A string stays a string (the same value as the bare word, but safe to write).
            return quote_string(str(node.value))
        if isinstance(node.value, str):
            return node.value  # a bare word (symbol) stays bare
        return format_expr(Const(value=node.value), source=True)

    def expr(self, located: syntax.LocatedExpr) -> str:
        # `source=True`: strings keep their quotes, so the text means what it meant.
        return format_expr(located.expr, source=True)
