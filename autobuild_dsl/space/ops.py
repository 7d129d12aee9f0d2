"""The operation catalog: every operation a space may name, its attributes and shape rule.

The catalog is pure data (no torch) so the language can check a space against it: an
unknown operation, an unknown attribute or a value of the wrong type is a diagnostic at
the `.abs` line. `autobuild_dsl.compile` supplies a PyTorch module for each entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

ACTIVATIONS = ("none", "relu", "relu6", "hswish", "hsigmoid", "swish", "silu", "sigmoid", "gelu")
NORMS = ("none", "bn", "gn", "ln")


@dataclass(frozen=True)
class AttrSpec:
    """One attribute of an operation.

    kind is 'int', 'float', 'bool' or 'enum'. A required attribute has no default.
    """

    kind: str
    default: object = None
    required: bool = False
    values: tuple[str, ...] = ()
    doc: str = ""
    minimum: float | None = None

    def type_name(self) -> str:
        if self.kind == "enum":
            return "one of " + ", ".join(self.values)
        name = {"int": "an integer", "float": "a number", "bool": "true or false"}[self.kind]
        if self.minimum is not None:
            bound = int(self.minimum) if float(self.minimum).is_integer() else self.minimum
            name += f" >= {bound}" if self.minimum != 0 or self.kind == "int" else " >= 0"
        return name

    def accepts(self, value: object) -> bool:
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if self.kind == "int" and not isinstance(value, int):
                return False
            return self.minimum is None or value >= self.minimum
        if self.kind == "bool":
            return isinstance(value, bool)
        return isinstance(value, str) and value in self.values


@dataclass(frozen=True)
class Shape:
    channels: int
    size: int


ShapeRule = Callable[[Shape, dict[str, object]], Shape]


def _strided(size: int, stride: int) -> int:
    # "same" padding: ceil(size / stride), as every conv in these families uses.
    return -(-size // stride)


def _conv_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    return Shape(int(attrs["out"]), _strided(shape.size, int(attrs.get("stride", 1))))


def _keep_channels(shape: Shape, attrs: dict[str, object]) -> Shape:
    return Shape(shape.channels, _strided(shape.size, int(attrs.get("stride", 1))))


def _identity_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    out = int(attrs.get("out", 0)) or shape.channels
    return Shape(out, _strided(shape.size, int(attrs.get("stride", 1))))


def _pool_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    kernel = int(attrs.get("kernel", 0))
    if kernel == 0:
        return Shape(shape.channels, 1)
    stride = int(attrs.get("stride", 0)) or kernel
    return Shape(shape.channels, _strided(shape.size, stride))


def _linear_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    # A linear layer flattens (C, H, W) into one vector: its output has no spatial extent.
    return Shape(int(attrs["out"]), 1)


def _down_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    out = int(attrs.get("out", 0)) or shape.channels
    return Shape(out, _strided(shape.size, 2))


def _up_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    out = int(attrs.get("out", 0)) or shape.channels
    return Shape(out, shape.size * 2)


def _out_or_same(shape: Shape, attrs: dict[str, object]) -> Shape:
    out = int(attrs.get("out", 0)) or shape.channels
    return Shape(out, shape.size)


def _grouped_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    """Like `_out_or_same`, but the group norms need channels divisible by `groups`
    (and attention heads need channels divisible by `heads`)."""
    out = _out_or_same(shape, attrs)
    groups = int(attrs.get("groups", 1) or 1)
    for what, channels in (("input", shape.channels), ("output", out.channels)):
        if channels % groups:
            raise ValueError(f"{what} channels {channels} are not divisible into {groups} groups")
    heads = int(attrs.get("heads", 1) or 1)
    if out.channels % heads:
        raise ValueError(f"channels {out.channels} are not divisible into {heads} heads")
    return out


def _mbconv_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    """An MBConv's output; its grouped 1x1 convs need every width divisible by `groups`."""
    out = _conv_shape(shape, attrs)
    groups = int(attrs.get("groups", 1) or 1)
    keep = str(attrs.get("expand_conv", "auto"))
    expand = float(attrs.get("expand", 6))  # type: ignore[arg-type]
    if keep == "drop" and expand != 1:
        raise ValueError(f"expand_conv = drop needs expand = 1, got {expand:g}")
    if groups > 1:
        for what, channels in (("input", shape.channels), ("output", out.channels)):
            if channels % groups:
                raise ValueError(
                    f"{what} channels {channels} are not divisible into {groups} groups"
                )
    return out


