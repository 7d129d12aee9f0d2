"""PyTorch modules for the CNN operations of the catalog (conv, dwconv, mbconv, identity,
pool, linear, dropout, norm), registered into `registry`.

Conventions, chosen so that the families in `spaces/` match their reference code exactly:

- convolutions have no bias unless asked, and use PyTorch's symmetric `kernel // 2` padding
  whenever that gives the catalog's "same" size ceil(size / stride) (always, for odd
  kernels); otherwise (even kernels) an explicit asymmetric zero pad as TensorFlow does;
- `mbconv` is the MobileNetV2/V3 inverted residual as OFA and NAS-Bench-Macro build it:
  hidden = make_divisible(round(in * expand), divisor); no expansion conv when expand == 1;
  depthwise conv, BN, act; optional squeeze-excite (OFA/MobileNetV3 flavour: global average,
  1x1 conv with bias to make_divisible(hidden // 4, divisor), ReLU, 1x1 conv with bias back,
  hard-sigmoid gate); 1x1 projection and BN with no activation; the input is added when
  stride is 1 and the channel count is unchanged;
- `identity` is a true no-op unless its stride or channel count changes the shape, when it
  becomes a 1x1 conv (no bias) and BN (NAS-Bench-Macro's first-layer identity);
- `linear` flattens its input (N, C, H, W) -> (N, C*H*W) and returns (N, out). Later ops
  that need a map (conv, norm) see (N, C) as (N, C, 1, 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from autobuild_dsl.compile.registry import Cond, CondDims, register_op
from autobuild_dsl.space.ops import Shape
from autobuild_dsl.space.resolved import AttrValue

Attrs = Mapping[str, AttrValue]


# ------------------------------------------------------------------------------ helpers


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round to the nearest multiple of `divisor`, never more than 10% down (the rule of
    the MobileNet/OFA code bases). divisor <= 1 just rounds."""
    if divisor <= 1:
        return max(1, round(value))
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class HSigmoid(nn.Module):
    """relu6(x + 3) / 6, exported as plain ONNX ops (HardSigmoid's alpha differs in some
    runtimes' float rounding, and this is what OFA computes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def activation(name: str) -> nn.Module:
    match name:
        case "none":
            return nn.Identity()
        case "relu":
            return nn.ReLU()
        case "relu6":
            return nn.ReLU6()
        case "hswish":
            return nn.Hardswish()
        case "hsigmoid":
            return HSigmoid()
        case "swish" | "silu":
            return nn.SiLU()
        case "sigmoid":
            return nn.Sigmoid()
        case "gelu":
            return nn.GELU()
    raise ValueError(f"unknown activation '{name}'")


def norm_layer(kind: str, channels: int, groups: int = 32) -> nn.Module:
    match kind:
        case "none":
            return nn.Identity()
        case "bn":
            return nn.BatchNorm2d(channels)
        case "gn":
            if channels % groups:
                raise ValueError(f"group norm: {channels} channels are not divisible by {groups}")
            return nn.GroupNorm(groups, channels)
        case "ln":
            # Layer norm over (C, H, W) of each sample, which is group norm with one group.
            return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown normalisation '{kind}'")


def same_padding(size: int, kernel: int, stride: int) -> int | tuple[int, int, int, int]:
    """Padding that gives ceil(size / stride): PyTorch's symmetric kernel // 2 when that
    works, otherwise (left, right, top, bottom) for an explicit zero pad."""
    want = -(-size // stride)
    for pad in (kernel // 2, (kernel - 1) // 2):
        if (size + 2 * pad - kernel) // stride + 1 == want:
            return pad
    total = max((want - 1) * stride + kernel - size, 0)
    lo = total // 2
    return (lo, total - lo, lo, total - lo)


def conv2d(
    cin: int,
    cout: int,
    kernel: int,
    stride: int,
    size: int,
    groups: int = 1,
    bias: bool = False,
) -> nn.Module:
    """A "same"-padded convolution (a pad module in front only for the rare even kernel)."""
    if cin % groups or cout % groups:
        raise ValueError(f"conv: {cin} -> {cout} channels are not divisible into {groups} groups")
    pad = same_padding(size, kernel, stride)
    if isinstance(pad, int):
        return nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=bias)
    return nn.Sequential(
        nn.ZeroPad2d(pad), nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=bias)
    )


def _as_map(x: torch.Tensor) -> torch.Tensor:
    # (N, C) after a linear layer is a 1x1 feature map for conv and norm ops.
    return x[:, :, None, None] if x.dim() == 2 else x


class CompiledOp(nn.Module):
    """Base of the compiled CNN ops: `forward(x, cond)`, where CNN ops ignore `cond`."""

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        raise NotImplementedError


class ConvBNAct(CompiledOp):
    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        size: int,
        *,
        groups: int = 1,
        bias: bool = False,
        norm: str = "bn",
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.conv = conv2d(cin, cout, kernel, stride, size, groups, bias)
        self.norm = norm_layer(norm, cout)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.act(self.norm(self.conv(_as_map(x))))


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-and-excite: avg pool, 1x1 conv (bias), ReLU, 1x1 conv (bias),
    hard-sigmoid, scale."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = HSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class ChannelShuffle(CompiledOp):
    """ShuffleNet's channel shuffle: (N, g, C/g, H, W) -> transpose -> (N, C, H, W)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        if self.groups <= 1:
            return x
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


