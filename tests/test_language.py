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
        ("mbv3.abs", 25 * 7371**5, [7371] * 5),
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


# ----- regressions: formatting keeps meaning -------------------------------------------


def _fmt_round_trip(text: str) -> str:
    once = format_file("f.abs", text)
    assert format_file("f.abs", once) == once
    assert _without_positions(compile_text(once)) == _without_positions(compile_text(text))
    return once


def test_fmt_keeps_the_quotes_of_strings_in_expressions() -> None:
    text = """space q {
  input(channels = 3, size = 8)
  choice act = {relu, "hswish"}
  stage s {
    depth 1..2
    layer conv(out = 4, act = act)
    after norm(kind = "bn") if act == "relu"
  }
  require act == "relu" or s.depth == 2
  require act != "say \\"hi\\" \\\\ bye"
}
"""
    once = _fmt_round_trip(text)
    assert 'require act == "relu" or s.depth == 2' in once
    assert 'if act == "relu"' in once and 'kind = "bn"' in once
    # A symbol stays bare, a string stays a string; an escaped string keeps its value.
    assert 'choice act = {relu, "hswish"}' in once
    # A backslash before a space needs no escape, so the formatter writes it bare.
    assert 'require act != "say \\"hi\\" \\ bye"' in once
    rule = compile_text(once).rules[0]
    assert rule.text == 'act == "relu" or s.depth == 2'


def test_fmt_keeps_the_parentheses_precedence_needs() -> None:
    text = """space p {
  input(channels = 3, size = 8)
  choice a = {1, 2, 3}
  choice b = {true, false}
  stage s {
    depth 1..2
    layer conv(out = 4 * (a + 1) - (a - 1), kernel = 3)
  }
  require (a < 2) == b
  require (s.depth > 1) == (a > 1)
  require (not b) == (a != 1)
  require -(a - 4) >= (2 - a) * -1 or not (b and a > 1)
}
"""
    once = _fmt_round_trip(text)
    for expected in (
        "require (a < 2) == b",
        "require (s.depth > 1) == (a > 1)",
        "require (not b) == (a != 1)",
        "require -(a - 4) >= (2 - a) * -1 or not (b and a > 1)",
        "conv(out = 4 * (a + 1) - (a - 1), kernel = 3)",
    ):
        assert expected in once, once


def test_fmt_keeps_unknown_functions_as_written() -> None:
    text = "space f {\n  let x = frob(2)\n}\n"
    assert format_file("f.abs", text) == text


# ----- regressions: derived spaces keep what a patch does not restate ------------------


UNET_LIKE = """space base {
  input(channels = 3, size = 32)
  stages (width, down) {
    e1 = (16, true)
    e2 = (32, false)
  } {
    depth 1..2
    before conv(out = width, kernel = 1)
    layer conv(out = width, kernel = {3, 5})
    after downsample() if down
  }
}
"""


def test_restating_a_stage_keeps_its_inherited_before_and_after() -> None:
    text = UNET_LIKE + "\nspace shallow extends base {\n  stage e1 {\n    depth 1\n  }\n}\n"
    base, child = compile_text(text), compile_text(text, space="shallow")
    for name in ("e1", "e2"):
        assert child.stage(name).before == base.stage(name).before
        assert child.stage(name).after == base.stage(name).after
    assert child.stage("e1").depths == [1]
    assert [n.op for n in child.stage("e1").after] == ["downsample"]


def test_a_patch_that_restates_after_replaces_only_after() -> None:
    text = (
        UNET_LIKE
        + "\nspace pooled extends base {\n  stage e1 {\n    after pool(kind = max, kernel = 2)\n"
        + "    after dropout(p = 0.1)\n  }\n}\n"
    )
    child = compile_text(text, space="pooled")
    assert [n.op for n in child.stage("e1").after] == ["pool", "dropout"]
    assert [n.op for n in child.stage("e1").before] == ["conv"]
    assert [n.op for n in child.stage("e2").after] == ["downsample"]


# ----- regressions: a stride choice only counts in a stage's first layer -----------------


