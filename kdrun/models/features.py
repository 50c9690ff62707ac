"""Features read with forward hooks addressed by module path (torchdistill style).

A path names a submodule as `model.named_modules()` does (`layer3.1`, `hidden.0.1`); the hook keeps
its output. `PATH:in` keeps the module's input instead (e.g. `fc:in`, the embedding a classifier
sees, or a ReLU's input, the pre-activation). No model's forward is rewritten.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kdrun.errors import UserError


def resolve(model: nn.Module, path: str, role: str = "model") -> tuple[nn.Module, bool]:
    name, _, port = path.partition(":")
    if port not in ("", "in", "out"):
        raise UserError(f"Feature path {path!r}: the part after ':' must be 'in' or 'out'.")
    modules = dict(model.named_modules())
    if name not in modules:
        valid = [n for n in modules if n]
        raise UserError(
            f"The {role} ({type(model).__name__}) has no module {name!r} to read features from. "
            f"Valid module paths: {', '.join(valid)}. Add ':in' to read a module's input."
        )
    return modules[name], port == "in"


class FeatureHooks:
    """Registers hooks for `paths` on `model`; after each forward, `.features[path]` holds the tensor."""

    def __init__(self, model: nn.Module, paths: list[str], role: str = "model"):
        self.paths = list(dict.fromkeys(paths))
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in self.paths:
            module, want_input = resolve(model, path, role)
            self._handles.append(module.register_forward_hook(self._keeper(path, want_input)))

    def _keeper(self, path: str, want_input: bool):
        def hook(module, inputs, output):
            self.features[path] = inputs[0] if want_input else output

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def feature_shapes(model: nn.Module, paths: list[str], sample: torch.Tensor, role: str = "model") -> dict:
    """Shapes (without the batch dimension) of the features at `paths` for an input like `sample`."""
    hooks = FeatureHooks(model, paths, role)
    was_training = model.training
    model.eval()
    try:
        model(sample)
        return {p: tuple(t.shape[1:]) for p, t in hooks.take().items()}
    finally:
        hooks.remove()
        model.train(was_training)


ROLES = ("stages", "preact", "embedding")
OPTIONAL = ("stem", "feature_layers", "preact_bn")  # declared by the zoo's convolutional models (see kdrun.models)
# `preact_bn`: parallel to `preact`, the BatchNorm module whose output is each pre-activation, or, where the
# pre-activation is a residual sum (bn(out) + shortcut), that BN, the last of the residual branch (the OFD
# authors' get_bn_before_relu() picks the same). Declared only by models whose every `preact` follows a BN:
# the ofd method reads its teacher's margins from their weight and bias.


def feature_points(model: nn.Module, role: str = "model") -> dict[str, list[str]]:
    """The model's default feature points (ROLES, plus the OPTIONAL keys it declares); a model without
    `feature_points()` gets a message saying how to name paths instead."""
    declare = getattr(model, "feature_points", None)
    if declare is None:
        paths = [n for n, _ in model.named_modules() if n]
        raise UserError(
            f"The {role} ({type(model).__name__}) declares no default feature points (a feature_points() "
            f"method returning {{'stages': [...], 'preact': [...], 'embedding': [...]}}). Add one, or name "
            f"the module paths in the method config. Valid module paths: {', '.join(paths)}."
        )
    points = declare()
    return {key: list(points.get(key, [])) for key in ROLES + tuple(k for k in OPTIONAL if k in points)}


def default_feature_shapes(model: nn.Module, sample: torch.Tensor, role: str = "model") -> dict[str, list[tuple]]:
    """Shapes (without the batch dimension) of the default feature points (and the stem), in the order declared."""
    points = feature_points(model, role)
    keys = [key for key in ROLES + ("stem",) if key in points]
    shapes = feature_shapes(model, [p for key in keys for p in points[key]], sample, role)
    return {key: [shapes[p] for p in points[key]] for key in keys}


def feature_layers(model: nn.Module, role: str = "model") -> list[nn.Module] | None:
    """The modules of the model's `feature_layers` point (RepDistiller's `get_feat_modules()`: the layers
    that compute its features, without the head), or None when it declares none."""
    declare = getattr(model, "feature_points", None)
    paths = (declare() if callable(declare) else {}).get("feature_layers")
    if not paths:
        return None
    return [resolve(model, path, role)[0] for path in paths]


@torch.no_grad()
def parameters_up_to(model: nn.Module, path: str, sample: torch.Tensor, role: str = "model") -> list[nn.Parameter]:
    """The parameters that shape the feature at `path`: those of every module whose forward finished
    before that feature was produced (found by one forward with hooks on all modules, in execution order).

    `PATH` is produced when that module's forward ends, `PATH:in` when it begins. Used for FitNet's
    hint stage (the student up to the guided layer).
    """
    target, want_input = resolve(model, path, role)
    finished: list[nn.Module] = []
    state = {"done": False}

    def after(module, inputs, output):
        if not state["done"]:
            finished.append(module)
        if module is target and not want_input:
            state["done"] = True

    def before(module, inputs):
        if module is target and want_input:
            state["done"] = True

    handles = [m.register_forward_hook(after) for m in model.modules()]
    handles.append(target.register_forward_pre_hook(before))
    was_training = model.training
    model.eval()
    try:
        model(sample)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    seen, out = set(), []
    for module in finished:
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
