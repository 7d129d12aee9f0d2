"""Hand-built ResolvedNetworks of the CNN families, laid out as `space.resolve` lays out
spaces/nas_bench_macro.abs, spaces/mbv3.abs and spaces/ofa_proxyless.abs (every catalog
attribute with a default is written out, as the resolver does)."""

from __future__ import annotations

from collections.abc import Sequence

from autobuild_dsl.space.ops import CATALOG
from autobuild_dsl.space.resolved import (
    AttrValue,
    InputSpec,
    NodePosition,
    ResolvedNetwork,
    ResolvedNode,
)


def node(op: str, position: NodePosition, **attrs: AttrValue) -> ResolvedNode:
    """A node with the catalog defaults filled in and `attrs` on top (the resolver's way)."""
    full: dict[str, AttrValue] = {
        name: spec.default  # type: ignore[misc]
        for name, spec in CATALOG[op].attrs.items()
        if spec.default is not None
    }
    full.update(attrs)
    return ResolvedNode(op=op, attrs=full, position=position)


def _fixed(part: str, block: str) -> NodePosition:
    return NodePosition(part=part, block=block)  # type: ignore[arg-type]


def _layer(block: str, stage_index: int, layer_index: int) -> NodePosition:
    return NodePosition(
        part="stage",
        block=block,
        stage_index=stage_index,
        layer_index=layer_index,
        role="layer",
    )


# ------------------------------------------------------------------------ NAS-Bench-Macro

MACRO_STAGES = (("s1", 64, 2), ("s2", 128, 3), ("s3", 256, 3))


def macro_network(key: str, classes: int = 10) -> ResolvedNetwork:
    """A NAS-Bench-Macro architecture from its 8-digit key (0 identity, 1 MB e3k3, 2 MB e6k5)."""
    if len(key) != 8 or set(key) - set("012"):
        raise ValueError(f"not a NAS-Bench-Macro key: {key!r}")
    nodes = [node("conv", _fixed("stem", "stem"), out=32, kernel=3, act="relu")]
    digits = iter(key)
    for s, (name, width, depth) in enumerate(MACRO_STAGES):
        for i in range(depth):
            stride = 2 if i == 0 else 1
            pos = _layer(name, s, i)
            match next(digits):
                case "0":
                    nodes.append(node("identity", pos, out=width, stride=stride))
                case "1":
                    nodes.append(
                        node("mbconv", pos, out=width, stride=stride, expand=3, kernel=3, divisor=1)
                    )
                case _:
                    nodes.append(
                        node("mbconv", pos, out=width, stride=stride, expand=6, kernel=5, divisor=1)
                    )
    head = _fixed("head", "head")
    nodes += [
        node("conv", head, out=1280, kernel=1, act="relu"),
        node("pool", head),
        node("linear", head, out=classes),
    ]
    return ResolvedNetwork(
        space="nas_bench_macro", input=InputSpec(channels=3, size=32), nodes=nodes
    )


# ----------------------------------------------------------------- OFA MobileNetV3 (w1.0)

OFA_MBV3_STAGES = (
    # name, width, stride, act, se
    ("s1", 24, 2, "relu", False),
    ("s2", 40, 2, "relu", True),
    ("s3", 80, 2, "hswish", False),
    ("s4", 112, 1, "hswish", True),
    ("s5", 160, 2, "hswish", True),
)


def _stage_slots(
    subnet: dict, stage: int, slots: int = 4
) -> list[tuple[int, float]]:  # (kernel, expand) of the used layers
    d = int(subnet["d"][stage])
    ks = subnet["ks"][stage * slots : stage * slots + d]
    es = subnet["e"][stage * slots : stage * slots + d]
    return [(int(k), e) for k, e in zip(ks, es, strict=True)]


def _resolution(subnet: dict, default: int) -> int:
    r = subnet.get("r", default)
    return int(r[0] if isinstance(r, Sequence) else r)


def ofa_mbv3_network(subnet: dict, classes: int = 1000) -> ResolvedNetwork:
    """An OFA MobileNetV3 w1.0 subnet from OFA's dict (`ks`, `e`: 4 slots per stage, `d`,
    optional `r`)."""
    stem = _fixed("stem", "stem")
    nodes = [
        node("conv", stem, out=16, kernel=3, stride=2, act="hswish"),
        node("mbconv", stem, out=16, kernel=3, expand=1, act="relu"),
    ]
    for s, (name, width, stride, act, se) in enumerate(OFA_MBV3_STAGES):
        for i, (k, e) in enumerate(_stage_slots(subnet, s)):
            nodes.append(
                node(
                    "mbconv",
                    _layer(name, s, i),
                    out=width,
                    stride=stride if i == 0 else 1,
                    kernel=k,
                    expand=e,
                    act=act,
                    se=se,
                )
            )
    head = _fixed("head", "head")
    nodes += [
        node("conv", head, out=960, kernel=1, act="hswish"),
        node("pool", head),
        node("conv", head, out=1280, kernel=1, norm="none", act="hswish"),
        node("linear", head, out=classes),
    ]
    size = _resolution(subnet, 224)
    return ResolvedNetwork(space="ofa_mbv3", input=InputSpec(channels=3, size=size), nodes=nodes)


