"""`kd`: Hinton et al. 2015, soft targets at temperature T.

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T)),
the KL averaged over the batch. T^2 keeps the soft-target gradients' scale independent of T.

Options:
- `alpha_anneal`: [start, end, final]: alpha goes linearly from `alpha` in epoch `start` to `final` in
  epoch `end` of the stage (FitNets anneals its KD weight lambda from 4 to 1); needs an explicit
  `ce_weight`.
- `teachers`: more teachers, which with `teacher` form an ensemble (Hinton et al. 2015); the soft
  targets are the `ensemble` (arithmetic or geometric) mean of the members' probabilities at T.
- `variant`: born-again networks' ablations (Furlanello et al. 2018). `cwtm` (confidence-weighted by
  teacher max): no soft targets; the hard-label cross-entropy of each sample weighted by the
  teacher's max probability, normalised over the batch. `dkpp` (dark knowledge with permuted
  predictions): soft targets whose max probability sits at the true class and whose other
  probabilities are randomly permuted over the other classes, per sample.
- `logit_stand`: logit standardisation (Sun et al., CVPR 2024): the student's and the teacher's logits
  of each sample are z-scored (kdrun.methods.logit_stand) before the temperature, which then acts as
  a base temperature; the KD term becomes alpha * T^2 * KL(softmax(z(t) / T) || softmax(z(s) / T)).
  The authors' CIFAR-100 setting: T 2, alpha (their KD weight) 9, ce_weight 0.1 (alpha may exceed 1
  where ce_weight is given; null ties it to 1 - alpha).
- `stop_epoch`: early-stopped KD (ESKD, Cho & Hariharan, ICCV 2019): from epoch stop_epoch + 1 of the
  stage on, the soft-target term is off and the student trains with the plain cross-entropy
  (weight 1, whatever ce_weight was), as a student trained alone.

These two options (the same keys) act on the KD term of every method that has one: dkd's TCKD and
NCKD, and the `alpha` * KD term of the methods of kdrun.methods.weighted.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.base import Distiller
from kdrun.methods.config import MethodConfig
from kdrun.methods.logit_stand import standardize
from kdrun.methods.registry import METHODS
from kdrun.models import MODELS
from kdrun.models.ensemble import ENSEMBLE_MEANS, TeacherEnsemble, ensemble_probs
from kdrun.schema.choice import Choice

VARIANTS = (None, "cwtm", "dkpp")


def soft_target_loss(student_logits: torch.Tensor, p_teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || softmax(student / T)), averaged over the batch."""
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    return F.kl_div(log_p_student, p_teacher.float(), reduction="batchmean") * (T * T)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float,
            logit_stand: bool = False) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)); with `logit_stand`, of the z-scored logits of each sample."""
    if logit_stand:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    return soft_target_loss(student_logits, F.softmax(teacher_logits.float() / T, dim=1), T)


def cwtm_loss(student_logits: torch.Tensor, y: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample weighted by max_k p_teacher / (sum over the batch of the same)."""
    confidence = p_teacher.max(dim=1).values
    weights = confidence / confidence.sum()
    return (weights * F.cross_entropy(student_logits.float(), y, reduction="none")).sum()


