"""What the methods' schemas share (each method's own schema sits next to its class, as `Config`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class MethodConfig:
    name: str = MISSING
    ce_weight: Optional[float] = None  # weight of the hard-label cross-entropy; null means 1 - alpha


@dataclass
class WithKD(MethodConfig):
    """A method with Hinton's optional soft-target term and its own terms weighted by beta."""
    T: float = 4.0  # temperature of the KD term
    alpha: float = 0.0  # weight of Hinton's KD term (0: off)
    beta: float = 1.0  # weight of the method's own terms
    logit_stand: bool = False  # z-score each sample's logits before the temperature (Sun et al. 2024)
    stop_epoch: Optional[int] = None  # ESKD (Cho & Hariharan 2019): the KD term stops after this epoch


@dataclass
class WithFeatures(WithKD):
    student_features: Optional[List[str]] = None  # module paths; null: the student's default points
    teacher_features: Optional[List[str]] = None  # module paths; null: the teacher's default points
