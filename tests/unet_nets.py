"""Hand-built ResolvedNetworks of SD v1.x-style U-Nets, laid out as the resolver lays out
spaces/sd14_unet.abs (decoder stages named after the encoder stage they mirror: d4 runs
first and takes e4's skips)."""

from __future__ import annotations

from collections.abc import Sequence

from autobuild_dsl.space.resolved import (
    AttrValue,
    InputSpec,
    NodePosition,
    ResolvedNetwork,
    ResolvedNode,
    SkipLink,
)


def unet_network(
    *,
    in_channels: int = 4,
    out_channels: int = 4,
    size: int = 64,
    base: int = 320,
    mults: Sequence[int] = (1, 2, 4, 4),
    enc_depths: Sequence[int] = (2, 2, 2, 2),
    dec_depths: Sequence[int] = (3, 3, 3, 3),
    enc_attn: Sequence[bool] = (True, True, True, False),
    dec_attn: Sequence[bool] | None = None,
    mid_attn: bool = True,
    heads: int = 8,
    groups: int = 32,
    temb_mult: int = 4,
    context_dim: int | None = 768,
    context_tokens: int | None = 77,
    name: str = "sd14_unet",
) -> ResolvedNetwork:
    """A U-Net in the shape of SD v1.4's; the defaults are SD v1.4 itself.

    Sequences are given per level, shallowest first; `dec_attn` defaults to `enc_attn`
    (decoder stage dK mirrors encoder stage eK).
    """
    levels = len(mults)
    dec_attn = enc_attn if dec_attn is None else dec_attn
    widths = [base * m for m in mults]
    nodes: list[ResolvedNode] = []

    def add(op: str, attrs: dict[str, AttrValue], position: NodePosition) -> None:
        nodes.append(ResolvedNode(op=op, attrs=attrs, position=position))

    def conv(out: int) -> dict[str, AttrValue]:
        return {
            "out": out,
            "kernel": 3,
            "stride": 1,
            "groups": 1,
            "bias": True,
            "norm": "none",
            "act": "none",
        }

    def res(out: int) -> dict[str, AttrValue]:
        return {"out": out, "groups": groups}

    attn: dict[str, AttrValue] = {"heads": heads, "depth": 1, "groups": groups}

    stem = NodePosition(part="stem", block="stem")
    add("conv", conv(base), stem)
    add("timestep_embedding", {"dim": base * temb_mult, "channels": 0}, stem)

    stage_index = 0

    def stage(name: str, section: str, depth: int, width: int, with_attn: bool, extra: str):
        nonlocal stage_index

        def pos(role: str, layer: int | None) -> NodePosition:
            return NodePosition(
                part="stage",
                block=name,
                section=section,
                stage_index=stage_index,
                layer_index=layer,
                role=role,  # type: ignore[arg-type]
            )

        for layer in range(depth):
            add("resblock", res(width), pos("layer", layer))
            if with_attn:
                add("attention", dict(attn), pos("layer", layer))
        if extra:
            add(extra, {"out": 0}, pos("after", None))
        stage_index += 1

    for i in range(levels):
        down = "downsample" if i < levels - 1 else ""
        stage(f"e{i + 1}", "encoder", enc_depths[i], widths[i], enc_attn[i], down)

    mid = NodePosition(part="fixed", block="mid", section="middle")
    add("resblock", res(widths[-1]), mid)
    if mid_attn:
        add("attention", dict(attn), mid)
    add("resblock", res(widths[-1]), mid)

    for i in reversed(range(levels)):
        up = "upsample" if i > 0 else ""
        stage(f"d{i + 1}", "decoder", dec_depths[i], widths[i], dec_attn[i], up)

    head = NodePosition(part="head", block="head")
    add("norm", {"kind": "gn", "groups": groups, "act": "silu"}, head)
    add("conv", conv(out_channels), head)

    return ResolvedNetwork(
        space=name,
        input=InputSpec(
            channels=in_channels,
            size=size,
            context_dim=context_dim,
            context_tokens=context_tokens,
            timestep=True,
        ),
        nodes=nodes,
        skips=[SkipLink(source=f"e{i}", target=f"d{i}") for i in range(levels, 0, -1)],
    )


def sd14(in_channels: int = 4) -> ResolvedNetwork:
    """SD v1.4's U-Net (9 input channels: the inpainting variant)."""
    name = "sd14_unet" if in_channels == 4 else "sd14_unet_inpaint"
    return unet_network(in_channels=in_channels, name=name)


def tiny_unet(**overrides: object) -> ResolvedNetwork:
    """A reduced-width U-Net that runs in well under a second on a CPU."""
    settings: dict[str, object] = {
        "size": 16,
        "base": 32,
        "mults": (1, 2, 2),
        "enc_depths": (2, 2, 2),
        "dec_depths": (3, 3, 3),
        "enc_attn": (True, True, False),
        "heads": 2,
        "groups": 8,
        "context_dim": 24,
        "context_tokens": 5,
        "name": "tiny_unet",
    }
    settings.update(overrides)
    return unet_network(**settings)  # type: ignore[arg-type]


def reduced(
    net: ResolvedNetwork,
    divisor: int = 16,
    size: int = 16,
    groups: int = 4,
    heads: int = 2,
    context_dim: int = 32,
    context_tokens: int = 8,
) -> ResolvedNetwork:
    """A narrow, low-resolution copy of a resolved U-Net with the same topology (depths,
    attention, skips): every width of the stem, the stages and the middle (`out`, the
    timestep embedding's `dim`) divided by `divisor`; group norms with `groups` groups,
    `heads` attention heads, a `context_dim`-wide context of `context_tokens` tokens and a
    `size` x `size` input. The head keeps its output channels. For the seed spaces'
    U-Nets, whose widths are multiples of 64: 860M parameters become a few million."""
    nodes: list[ResolvedNode] = []
    for node in net.nodes:
        attrs = dict(node.attrs)
        out = attrs.get("out")
        if node.position.part != "head" and isinstance(out, int) and out > 0:
            if out % divisor:
                raise ValueError(f"{node.op}: out = {out} is not a multiple of {divisor}")
            attrs["out"] = out // divisor
        if node.op == "timestep_embedding":
            attrs["dim"] = int(attrs["dim"]) // divisor
        if node.op in ("resblock", "attention", "norm") and "groups" in attrs:
            attrs["groups"] = groups
        if node.op == "attention":
            attrs["heads"] = heads
        nodes.append(node.model_copy(update={"attrs": attrs}))
    spec = net.input
    update: dict[str, object] = {"size": size}
    if spec.context_dim is not None:
        update.update(context_dim=context_dim, context_tokens=context_tokens)
    return net.model_copy(update={"input": spec.model_copy(update=update), "nodes": nodes})
