"""`ce`: the student alone on hard labels (the baseline every KD table starts from)."""
from kdrun.methods import METHODS
from kdrun.methods.base import Distiller


@METHODS.register("ce")
class CrossEntropy(Distiller):
    uses_teacher = False
