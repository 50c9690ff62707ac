"""The model zoo's registry: `teacher=NAME`, `student=NAME`; each family file registers its names."""
from kdrun.registry import Registry

MODELS: Registry = Registry("model", "teacher/student")
