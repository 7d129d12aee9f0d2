"""The language front end: located syntax nodes, `parse_expression`, the formatter's single
parse, and a fingerprint of what every shipped space lowers to."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from lark import Lark

from autobuild_dsl.lang import CompileError, compile_file, parse_expression
from autobuild_dsl.lang.diagnostics import DiagnosticSink
from autobuild_dsl.lang.formatter import format_file
from autobuild_dsl.lang.lower import Lowerer
from autobuild_dsl.space.decisions import index_of
from autobuild_dsl.space.expr import Binary, Call, Const, Ref

SPACES = Path(__file__).resolve().parent.parent / "spaces"

# What each shipped space lowers to: its size, rules, ties, and a hash of every source
# position it records (stages, fixed nodes, rules). A change to lowering that alters
# any of them (a decision, a merged tie, a diagnostic's place) shows here.
FINGERPRINTS = {
    "fbnet.abs": (984770902183611232881, 0, 0, "464bc1ed81f0"),
    "mbv3.abs": (543966387314312146275, 0, 0, "d761ead20fc4"),
    "nas_bench_macro.abs": (6561, 0, 0, "29c4177cff11"),
    "ofa_proxyless.abs": (195827899433152372659, 0, 0, "6a6e04d36e9b"),
    "sd14_unet.abs": (1, 0, 0, "de6616e27755"),
    "sd14_unet_fid.abs": (786432, 0, 4, "0f1bb5fba989"),
    "sd14_unet_hw.abs": (24576, 3, 4, "b415a14a29d4"),
    "transnas_macro.abs": (3256, 5, 0, "c3bf763b069a"),
}


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_every_shipped_space_lowers_to_what_it_did(name: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(SPACES.parent)
    space = compile_file(f"spaces/{name}")
    wheres = [p.where for p in space.parts]
    wheres += [n.where for p in space.parts for n in getattr(p, "nodes", [])]
    wheres += [r.where for r in space.rules]
    positions = hashlib.sha256(json.dumps(wheres).encode()).hexdigest()[:12]
    found = (index_of(space).size(), len(space.rules), len(space.ties), positions)
    assert found == FINGERPRINTS[name]


def test_parse_expression_locates_every_part() -> None:
    located = parse_expression("a +\n  (b < 2)", "t")
    assert located is not None
    assert located.expr == Binary(
        op="+", left=Ref(name="a"), right=Binary(op="<", left=Ref(name="b"), right=Const(value=2))
    )
    assert (located.loc.line, located.loc.column) == (1, 1)
    group = located.parts[1]
    assert group.grouped and (group.loc.line, group.loc.column) == (2, 3)
    comparison = group.parts[0]
    assert comparison.op_loc is not None
    assert (comparison.op_loc.line, comparison.op_loc.column) == (2, 6)
    assert str(comparison.loc) == "t:2:4"


def test_parse_expression_keeps_unknown_functions_as_problems() -> None:
    located = parse_expression("1 + nope(x)")
    assert located is not None
    assert located.expr.right == Call(func="nope", args=[Ref(name="x")])  # type: ignore[union-attr]
    assert located.problems[0][1].startswith("unknown function 'nope'")
    assert located.strict() == Binary(op="+", left=Const(value=1), right=Const(value=0))


def test_parse_expression_reports_syntax_errors() -> None:
    with pytest.raises(CompileError) as caught:
        parse_expression("a + ", "t")
    assert caught.value.diagnostics[0].path == "t"
    sink = DiagnosticSink()
    assert parse_expression("a +", "t", sink) is None and sink.items


FAMILY = """space f {
  input(channels = 3, size = 32)
  stages (w) {
    s1 = (16)
    s2 = (32)
  } {
    depth 1
    layer conv(out = w, kernel = 3)
  }
}
space g extends f {
}
"""


def test_a_family_stage_and_a_derived_space_know_where_they_come_from() -> None:
    sink = DiagnosticSink()
    lowerer = Lowerer(sink)
    source, module = lowerer.load_file("f.abs", FAMILY)
    assert module is not None
    draft = lowerer.draft(source, module, "f")
    assert draft is not None
    stage = draft.stage("s2")
    assert stage is not None and str(stage.loc) == "f.abs:5:5"
    assert stage.loc.parent is not None and str(stage.loc.parent) == "f.abs:3:3"
    derived = lowerer.draft(source, module, "g")
    assert derived is not None and str(derived.loc) == "f.abs:11:7"
    assert derived.loc.parent is not None and str(derived.loc.parent) == "f.abs:1:7"
    assert not sink.items


def test_the_formatter_parses_a_file_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []
    real = Lark.parse

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Lark, "parse", counting)
    text = (SPACES / "nas_bench_macro.abs").read_text(encoding="utf-8")
    format_file("m.abs", text)
    assert len(calls) == 1


def test_the_formatter_keeps_comments_apart_across_threads() -> None:
    texts = [
        FAMILY.replace("depth 1", f"depth 1  # comment {i}").replace("{\n", f"{{  # top {i}\n", 1)
        for i in range(8)
    ]
    expected = [format_file("f.abs", t) for t in texts]
    results: list[str | None] = [None] * len(texts)

    def run(index: int) -> None:
        for _ in range(5):
            results[index] = format_file("f.abs", texts[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
    assert all(f"# comment {i}" in out and f"# top {i}" in out for i, out in enumerate(results))
