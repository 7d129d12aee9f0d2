"""A plain-data summary of a space, for the CLI and the docs."""

from __future__ import annotations

import itertools
import math

from pydantic import BaseModel, Field

from autobuild_dsl.space.decisions import space_size, stage_module_choices, unit_module_count
from autobuild_dsl.space.equivalence import count_distinct_networks, may_have_equivalences
from autobuild_dsl.space.expr import Value, format_expr, format_value
from autobuild_dsl.space.model import Space


class StageSummary(BaseModel):
    name: str
    section: str | None
    depth: str
    layer_choices: str
    stage_choices: str
    modules: int | None


class UnitSummary(BaseModel):
    name: str
    stages: list[str]
    modules: int


class SpaceSummary(BaseModel):
    name: str
    description: str
    size: int
    globals: dict[str, list[Value]]
    stages: list[StageSummary]
    units: list[UnitSummary]
    rules: list[str]
    ties: list[str]
    equivalences: bool = Field(
        default=False,
        description="some layer can be a no-op, so architectures may share one network",
    )
    networks: int | None = Field(
        default=None,
        description="distinct networks, when equivalences are possible and the space is "
        "small enough to enumerate (space.equivalence.COUNT_LIMIT)",
    )


def show_domain(domain: list[Value]) -> str:
    if len(domain) > 6 and all(isinstance(v, int) and not isinstance(v, bool) for v in domain):
        steps = {b - a for a, b in itertools.pairwise(domain)}
        if len(steps) == 1:
            step = steps.pop()
            text = f"{domain[0]}..{domain[-1]}"
            return (text + (f" step {step}" if step != 1 else "")) + f" ({len(domain)} values)"
    return "{" + ", ".join(format_value(v) for v in domain) + "}"


def scientific(number: int) -> str:
    """`number` as `6.561e+03`, computed on integers: a space can hold more than 1.8e308
    architectures (float overflow) or more than 4300 digits' worth (str() refuses)."""
    if number < 0:
        return "-" + scientific(-number)
    if number < 10**15:
        return f"{float(number):.3e}"
    # Keep ~6 leading digits: divide by a power of ten found from the bit length.
    shift = max(0, int((number.bit_length() - 1) * math.log10(2)) - 6)
    head = number // 10**shift
    digits = len(str(head))
    mantissa = head / 10 ** (digits - 1)
    exponent = shift + digits - 1
    text = f"{mantissa:.3f}"
    if text.startswith("10."):  # rounding carried into a new digit
        text, exponent = "1.000", exponent + 1
    return f"{text}e+{exponent:02d}"


def grouped(number: int) -> str:
    """`number` with thousands separators, or in scientific form when it is too long to
    print in full (Python converts at most 4300 digits)."""
    if number.bit_length() > 13000:  # ~3900 decimal digits
        return scientific(number)
    return f"{number:,}"


def summarize(space: Space, count_networks: bool = True) -> SpaceSummary:
    """The summary; with `count_networks`, distinct networks are counted where the space
    may have equivalent architectures and holds at most COUNT_LIMIT of them."""
    units = space.module_units()
    unit_counts = {u.name: unit_module_count(space, u) for u in units}
    stage_rows = []
    for stage in space.stages:
        depth = (
            f"{stage.depths[0]}..{stage.depths[-1]}"
            if len(stage.depths) > 1
            and stage.depths == list(range(stage.depths[0], stage.depths[-1] + 1))
            else ", ".join(str(d) for d in stage.depths)
        )
        options = []
        for option in stage.options:
            ops = " ; ".join(n.op for n in option.nodes)
            picks = " ".join(f"{k}{show_domain(v)}" for k, v in option.choices.items())
            fixed = " ".join(
                f"{k}={format_expr(v)}"
                for n in option.nodes
                for k, v in n.attrs.items()
                if k not in option.choices and k in ("kernel", "expand")
            )
            text = " ".join(x for x in (ops, picks, fixed) if x)
            options.append(f"{option.label}: {text}" if len(stage.options) > 1 else text)
        choices = stage_module_choices(space, stage)
        stage_rows.append(
            StageSummary(
                name=stage.name,
                section=stage.section,
                depth=depth,
                layer_choices=" | ".join(options),
                stage_choices=" ".join(f"{k}{show_domain(v)}" for k, v in choices.items()),
                modules=unit_counts.get(stage.name),
            )
        )
    equivalences = may_have_equivalences(space)
    return SpaceSummary(
        name=space.name,
        description=space.description,
        size=space_size(space),
        globals=dict(space.choices),
        stages=stage_rows,
        units=[
            UnitSummary(name=u.name, stages=u.stages, modules=unit_counts[u.name]) for u in units
        ],
        rules=[r.text for r in space.rules],
        ties=[f"{alias} = {keeper}" for alias, keeper in space.ties.items()],
        equivalences=equivalences,
        networks=count_distinct_networks(space) if equivalences and count_networks else None,
    )
