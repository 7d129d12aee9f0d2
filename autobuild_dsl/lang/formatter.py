"""`abc fmt`: print a `.abs` file in canonical form, keeping every comment.

The formatter works on the syntax tree (not the lowered Space), so families of stages,
`let` constants and derived spaces keep the shape the user gave them. Full-line comments
stay above the item that follows them; a comment on a code line stays at the end of it.
Formatting is idempotent: formatting formatted text changes nothing.
"""

from __future__ import annotations

from functools import cache

from lark import Lark, Token, Tree

from autobuild_dsl.lang.diagnostics import DiagnosticSink, SourceFile
from autobuild_dsl.lang.lower import Lowerer, _kids, normalize_newlines
from autobuild_dsl.lang.parser import grammar_text, parse
from autobuild_dsl.space.expr import Const, format_expr, quote_string

INDENT = "  "
MAX_WIDTH = 100

_comments: list[Token] = []


@cache
def _comment_parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        start="start",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _comments.append},
    )


def format_file(path: str, text: str) -> str:
    """The canonical text; raises CompileError (with diagnostics) if the text does not parse."""
    sink = DiagnosticSink()
    text = normalize_newlines(text)
    source = SourceFile(path=path, text=text)
    if parse(source, sink) is None:
        sink.raise_if_any()
    _comments.clear()
    tree = _comment_parser().parse(text)
    comments = sorted(((c.line, str(c).rstrip()) for c in _comments), key=lambda c: c[0])
    # A lenient lowerer: the formatter prints what is written, even an unknown function.
    printer = _Printer(comments, Lowerer(sink, lenient=True), source)
    for index, decl in enumerate(tree.children):
        if index:
            printer.blank()
        printer.space(decl)
    printer.flush_comments(10**9, "")
    out = "\n".join(printer.lines).rstrip("\n") + "\n"
    return out


