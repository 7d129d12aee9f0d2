"""Equivalent architectures: a canonical key of the network an architecture compiles to.

Two choice vectors can compile to one network. In NAS-Bench-Macro a stride-1 identity with
equal input and output channels is a no-op, so an identity placed at different positions
of a stage leaves the same network (`22212220` and `22212202`). The key here is computed
from the resolved network (no torch), so counting, importing, sampling and searching can
treat such architectures as one.

The rule is exact in one direction: architectures whose keys are equal compile to the same
module, node for node. Only provably no-op nodes are dropped:
- `identity` with stride 1 whose output channels equal its input channels (the compiler
  builds nothing for it; it has no norm or activation);
- `dropout` with p = 0.
Nodes of a stage that is the source or the target of a skip are never dropped, and they
keep their layer position in the key: the skip wiring pushes and pops at layer boundaries,
so there a layer is not interchangeable with its neighbours. Everything else that the
compiler reads is in the key: the input, and for every kept node its op, its attributes
with catalog defaults filled in, and its output shape (which fixes the input shape of the
next node). The space's name is not in the key: an architecture of a reduced space and the
equal architecture of the full space share one key.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

from autobuild_dsl.errors import AbcError
from autobuild_dsl.space.architecture import Architecture
from autobuild_dsl.space.decisions import index_of, iter_architectures, space_size
from autobuild_dsl.space.model import Space
from autobuild_dsl.space.ops import CATALOG, Shape
from autobuild_dsl.space.resolve import flow_shapes, resolve
from autobuild_dsl.space.resolved import AttrValue, ResolvedNetwork, ResolvedNode

# Ops whose node can be a no-op; a space without them in any stage has no equivalences
# from dropped nodes (see `may_have_equivalences`).
NO_OP_CANDIDATES = frozenset({"identity", "dropout"})

# Spaces up to this size are enumerated to count their distinct networks (about 2.5 s of
# CPU per 10 000 NAS-Bench-Macro architectures); larger ones are not counted.
COUNT_LIMIT = 10_000


def _plain(value: AttrValue) -> AttrValue:
    # 3 and 3.0 build the same module: integral floats are written as ints.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _attrs(op: str, given: dict[str, AttrValue], out_channels: int) -> dict[str, AttrValue]:
    spec = CATALOG[op]
    attrs = {
        name: attr.default
        for name, attr in spec.attrs.items()
        if attr.default is not None and name not in given
    }
    attrs.update(given)
    # `out = 0` means "keep the input channels": write the channels it stands for.
    if "out" in spec.attrs and spec.attrs["out"].default == 0 and not attrs.get("out"):
        attrs["out"] = out_channels
    return {name: _plain(attrs[name]) for name in sorted(attrs)}  # type: ignore[arg-type]


@lru_cache(maxsize=65536)
def _entry(op: str, items: tuple[tuple[str, AttrValue], ...], shape: Shape, at: tuple) -> str:
    # One kept node as JSON; cached because a space repeats a few nodes in many networks.
    entry: list[object] = [op, _attrs(op, dict(items), shape.channels), shape.channels, shape.size]
    if at:
        entry.append(list(at))
    return json.dumps(entry, separators=(",", ":"))


def _is_no_op(node: ResolvedNode, in_channels: int) -> bool:
    if node.op == "identity":
        out = int(node.attrs.get("out", 0) or 0) or in_channels
        return int(node.attrs.get("stride", 1)) == 1 and out == in_channels
    if node.op == "dropout":
        return float(node.attrs.get("p", 0.0)) == 0.0
    return False


def network_signature(net: ResolvedNetwork) -> str:
    """The canonical text of a resolved network that the key hashes (JSON)."""
    shapes = flow_shapes(net)
    skip_stages = {s.source for s in net.skips} | {s.target for s in net.skips}
    entries: list[str] = []
    channels = net.input.channels
    for node, shape in zip(net.nodes, shapes, strict=True):
        pos = node.position
        wired = pos.part == "stage" and pos.block in skip_stages
        if wired or not _is_no_op(node, channels):
            at = (pos.block, pos.role, pos.layer_index) if wired else ()
            entries.append(_entry(node.op, tuple(node.attrs.items()), shape, at))
        channels = shape.channels
    spec = net.input
    head = [spec.channels, spec.size, spec.context_dim, spec.context_tokens, spec.timestep]
    skips = [[s.source, s.target] for s in net.skips]
    prefix = json.dumps([head, skips], separators=(",", ":"))
    return f"[{prefix[1:-1]},[{','.join(entries)}]]"


def key_of_network(net: ResolvedNetwork) -> str:
    """The network key of an already resolved network (see `network_key`)."""
    text = network_signature(net)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def network_key(space: Space, arch: Architecture) -> str:
    """A canonical key of the network `arch` (canonical, of `space`) compiles to.

    Equal keys mean the same compiled network; architectures that differ only by no-op
    nodes (a stride-1 identity keeping the channels) share one key. 32 hex characters.
    Raises ResolveError when the architecture cannot be resolved.
    """
    return key_of_network(resolve(space, arch))


def network_keys(space: Space, archs: Iterable[Architecture]) -> list[str]:
    """The network key of each architecture, in order."""
    return [network_key(space, arch) for arch in archs]


def may_have_equivalences(space: Space) -> bool:
    """Whether some layer of the space can be a no-op node (cheap, from the templates).

    False guarantees that no two architectures share a key through dropped nodes; True
    only says that it is possible (count with `count_distinct_networks`).
    """
    for stage in space.stages:
        for option in stage.options:
            if any(node.op in NO_OP_CANDIDATES for node in option.nodes):
                return True
    return False


def network_keyer(space: Space) -> Callable[[Architecture], str]:
    """The key that groups one space's architectures by network, as cheaply as possible.

    `network_key` where the space may have equivalences; elsewhere `Architecture.key`
    (no resolving): no node of such a space can be dropped, so this never merges two
    different networks (at worst it keeps apart two equal ones that differ by a choice the
    network does not read). Keys of the two kinds are never mixed for one space.
    """
    if may_have_equivalences(space):
        return _Memo(space)
    return Architecture.key


class _Memo:
    """`network_key` of one space, remembered by architecture key: searches and the loop
    ask again for the architectures they saw (a round scores the same pool as the last),
    and resolving a network costs ~1 ms where its key string costs ~20 us."""

    LIMIT = 200_000  # entries; forgotten all at once past this, so memory stays bounded

    def __init__(self, space: Space) -> None:
        self.space = space
        self.keys: dict[str, str] = {}

    def __call__(self, arch: Architecture) -> str:
        text = arch.key()
        key = self.keys.get(text)
        if key is None:
            if len(self.keys) >= self.LIMIT:
                self.keys.clear()
            key = self.keys[text] = network_key(self.space, arch)
        return key


def count_distinct_networks(space: Space, limit: int = COUNT_LIMIT) -> int | None:
    """How many distinct networks the space holds, or None when it has more than `limit`
    architectures (enumerating them would be too slow)."""
    if space_size(space) > limit:
        return None
    digest = space.digest()
    if digest not in _COUNTED:  # seconds for a large space: counted once per process
        _COUNTED[digest] = len({network_key(space, arch) for arch in iter_architectures(space)})
    return _COUNTED[digest]


_COUNTED: dict[str, int] = {}


class TooFewNetworks(AbcError, ValueError):
    """A distinct sample asked for more networks than the draws could find."""

    code = "too-few-networks"


def sample_distinct(
    space: Space, n: int, seed: int = 0, tries_per_network: int = 50
) -> list[Architecture]:
    """`n` architectures of pairwise different networks (`network_keyer`), in draw order.

    Architectures are drawn uniformly and a draw whose network was already drawn is
    dropped, so a network with more equivalent architectures is likelier to come first.
    Raises TooFewNetworks when `n * tries_per_network` draws do not find `n` networks
    (the space may hold fewer).
    """
    counted = count_distinct_networks(space) if may_have_equivalences(space) else None
    if counted is not None and counted < n:  # known at once in a small space
        raise TooFewNetworks(f"the space holds {counted:,} distinct networks, not {n:,}")
    index = index_of(space)
    rng = random.Random(seed)
    keyer = network_keyer(space)
    keys: dict[str, str] = {}  # a small space draws the same architecture again and again
    seen: set[str] = set()
    found: list[Architecture] = []
    for _ in range(n * tries_per_network):
        if len(found) == n:
            break
        arch = index.sample(rng)
        written = arch.key()
        key = keys.get(written)
        if key is None:
            key = keys[written] = keyer(arch)
        if key not in seen:
            seen.add(key)
            found.append(arch)
    if len(found) < n:
        raise TooFewNetworks(
            f"found {len(found):,} distinct networks in {n * tries_per_network:,} draws, not {n:,}"
        )
    return found


def distinct(space: Space, archs: Iterable[Architecture]) -> Iterator[tuple[Architecture, str]]:
    """The architectures whose network was not seen before, each with its key (of
    `network_keyer`), in order."""
    keyer = network_keyer(space)
    seen: set[str] = set()
    for arch in archs:
        key = keyer(arch)
        if key not in seen:
            seen.add(key)
            yield arch, key