def test_a_per_layer_stride_choice_is_a_decision_of_the_first_layer_only() -> None:
    from autobuild_dsl.space.decisions import canonicalize, iter_architectures, sample
    from autobuild_dsl.space.resolve import resolve

    text = """space st {
  input(channels = 3, size = 32)
  stage s1 {
    depth 1..3
    layer conv(out = 8, kernel = {1, 3}, stride = {1, 2}) | identity(out = 8, stride = {1, 2})
  }
}
"""
    space = compile_text(text)
    # First layer: 2 x 2 conv + 2 identity = 6; later layers: 2 conv + 1 identity = 3.
    assert space_size(space) == 6 + 6 * 3 + 6 * 3 * 3 == 78
    archs = list(iter_architectures(space))
    assert len(archs) == 78
    networks = {
        tuple((n.op, tuple(sorted(n.attrs.items()))) for n in resolve(space, a).nodes)
        for a in archs
    }
    assert len(networks) == 78
    for arch in sample(space, 50, seed=3):
        layers = arch.stages["s1"].layers
        assert "stride" in layers[0] and all("stride" not in layer for layer in layers[1:])
        assert canonicalize(space, arch.model_dump(mode="json")) == arch
    # A stride given in a later layer is accepted when valid, and dropped.
    raw = {
        "space": "st",
        "globals": {},
        "stages": {
            "s1": {
                "depth": 2,
                "layers": [
                    {"op": "conv", "kernel": 1, "stride": 2},
                    {"op": "identity", "stride": 2},
                ],
            }
        },
    }
    assert canonicalize(space, raw).stages["s1"].layers == [
        {"op": "conv", "kernel": 1, "stride": 2},
        {"op": "identity"},
    ]


def test_layer_mutations_keep_the_first_layer_stride_canonical() -> None:
    import random

    from autobuild_dsl.space.decisions import canonicalize, mutate, sample

    text = """space st {
  input(channels = 3, size = 32)
  stage s1 {
    depth 1..4
    layer conv(out = 8, kernel = {1, 3}, stride = {1, 2})
  }
}
"""
    space = compile_text(text)
    rng = random.Random(0)
    arch = sample(space, 1, seed=0)[0]
    for _ in range(200):
        arch = mutate(space, arch, rng, mode="layer")
        layers = arch.stages["s1"].layers
        assert "stride" in layers[0] and all("stride" not in layer for layer in layers[1:])
        assert canonicalize(space, arch.model_dump(mode="json")) == arch


# ----- regressions: rules may name lets; precise messages otherwise ---------------------


def test_rules_may_name_a_let_computed_from_choices() -> None:
    text = """space r {
  input(channels = 3, size = 32)
  choice width = {16, 32}
  let doubled = width * 2
  stages (w) {
    s1 = (8)
    s2 = (16)
  } {
    depth 1..2
    choice m = {1, 2}
    let hidden = w * m
    layer conv(out = hidden, kernel = 3)
  }
  require doubled > 32 or s1.depth == 1
  require s2.hidden <= 16
}
"""
    space = compile_text(text)
    # width 32: s1 any (2 m x 2 depths); width 16: s1 depth 1 (2 m); s2: m = 1 (2 depths).
    assert space_size(space) == (4 + 2) * 2
    assert [r.text for r in space.rules] == ["doubled > 32 or s1.depth == 1", "s2.hidden <= 16"]


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ("m > 1", "rule names 'm', a choice of stage s1; in a rule write it with its stage: s1.m"),
        ("hidden > 1", "a constant (column or `let`) of stage s1; in a rule write it with its"),
        ("depth > 1", "write the stage's depth as STAGE.depth"),
        ("s1.nope > 1", "stage 's1' has no choice or constant 'nope'"),
        ("s8.m > 1", "there is no stage 's8'"),
        ("k > 5", "no architecture satisfies `k > 5`: it names no choice and is always false"),
    ],
)
def test_rules_that_name_what_they_cannot_get_precise_messages(rule: str, needle: str) -> None:
    text = f"""space r {{
  input(channels = 3, size = 32)
  let k = 3
  stage s1 {{
    depth 1..2
    choice m = {{1, 2}}
    let hidden = 4 * m
    layer conv(out = hidden)
  }}
  require {rule}
}}
"""
    (diagnostic,) = errors_of(text)
    assert needle in diagnostic.message and diagnostic.line == 10


