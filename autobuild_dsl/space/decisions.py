"""What a Space contains: exact size, module enumeration, uniform sampling, validation and
the mutations the searches use: the public face of the decision modules.

The work is split by concern, each module reading one `DecisionIndex` per space
(space/index.py, held by the Space):
- index.py: counting variables, rule components, the exact size;
- sampling.py: uniform sampling, resampling one unit;
- canonical.py: checking an architecture and its one canonical spelling;
- mutation.py: the searches' neighbours;
- enumeration.py: every architecture, every module of a unit, modules <-> architectures.
Decision keys are built by `keys.DecisionKey`; values compare by `values.same_value`.
"""

from __future__ import annotations

from autobuild_dsl.space.canonical import (
    canonicalize,
    check_stage_module,
    stage_module_choices,
    validate,
)
from autobuild_dsl.space.enumeration import (
    architecture_from_modules,
    architecture_modules,
    decision_value,
    iter_architectures,
    space_size,
    unit_module_count,
    unit_modules,
)
from autobuild_dsl.space.index import (
    DP_THRESHOLD,
    MAX_DP_STATES,
    MAX_JOINT_ASSIGNMENTS,
    ArchitectureError,
    Assignment,
    DecisionIndex,
    SpaceTooComplex,
    absent_choices,
    index_of,
)
from autobuild_dsl.space.keys import DecisionKey
from autobuild_dsl.space.layers import first_layer_only
from autobuild_dsl.space.mutation import mutate
from autobuild_dsl.space.sampling import sample
from autobuild_dsl.space.values import find_value, same_value, value_key

__all__ = [
    "DP_THRESHOLD",
    "MAX_DP_STATES",
    "MAX_JOINT_ASSIGNMENTS",
    "ArchitectureError",
    "Assignment",
    "DecisionIndex",
    "DecisionKey",
    "SpaceTooComplex",
    "absent_choices",
    "architecture_from_modules",
    "architecture_modules",
    "canonicalize",
    "check_stage_module",
    "decision_value",
    "find_value",
    "first_layer_only",
    "index_of",
    "iter_architectures",
    "mutate",
    "same_value",
    "sample",
    "space_size",
    "stage_module_choices",
    "unit_module_count",
    "unit_modules",
    "validate",
    "value_key",
]