def _block_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    """A ResNet block's output; a grouped 3x3 conv needs its width divisible by `groups`."""
    out = _conv_shape(shape, attrs)
    groups = int(attrs.get("groups", 1) or 1)
    # A basic block's inner width is its output; a bottleneck's is `mid` (0: out / 4).
    mid = out.channels
    if "mid" in attrs:
        mid = int(attrs["mid"] or 0) or out.channels // 4  # type: ignore[call-overload]
    if mid < 1:
        raise ValueError(f"the bottleneck width {mid} is below 1")
    if mid % groups:
        raise ValueError(f"the inner width {mid} is not divisible into {groups} groups")
    return out


def _shuffle_shape(shape: Shape, attrs: dict[str, object]) -> Shape:
    groups = int(attrs.get("groups", 2) or 1)
    if shape.channels % groups:
        raise ValueError(f"channels {shape.channels} are not divisible into {groups} groups")
    return shape


@dataclass(frozen=True)
class OpSpec:
    name: str
    doc: str
    attrs: dict[str, AttrSpec]
    shape: ShapeRule
    category: str = "layer"
    extra: dict[str, object] = field(default_factory=dict)


def _act(default: str) -> AttrSpec:
    return AttrSpec("enum", default, values=ACTIVATIONS, doc="activation function")


def _norm(default: str) -> AttrSpec:
    return AttrSpec("enum", default, values=NORMS, doc="normalisation after the op")


_OUT = AttrSpec("int", required=True, doc="output channels", minimum=1)
_ORDER = AttrSpec("enum", "post", values=("post", "pre"), doc="post- or pre-activation")


def _resnet_block(name: str, doc: str, stride: str, groups: str, **extra: AttrSpec) -> OpSpec:
    """`basic` and `bottleneck`: the same attributes around their own 3x3 conv(s)."""
    attrs = {
        "out": _OUT,
        **extra,
        "stride": AttrSpec("int", 1, doc=stride, minimum=1),
        "groups": AttrSpec("int", 1, doc=groups, minimum=1),
        "act": _act("relu"),
        "order": _ORDER,
    }
    return OpSpec(name, doc, attrs, _block_shape)


_OUT_OPTIONAL = AttrSpec("int", 0, doc="output channels (0 keeps the input channels)", minimum=0)

