"""CLI side of ONNX-IR graphs (`--encoding ir`): build and fit an IrEncoder with a progress bar.

Not a command module: `train_cmds` (and `graph_cmds`) call these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from autobuild_dsl.cli.common import err_console

if TYPE_CHECKING:  # torch loads only when an IR encoder is made, not for `abc --help`
    from autobuild_dsl.graphs.ir import IrEncoder
    from autobuild_dsl.space.architecture import Architecture
    from autobuild_dsl.space.model import Space

ENCODINGS = ("sequence", "ir")

cache_option = click.option(
    "--cache",
    "ir_cache",
    type=click.Path(file_okay=False),
    help="ir: folder of cached IR graphs [default: $ABC_IR_CACHE or ~/.cache/autobuild-dsl/ir].",
)
export_jobs_option = click.option(
    "--export-jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="ir: worker processes exporting networks to ONNX (cache misses only).",
)


def fit_ir_encoder(
    spaces: Sequence[Space],
    archs: Sequence[Architecture],
    *,
    cache: str | None = None,
    jobs: int = 1,
    show: bool = True,
) -> IrEncoder:
    """An IrEncoder over `spaces` fitted on `archs` (scorer.workflow.fit_ir_encoder) behind
    a progress bar, and a one-line summary of where the graphs came from."""
    from autobuild_dsl.cli.progress import counting
    from autobuild_dsl.scorer import workflow

    if not show:
        return workflow.fit_ir_encoder(spaces, archs, cache=cache, jobs=jobs)
    with counting("ONNX-IR graphs", bold=True, elapsed=True, remaining=True) as update:
        encoder = workflow.fit_ir_encoder(spaces, archs, cache=cache, jobs=jobs, progress=update)
    err_console.print(workflow.ir_note(encoder).text, markup=False)
    return encoder


def record_space(run: object, raw: object) -> Space:
    """The space an architecture record belongs to: the run's own, or for a mixed-space IR
    run the one its `space` field names."""
    space: Space = run.space  # type: ignore[attr-defined]
    if run.config.encoding != "ir" or not isinstance(raw, dict):  # type: ignore[attr-defined]
        return space
    spaces = {s.name: s for s in run.encoder().spaces}  # type: ignore[attr-defined]
    name = raw.get("space")
    return spaces.get(name, space) if isinstance(name, str) else space


__all__ = ["ENCODINGS", "cache_option", "export_jobs_option", "fit_ir_encoder", "record_space"]