def test_a_rule_naming_a_broken_let_is_reported_once_at_the_let() -> None:
    text = """space r {
  input(channels = 3, size = 32)
  let bad = s9.x
  stage s1 {
    depth 1..2
    layer conv(out = 4)
  }
  require bad > 1
}
"""
    (diagnostic,) = errors_of(text)
    assert (diagnostic.line, diagnostic.column) == (3, 7)
    assert "unknown stage 's9'" in diagnostic.message


# ----- regressions: duplicates are located errors naming both places --------------------


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("choice w = {1}\n  choice w = {2}", 4, "choice 'w' is declared twice (first at t.abs:3:10)"),
        ("let k = 1\n  let k = 2", 4, "let 'k' is declared twice (first at t.abs:3:7)"),
        ("choice w = {1}\n  let w = 2", 4, "'w' is already a choice (at t.abs:3:10)"),
        ("input(size = 16)", 3, "input setting 'size' is given twice (first at t.abs:2:23)"),
        ("stem {\n    pool()\n  }\n  stem {\n    pool()\n  }", 6, "a second `stem` (the first is at t.abs:3:3)"),
        ("head {\n    pool()\n  }\n  head cls {\n    pool()\n  }", 6, "a second `head` (the first is at t.abs:3:3)"),
        ("fixed mid {\n    pool()\n  }\n  fixed mid {\n    pool()\n  }", 6, "fixed block 'mid' is declared twice (first at t.abs:3:3)"),
        ("unit u = s + t\n  unit u = s + t", 4, "unit 'u' is declared twice (first at t.abs:3:3)"),
        ("choice depth = {1}", 3, "'depth' cannot name a choice"),
    ],
)  # fmt: skip
def test_duplicate_declarations_name_both_places(body: str, line: int, needle: str) -> None:
    text = (
        "space x {\n  input(channels = 3, size = 8)\n  "
        + body
        + "\n  stage s { depth 1 layer conv(out = 4) }\n  stage t { depth 1 layer conv(out = 4) }\n}\n"
    )
    diagnostics = errors_of(text)
    assert any(d.line == line and needle in d.message for d in diagnostics), [
        (d.line, d.message) for d in diagnostics
    ]


def test_duplicates_inside_a_stage_family_body_are_reported_once() -> None:
    text = """space x {
  input(channels = 3, size = 8)
  stages (width) {
    s1 = (4)
    s2 = (8)
  } {
    depth 1
    depth 2
    choice m = {1}
    choice m = {2}
    let width = 3
    layer conv(out = width * m)
  }
}
"""
    diagnostics = errors_of(text)
    assert [(d.line, d.message) for d in diagnostics] == [
        (8, "depth is given twice (first at t.abs:7:5)"),
        (10, "choice 'm' is declared twice (first at t.abs:9:12)"),
        (11, "'width' is already a column (at t.abs:3:11); a let needs another name"),
    ]


def test_two_spaces_of_one_name_are_an_error_at_the_second() -> None:
    text = SMALL + "\n" + SMALL
    diagnostics = errors_of(text)
    second = SMALL.count("\n") + 3
    assert [(d.line, d.message) for d in diagnostics] == [
        (second, "space 'small' is defined twice (first at t.abs:2:7)")
    ]


def test_a_derived_space_may_restate_inherited_names_once() -> None:
    text = SMALL + "\nspace c extends small {\n  choice width = {64}\n  choice width = {8}\n}\n"
    (diagnostic,) = errors_of(text, space="c")
    assert "choice 'width' is declared twice" in diagnostic.message
    ok = SMALL + "\nspace c extends small {\n  choice width = {64}\n  input(size = 16)\n}\n"
    assert compile_text(ok, space="c").choices["width"] == [64]


# ----- regressions: diagnostics point at the culprit -----------------------------------


