"""The datasets' registry: `dataset=NAME`; each loader's file registers it."""
from kdrun.registry import Registry

DATASETS: Registry = Registry("dataset", "dataset")
