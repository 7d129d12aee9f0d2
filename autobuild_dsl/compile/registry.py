"""The op registry: operation name -> factory that builds a PyTorch module for one node.

Every compiled op is an `nn.Module` whose forward is `forward(x, cond)`: `x` is the feature
map (N, C, H, W) (or (N, C) after a `linear`), `cond` is a `Cond` carrying the side inputs
that conditioned ops need (the diffusion timestep, its embedding, the cross-attention
context). CNN ops ignore `cond`.

A factory is called once per node at build time as `factory(in_shape, attrs, dims)`:

- `in_shape`: the `Shape` (channels, size) the node receives; for a decoder node that takes
  a U-Net skip, `channels` already includes the concatenated skip channels;
- `attrs`: the node's attributes with every catalog default filled in (see `full_attrs`);
- `dims`: a `CondDims` with the widths of the side inputs available at that point.

The output shape is the catalog's shape rule (`autobuild_dsl.space.ops.CATALOG`), so a
factory must build a module that produces exactly that shape.

A module that *produces* a side input announces it with an attribute: `provides_temb = D`
(an int) means "my forward sets `cond.temb` to a (N, D) tensor", and ops built after it see
`dims.temb == D`. This keeps the builder free of per-op knowledge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.ops import CATALOG, Shape
from autobuild_dsl.space.resolved import AttrValue


@dataclass
class Cond:
    """Side inputs of one forward pass. Mutable on purpose: a `timestep_embedding` op fills
    `temb` for the ops after it. One fresh `Cond` per forward call."""

    timestep: torch.Tensor | None = None
    temb: torch.Tensor | None = None
    context: torch.Tensor | None = None


@dataclass(frozen=True)
class CondDims:
    """Build-time widths of the side inputs (None: not available at this node)."""

    temb: int | None = None
    context: int | None = None
    timestep: bool = False

    def with_temb(self, dim: int) -> CondDims:
        return replace(self, temb=dim)


class OpFactory(Protocol):
    def __call__(
        self, in_shape: Shape, attrs: Mapping[str, AttrValue], dims: CondDims
    ) -> nn.Module: ...


class UnknownOpError(AbcError, KeyError):
    """No PyTorch implementation is registered for an operation."""

    code = "unknown-op"

    def __init__(self, op: str) -> None:
        self.op = op
        known = ", ".join(sorted(_REGISTRY)) or "none"
        super().__init__(f"no PyTorch implementation for operation '{op}' (registered: {known})")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


_REGISTRY: dict[str, OpFactory] = {}
_BUILTINS_LOADED = False


def register_op(
    name: str, factory: OpFactory | None = None, *, replace_existing: bool = False
) -> Callable[[OpFactory], OpFactory] | OpFactory:
    """Register `factory` for op `name`; usable as `register_op("x", f)` or as a decorator
    `@register_op("x")`. Registering a name twice is an error unless `replace_existing`."""

    def add(f: OpFactory) -> OpFactory:
        if name in _REGISTRY and _REGISTRY[name] is not f and not replace_existing:
            raise ValueError(f"operation '{name}' is already registered")
        _REGISTRY[name] = f
        return f

    return add if factory is None else add(factory)


def _load_builtins() -> None:
    # Imported lazily so that op modules can import this one without a cycle.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from autobuild_dsl.compile import torch_ops, unet_ops  # noqa: F401


def get_factory(name: str) -> OpFactory:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownOpError(name) from None


def registered_ops() -> tuple[str, ...]:
    _load_builtins()
    return tuple(sorted(_REGISTRY))


def full_attrs(op: str, attrs: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
    """The node's attributes with catalog defaults filled in for the missing ones."""
    spec = CATALOG.get(op)
    if spec is None:
        return dict(attrs)
    out: dict[str, AttrValue] = {}
    for key, attr in spec.attrs.items():
        if key in attrs:
            out[key] = attrs[key]
        elif not attr.required:
            out[key] = attr.default  # type: ignore[assignment]
    for key, value in attrs.items():  # keep attributes the catalog does not know yet
        out.setdefault(key, value)
    return out


def out_shape(op: str, in_shape: Shape, attrs: Mapping[str, AttrValue]) -> Shape:
    """The catalog's shape rule for `op`."""
    spec = CATALOG.get(op)
    if spec is None:
        if op in _REGISTRY:
            raise ValueError(f"operation '{op}' has no shape rule in the catalog (space/ops.py)")
        raise UnknownOpError(op)
    return spec.shape(in_shape, dict(attrs))
