"""Data: the dataset registry and splits (``registry``), and the loaders it dispatches to: MNIST IDX files
(``mnist``), image folders and arrays (``images``), tables (``tabular``, with the standardization of features)."""

from vaekit.data.registry import (
    CLASSES,
    DATASETS,
    Split,
    Splits,
    binarize_split,
    evaluation_split,
    load,
)

__all__ = ["CLASSES", "DATASETS", "Split", "Splits", "binarize_split", "evaluation_split", "load"]
