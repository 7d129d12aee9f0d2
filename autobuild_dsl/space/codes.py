"""Architecture codes: the compact ways data sets write architectures, declared in a space
(`code NAME = layers { 0 -> (op = identity) ... }`), decoded to raw architecture dicts
that `decisions.canonicalize` then checks like any other.

A code is a sequence of tokens: the characters of a digit string (`"02012100"`), the
comma-separated items of a string (`"0,2,1"`), or the items of a list (`[0, 2, 1]`).
"""

from __future__ import annotations

from typing import Any

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.expr import Value, format_value
from autobuild_dsl.space.model import ArchitectureCode, Space


class CodeError(AbcError, ValueError):
    """A code cannot be read for this space; the message says which token and why."""

    code = "space-code"


def pick_code(space: Space, name: str | None) -> tuple[str, ArchitectureCode]:
    if name is not None:
        if name not in space.codes:
            known = ", ".join(space.codes) or "none"
            raise CodeError(f"space {space.name} has no code '{name}' (codes: {known})")
        return name, space.codes[name]
    if len(space.codes) != 1:
        known = ", ".join(space.codes) or "none"
        raise CodeError(f"name the code to read (space {space.name} codes: {known})")
    return next(iter(space.codes.items()))


def tokens_of(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [format_value(v) if not isinstance(v, str) else v.strip() for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if "," in text:
            return [t.strip() for t in text.split(",") if t.strip()]
        return list(text)
    raise CodeError(f"expected a string or a list of tokens, got {value!r}")


def decode(
    space: Space,
    value: Any,
    name: str | None = None,
    globals_: dict[str, Value] | None = None,
) -> dict[str, Any]:
    """The raw architecture a code stands for (not yet checked: canonicalize it)."""
    code_name, code = pick_code(space, name)
    tokens = tokens_of(value)
    stages: dict[str, Any] = {}

    def entry(index: int, token: str) -> dict[str, Value]:
        if token not in code.tokens:
            known = ", ".join(code.tokens)
            raise CodeError(f"code {code_name}: token {index + 1} '{token}' is not one of {known}")
        return dict(code.tokens[token])

    if code.kind == "layers":
        position = 0
        for stage in space.stages:
            depth = max(stage.depths)
            if len(stage.depths) != 1:
                raise CodeError(
                    f"code {code_name}: a layer code needs fixed depths; stage {stage.name} "
                    f"takes {min(stage.depths)}..{depth}"
                )
            layers = [
                entry(position + i, t) for i, t in enumerate(tokens[position : position + depth])
            ]
            position += depth
            stages[stage.name] = {"depth": depth, "choices": {}, "layers": layers}
        if position != len(tokens):
            raise CodeError(
                f"code {code_name}: {len(tokens)} tokens for a space of {position} layers"
            )
    else:
        if len(tokens) > len(space.stages):
            raise CodeError(
                f"code {code_name}: {len(tokens)} tokens for a space of {len(space.stages)} stages"
            )
        for index, stage in enumerate(space.stages):
            if index >= len(tokens):
                if 0 not in stage.depths:
                    raise CodeError(
                        f"code {code_name}: {len(tokens)} tokens, but stage {stage.name} "
                        "cannot be absent"
                    )
                stages[stage.name] = {"depth": 0, "choices": {}, "layers": []}
                continue
            present = [d for d in stage.depths if d]
            if len(present) != 1:
                raise CodeError(
                    f"code {code_name}: a stage code needs one depth per present stage; "
                    f"stage {stage.name} takes {present}"
                )
            layers = _fixed_layers(stage)
            if layers is None:
                raise CodeError(
                    f"code {code_name}: the layers of stage {stage.name} are decisions a "
                    "stage code cannot give"
                )
            choices = entry(index, tokens[index])
            stages[stage.name] = {
                "depth": present[0],
                "choices": choices,
                "layers": layers * present[0],
            }
    return {"space": space.name, "globals": dict(globals_ or {}), "stages": stages}


def _fixed_layers(stage) -> list[dict[str, Value]] | None:  # type: ignore[no-untyped-def]
    """[the one layer a slot of the stage can hold], or None when a slot holds several."""
    if len(stage.options) != 1 or stage.options[0].size() != 1:
        return None
    option = stage.options[0]
    return [{name: domain[0] for name, domain in option.choices.items()}]