def permuted_dark_knowledge(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DKPP targets: each row's max probability at the true class `y`, the other probabilities randomly
    permuted over the other classes (Furlanello et al. 2018, eq. 11). When the teacher is right
    (argmax = y) this keeps the argmax in place and shuffles the rest."""
    n, k = p.shape
    positions = torch.arange(k, device=p.device).expand(n, k)
    rest = p.gather(1, positions[positions != p.argmax(1, keepdim=True)].view(n, k - 1))
    rest = rest.gather(1, torch.rand(n, k - 1, device=p.device).argsort(dim=1))
    out = p.new_empty(n, k)
    out.scatter_(1, positions[positions != y[:, None]].view(n, k - 1), rest)
    out.scatter_(1, y[:, None], p.max(dim=1, keepdim=True).values)
    return out


def check_temperature_and_alpha(cfg, above_one: bool = False) -> None:
    """T > 0; alpha in [0, 1]. `above_one` (kd): alpha may exceed 1 where the hard-label weight does not
    follow it (an explicit ce_weight; null means 1 - alpha): logit standardisation's KD weight is 9 beside
    a ce_weight of 0.1."""
    T, alpha = float(cfg.T), float(cfg.alpha)
    require(T > 0, f"method.T (temperature) must be positive, got {T}. Typical values: 1 to 20 (4 on CIFAR).")
    if not above_one:
        require(0.0 <= alpha <= 1.0, f"method.alpha weights the soft-target term and must lie in [0, 1], got {alpha}.")
    elif cfg.get("ce_weight") is None:
        require(0.0 <= alpha <= 1.0,
                f"method.alpha weights the soft-target term and must lie in [0, 1], got {alpha} (method.ce_weight "
                f"is null, so the hard-label weight is 1 - alpha; to weigh the soft targets more than 1, set "
                f"method.ce_weight too, e.g. method.ce_weight=0.1 method.alpha=9).")
    else:
        require(alpha >= 0.0, f"method.alpha weights the soft-target term and must be 0 or more, got {alpha}.")


def kd_stopped(stop_epoch: Optional[int], epoch: int) -> bool:
    """ESKD: whether the KD term(s) are off in `epoch` (they stop after epoch `stop_epoch`)."""
    return stop_epoch is not None and epoch > stop_epoch


def check_kd_term_options(cfg, has_kd_term: bool, why_none: str = "") -> None:
    """`stop_epoch`: null or an epoch of 1 or more; it and `logit_stand` need a KD term to act on."""
    stop = cfg.get("stop_epoch")
    require(stop is None or (isinstance(stop, int) and not isinstance(stop, bool) and stop >= 1),
            f"method.stop_epoch is the last epoch with the KD term (early-stopped KD, Cho & Hariharan 2019): "
            f"null (KD in every epoch) or an epoch of 1 or more, got {stop!r}.")
    if has_kd_term:
        return
    for key, on in (("logit_stand", bool(cfg.get("logit_stand"))), ("stop_epoch", stop is not None)):
        require(not on, f"method.{key} acts on the KD term, but {why_none}: give method.alpha a positive value "
                        f"(the weight of the KD term), or leave method.{key} at its default.")


def check_stop_epoch_in_stage(cfg, epochs: int, where: str) -> None:
    """A stage's check (kdrun.schedules.spec): the KD term must stop within the stage's epochs."""
    stop = cfg.get("stop_epoch")
    if stop is None:
        return
    require(int(stop) < epochs,
            f"method.stop_epoch={stop}: the KD term would never stop, because {where} trains {epochs} epoch(s) "
            f"and the term stops after epoch {stop}. Give a stop_epoch below {epochs}, or null for KD in every "
            f"epoch.")


def check_anneal(cfg) -> None:
    anneal = cfg.get("alpha_anneal")
    if anneal is None:
        return
    shape_ok = not isinstance(anneal, str) and len(anneal) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in anneal)
    require(shape_ok and 1 <= anneal[0] < anneal[1] and 0 <= anneal[2] <= 1,
            f"method.alpha_anneal must be null or [start_epoch, end_epoch, final_alpha] with 1 <= start < end "
            f"and final in [0, 1], e.g. [4, 400, 0.111]; got {anneal!r}.")
    require(cfg.get("ce_weight") is not None,
            "method.alpha_anneal changes alpha over the epochs, so the hard-label weight cannot follow it as "
            "1 - alpha: set method.ce_weight (e.g. 1.0).")


class EnsembleMean(Choice):
    arithmetic = "arithmetic"
    geometric = "geometric"


class KDVariant(Choice):
    cwtm = "cwtm"
    dkpp = "dkpp"


@dataclass
class KDConfig(MethodConfig):
    name: str = "kd"
    T: float = 4.0
    alpha: float = 0.9
    alpha_anneal: Optional[List[float]] = None  # [start, end, final]
    teachers: List[str] = field(default_factory=list)
    ensemble: EnsembleMean = EnsembleMean.arithmetic
    variant: Optional[KDVariant] = None
    logit_stand: bool = False  # z-score each sample's logits before the temperature (Sun et al. 2024)
    stop_epoch: Optional[int] = None  # ESKD (Cho & Hariharan 2019): the KD term stops after this epoch


@METHODS.register("kd")
class KD(Distiller):
    Config = KDConfig

    @classmethod
    def validate(cls, cfg):
        check_temperature_and_alpha(cfg, above_one=True)
        variant = cfg.get("variant")
        require(variant in VARIANTS,
                f"method.variant must be null (plain KD), cwtm or dkpp (Furlanello et al. 2018), got {variant!r}.")
        mean = cfg.get("ensemble", "arithmetic")
        require(mean in ENSEMBLE_MEANS,
                f"method.ensemble (how members' probabilities are averaged) must be arithmetic or geometric, got {mean!r}.")
        check_anneal(cfg)
        require(not (cfg.get("logit_stand") and variant == "cwtm"),
                "method.logit_stand standardises the logits of the soft-target term, which method.variant=cwtm "
                "does not have (it weights the hard-label cross-entropy by the teacher's confidence). Use "
                "variant null or dkpp with logit_stand, or logit_stand=false with cwtm.")
        check_kd_term_options(cfg, float(cfg.alpha) > 0 or cfg.get("alpha_anneal") is not None,
                              "method.alpha is 0 (the soft-target term is off)")
        teachers = cfg.get("teachers") or []
        require(not isinstance(teachers, str),
                f"method.teachers is a list of model names, e.g. method.teachers=[{teachers}], got {teachers!r}.")
        for name in teachers:
            MODELS.get(str(name))
        super().validate(cfg)

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.T, self.alpha = float(cfg.T), float(cfg.alpha)
        anneal = cfg.get("alpha_anneal")
        self.anneal = tuple(float(v) for v in anneal) if anneal is not None else None
        self.variant = cfg.get("variant")
        self.ensemble_mean = cfg.get("ensemble", "arithmetic")
        self.logit_stand = bool(cfg.get("logit_stand", False))
        self.stop_epoch = cfg.get("stop_epoch")

    def teacher_forward(self, x):
        if isinstance(self.teacher, TeacherEnsemble):
            with torch.no_grad():
                return self.teacher.member_logits(x), {}  # members x batch x classes
        return super().teacher_forward(x)

    def teacher_probs(self, t_logits: torch.Tensor, T: float) -> torch.Tensor:
        if t_logits.dim() == 3:
            return ensemble_probs(t_logits, T, self.ensemble_mean)
        return F.softmax(t_logits.float() / T, dim=1)

    def alpha_at(self, epoch: int) -> float:
        if self.anneal is None:
            return self.alpha
        start, end, final = self.anneal
        progress = min(max((epoch - start) / (end - start), 0.0), 1.0)
        return self.alpha + (final - self.alpha) * progress

    def weights(self, epoch, phase="main"):
        weights = super().weights(epoch, phase)
        if phase == "main":
            stopped = kd_stopped(self.stop_epoch, epoch)
            if stopped:
                weights["ce"] = 1.0  # ESKD: the plain cross-entropy from stop_epoch + 1 on
            weights["cwtm" if self.variant == "cwtm" else "kd"] = 0.0 if stopped else self.alpha_at(epoch)
        return weights

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "cwtm" in needed:
            out["cwtm"] = cwtm_loss(batch.s_logits, batch.y, self.teacher_probs(batch.t_logits, 1.0))
        if "kd" in needed:
            s_logits, t_logits = batch.s_logits, batch.t_logits
            if self.logit_stand:  # each member's logits, for an ensemble (the last dimension: the classes)
                s_logits, t_logits = standardize(s_logits), standardize(t_logits)
            p_teacher = self.teacher_probs(t_logits, self.T)
            if self.variant == "dkpp":
                p_teacher = permuted_dark_knowledge(p_teacher, batch.y)
            out["kd"] = soft_target_loss(s_logits, p_teacher, self.T)
        return out
