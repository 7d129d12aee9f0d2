"""The .abs language: parsing, lowering, diagnostics, extends, ties and the formatter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autobuild_dsl.lang import CompileError, compile_file, compile_text
from autobuild_dsl.lang.formatter import format_file
from autobuild_dsl.space.decisions import space_size, unit_module_count
from autobuild_dsl.space.model import Space

SPACES = Path(__file__).resolve().parent.parent / "spaces"

SMALL = """
space small {
  input(channels = 3, size = 32)
  choice width = {16, 32}
  stage a {
    depth 1..2
    layer conv(out = width, kernel = {3, 5}) | identity()
  }
  stage b {
    depth 1
    choice mult = {1, 2}
    layer conv(out = width * mult, kernel = 3)
  }
  head {
    pool()
    linear(out = 10)
  }
}
"""


def errors_of(text: str, path: str = "t.abs", space: str | None = None) -> list:
    with pytest.raises(CompileError) as info:
        compile_text(text, path, space)
    return info.value.diagnostics


def test_small_space_counts_exactly() -> None:
    space = compile_text(SMALL)
    # a: 3 layer configs, depth 1..2 -> 3 + 9; b: mult {1,2} x 1 layer; width {16, 32}.
    assert space_size(space) == 2 * (3 + 9) * 2
    counts = [unit_module_count(space, u) for u in space.module_units()]
    assert counts == [12, 2]


@pytest.mark.parametrize(
    ("name", "size", "modules"),
    [
        ("ofa_mbv3.abs", 25 * 7371**5, [7371] * 5),
        ("nas_bench_macro.abs", 6561, [9, 27, 27]),
        ("ofa_proxyless.abs", 7371**4 * 66339, [7371] * 4 + [66339]),
        ("sd14_unet.abs", 1, [1] * 8),
        ("sd14_unet_fid.abs", 3 * 4**4 * 2**8 * 4, [8] * 8),
        ("sd14_unet_hw.abs", 24 * 2**8 * 4, [8] * 8),
    ],
)
def test_seed_spaces(name: str, size: int, modules: list[int]) -> None:
    space = compile_file(SPACES / name)
    assert space_size(space) == size
    assert [unit_module_count(space, u) for u in space.module_units()] == modules


def test_every_seed_space_is_formatted_and_formatting_is_idempotent() -> None:
    for path in sorted(SPACES.glob("*.abs")):
        text = path.read_text()
        assert format_file(str(path), text) == text, path.name


def test_formatter_keeps_comments_and_is_idempotent() -> None:
    messy = (
        "# top\nspace  m{input(channels=3,size=8)   # the input\n\n\n  # the stage\n"
        "stage s{depth 1 layer conv(out=4,kernel={1,3})}\nhead{pool() linear(out=2)}}\n"
    )
    once = format_file("m.abs", messy)
    assert once == format_file("m.abs", once)
    for comment in ("# top", "# the input", "# the stage"):
        assert comment in once
    assert "  stage s {" in once and "    layer conv(out = 4, kernel = {1, 3})" in once
    assert _without_positions(compile_text(once)) == _without_positions(compile_text(messy))


def _without_positions(space: Space) -> object:
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "where"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(space.model_dump(mode="json"))


def test_space_json_round_trip() -> None:
    for path in sorted(SPACES.glob("*.abs")):
        space = compile_file(path)
        again = Space.from_json(space.to_json())
        assert again == space
        assert json.loads(again.to_json()) == json.loads(space.to_json())


def test_syntax_errors_are_located_and_named_in_the_languages_words() -> None:
    text = "space x {\n  choice r in {1, 2}\n  stage s { depth 2 layer conv(out=4 kernel=3) }\n}\n"
    diagnostics = errors_of(text)
    assert [(d.line, d.column) for d in diagnostics] == [(2, 12), (3, 38)]
    first = diagnostics[0].render()
    assert first.startswith("t.abs:2:12: error: unexpected name 'in'; expected '='")
    # The caret sits under the offending token.
    source_line, caret_line = first.splitlines()[1:3]
    assert source_line[caret_line.index("^")] == "i"
    for diagnostic in diagnostics:
        assert "NAME" not in diagnostic.message and "LPAR" not in diagnostic.message


def test_unclosed_brace_points_at_the_end() -> None:
    diagnostics = errors_of("space x {\n  stage s { depth 2\n")
    assert len(diagnostics) == 1
    assert diagnostics[0].line == 2 and "never closed" in diagnostics[0].message


def test_semantic_errors_are_all_reported_with_positions() -> None:
    text = """space bad {
  input(channels = 3, size = 32)
  choice res = {32, 64}
  stage s1 {
    depth 4..2
    layer conv(out = 16, kernal = 3) | mbconv(out = 1.5) | foo()
    after pool(kind = maxx)
  }
  stage s2 {
    depth 2
    layer conv(out = 16 * widht)
  }
  require s3.mult == 2
}
"""
    diagnostics = errors_of(text)
    found = {(d.line, d.message.split(" (")[0]) for d in diagnostics}
    assert (5, "depth range 4..2 is empty") in found
    assert (6, "'conv' has no attribute 'kernal'") in found
    assert (6, "mbconv.out must be an integer >= 1, got 1.5") in found
    assert (6, "unknown operation 'foo'") in found
    assert (7, "pool.kind must be one of avg, max, got maxx") in found
    assert (11, "conv.out: unknown name 'widht'") in found
    assert any(line == 13 and "unknown choice 's3.mult'" in msg for line, msg in found)
    assert diagnostics == sorted(diagnostics, key=lambda d: (d.line, d.column))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("stage s { depth 1 layer conv(kernel = 3) }", "needs the attribute 'out'"),
        ("stage s { depth 1 layer conv(out = 4, bias = 3) }", "bias must be true or false"),
        ("stage s { depth 1 layer conv(out = 4, kernel = {3, 3}) }", "3 is listed twice"),
        (
            "stage s { depth 1 layer conv(out = 4) } stage s { depth 1 layer conv(out = 4) }",
            "defined twice",
        ),
        ("stage s { layer conv(out = 4) }", "needs a depth"),
        ("stage s { depth 2 }", "needs a layer"),
        ("choice c = 5..1 stage s { depth 1 layer conv(out = c) }", "range 5..1 is empty"),
        ("stage s { depth 1 layer conv(out = 4) } require nope > 1", "unknown choice 'nope'"),
        ("stage s { depth 1 layer conv(out = 4) } skip s -> t", "unknown stage 't'"),
        (
            "stage s { depth 1 layer conv(out = 4, kernel = {1, 3}) } unit u = s + t",
            "unknown stage 't'",
        ),
    ],
)
def test_semantic_error_messages(body: str, needle: str) -> None:
    text = f"space x {{\n  input(channels = 3, size = 8)\n  {body}\n}}\n"
    diagnostics = errors_of(text)
    assert any(needle in d.message for d in diagnostics), [d.message for d in diagnostics]
    assert all(1 <= d.line <= 4 for d in diagnostics)


def test_a_rule_no_architecture_satisfies_is_an_error_at_the_rule() -> None:
    text = """space x {
  input(channels = 3, size = 8)
  choice a = {1, 2}
  stage s { depth 1..2 layer conv(out = 4 * a) }
  require a > 5
}
"""
    diagnostics = errors_of(text)
    assert len(diagnostics) == 1
    assert diagnostics[0].line == 5 and "no architecture satisfies" in diagnostics[0].message


def test_equal_choices_merge_into_one_decision() -> None:
    text = """space x {
  input(channels = 3, size = 8)
  stage a { depth 1 choice m = {1, 2, 3} layer conv(out = 8 * m) }
  stage b { depth 1 choice m = {2, 3, 4} layer conv(out = 8 * m) }
  require b.m == a.m
}
"""
    space = compile_text(text)
    assert space.ties == {"b.m": "a.m"}
    assert space.stage("a").choices["m"] == [2, 3]
    assert "m" not in space.stage("b").choices
    assert space_size(space) == 2
    assert space.rules == []


def test_disjoint_equality_is_reported() -> None:
    text = """space x {
  input(channels = 3, size = 8)
  stage a { depth 1 choice m = {1} layer conv(out = 8 * m) }
  stage b { depth 1 choice m = {2} layer conv(out = 8 * m) }
  require a.m == b.m
}
"""
    (diagnostic,) = errors_of(text)
    assert diagnostic.line == 5 and "no value in common" in diagnostic.message


def test_filter_rules_count_exactly() -> None:
    text = """space x {
  input(channels = 3, size = 8)
  choice a = {1, 2, 3}
  stage s { depth 1..3 layer conv(out = 4, kernel = {1, 3}) }
  require s.depth + a <= 4
  require a != 2
}
"""
    space = compile_text(text)
    # (a=1: depths 1..3 -> 2+4+8) + (a=3: depth 1 -> 2) = 16
    assert space_size(space) == 16


def test_extends_patches_and_restates_only_what_differs(tmp_path: Path) -> None:
    (tmp_path / "base.abs").write_text(SMALL)
    (tmp_path / "child.abs").write_text(
        'space child extends small from "base.abs" {\n'
        "  choice width = {64}\n"
        "  stage a { depth 2 }\n"
        "}\n"
    )
    child = compile_file(tmp_path / "child.abs")
    assert child.extends == "small"
    assert child.choices["width"] == [64]
    assert child.stage("a").depths == [2]
    assert space_size(child) == 9 * 2


def test_extends_cannot_add_stages_and_reports_missing_parents(tmp_path: Path) -> None:
    (tmp_path / "base.abs").write_text(SMALL)
    text = 'space c extends small from "base.abs" {\n  stage z { depth 1 layer conv(out = 4) }\n}\n'
    (diagnostic,) = errors_of(text, str(tmp_path / "c.abs"))
    assert "not in 'small'" in diagnostic.message
    missing = errors_of('space c extends nope from "missing.abs" { }\n', str(tmp_path / "d.abs"))
    assert "no such file" in missing[0].message


def test_several_spaces_in_one_file_and_selection() -> None:
    text = SMALL + "\nspace bigger extends small {\n  choice width = {64, 128, 256}\n}\n"
    assert compile_text(text).name == "small"
    bigger = compile_text(text, space="bigger")
    assert space_size(bigger) == 3 * 12 * 2
    with pytest.raises(CompileError, match="no space named 'nope'"):
        compile_text(text, space="nope")


def test_restrict_lists_modules_of_a_reduced_space() -> None:
    text = (
        SMALL
        + """
space reduced extends small {
  restrict a to {
    [(op = conv, kernel = 3)],
    [(op = identity), (op = conv, kernel = 5)],
  }
}
"""
    )
    reduced = compile_text(text, space="reduced")
    assert unit_module_count(reduced, reduced.module_units()[0]) == 2
    assert space_size(reduced) == 2 * 2 * 2
    bad = text.replace("kernel = 5", "kernel = 7")
    diagnostics = errors_of(bad, space="reduced")
    assert any("kernel = 7 is not one of {3, 5}" in d.message for d in diagnostics)
