"""Datasets: readers for real formats, the generated default, encoding, splits and cache."""
from embslim.data.encode import PrepareConfig, RawColumns, prepare
from embslim.data.fields import FeatureTable, FieldSpec, PreparedData
from embslim.data.registry import DATASETS, load_dataset
from embslim.data.synthetic import SyntheticConfig

__all__ = ["DATASETS", "FeatureTable", "FieldSpec", "PrepareConfig", "PreparedData", "RawColumns", "SyntheticConfig", "load_dataset", "prepare"]