CATALOG: dict[str, OpSpec] = {
    spec.name: spec
    for spec in [
        OpSpec(
            "conv",
            "Convolution, then normalisation and activation.",
            {
                "out": _OUT,
                "kernel": AttrSpec("int", 1, doc="kernel size", minimum=1),
                "stride": AttrSpec("int", 1, doc="stride", minimum=1),
                "groups": AttrSpec("int", 1, doc="convolution groups", minimum=1),
                "bias": AttrSpec("bool", False, doc="add a bias"),
                "norm": _norm("bn"),
                "act": _act("relu"),
            },
            _conv_shape,
        ),
        OpSpec(
            "dwconv",
            "Depthwise convolution (channels unchanged), normalisation and activation.",
            {
                "kernel": AttrSpec("int", 3, doc="kernel size", minimum=1),
                "stride": AttrSpec("int", 1, doc="stride", minimum=1),
                "norm": _norm("bn"),
                "act": _act("relu"),
            },
            _keep_channels,
        ),
        OpSpec(
            "mbconv",
            "Inverted residual (MobileNetV2/V3): 1x1 expansion, depthwise kxk, optional "
            "squeeze-excite, 1x1 projection; a residual add when shapes allow.",
            {
                "out": _OUT,
                "kernel": AttrSpec("int", 3, doc="depthwise kernel size", minimum=1),
                "expand": AttrSpec(
                    "float", 6, doc="expansion ratio of the hidden width", minimum=1
                ),
                "stride": AttrSpec("int", 1, doc="depthwise stride", minimum=1),
                "se": AttrSpec("bool", False, doc="squeeze-and-excite on the hidden width"),
                "act": _act("relu"),
                "divisor": AttrSpec(
                    "int", 8, doc="round hidden widths to a multiple of this (1: no rounding)"
                ),
                "groups": AttrSpec(
                    "int", 1, doc="groups of the two 1x1 convolutions (FBNet's `g2`)", minimum=1
                ),
                "shuffle": AttrSpec(
                    "bool", False, doc="channel shuffle after the expansion conv (ShuffleNet)"
                ),
                "expand_conv": AttrSpec(
                    "enum",
                    "auto",
                    values=("auto", "keep", "drop"),
                    doc="the 1x1 expansion conv: auto drops it at expand 1 (MobileNetV2/V3), "
                    "keep always builds it (FBNet's e1 blocks), drop needs expand 1",
                ),
            },
            _mbconv_shape,
        ),
        _resnet_block(
            "basic",
            "ResNet basic block: two 3x3 convs with batch norm; the input is added back "
            "(a 1x1 conv + batch norm when the shape changes). order post: conv-BN-act, "
            "conv-BN, add, act (He et al. 2016a); order pre: BN-act-conv twice, then add "
            "(He et al. 2016b; its projection is a 1x1 conv on the pre-activated input).",
            stride="stride of the first 3x3 conv",
            groups="groups of the 3x3 convs",
        ),
        _resnet_block(
            "bottleneck",
            "ResNet bottleneck block (torchvision's v1.5): 1x1 conv to `mid`, 3x3 conv "
            "(stride, groups), 1x1 conv to `out`, each with batch norm; the input is added "
            "back (a 1x1 conv + batch norm when the shape changes). order as for `basic`.",
            stride="stride of the 3x3 conv",
            groups="groups of the 3x3 conv (ResNeXt)",
            mid=AttrSpec("int", 0, doc="inner width (0: out / 4)", minimum=0),
        ),
        OpSpec(
            "shuffle",
            "Channel shuffle (ShuffleNet): split the channels into `groups` and interleave "
            "them. No parameters.",
            {"groups": AttrSpec("int", 2, doc="groups to interleave", minimum=1)},
            _shuffle_shape,
        ),
        OpSpec(
            "identity",
            "Passes its input on; becomes a 1x1 convolution with batch norm when the stride "
            "or the channel count changes.",
            {"out": _OUT_OPTIONAL, "stride": AttrSpec("int", 1, doc="stride", minimum=1)},
            _identity_shape,
        ),
        OpSpec(
            "pool",
            "Pooling; kernel 0 means global pooling to 1x1.",
            {
                "kind": AttrSpec("enum", "avg", values=("avg", "max"), doc="pooling kind"),
                "kernel": AttrSpec("int", 0, doc="window (0: global)", minimum=0),
                "stride": AttrSpec("int", 0, doc="stride (0: same as kernel)", minimum=0),
            },
            _pool_shape,
            category="fixed",
        ),
        OpSpec(
            "linear",
            "Fully connected layer on the flattened features.",
            {
                "out": _OUT,
                "bias": AttrSpec("bool", True, doc="add a bias"),
                "act": _act("none"),
            },
            _linear_shape,
        ),
        OpSpec(
            "dropout",
            "Dropout (inactive at inference).",
            {"p": AttrSpec("float", 0.0, doc="drop probability", minimum=0)},
            _out_or_same,
        ),
        OpSpec(
            "norm",
            "Normalisation and activation on their own.",
            {
                "kind": _norm("gn"),
                "groups": AttrSpec("int", 32, doc="groups for group norm", minimum=1),
                "act": _act("none"),
            },
            _out_or_same,
        ),
        OpSpec(
            "resblock",
            "Time-conditioned residual block (GroupNorm, SiLU, 3x3 conv, timestep projection, "
            "GroupNorm, SiLU, 3x3 conv; 1x1 shortcut when channels change). In a decoder stage "
            "its input is concatenated with the matching encoder skip.",
            {
                "out": _OUT,
                "groups": AttrSpec("int", 32, doc="groups of the group norms", minimum=1),
            },
            _grouped_shape,
        ),
        OpSpec(
            "attention",
            "Spatial transformer: GroupNorm, 1x1 projection, then transformer blocks of "
            "self-attention, cross-attention to the context and a GEGLU feed-forward; each "
            "head is channels / heads wide.",
            {
                "heads": AttrSpec("int", 8, doc="attention heads", minimum=1),
                "depth": AttrSpec("int", 1, doc="transformer blocks", minimum=1),
                "groups": AttrSpec("int", 32, doc="groups of the group norm", minimum=1),
            },
            _grouped_shape,
        ),
        OpSpec(
            "downsample",
            "Halves the resolution with a stride-2 3x3 convolution.",
            {"out": _OUT_OPTIONAL},
            _down_shape,
        ),
        OpSpec(
            "upsample",
            "Doubles the resolution (nearest) followed by a 3x3 convolution.",
            {"out": _OUT_OPTIONAL},
            _up_shape,
        ),
        OpSpec(
            "timestep_embedding",
            "Sinusoidal embedding of the diffusion timestep followed by a two-layer MLP; its "
            "output conditions every resblock. Leaves the feature map unchanged.",
            {
                "dim": AttrSpec("int", required=True, doc="width of the embedding MLP", minimum=1),
                "channels": AttrSpec(
                    "int", 0, doc="sinusoid channels (0: the input channels)", minimum=0
                ),
            },
            _out_or_same,
            category="fixed",
        ),
    ]
}
