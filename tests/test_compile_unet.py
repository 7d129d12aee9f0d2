"""The SD v1.4 U-Net operations: exact parameter counts against diffusers' numbers, forward
shapes, ONNX export and varied-depth variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from unet_nets import sd14, tiny_unet, unet_network

from autobuild_dsl.compile import unet_ops as U
from autobuild_dsl.compile.network import NetworkBuildError, build_module
from autobuild_dsl.compile.onnx_export import check_onnx, export_onnx
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import sample
from autobuild_dsl.space.resolve import resolve

# diffusers' UNet2DConditionModel with the SD v1.4 configuration (v1.4's unet/config.json).
SD14_PARAMS = 859_520_964
SD14_INPAINT_PARAMS = 859_535_364


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(net) -> torch.nn.Module:
    return build_module(net)


@pytest.mark.parametrize(("channels", "expected"), [(4, SD14_PARAMS), (9, SD14_INPAINT_PARAMS)])
def test_sd14_parameter_count_exact(channels: int, expected: int) -> None:
    # On meta: 860M parameters, no memory.
    with torch.device("meta"):
        model = _build(sd14(channels))
    assert _count(model) == expected


def test_closed_form_counts_match_modules() -> None:
    with torch.device("meta"):
        cases = [
            (U.ResBlock(640, 320, 1280), U.resblock_params(640, 320, 1280)),
            (U.ResBlock(320, 320, None), U.resblock_params(320, 320, None)),
            (U.SpatialTransformer(640, 8, 1, 32, 768), U.attention_params(640, 8, 1, 768)),
            (U.SpatialTransformer(96, 5, 2, 8, None), U.attention_params(96, 5, 2, None)),
            (U.Downsample(320, 320), U.resample_params(320, 320)),
            (U.Upsample(1280, 640), U.resample_params(1280, 640)),
            (U.TimestepEmbedder(320, 1280), U.timestep_embedding_params(320, 1280)),
        ]
    for module, expected in cases:
        assert _count(module) == expected, type(module).__name__


def test_sd14_closed_form_total() -> None:
    # conv_in + time embedding + the blocks + conv_norm_out + conv_out, from the formulas only.
    t, ctx = 1280, 768
    n = (4 * 9 + 1) * 320 + U.timestep_embedding_params(320, t)
    n += 2 * (U.resblock_params(320, 320, t) + U.attention_params(320, 8, 1, ctx))
    n += U.resample_params(320, 320)
    n += U.resblock_params(320, 640, t) + U.resblock_params(640, 640, t)
    n += 2 * U.attention_params(640, 8, 1, ctx) + U.resample_params(640, 640)
    n += U.resblock_params(640, 1280, t) + U.resblock_params(1280, 1280, t)
    n += 2 * U.attention_params(1280, 8, 1, ctx) + U.resample_params(1280, 1280)
    n += 2 * U.resblock_params(1280, 1280, t)
    n += 2 * U.resblock_params(1280, 1280, t) + U.attention_params(1280, 8, 1, ctx)
    n += 3 * U.resblock_params(2560, 1280, t) + U.resample_params(1280, 1280)
    n += 2 * U.resblock_params(2560, 1280, t) + U.resblock_params(1920, 1280, t)
    n += 3 * U.attention_params(1280, 8, 1, ctx) + U.resample_params(1280, 1280)
    n += U.resblock_params(1920, 640, t) + U.resblock_params(1280, 640, t)
    n += U.resblock_params(960, 640, t) + 3 * U.attention_params(640, 8, 1, ctx)
    n += U.resample_params(640, 640)
    n += U.resblock_params(960, 320, t) + 2 * U.resblock_params(640, 320, t)
    n += 3 * U.attention_params(320, 8, 1, ctx)
    n += 2 * 320 + (320 * 9 + 1) * 4
    assert n == SD14_PARAMS


def test_timestep_sinusoid_layout() -> None:
    # flip_sin_to_cos: cosines first; frequency i is 10000^(-i / half); odd widths pad a zero.
    emb = U.timestep_sinusoid(torch.tensor([0.0, 3.0]), 7)
    half = 3
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half) / half)
    assert emb.shape == (2, 7)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(emb[1, :half], torch.cos(3.0 * freqs))
    torch.testing.assert_close(emb[1, half : 2 * half], torch.sin(3.0 * freqs))
    assert emb[1, -1] == 0


def _inputs(net, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    size, spec = net.input.size, net.input
    x = torch.randn(batch, spec.channels, size, size, generator=gen)
    t = torch.tensor([3, 751])[:batch]
    context = torch.randn(batch, spec.context_tokens, spec.context_dim, generator=gen)
    return x, t, context


def test_tiny_unet_forward_shape_and_conditioning() -> None:
    torch.manual_seed(0)
    net = tiny_unet()
    model = _build(net).eval()
    x, t, context = _inputs(net)
    with torch.no_grad():
        out = model(x, t, context)
        assert out.shape == x.shape
        assert torch.isfinite(out).all()
        # Both conditions reach the output.
        assert not torch.allclose(out, model(x, t + 100, context))
        assert not torch.allclose(out, model(x, t, context + 1))
        # A scalar timestep serves the whole batch.
        same = model(x, torch.tensor(3), context)
        torch.testing.assert_close(same[0], out[0])


def test_tiny_unet_onnx_matches_torch() -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = tiny_unet()
    model = _build(net).eval()
    onnx_model = export_onnx(model, net)
    assert isinstance(onnx_model, bytes)
    # Batch 2 as well: the timestep broadcast and the token reshapes follow the dynamic batch.
    for batch in (1, 2):
        assert check_onnx(model, onnx_model, atol=1e-4, net=net, seed=3, batch=batch) <= 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        {"enc_depths": (1, 2, 2), "dec_depths": (2, 3, 3)},
        {"enc_depths": (2, 1, 1), "dec_depths": (3, 2, 2), "enc_attn": (False, True, True)},
        {"mults": (1, 3, 4), "in_channels": 9, "mid_attn": False},
    ],
)
def test_varied_depth_unets_build_and_run(overrides: dict[str, object]) -> None:
    torch.manual_seed(0)
    net = tiny_unet(**overrides)
    model = _build(net).eval()
    x, t, context = _inputs(net, batch=1)
    with torch.no_grad():
        out = model(x, t, context)
    assert out.shape == (1, 4, net.input.size, net.input.size)


def test_varied_depth_count_follows_the_formulas() -> None:
    # e1 (one resblock) pushes its input and one output; e2 pushes 32 (its input, after the
    # downsample), 64, 64. d2 pops 64, 64, 32; d1 pops 32, 32 onto its 64 then 32 channels.
    net = unet_network(
        size=16,
        base=32,
        mults=(1, 2),
        enc_depths=(1, 2),
        dec_depths=(2, 3),
        enc_attn=(False, False),
        mid_attn=False,
        heads=2,
        groups=8,
        context_dim=None,
        context_tokens=None,
    )
    with torch.device("meta"):
        model = _build(net)
    t = 128
    n = (4 * 9 + 1) * 32 + U.timestep_embedding_params(32, t)
    n += U.resblock_params(32, 32, t) + U.resample_params(32, 32)
    n += U.resblock_params(32, 64, t) + U.resblock_params(64, 64, t)
    n += 2 * U.resblock_params(64, 64, t)  # middle
    n += 2 * U.resblock_params(128, 64, t) + U.resblock_params(96, 64, t)
    n += U.resample_params(64, 64)
    n += U.resblock_params(96, 32, t) + U.resblock_params(64, 32, t)
    n += 2 * 32 + (32 * 9 + 1) * 4
    assert _count(model) == n


def test_group_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        U.ResBlock(30, 32, None, groups=8)


@pytest.mark.parametrize(("name", "channels"), [("sd14_unet", 4), ("sd14_unet_inpaint", 9)])
def test_space_file_is_the_hand_built_network(root, name: str, channels: int) -> None:
    # The baseline as written in the language resolves to exactly the hand-built network.
    space = compile_file(root / "spaces" / "sd14_unet.abs", name)
    (arch,) = sample(space, 1)
    assert resolve(space, arch) == sd14(channels)


@pytest.mark.parametrize("space_file", ["sd14_unet_fid.abs", "sd14_unet_hw.abs"])
def test_sampled_unet_variants_build_on_meta(root, space_file: str) -> None:
    space = compile_file(root / "spaces" / space_file)
    for arch in sample(space, 6, seed=7):
        net = resolve(space, arch)
        with torch.device("meta"):
            model = build_module(net)
        assert model.out_shape.channels == 4
        assert model.out_shape.size == net.input.size
        assert 0 < _count(model) < SD14_PARAMS * 2


def test_unet_without_context_uses_self_attention_only() -> None:
    torch.manual_seed(0)
    net = tiny_unet(context_dim=None, context_tokens=None)
    model = _build(net).eval()
    assert all(
        block.attn2 is None
        for module in model.modules()
        if isinstance(module, U.SpatialTransformer)
        for block in module.transformer_blocks
    )
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        assert model(x, torch.tensor([5])).shape == x.shape


def test_timestep_embedding_needs_a_timestep_input() -> None:
    net = tiny_unet()
    no_timestep = net.model_copy(update={"input": net.input.model_copy(update={"timestep": False})})
    with pytest.raises(NetworkBuildError, match="timestep"):
        _build(no_timestep)