class _Printer:
    def __init__(
        self, comments: list[tuple[int, str]], lowerer: Lowerer, source: SourceFile
    ) -> None:
        self.comments = comments
        self.next_comment = 0
        self.lines: list[str] = []
        self.lowerer = lowerer
        self.source = source
        self.last_end_line = 0

    # ----- emission -------------------------------------------------------------------

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def flush_comments(self, before_line: int, indent: str) -> None:
        while (
            self.next_comment < len(self.comments)
            and self.comments[self.next_comment][0] < before_line
        ):
            line, text = self.comments[self.next_comment]
            # Keep one blank line where the user left a gap before a comment.
            if (
                self.last_end_line
                and line > self.last_end_line + 1
                and self.lines
                and self.lines[-1] != ""
                and not self.lines[-1].endswith("{")
            ):
                self.lines.append("")
            self.lines.append(indent + text)
            self.last_end_line = line
            self.next_comment += 1

    def emit(self, item: Tree | Token, indent: str, texts: list[str]) -> None:
        start, end = _span(item)
        self.flush_comments(start, indent)
        if (
            self.last_end_line
            and start > self.last_end_line + 1
            and self.lines
            and self.lines[-1] != ""
            and not self.lines[-1].endswith("{")
        ):
            self.lines.append("")
        trailing = []
        while self.next_comment < len(self.comments) and self.comments[self.next_comment][0] <= end:
            trailing.append(self.comments[self.next_comment][1])
            self.next_comment += 1
        out = [indent + t for t in texts]
        if trailing:
            out[-1] = out[-1] + "  " + " ".join(trailing)
        self.lines.extend(out)
        self.last_end_line = end

    def open(self, item: Tree, indent: str, header: str) -> None:
        start, _ = _span(item)
        self.flush_comments(start, indent)
        if (
            self.last_end_line
            and start > self.last_end_line + 1
            and self.lines
            and self.lines[-1] != ""
            and not self.lines[-1].endswith("{")
        ):
            self.lines.append("")
        trailing = []
        while (
            self.next_comment < len(self.comments) and self.comments[self.next_comment][0] == start
        ):
            trailing.append(self.comments[self.next_comment][1])
            self.next_comment += 1
        self.lines.append(indent + header + ("  " + " ".join(trailing) if trailing else ""))
        self.last_end_line = start

    def close(self, item: Tree, indent: str, text: str = "}") -> None:
        _, end = _span(item)
        self.flush_comments(end, indent + INDENT)
        trailing = []
        while self.next_comment < len(self.comments) and self.comments[self.next_comment][0] == end:
            trailing.append(self.comments[self.next_comment][1])
            self.next_comment += 1
        self.lines.append(indent + text + ("  " + " ".join(trailing) if trailing else ""))
        self.last_end_line = end

    # ----- structure --------------------------------------------------------------------

    def space(self, decl: Tree) -> None:
        kids = _kids(decl)
        header = f"space {kids[1]}"
        items = kids[2:]
        if items and isinstance(items[0], Tree) and items[0].data == "extends_clause":
            ext = _kids(items[0])
            header += f" extends {ext[1]}"
            if len(ext) > 3:
                header += f" from {ext[3]}"
            items = items[1:]
        self.open(decl, "", header + " {")
        for item in items:
            self.item(item, INDENT)
        self.close(decl, "")

    def item(self, item: Tree, indent: str) -> None:
        kind = item.data
        kids = _kids(item)
        if kind == "description":
            self.emit(item, indent, [f"description {kids[1]}"])
        elif kind == "input_decl":
            self.emit(item, indent, [f"input({self.args(kids[1:])})"])
        elif kind == "choice_decl":
            self.emit(item, indent, [f"choice {kids[1]} = {self.domain(kids[2])}"])
        elif kind == "let_decl":
            self.emit(item, indent, [f"let {kids[1]} = {self.expr(kids[2])}"])
        elif kind == "fixed_block":
            name = (
                f" {kids[1]}"
                if len(kids) > 1 and isinstance(kids[1], Token) and kids[1].type == "NAME"
                else ""
            )
            nodes = kids[2:] if name else kids[1:]
            self.open(item, indent, f"{kids[0]}{name} {{")
            for node in nodes:
                self.emit(node, indent + INDENT, [self.node_item(node)])
            self.close(item, indent)
        elif kind == "stage_decl":
            self.open(item, indent, f"stage {kids[1]} {{")
            for sub in kids[2:]:
                self.stage_item(sub, indent + INDENT)
            self.close(item, indent)
        elif kind == "stages_decl":
            self.stages_decl(item, indent)
        elif kind == "section_decl":
            self.open(item, indent, f"section {kids[1]} {{")
            for sub in kids[2:]:
                self.item(sub, indent + INDENT)
            self.close(item, indent)
        elif kind == "skip_decl":
            self.emit(item, indent, [f"skip {kids[1]} -> {kids[2]}"])
        elif kind == "require_decl":
            self.emit(item, indent, [f"require {self.expr(kids[1])}"])
        elif kind == "unit_decl":
            names = [str(k) for k in kids[2:] if not (isinstance(k, Token) and k.type == "PLUS")]
            self.emit(item, indent, [f"unit {kids[1]} = {' + '.join(names)}"])
        elif kind == "restrict_decl":
            self.restrict(item, indent)
        elif kind == "code_decl":
            entries = [_kids(e) for e in kids[3:]]
            lines = [f"code {kids[1]} = {kids[2]} {{"]
            lines += [f"{INDENT}{self.value(e[0])} -> {self.assignment(e[1])}" for e in entries]
            self.emit(item, indent, [*lines, "}"])

    def stages_decl(self, item: Tree, indent: str) -> None:
        kids = _kids(item)
        columns = []
        index = 1
        while isinstance(kids[index], Token) and kids[index].type == "NAME":
            columns.append(str(kids[index]))
            index += 1
        rows = [k for k in kids[index:] if isinstance(k, Tree) and k.data == "stage_row"]
        body = [k for k in kids[index:] if not (isinstance(k, Tree) and k.data == "stage_row")]
        self.open(item, indent, f"stages ({', '.join(columns)}) {{")
        for row in rows:
            row_kids = _kids(row)
            values = ", ".join(self.expr(v) for v in row_kids[1:])
            self.emit(row, indent + INDENT, [f"{row_kids[0]} = ({values})"])
        # The body's brace follows the rows' closing brace on one line: `} {`.
        last_row_end = _span(rows[-1])[1] if rows else _span(item)[0]
        self.flush_comments(last_row_end + 1, indent + INDENT)
        self.lines.append(indent + "} {")
        for sub in body:
            self.stage_item(sub, indent + INDENT)
        self.close(item, indent)

    def stage_item(self, item: Tree, indent: str) -> None:
        kind = item.data
        kids = _kids(item)
        if kind == "depth_decl":
            text = f"depth {kids[1]}" + (f"..{kids[2]}" if len(kids) > 2 else "")
            self.emit(item, indent, [text])
        elif kind == "layer_decl":
            self.layer(item, indent)
        elif kind in ("before_decl", "after_decl"):
            word = "before" if kind == "before_decl" else "after"
            self.emit(item, indent, [f"{word} {self.node_item(kids[1])}"])
        else:
            self.item(item, indent)

    def layer(self, item: Tree, indent: str) -> None:
        alternatives = [self.alternative(a) for a in _kids(item)[1:]]
        if all(len(a) == 1 for a in alternatives):
            flat = [a[0] for a in alternatives]
            one_line = "layer " + " | ".join(flat)
            if len(indent) + len(one_line) <= MAX_WIDTH:
                self.emit(item, indent, [one_line])
                return
            lines = ["layer " + flat[0]] + [f"{INDENT}{INDENT}| {alt}" for alt in flat[1:]]
            self.emit(item, indent, lines)
            return
        lines: list[str] = []
        for number, alternative in enumerate(alternatives):
            lead = "layer " if number == 0 else "| "
            if len(alternative) == 1:
                lines.append(lead + alternative[0])
            else:
                lines.extend([lead + alternative[0], *alternative[1:]])
        self.emit(item, indent, lines)

    def alternative(self, alternative: Tree) -> list[str]:
        kids = _kids(alternative)
        suffix = (
            f" as {kids[-1]}"
            if len(kids) >= 3 and isinstance(kids[-2], Token) and kids[-2].type == "AS"
            else ""
        )
        clause = next(
            (k for k in kids if isinstance(k, Tree) and k.data == "residual_clause"), None
        )
        if clause is not None:
            settings = self.args(_kids(clause)[1:])
            suffix = f" residual({settings})" + suffix if settings else " residual" + suffix
        body = kids[0]
        if isinstance(body, Tree) and body.data == "node_block":
            nodes = [self.node_item(n) for n in _kids(body)]
            return ["{", *[INDENT + n for n in nodes], "}" + suffix]
        return [self.call(body) + suffix]

    def restrict(self, item: Tree, indent: str) -> None:
        kids = _kids(item)
        modules = []
        for module in kids[3:]:
            parts = []
            for stage_module in _kids(module):
                if isinstance(stage_module, Token):
                    continue
                assignments = [self.assignment(a) for a in _kids(stage_module)]
                has_choices = any(
                    isinstance(k, Token) and k.type == "LSQB" for k in stage_module.children[1:]
                ) and isinstance(stage_module.children[0], Tree)
                if has_choices:
                    parts.append(f"{assignments[0]} [{', '.join(assignments[1:])}]")
                else:
                    parts.append(f"[{', '.join(assignments)}]")
            modules.append(" + ".join(parts))
        lines = [f"restrict {kids[1]} to {{"] + [f"{INDENT}{m}," for m in modules] + ["}"]
        self.emit(item, indent, lines)

    # ----- leaves -----------------------------------------------------------------------

    def node_item(self, item: Tree) -> str:
        kids = _kids(item)
        text = self.call(kids[0])
        if len(kids) > 2:
            text += f" if {self.expr(kids[2])}"
        return text

    def call(self, call: Tree) -> str:
        kids = _kids(call)
        return f"{kids[0]}({self.args(kids[1:])})"

    def args(self, args: list) -> str:
        parts = []
        for arg in args:
            arg_kids = _kids(arg)
            value = arg_kids[1]
            if isinstance(value, Tree) and value.data in ("set_domain", "range_domain"):
                parts.append(f"{arg_kids[0]} = {self.domain(value)}")
            else:
                parts.append(f"{arg_kids[0]} = {self.expr(value)}")
        return ", ".join(parts)

    def assignment(self, tree: Tree) -> str:
        pairs = []
        for pair in _kids(tree):
            pair_kids = _kids(pair)
            pairs.append(f"{pair_kids[0]} = {self.value(pair_kids[1])}")
        return "(" + ", ".join(pairs) + ")"

    def domain(self, tree: Tree) -> str:
        kids = _kids(tree)
        if tree.data == "range_domain":
            text = f"{kids[0]}..{kids[1]}"
            if len(kids) > 3:
                text += f" step {kids[3]}"
            return text
        return "{" + ", ".join(self.value(k) for k in kids) + "}"

    def value(self, tree: Tree | Token) -> str:
        value = self.lowerer._value(self.source, tree)
        if isinstance(tree, Tree) and tree.data == "string":
            # A string stays a string (the same value as the bare word, but safe to write).
            return quote_string(str(value))
        if isinstance(value, str):
            return value  # a bare word (symbol) stays bare
        return format_expr(Const(value=value), source=True)

    def expr(self, tree: Tree | Token) -> str:
        # `source=True`: strings keep their quotes, so the text means what it meant.
        return format_expr(self.lowerer._expr(self.source, tree), source=True)


def _span(item: Tree | Token) -> tuple[int, int]:
    if isinstance(item, Token):
        return item.line or 0, item.end_line or item.line or 0
    meta = item.meta
    return getattr(meta, "line", 0), getattr(meta, "end_line", getattr(meta, "line", 0))
