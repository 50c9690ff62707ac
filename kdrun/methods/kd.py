"""`kd`: Hinton et al. 2015, soft targets at temperature T.

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)),
the KL averaged over the batch. T^2 keeps the soft-target gradients' scale independent of T.
"""
import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods import METHODS
from kdrun.methods.base import Distiller


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (T * T)


def check_temperature_and_alpha(cfg) -> None:
    T, alpha = float(cfg.T), float(cfg.alpha)
    require(T > 0, f"method.T (temperature) must be positive, got {T}. Typical values: 1 to 20 (4 on CIFAR).")
    require(0.0 <= alpha <= 1.0,
            f"method.alpha weights the soft-target term and must lie in [0, 1], got {alpha}.")


@METHODS.register("kd")
class KD(Distiller):
    @classmethod
    def validate(cls, cfg):
        check_temperature_and_alpha(cfg)
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.T, self.alpha = float(cfg.T), float(cfg.alpha)

    def losses(self, s_logits, t_logits, **_):
        return {"kd": self.alpha * kd_loss(s_logits, t_logits, self.T)} if self.alpha else {}