def test_a_set_in_a_fixed_part_or_before_after_is_an_error_at_the_set() -> None:
    text = """space x {
  input(channels = 3, size = 8)
  stem {
    conv(out = 4, kernel = {1, 3})
  }
  stage s {
    depth 1
    layer conv(out = 4)
    before pool(kernel = {2, 3})
  }
}
"""
    diagnostics = errors_of(text)
    assert [(d.line, d.column) for d in diagnostics] == [(4, 28), (9, 26)]
    assert "a set of values is not allowed in a `stem`" in diagnostics[0].message
    assert "a set of values is not allowed in `before`" in diagnostics[1].message


def test_restrict_errors_point_at_the_offending_module() -> None:
    text = (
        SMALL
        + """
space reduced extends small {
  restrict a to {
    [(op = conv, kernel = 3)],
    [(op = identity), (op = conv, kernel = 7)],
    [(op = conv, kernel = 3)],
  }
}
"""
    )
    diagnostics = errors_of(text, space="reduced")
    base = SMALL.count("\n") + 4
    found = [(d.line, d.column, d.message) for d in diagnostics]
    assert found == [
        (base + 1, 23, "module 2 of 'a': layer 1: kernel = 7 is not one of {3, 5}"),
        (base + 2, 5, "module 3 of 'a' is listed twice (first as module 1)"),
    ]


def test_too_complex_rules_are_blamed_on_the_culprit() -> None:
    # `a * 1000 + b` keeps a million partial states apart: too many even for the DP over
    # the rule chain (a plain sum such as `a + b + c > 3` is counted by it in no time).
    text = """space c {
  input(channels = 3, size = 8)
  choice a = 1..1000
  choice b = 1..1000
  choice c = 1..300
  stage s1 {
    depth 1..3
    layer conv(out = 8)
  }
  require a + s1.depth > 2
  require a * 1000 + b != c
}
"""
    (diagnostic,) = errors_of(text)
    assert diagnostic.line == 11
    assert "joint choices" in diagnostic.message and "t.abs:10:11" in diagnostic.message


# ----- regressions: `depth` inside a stage is that stage's depth ------------------------


def test_a_family_body_can_use_its_own_stages_depth() -> None:
    from autobuild_dsl.space.decisions import iter_architectures
    from autobuild_dsl.space.resolve import resolve

    text = """space d {
  input(channels = 3, size = 32)
  stages (width) {
    s1 = (8)
    s2 = (16)
  } {
    depth 1..3
    let hidden = width * depth
    layer conv(out = hidden, kernel = 3)
    after pool(kind = max, kernel = 2) if depth > 2
  }
}
"""
    space = compile_text(text)
    for arch in iter_architectures(space):
        net = resolve(space, arch)
        for stage, width in (("s1", 8), ("s2", 16)):
            depth = arch.stages[stage].depth
            nodes = [n for n in net.nodes if n.position.block == stage]
            assert {n.attrs["out"] for n in nodes if n.op == "conv"} == {width * depth}
            assert any(n.op == "pool" for n in nodes) == (depth > 2)


def test_a_bare_depth_outside_a_stage_is_an_error() -> None:
    text = """space d {
  input(channels = 3, size = 32)
  stem {
    conv(out = 8) if depth > 1
  }
  stage s1 {
    depth 1..2
    layer conv(out = 8)
  }
}
"""
    (diagnostic,) = errors_of(text)
    assert diagnostic.line == 4 and "outside a stage write STAGE.depth" in diagnostic.message


def test_a_shape_mistake_points_at_the_node_that_makes_it() -> None:
    text = (
        "space bad {\n"
        "  input(channels = 4, size = 8)\n"
        "  stem {\n"
        "    conv(out = 32, kernel = 3)\n"
        "  }\n"
        "  stage s1 {\n"
        "    depth 1..2\n"
        "    layer resblock(out = 48)\n"
        "  }\n"
        "  head {\n"
        "    conv(out = 4, kernel = 3)\n"
        "  }\n"
        "}\n"
    )
    (error,) = errors_of(text)
    assert (error.line, error.column) == (8, 11)
    assert "48 are not divisible into 32 groups" in error.message