class MBConv(CompiledOp):
    def __init__(
        self,
        cin: int,
        cout: int,
        size: int,
        *,
        kernel: int,
        expand: float,
        stride: int,
        se: bool,
        act: str,
        divisor: int,
        groups: int = 1,
        shuffle: bool = False,
        expand_conv: str = "auto",
    ) -> None:
        super().__init__()
        # expand == 1: the depthwise conv works on the input directly (MobileNetV2's t=1),
        # unless `expand_conv = keep` (FBNet's e1 blocks keep their 1x1 conv).
        has_expand = expand != 1 if expand_conv == "auto" else expand_conv == "keep"
        dw_in = make_divisible(round(cin * expand), divisor) if has_expand else cin
        self.hidden = dw_in
        self.expand = (
            ConvBNAct(cin, dw_in, 1, 1, size, groups=groups, act=act) if has_expand else None
        )
        # The shuffle follows the grouped expansion, so the depthwise and the grouped
        # projection see channels of every group (FBNet, ShuffleNet).
        self.shuffle = ChannelShuffle(groups) if shuffle and groups > 1 else None
        self.depthwise = ConvBNAct(dw_in, dw_in, kernel, stride, size, groups=dw_in, act=act)
        self.se = SqueezeExcite(dw_in, make_divisible(dw_in // 4, divisor)) if se else None
        self.project = ConvBNAct(dw_in, cout, 1, 1, -(-size // stride), groups=groups, act="none")
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        if self.shuffle is not None:
            h = self.shuffle(h)
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return h + x if self.residual else h


def projection(cin: int, cout: int, stride: int, norm: bool = True) -> nn.Module:
    """The shortcut of a residual block whose shape changes: a strided 1x1 conv (+ BN)."""
    conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if norm else conv


class ResBlock(CompiledOp):
    """ResNet's basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) block, post- or pre-activation.

    post (He et al. 2016a; torchvision): conv-BN-act ..., last conv-BN, add, act.
    pre (He et al. 2016b): BN-act-conv ... , add; a projection shortcut is a 1x1 conv
    without BN on the pre-activated input.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        size: int,
        *,
        kind: str,
        stride: int,
        groups: int,
        mid: int,
        act: str,
        order: str,
    ) -> None:
        super().__init__()
        self.pre = order == "pre"
        out_size = -(-size // stride)
        if kind == "basic":
            widths = [(cin, cout, 3, stride, size, groups), (cout, cout, 3, 1, out_size, groups)]
        else:
            widths = [
                (cin, mid, 1, 1, size, 1),
                (mid, mid, 3, stride, size, groups),
                (mid, cout, 1, 1, out_size, 1),
            ]
        self.convs = nn.ModuleList(conv2d(a, b, k, s, z, g) for a, b, k, s, z, g in widths)
        # Post: BN after each conv; pre: BN before each conv (on its input width).
        self.norms = nn.ModuleList(nn.BatchNorm2d(w[0] if self.pre else w[1]) for w in widths)
        self.act = activation(act)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = projection(cin, cout, stride, norm=not self.pre)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        if self.pre:
            h = self.act(self.norms[0](x))
            skip = self.shortcut(h) if self.shortcut is not None else x
            h = self.convs[0](h)
            for conv, norm in zip(self.convs[1:], self.norms[1:], strict=True):
                h = conv(self.act(norm(h)))
            return h + skip
        skip = self.shortcut(x) if self.shortcut is not None else x
        h = x
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = norm(conv(h))
            if i < last:
                h = self.act(h)
        return self.act(h + skip)


class Identity(CompiledOp):
    """Nothing, or a 1x1 conv + BN where the stride or the width changes the shape."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.projection: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.projection = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.projection(x) if self.projection is not None else x


class Shortcut(nn.Module):
    """The shortcut of a `residual(...)` layer: `forward(skip, y)` = act(y + proj(skip))."""

    def __init__(self, in_shape: Shape, out_shape: Shape, kind: str, act: str) -> None:
        super().__init__()
        changes = in_shape != out_shape
        if out_shape.size > in_shape.size:
            raise ValueError("a residual layer cannot enlarge the feature map")
        if kind == "identity" and changes:
            raise ValueError(
                f"residual(shortcut = identity) needs the layer to keep its shape, but "
                f"{in_shape.channels}x{in_shape.size} becomes {out_shape.channels}x{out_shape.size}"
            )
        self.projection: nn.Module | None = None
        if kind == "conv" or (kind == "auto" and changes):
            stride = -(-in_shape.size // out_shape.size)
            self.projection = projection(in_shape.channels, out_shape.channels, stride)
        self.act = activation(act)

    def forward(self, skip: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            skip = self.projection(skip)
        return self.act(y + skip)


class Pool(CompiledOp):
    def __init__(self, kind: str, kernel: int, stride: int, size: int) -> None:
        super().__init__()
        self.pool: nn.Module
        if kernel == 0:
            self.pool = nn.AdaptiveAvgPool2d(1) if kind == "avg" else nn.AdaptiveMaxPool2d(1)
            return
        stride = stride or kernel
        pad = same_padding(size, kernel, stride)
        if isinstance(pad, int) and pad <= kernel // 2:  # PyTorch pools cap the padding
            pool = (
                nn.AvgPool2d(kernel, stride, pad, count_include_pad=False)
                if kind == "avg"
                else nn.MaxPool2d(kernel, stride, pad)
            )
            self.pool = pool
        else:
            pad4 = pad if isinstance(pad, tuple) else (pad,) * 4
            fill = 0.0 if kind == "avg" else -math.inf
            pool = nn.AvgPool2d(kernel, stride) if kind == "avg" else nn.MaxPool2d(kernel, stride)
            self.pool = nn.Sequential(nn.ConstantPad2d(pad4, fill), pool)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.pool(x)


class Linear(CompiledOp):
    def __init__(self, cin: int, cout: int, bias: bool, act: str) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, cout, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.act(self.fc(torch.flatten(x, 1)))


class Dropout(CompiledOp):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.drop(x)


class Norm(CompiledOp):
    def __init__(self, kind: str, channels: int, groups: int, act: str) -> None:
        super().__init__()
        self.norm = norm_layer(kind, channels, groups)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        flat = x.dim() == 2
        y = self.act(self.norm(_as_map(x)))
        return torch.flatten(y, 1) if flat else y


# ----------------------------------------------------------------------------- factories
# Each receives the attributes with catalog defaults filled in (registry.full_attrs).


@register_op("conv")
def _conv(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return ConvBNAct(
        shape.channels,
        int(a["out"]),
        int(a["kernel"]),
        int(a["stride"]),
        shape.size,
        groups=int(a["groups"]),
        bias=bool(a["bias"]),
        norm=str(a["norm"]),
        act=str(a["act"]),
    )


@register_op("dwconv")
def _dwconv(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    c = shape.channels
    return ConvBNAct(
        c,
        c,
        int(a["kernel"]),
        int(a["stride"]),
        shape.size,
        groups=c,
        norm=str(a["norm"]),
        act=str(a["act"]),
    )


@register_op("mbconv")
def _mbconv(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return MBConv(
        shape.channels,
        int(a["out"]),
        shape.size,
        kernel=int(a["kernel"]),
        expand=float(a["expand"]),
        stride=int(a["stride"]),
        se=bool(a["se"]),
        act=str(a["act"]),
        divisor=int(a["divisor"]),
        groups=int(a.get("groups", 1)),
        shuffle=bool(a.get("shuffle", False)),
        expand_conv=str(a.get("expand_conv", "auto")),
    )


def _res_block(kind: str):  # type: ignore[no-untyped-def]
    def factory(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
        out = int(a["out"])
        mid = int(a.get("mid", 0) or 0) or out // 4
        return ResBlock(
            shape.channels,
            out,
            shape.size,
            kind=kind,
            stride=int(a["stride"]),
            groups=int(a["groups"]),
            mid=mid,
            act=str(a["act"]),
            order=str(a["order"]),
        )

    return factory


register_op("basic", _res_block("basic"))
register_op("bottleneck", _res_block("bottleneck"))


@register_op("shuffle")
def _shuffle(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return ChannelShuffle(int(a["groups"]))


@register_op("identity")
def _identity(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return Identity(shape.channels, int(a["out"]) or shape.channels, int(a["stride"]))


@register_op("pool")
def _pool(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return Pool(str(a["kind"]), int(a["kernel"]), int(a["stride"]), shape.size)


@register_op("linear")
def _linear(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return Linear(shape.channels * shape.size**2, int(a["out"]), bool(a["bias"]), str(a["act"]))


@register_op("dropout")
def _dropout(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return Dropout(float(a["p"]))


@register_op("norm")
def _norm(shape: Shape, a: Attrs, dims: CondDims) -> nn.Module:
    return Norm(str(a["kind"]), shape.channels, int(a["groups"]), str(a["act"]))
