"""The top level of kdrun's config: `kdrun --cfg job` prints it composed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from kdrun.schema.models import own_teacher
from kdrun.training.recipe import Recipe


@dataclass
class PerPair:
    """Published values that differ by teacher -> student pair, set by a `pair=...` preset and read by the
    method keys that interpolate them (conf/method/dkd.yaml)."""
    dkd_beta: float = 8.0  # mdistiller's DKD.BETA: its default, or the pair's value (conf/pair/*.yaml)
    reviewkd_beta: float = 5.0  # ReviewKD's loss weight (the authors' script/reviewKD.sh, per pair)
    # Logit standardisation's per-pair settings (Sun et al., CVPR 2024; their README's log names): the base
    # temperature of KD+LS, DKD+LS's temperature and weights (their kd-weight times ALPHA and BETA), MLKD+LS's weight.
    ls_kd_T: float = 2.0
    ls_kd_weight: float = 9.0
    ls_dkd_T: float = 2.0
    ls_dkd_alpha: float = 9.0
    ls_dkd_beta: float = 72.0
    ls_mlkd_weight: float = 9.0


@dataclass
class Eval:
    """What is measured on the student at the end of a run, besides its test accuracy (kdrun.training.bias_shift)."""
    # Hinton et al. 2015's bias correction, {class id: shift} (Dict[int, float], checked by kdrun): the shift
    # added to those classes' logits at test time, e.g. eval.bias_shift='{3: 3.5}'; metrics.json gets the
    # accuracy and errors with and without it, and the best shift of those classes on the validation split
    # (dataset.val_size). null: off. (Typed Any: OmegaConf cannot merge an override into a null typed dict.)
    bias_shift: Any = None


@dataclass
class Config:
    seed: int = 0
    # The batch order and augmentation follow data_seed, the student's initialisation and every other random
    # draw `seed`; null: `seed` (today's runs). A sweep over seed with one data_seed can pack (hydra/launcher=packed).
    data_seed: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto takes a GPU when there is one)
    progress: Any = "auto"  # live progress display: auto (on a terminal only) | true | false
    cache_dir: str = "${oc.env:KDRUN_CACHE_DIR,outputs/cache}"  # trained teachers are kept under here
    train: Recipe = field(default_factory=Recipe)  # the student's recipe (a schedule's stages may refine it)
    dataset: Any = MISSING
    teacher: Any = field(default_factory=own_teacher)  # a teacher=NAME schema, or your own (_target_)
    student: Any = MISSING
    method: Any = MISSING
    schedule: Any = MISSING
    per_pair: PerPair = field(default_factory=PerPair)
    eval: Eval = field(default_factory=Eval)  # left out of a run's identity at its defaults
    logger: Any = None  # experiment trackers, {NAME: keys} (logger=NAME, conf/logger/); not in a run's identity