# ---------------------------------------------------------------- OFA ProxylessNAS (w1.0)

OFA_PROXYLESS_STAGES = (
    # name, width, stride, slots
    ("s1", 24, 2, 4),
    ("s2", 40, 2, 4),
    ("s3", 80, 2, 4),
    ("s4", 96, 1, 4),
    ("s5", 192, 2, 4),
    ("s6", 320, 1, 1),
)


def ofa_proxyless_network(subnet: dict, classes: int = 1000) -> ResolvedNetwork:
    """An OFA ProxylessNAS (mobile) w1.0 subnet: `ks` and `e` have 4 slots for s1-s5 and one
    for s6 (21 entries); `d` has 5 entries (s6 always has depth 1)."""
    stem = _fixed("stem", "stem")
    nodes = [
        node("conv", stem, out=32, kernel=3, stride=2, act="relu6"),
        node("mbconv", stem, out=16, kernel=3, expand=1, act="relu6"),
    ]
    depths = [*list(subnet["d"])[:5], 1]
    offset = 0
    for s, (name, width, stride, slots) in enumerate(OFA_PROXYLESS_STAGES):
        for i in range(int(depths[s])):
            k, e = int(subnet["ks"][offset + i]), subnet["e"][offset + i]
            nodes.append(
                node(
                    "mbconv",
                    _layer(name, s, i),
                    out=width,
                    stride=stride if i == 0 else 1,
                    kernel=k,
                    expand=e,
                    act="relu6",
                )
            )
        offset += slots
    head = _fixed("head", "head")
    nodes += [
        node("conv", head, out=1280, kernel=1, act="relu6"),
        node("pool", head),
        node("linear", head, out=classes),
    ]
    return ResolvedNetwork(
        space="ofa_proxyless", input=InputSpec(channels=3, size=224), nodes=nodes
    )


PROXYLESS_EXAMPLE = {
    "ks": [3, 5, 7, 3, 5, 3, 7, 5, 7, 7, 3, 5, 3, 5, 7, 3, 5, 7, 3, 3, 7],
    "e": [3, 4, 6, 3, 6, 3, 4, 3, 4, 6, 3, 4, 6, 6, 4, 3, 3, 4, 6, 3, 6],
    "d": [2, 3, 4, 2, 3],
}


# ------------------------------------------------- the same points as Architecture dicts
# (the decisions of spaces/*.abs, for `space.decisions.validate` and `space.resolve`)

MACRO_LABELS = ("identity", "mb_e3k3", "mb_e6k5")


def macro_arch(key: str) -> dict:
    """The Architecture dict of a NAS-Bench-Macro key in spaces/nas_bench_macro.abs."""
    digits = iter(key)
    stages = {
        name: {
            "depth": depth,
            "layers": [{"op": MACRO_LABELS[int(next(digits))]} for _ in range(depth)],
        }
        for name, _, depth in MACRO_STAGES
    }
    return {"space": "nas_bench_macro", "globals": {}, "stages": stages}


def ofa_mbv3_arch(subnet: dict) -> dict:
    """The Architecture dict of an OFA subnet dict in spaces/mbv3.abs."""
    stages = {}
    for s, (name, *_rest) in enumerate(OFA_MBV3_STAGES):
        layers = [{"kernel": k, "expand": int(e)} for k, e in _stage_slots(subnet, s)]
        stages[name] = {"depth": len(layers), "layers": layers}
    return {
        "space": "ofa_mbv3",
        "globals": {"resolution": _resolution(subnet, 224)},
        "stages": stages,
    }


def ofa_proxyless_arch(subnet: dict) -> dict:
    """The Architecture dict of a ProxylessNAS subnet dict in spaces/ofa_proxyless.abs."""
    depths = [*list(subnet["d"])[:5], 1]
    stages = {}
    offset = 0
    for s, (name, _, _, slots) in enumerate(OFA_PROXYLESS_STAGES):
        layers = [
            {"kernel": int(subnet["ks"][offset + i]), "expand": int(subnet["e"][offset + i])}
            for i in range(depths[s])
        ]
        stages[name] = {"depth": depths[s], "layers": layers}
        offset += slots
    return {"space": "ofa_proxyless", "globals": {}, "stages": stages}
