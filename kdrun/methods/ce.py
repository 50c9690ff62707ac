"""`ce`: the student alone on hard labels (the baseline every KD table starts from)."""
from dataclasses import dataclass
from typing import Optional

from kdrun.methods.base import Distiller
from kdrun.methods.config import MethodConfig
from kdrun.methods.registry import METHODS


@dataclass
class CEConfig(MethodConfig):
    name: str = "ce"
    ce_weight: Optional[float] = 1.0


@METHODS.register("ce")
class CrossEntropy(Distiller):
    Config = CEConfig

    uses_teacher = False
