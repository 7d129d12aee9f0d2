"""Labeled datasets, importers for public formats, target expressions and splits.

Nothing here imports torch: `LabeledDataset.graphs` loads the graph encoder on demand.
"""

from autobuild_dsl.data.dataset import (
    DatasetError,
    LabeledDataset,
    RowError,
    from_records,
    load_dataset,
    save_dataset,
)
from autobuild_dsl.data.importers import (
    FORMATS,
    GenericMapping,
    ImportReport,
    ImportResult,
    import_files,
    load_mapping,
    ofa_subnet_to_arch,
)
from autobuild_dsl.data.mixed import MixedDataset, load_mixed_dataset
from autobuild_dsl.data.splits import (
    GroupStats,
    LabelStats,
    Split,
    kfold_splits,
    label_stats,
    train_test_split,
)
from autobuild_dsl.data.target import Target, TargetError, parse_target

__all__ = [
    "FORMATS",
    "DatasetError",
    "GenericMapping",
    "GroupStats",
    "ImportReport",
    "ImportResult",
    "LabelStats",
    "LabeledDataset",
    "MixedDataset",
    "RowError",
    "Split",
    "Target",
    "TargetError",
    "from_records",
    "import_files",
    "kfold_splits",
    "label_stats",
    "load_dataset",
    "load_mapping",
    "load_mixed_dataset",
    "ofa_subnet_to_arch",
    "parse_target",
    "save_dataset",
    "train_test_split",
]
