"""The Stable Diffusion v1.x U-Net operations, built as diffusers' `UNet2DConditionModel` does.

Each op module follows the registry's protocol, `forward(x, cond)`, and mirrors one
diffusers building block: structure, epsilons, the order of every step and the parameter
names (so an SD checkpoint's per-block state dicts load as they are):

- `ResBlock`            ~ ResnetBlock2D           (op `resblock`)
- `SpatialTransformer`  ~ Transformer2DModel, SD 1.x flavour: 1x1 conv projections
                                                  (op `attention`)
- `Downsample`          ~ Downsample2D(use_conv)  (op `downsample`)
- `Upsample`            ~ Upsample2D(use_conv)    (op `upsample`)
- `TimestepEmbedder`    ~ Timesteps + TimestepEmbedding (op `timestep_embedding`)

The param-count helpers (`*_params`) are closed forms of the same modules, kept next to
them so the counts can be checked without torch or memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from autobuild_dsl.compile.registry import Cond, CondDims, register_op
from autobuild_dsl.space.ops import Shape
from autobuild_dsl.space.resolved import AttrValue

# diffusers' epsilons for SD 1.x: the U-Net's norm_eps for ResnetBlock2D, 1e-6 for the
# transformer's GroupNorm, nn.LayerNorm's default inside the transformer blocks.
RESNET_EPS = 1e-5
TRANSFORMER_GN_EPS = 1e-6
LAYERNORM_EPS = 1e-5
FF_MULT = 4


def _check_groups(what: str, channels: int, groups: int) -> None:
    if channels % groups:
        raise ValueError(f"{what}: {channels} channels are not divisible into {groups} groups")


# --------------------------------------------------------------------------- modules


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, + projected timestep, GroupNorm, SiLU, dropout, 3x3 conv,
    plus the (1x1-projected when the width changes) input."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int = 32,
        eps: float = RESNET_EPS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_groups("resblock input", in_channels, groups)
        _check_groups("resblock output", out_channels, groups)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        # Without a timestep input there is nothing to project (diffusers: temb_channels=None).
        self.time_emb_proj = (
            nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        )
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            if cond is None or cond.temb is None:
                raise ValueError("resblock: built with a timestep projection but given no temb")
            # diffusers applies SiLU to the shared embedding inside every block.
            h = h + self.time_emb_proj(F.silu(cond.temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Attention(nn.Module):
    """Multi-head attention: q/k/v without bias, output projection with bias."""

    def __init__(
        self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        kv_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        # A ModuleList, as diffusers (to_out.0 = projection, to_out.1 = dropout).
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=True), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b = x.shape[0]
        q = self.to_q(x).view(b, -1, self.heads, self.to_q.out_features // self.heads)
        k = self.to_k(context).view(b, -1, self.heads, self.to_k.out_features // self.heads)
        v = self.to_v(context).view(b, -1, self.heads, self.to_v.out_features // self.heads)
        # SDPA's default scale is dim_head ** -0.5, diffusers' as well.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        out = out.transpose(1, 2).reshape(b, -1, self.to_q.out_features)
        for layer in self.to_out:
            out = layer(out)
        return out


class GEGLU(nn.Module):
    """Linear to twice the width; first half times GELU (exact) of the second half."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = FF_MULT) -> None:
        super().__init__()
        inner = dim * mult
        # Indices 0, 1, 2 as diffusers' ff.net (GEGLU, dropout, output projection).
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention to the context, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.attn1 = Attention(dim, heads, dim_head)
        # Without a context diffusers drops the cross-attention (and its norm) altogether.
        self.norm2 = nn.LayerNorm(dim, eps=LAYERNORM_EPS) if context_dim is not None else None
        self.attn2 = (
            Attention(dim, heads, dim_head, context_dim) if context_dim is not None else None
        )
        self.norm3 = nn.LayerNorm(dim, eps=LAYERNORM_EPS)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and self.norm2 is not None:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv in, `depth` transformer blocks over the H*W tokens, 1x1 conv out,
    plus the input. The head width is channels // heads, as the SD 1.x U-Net configures it."""

    def __init__(
        self,
        channels: int,
        heads: int,
        depth: int = 1,
        groups: int = 32,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_groups("attention", channels, groups)
        dim_head = channels // heads
        if dim_head < 1:
            raise ValueError(f"attention: {heads} heads need at least {heads} channels")
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_GN_EPS, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)
        self.cross_attention = context_dim is not None

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        context = cond.context if cond is not None else None
        if self.cross_attention and context is None:
            raise ValueError("attention: built for cross-attention but given no context")
        b, _, h, w = x.shape
        t = self.proj_in(self.norm(x))
        inner = t.shape[1]
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, inner)
        for block in self.transformer_blocks:
            t = block(t, context)
        t = t.reshape(b, h, w, inner).permute(0, 3, 1, 2)
        return self.proj_out(t) + x


