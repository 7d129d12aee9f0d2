"""Every seed space compiles: for sampled architectures of each space in spaces/*.abs, the
ONNX export run in ONNX Runtime gives PyTorch's output to 1e-4, and the fast meta-device
count (what `abc measure --device meta` uses) equals the whole-module count.

The CNN spaces are exported at their own size. The Stable Diffusion U-Net spaces (160M to
860M parameters at full width) are exported as `unet_nets.reduced` copies of the sampled
network: the same depths, attention and skips at 1/16 of the width and 16x16 input; their
full-size counts are checked on the meta device, without memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from unet_nets import reduced

from autobuild_dsl.compile import build_module, check_onnx, export_onnx, params_and_macs
from autobuild_dsl.compile.network import fast_params_and_macs
from autobuild_dsl.lang import compile_file
from autobuild_dsl.space.decisions import sample
from autobuild_dsl.space.resolve import resolve
from autobuild_dsl.space.resolved import ResolvedNetwork

SPACES = Path(__file__).resolve().parent.parent / "spaces"
SEED_SPACES = {
    "nas_bench_macro",
    "ofa_mbv3",
    "ofa_proxyless",
    "sd14_unet",
    "sd14_unet_inpaint",
    "sd14_unet_fid",
    "sd14_unet_hw",
    "fbnet",
    "transnas_macro",
}


def _space_names(path: Path) -> list[str]:
    return re.findall(r"^space\s+([A-Za-z_]\w*)", path.read_text(encoding="utf-8"), re.MULTILINE)


CASES = [(path.name, name) for path in sorted(SPACES.glob("*.abs")) for name in _space_names(path)]
IDS = [name for _, name in CASES]


def _networks(file: str, name: str, count: int, seed: int) -> list[ResolvedNetwork]:
    space = compile_file(SPACES / file, name)
    return [resolve(space, arch) for arch in sample(space, count, seed=seed)]


def _onnx_network(net: ResolvedNetwork) -> ResolvedNetwork:
    return reduced(net) if net.input.timestep else net


def _randomize_norms(module: torch.nn.Module) -> None:
    """Non-trivial norm statistics and affine parameters, so folding them is exercised."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            norms = torch.nn.BatchNorm2d | torch.nn.GroupNorm | torch.nn.LayerNorm
            if isinstance(m, norms) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def _check_onnx(net: ResolvedNetwork) -> None:
    torch.manual_seed(0)
    module = build_module(net).eval()
    _randomize_norms(module)
    model = export_onnx(module, net, None)
    assert isinstance(model, bytes)
    for batch in (1, 2):  # the batch axis is dynamic
        diff = check_onnx(module, model, atol=1e-4, net=net, seed=batch, batch=batch)
        assert diff <= 1e-4, (net.space, batch, diff)


def test_every_seed_space_is_covered() -> None:
    assert set(IDS) == SEED_SPACES


@pytest.mark.parametrize(("file", "name"), CASES, ids=IDS)
def test_sampled_architecture_onnx_matches_pytorch(file: str, name: str) -> None:
    (net,) = _networks(file, name, 1, seed=11)
    _check_onnx(_onnx_network(net))


@pytest.mark.slow
@pytest.mark.parametrize(("file", "name"), CASES, ids=IDS)
def test_more_sampled_architectures_onnx_match_pytorch(file: str, name: str) -> None:
    for net in _networks(file, name, 4, seed=23):
        _check_onnx(_onnx_network(net))


@pytest.mark.parametrize(("file", "name"), [c for c in CASES if c[1].startswith("sd14_unet_")])
def test_fast_meta_counts_equal_whole_module_counts_for_unets(file: str, name: str) -> None:
    (net,) = _networks(file, name, 1, seed=5)
    assert fast_params_and_macs(net) == params_and_macs(net, device="meta")


def test_reduced_unet_keeps_the_topology() -> None:
    (net,) = _networks("sd14_unet_fid.abs", "sd14_unet_fid", 1, seed=3)
    small = reduced(net)
    assert [(n.op, n.position) for n in small.nodes] == [(n.op, n.position) for n in net.nodes]
    assert small.skips == net.skips and small.input.size == 16
    assert small.nodes[-1].attrs["out"] == net.nodes[-1].attrs["out"] == 4
    full, tiny = params_and_macs(net), params_and_macs(small)
    assert tiny[0] * 100 < full[0]
    module = build_module(small).eval()
    with torch.no_grad():
        out = module(
            torch.randn(1, net.input.channels, 16, 16), torch.tensor([7]), torch.randn(1, 8, 32)
        )
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
