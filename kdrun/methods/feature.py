"""What feature-based methods share: where they read features, the optional KD term, the weights' checks.

Paths: `method.student_features` / `method.teacher_features` name module paths (see
`kdrun.models.features`); null takes the models' `feature_points()` (`stages`, `preact` or
`embedding`, whichever the method reads). The one pairing rule: when the two defaults differ in length
(heterogeneous pairs), the deepest ones are paired, the last n of each, n the shorter length. VID alone
pairs from the first (`pairing="first"`), as RepDistiller's VID zips the two lists.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import UserError, require
from kdrun.methods.weighted import WeightedDistiller
from kdrun.models.features import feature_layers, feature_shapes, parameters_up_to

log = logging.getLogger("kdrun")


class FeatureDistiller(WeightedDistiller):
    point: str = "stages"  # the feature_points() list the default paths come from

    @classmethod
    def validate(cls, cfg) -> None:
        for key in ("student_features", "teacher_features"):
            paths = cfg.get(key)
            require(paths is None or (not isinstance(paths, str) and len(paths) > 0),
                    f"method.{key} must be null (the models' defaults) or a non-empty list of module paths, "
                    f"got {paths!r}.")
        super().validate(cfg)

    def layer_paths(self, point: str | None = None, select=None, defaults=None,
                    pairing: str = "deepest") -> tuple[list[str], list[str]]:
        """(student paths, teacher paths), paired one to one.

        Given lists are used as they are; a default list (`defaults(model, role)`, else the models'
        `point` list) is cut to the deepest entries that pair with the other side (`pairing="first"`: the
        first ones), and `select(paths, model)` (e.g. FitNet's "the second stage") picks from default lists.
        """
        def cut(p: list[str], n: int) -> list[str]:
            return p[:n] if pairing == "first" else p[len(p) - n:]

        point = point or self.point
        defaults = defaults or (lambda model, role: default_points(model, point, role))
        models = {"student": self.student, "teacher": self.teacher}
        given = {role: self.cfg.get(f"{role}_features") for role in models}
        paths = {role: [str(p) for p in given[role]] if given[role] is not None
                 else defaults(model, role) for role, model in models.items()}
        if given["student"] is None and given["teacher"] is None:
            lengths = {role: len(p) for role, p in paths.items()}
            n = min(lengths.values())
            for role, p in paths.items():
                paths[role] = select(cut(p, n), models[role]) if select else cut(p, n)
            n = min(len(paths["student"]), len(paths["teacher"]))  # `select` may add to one side only
            paths = {role: cut(p, n) for role, p in paths.items()}
            if lengths["student"] != lengths["teacher"]:
                log.info("%s: the student has %d %s and the teacher %d; pairing the %s: %s.", self.cfg.name,
                         lengths["student"], point, lengths["teacher"], "first" if pairing == "first" else "deepest",
                         list(zip(paths["student"], paths["teacher"])))
        else:
            for role, other in (("student", "teacher"), ("teacher", "student")):
                if given[role] is None:
                    p = select(paths[role], models[role]) if select else paths[role]
                    paths[role] = cut(p, min(len(p), len(paths[other])))
        s, t = paths["student"], paths["teacher"]
        require(len(s) == len(t) and len(s) > 0,
                f"method {self.cfg.name!r} pairs student and teacher features one to one, but got {len(s)} "
                f"student paths ({', '.join(s)}) and {len(t)} teacher paths ({', '.join(t)}): set "
                f"method.student_features and method.teacher_features to lists of the same length.")
        return s, t

    def shapes(self, model: nn.Module, paths: list[str], role: str) -> list[tuple]:
        found = feature_shapes(model, paths, self.sample_input(), role)
        return [found[p] for p in paths]

    def student_parameters_up_to(self, paths: list[str], *extra: nn.Module,
                                 feature_layers_only: bool = False) -> list[nn.Parameter]:
        """The student's parameters that shape the features at `paths` (an init stage's), plus `extra`'s.

        `feature_layers_only`: of those, only the ones in the student's `feature_layers` (RepDistiller's
        `get_feat_modules()`, e.g. a WRN's conv1 and blocks without its final bn1) when it declares them.
        """
        params = {}
        for path in paths:
            for p in parameters_up_to(self.student, path, self.sample_input(), "student"):
                params[id(p)] = p
        layers = feature_layers(self.student, "student") if feature_layers_only else None
        if layers is not None:
            inside = {id(p) for m in layers for p in m.parameters()}
            params = {k: p for k, p in params.items() if k in inside}
        for module in extra:
            for p in module.parameters():
                params[id(p)] = p
        return list(params.values())

    def require_maps(self, shapes: list[tuple], paths: list[str], role: str) -> None:
        for shape, path in zip(shapes, paths):
            require(len(shape) == 3,
                    f"method {self.cfg.name!r} compares convolutional feature maps (channels x height x width), "
                    f"but the {role}'s feature at {path!r} has shape {shape}. Use convolutional models, or set "
                    f"method.{role}_features to paths of feature maps.")


class InitStage:
    """For methods with an initialisation stage (FitNet, AB, FSP, FT), mixed in before FeatureDistiller.

    As in the papers (and RepDistiller), once the init stage has run, the main stage of FitNet, AB and
    FSP trains without the method's term: the student starts from the transferred state and learns the
    task (CE, plus KD when alpha > 0); FT's init stage trains only the paraphraser, which then stays
    frozen. Without an init stage (`schedule=single`) the term is added to the main stage, weighted by
    beta. Whether the init stage ran is saved with the method (checkpoints, resuming).
    """

    has_init_stage = True
    init_stage_ran = False
    term: str = ""  # the name of the method's term in the main stage
    init_term: str = ""  # its name in the init stage (default: `term`)

    @property
    def own_terms(self) -> tuple[str, ...]:
        return (self.term,)

    def weights(self, epoch: int, phase: str = "main") -> dict[str, float]:
        if phase == "init":
            return {self.init_term or self.term: 1.0}  # the init stage learns the method's term alone
        weights = super().weights(epoch, phase)
        if self.init_stage_ran:
            weights[self.term] = 0.0
        return weights

    def terms(self, needed, batch):
        if batch.phase == "init":
            self.init_stage_ran = True
        return super().terms(needed, batch)

    def get_extra_state(self):
        return {"init_stage_ran": self.init_stage_ran}

    def set_extra_state(self, state) -> None:
        self.init_stage_ran = bool(state["init_stage_ran"])


def default_points(model: nn.Module, point: str, role: str) -> list[str]:
    if not hasattr(model, "feature_points"):
        raise UserError(
            f"The {role} ({type(model).__name__}) has no feature_points() to take default feature paths from: "
            f"set method.{role}_features to a list of its module paths (e.g. [layer2, layer3])."
        )
    paths = list(model.feature_points().get(point) or [])
    require(paths, f"The {role} ({type(model).__name__}) lists no {point!r} feature points: set "
                   f"method.{role}_features to a list of its module paths.")
    return paths


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the other's height and width (RepDistiller)."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    if a.shape[2] * a.shape[3] > b.shape[2] * b.shape[3]:
        return F.adaptive_avg_pool2d(a, b.shape[2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[2:])


def regressor(s_shape: tuple, t_shape: tuple, relu: bool) -> nn.Module:
    """A learned map from a student feature's shape to a teacher feature's (FitNet's regressor, AB's connector).

    Feature maps: a conv + BN (RepDistiller's ConvReg): 3x3 stride 2 when the student's map is twice as
    large, a 4x4 stride-2 transposed conv when half as large, a valid conv of kernel 1 + (s - t) when
    larger otherwise (1x1 when equal), bilinear upsampling then 1x1 when smaller otherwise.
    Vectors: linear + BN. ReLU at the end when `relu`.
    """
    if len(s_shape) == 1 and len(t_shape) == 1:
        layers = [nn.Linear(s_shape[0], t_shape[0]), nn.BatchNorm1d(t_shape[0])]
    elif len(s_shape) == 3 and len(t_shape) == 3:
        (sc, sh, sw), (tc, th, tw) = s_shape, t_shape
        if (sh, sw) == (2 * th, 2 * tw):
            conv = [nn.Conv2d(sc, tc, kernel_size=3, stride=2, padding=1)]
        elif (2 * sh, 2 * sw) == (th, tw):
            conv = [nn.ConvTranspose2d(sc, tc, kernel_size=4, stride=2, padding=1)]
        elif sh >= th and sw >= tw:
            conv = [nn.Conv2d(sc, tc, kernel_size=(1 + sh - th, 1 + sw - tw))]
        else:
            conv = [nn.Upsample(size=(th, tw), mode="bilinear", align_corners=False), nn.Conv2d(sc, tc, 1)]
        layers = conv + [nn.BatchNorm2d(tc)]
    else:
        raise UserError(f"Cannot map a student feature of shape {s_shape} onto a teacher feature of shape "
                        f"{t_shape}: choose paths that are both feature maps or both vectors.")
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


def bn_connector(s_shape: tuple, t_shape: tuple) -> nn.Module:
    """1x1 conv (no bias) + BN from the student's channels to the teacher's (linear + BN1d for vectors),
    initialised as the AB/OFD authors' connectors: weights N(0, 2 / (k^2 C_out)), BN weight 1 and bias 0."""
    sc, tc = s_shape[0], t_shape[0]
    if len(s_shape) == 1:
        layer = nn.Linear(sc, tc, bias=False)
        bn = nn.BatchNorm1d(tc)
    else:
        layer = nn.Conv2d(sc, tc, kernel_size=1, bias=False)
        bn = nn.BatchNorm2d(tc)
    n = tc * (layer.kernel_size[0] * layer.kernel_size[1] if isinstance(layer, nn.Conv2d) else 1)
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2.0 / n))
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    return nn.Sequential(layer, bn)