class Downsample(nn.Module):
    """3x3 conv, stride 2, padding 1 (SD 1.x's downsample_padding)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def timestep_sinusoid(timesteps: torch.Tensor, channels: int) -> torch.Tensor:
    """diffusers' get_timestep_embedding with flip_sin_to_cos=True, freq_shift=0:
    [cos | sin] of t * 10000^(-i / half), zero-padded to an odd width."""
    half = channels // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent * (-math.log(10000.0) / half))
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if channels % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoid of the timestep, then Linear, SiLU, Linear (diffusers' TimestepEmbedding).

    As an op it leaves the feature map alone and sets `cond.temb` for the ops after it.
    """

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"timestep_embedding: {channels} sinusoid channels; need at least 2")
        self.channels = channels
        self.provides_temb = dim  # the registry's announcement: later ops see dims.temb
        self.linear_1 = nn.Linear(channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        if cond is None or cond.timestep is None:
            raise ValueError("timestep_embedding: the network was called without a timestep")
        cond.temb = self.embed(cond.timestep, x.shape[0], x.dtype)
        return x

    def embed(self, timesteps: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        # A scalar timestep serves the whole batch, as in UNet2DConditionModel; no branch on
        # the size, so a traced (ONNX) graph stays valid for either form.
        t = timesteps.reshape(-1).expand(batch)
        emb = timestep_sinusoid(t, self.channels).to(dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


# ------------------------------------------------------------------------ registration


def _int(attrs: Mapping[str, AttrValue], key: str, default: int = 0) -> int:
    return int(attrs.get(key, default))


def _resblock(in_shape: Shape, attrs: Mapping[str, AttrValue], dims: CondDims) -> nn.Module:
    return ResBlock(in_shape.channels, _int(attrs, "out"), dims.temb, _int(attrs, "groups", 32))


def _attention(in_shape: Shape, attrs: Mapping[str, AttrValue], dims: CondDims) -> nn.Module:
    return SpatialTransformer(
        in_shape.channels,
        _int(attrs, "heads", 8),
        _int(attrs, "depth", 1),
        _int(attrs, "groups", 32),
        dims.context,
    )


def _downsample(in_shape: Shape, attrs: Mapping[str, AttrValue], dims: CondDims) -> nn.Module:
    return Downsample(in_shape.channels, _int(attrs, "out") or in_shape.channels)


def _upsample(in_shape: Shape, attrs: Mapping[str, AttrValue], dims: CondDims) -> nn.Module:
    return Upsample(in_shape.channels, _int(attrs, "out") or in_shape.channels)


def _timestep_embedding(
    in_shape: Shape, attrs: Mapping[str, AttrValue], dims: CondDims
) -> nn.Module:
    if not dims.timestep:
        raise ValueError("timestep_embedding needs a network input with `timestep = true`")
    return TimestepEmbedder(_int(attrs, "channels") or in_shape.channels, _int(attrs, "dim"))


register_op("resblock", _resblock)
register_op("attention", _attention)
register_op("downsample", _downsample)
register_op("upsample", _upsample)
register_op("timestep_embedding", _timestep_embedding)


# --------------------------------------------------------------- closed-form param counts


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _linear_params(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def resblock_params(cin: int, cout: int, temb_channels: int | None) -> int:
    n = 2 * cin + _conv_params(cin, cout, 3) + 2 * cout + _conv_params(cout, cout, 3)
    if temb_channels is not None:
        n += _linear_params(temb_channels, cout)
    if cin != cout:
        n += _conv_params(cin, cout, 1)
    return n


def attention_params(channels: int, heads: int, depth: int, context_dim: int | None) -> int:
    inner = heads * (channels // heads)
    ff = FF_MULT * inner
    block = 2 * inner + 3 * inner * inner + _linear_params(inner, inner)  # norm1, attn1
    if context_dim is not None:
        block += 2 * inner + inner * inner + 2 * context_dim * inner + _linear_params(inner, inner)
    block += 2 * inner + _linear_params(inner, 2 * ff) + _linear_params(ff, inner)  # norm3, ff
    return (
        2 * channels
        + _conv_params(channels, inner, 1)
        + depth * block
        + _conv_params(inner, channels, 1)
    )


def resample_params(cin: int, cout: int) -> int:
    return _conv_params(cin, cout, 3)


def timestep_embedding_params(channels: int, dim: int) -> int:
    return _linear_params(channels, dim) + _linear_params(dim, dim)
