"""Recipe options of the maxout-era recipes: RMSprop, linear lr decay, a momentum ramp, per-module lr
scales and per-step constraints; all off by default, leaving the optimiser and the cache key as before."""
import json
import re

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from conftest import compose_config
from kdrun.data import build_dataset
from kdrun.data.augment import Augmentation
from kdrun.errors import UserError
from kdrun.methods import build_method
from kdrun.schedules.spec import stage_recipe
from kdrun.training.loop import constrained_modules, fit
from kdrun.training.recipe import Recipe

CPU = torch.device("cpu")
OLD_KEYS = ["epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "nesterov"]


def recipe(**values) -> Recipe:
    base = {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "milestones": [],
            "gamma": 0.1, "nesterov": False, "precision": "fp32"}
    return Recipe.from_config(OmegaConf.create({**base, **values}))


def tiny_data():
    return build_dataset(OmegaConf.create({"name": "synthetic", "train_size": 32, "test_size": 16, "val_size": 0,
                                           "channels": 1, "image_size": 2, "num_classes": 4, "noise": 1.0,
                                           "data_seed": 0}), CPU)


class TinyNet(nn.Module):
    """Two layers of the same shape, so that their updates can be compared element by element."""

    def __init__(self, first: nn.Module = None):
        super().__init__()
        torch.manual_seed(0)
        self.flat = nn.Flatten()
        self.fc1 = first or nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.flat(x))))


class CappedLinear(nn.Linear):
    """A max-norm layer (pylearn2's max_col_norm) that counts its constraint calls."""

    def __init__(self, max_norm: float):
        super().__init__(4, 4)
        self.max_norm, self.calls = max_norm, 0

    def constrain_(self):
        self.calls += 1
        self.weight.copy_(torch.renorm(self.weight, p=2, dim=0, maxnorm=self.max_norm))


def ce_method(student, data):
    return build_method(OmegaConf.create({"name": "ce", "ce_weight": 1.0}), student, None, data.info)


def steps_seen(monkeypatch) -> list:
    """(lr, momentum) of group 0 at every optimiser step of the fits that follow."""
    seen, make = [], Recipe.make_optimizer

    def recording(self, params, model=None):
        optimizer = make(self, params, model)
        optimizer.register_step_pre_hook(lambda opt, *_: seen.append(
            (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])))
        return optimizer

    monkeypatch.setattr(Recipe, "make_optimizer", recording)
    return seen


# ---- RMSprop -------------------------------------------------------------------------------------

def test_rmsprop_is_torch_rmsprop_with_the_recipes_decay_and_eps():
    r = recipe(optimizer="rmsprop", lr=0.1, rmsprop_decay=0.8, rmsprop_eps=1e-3, momentum=0.5, weight_decay=0.01)
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = r.make_optimizer([p])
    assert type(optimizer) is torch.optim.RMSprop
    group = optimizer.param_groups[0]
    assert (group["alpha"], group["eps"], group["momentum"], group["weight_decay"], group["centered"]) == \
        (0.8, 1e-3, 0.5, 0.01, False)
    grad = torch.tensor([0.5, 0.1, -3.0])
    expected, square_avg, buf = p.detach().clone(), torch.zeros(3), torch.zeros(3)
    for _ in range(2):
        p.grad = grad.clone()
        optimizer.step()
        g = grad + 0.01 * expected  # weight decay enters the gradient
        square_avg = 0.8 * square_avg + 0.2 * g * g
        buf = 0.5 * buf + g / (square_avg.sqrt() + 1e-3)
        expected = expected - 0.1 * buf
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_sgd_without_the_new_options_is_built_as_before():
    model = TinyNet()
    params = list(model.parameters())
    r = recipe(momentum=0.9, weight_decay=5e-4, nesterov=True)
    built = r.make_optimizer(params, model)
    before = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    assert type(built) is torch.optim.SGD
    assert built.state_dict()["param_groups"] == before.state_dict()["param_groups"]
    assert type(r.make_scheduler(built)) is torch.optim.lr_scheduler.MultiStepLR


# ---- linear lr decay and the momentum ramp ------------------------------------------------------

def test_linear_lr_decay_falls_from_lr_to_lr_times_gamma_at_the_milestone():
    r = recipe(lr=1.0, gamma=0.01, lr_decay="linear", milestones=[5], epochs=7)
    optimizer = r.make_optimizer([nn.Parameter(torch.zeros(1))])
    scheduler = r.make_scheduler(optimizer)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 0.7525, 0.505, 0.2575, 0.01, 0.01, 0.01])
    assert lrs[4] == 0.01  # exactly gamma from the milestone on


def test_momentum_ramp_rises_linearly_then_stays():
    r = recipe(momentum=0.5, momentum_ramp=[4, 0.8])
    assert [r.momentum_in(e) for e in range(1, 7)] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.8, 0.8])
    assert r.momentum_in(4) == 0.8 and recipe(momentum=0.5).momentum_in(9) == 0.5


def pylearn2_epoch_values(count_to_value, epochs):
    """pylearn2's Train calls its extensions once before the first epoch and after each: the extension's
    counter is e during epoch e (its own test_linear_decay_over_epoch checks the same)."""
    return [count_to_value(e) for e in range(1, epochs + 1)]


def test_pylearn2_schedules_map_exactly_to_these_keys():
    S, g, L, f, m0 = 6, 0.01, 0.17, 0.65, 0.5
    # LinearDecayOverEpoch(start=1, saturate=S, decay_factor=g).current_lr, count >= start
    step = (L - L * g) / S
    pylearn2_lr = pylearn2_epoch_values(lambda c: L - step * c if c < S else L * g, 9)
    r = recipe(lr=L * (S - 1 + g) / S, lr_decay="linear", milestones=[S], gamma=g * S / (S - 1 + g))
    optimizer = r.make_optimizer([nn.Parameter(torch.zeros(1))])
    scheduler, lrs = r.make_scheduler(optimizer), []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(pylearn2_lr, rel=1e-12)
    # MomentumAdjustor(start=1, saturate=S, final_momentum=f).current_momentum
    alpha = lambda c: min(max((c - 1) / (S - 1), 0.0), 1.0)  # noqa: E731
    pylearn2_momentum = pylearn2_epoch_values(lambda c: m0 * (1 - alpha(c)) + f * alpha(c), 9)
    ramp = recipe(momentum=m0, momentum_ramp=[S, f])
    assert [ramp.momentum_in(e) for e in range(1, 10)] == pytest.approx(pylearn2_momentum, rel=1e-12)


def run_fit(r, checkpoint=None, stop_after=None):
    data = tiny_data()

    def on_epoch(entry):
        if entry["epoch"] == stop_after:
            raise KeyboardInterrupt  # the run is stopped after this epoch's checkpoint

    return fit(ce_method(TinyNet(), data), data, r, stage="ce", seed=0, checkpoint=checkpoint,
               on_epoch=on_epoch if stop_after else None)


def test_lr_and_momentum_per_epoch_in_fit_and_after_resuming(monkeypatch, tmp_path):
    r = recipe(lr=0.1, gamma=0.01, lr_decay="linear", milestones=[5], epochs=7, momentum=0.5,
               momentum_ramp=[4, 0.8])
    seen = steps_seen(monkeypatch)
    whole = run_fit(r, tmp_path / "whole.pt")
    per_epoch = seen[::2]  # two steps per epoch
    assert [lr for lr, _ in per_epoch] == pytest.approx([0.1 * (1 - 0.99 * min(e - 1, 4) / 4) for e in range(1, 8)])
    assert [m for _, m in per_epoch] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8])
    uninterrupted = list(seen)
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        run_fit(r, tmp_path / "stopped.pt", stop_after=2)
    assert len(seen) == 4
    resumed = run_fit(r, tmp_path / "stopped.pt")
    assert seen == uninterrupted
    assert resumed.history == whole.history


# ---- per-module lr scales ---------------------------------------------------------------------

def test_a_module_with_lr_scale_gets_its_own_group_after_the_default_one():
    model = TinyNet()
    model.fc1.lr_scale = 0.05
    r = recipe(lr=0.1, milestones=[1], gamma=0.5)
    optimizer = r.make_optimizer(model.parameters(), model)
    scheduler = r.make_scheduler(optimizer)
    default, scaled = optimizer.param_groups
    assert [id(p) for p in default["params"]] == [id(p) for p in model.fc2.parameters()]
    assert [id(p) for p in scaled["params"]] == [id(p) for p in model.fc1.parameters()]
    assert (default["lr"], scaled["lr"]) == pytest.approx((0.1, 0.005))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
            p.grad = torch.ones_like(p)
    optimizer.step()
    torch.testing.assert_close(model.fc1.weight.detach(), 0.05 * model.fc2.weight.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(model.fc1.bias.detach(), 0.05 * model.fc2.bias.detach(), rtol=1e-6, atol=0)
    scheduler.step()  # each group decays from its own lr
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.0025])


def test_lr_scale_counts_only_for_the_parameters_being_trained():
    model = TinyNet()
    model.fc1.lr_scale = 0.05
    optimizer = recipe().make_optimizer(list(model.fc2.parameters()), model)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.05


def test_fit_logs_the_default_groups_lr(monkeypatch):
    model, data = TinyNet(), tiny_data()
    model.fc1.lr_scale = 0.05
    seen = steps_seen(monkeypatch)
    result = fit(ce_method(model, data), data, recipe(epochs=1, lr=0.2), stage="ce", seed=0)
    assert result.history[0]["lr"] == 0.2 and seen[0][0] == 0.2


def test_the_history_records_the_lr_each_epoch_trained_at(monkeypatch):
    model, data = TinyNet(), tiny_data()
    seen = steps_seen(monkeypatch)
    result = fit(ce_method(model, data), data, recipe(epochs=4, milestones=[2, 3]), stage="ce", seed=0)
    steps = len(seen) // 4
    trained_at = [seen[e * steps][0] for e in range(4)]
    assert all(seen[e * steps + i][0] == trained_at[e] for e in range(4) for i in range(steps))
    assert trained_at == pytest.approx([0.05, 0.05, 0.005, 0.0005])  # decayed after epochs 2 and 3, as in RepDistiller
    assert [h["lr"] for h in result.history] == trained_at


def test_a_bad_lr_scale_names_the_module():
    model = TinyNet()
    model.fc1.lr_scale = -1.0
    with pytest.raises(UserError, match=re.escape("Module 'fc1' has lr_scale=-1.0: expected a positive number")):
        recipe().make_optimizer(model.parameters(), model)


# ---- per-step constraints -----------------------------------------------------------------------

def test_constraints_are_applied_after_every_step_of_the_trained_modules():
    data = tiny_data()
    capped = CappedLinear(max_norm=0.05)
    assert capped.weight.norm(dim=1).max() > 0.05
    fit(ce_method(TinyNet(capped), data), data, recipe(epochs=2, lr=0.5), stage="ce", seed=0)
    assert capped.calls == 4  # 2 epochs x 2 steps, none before the first step
    assert capped.weight.norm(dim=1).max() <= 0.05 + 1e-6


def test_no_constraint_without_constrain_or_for_frozen_modules():
    data = tiny_data()
    plain = TinyNet()
    assert constrained_modules(ce_method(plain, data), list(plain.parameters())) == []
    capped = CappedLinear(max_norm=0.05)
    model = TinyNet(capped)
    fit(ce_method(model, data), data, recipe(epochs=1), stage="ce", seed=0, parameters=list(model.fc2.parameters()))
    assert capped.calls == 0


# ---- values and the cache key -------------------------------------------------------------------

@pytest.mark.parametrize("values,needle", [
    ({"optimizer": "adam"}, "train.optimizer=adam: expected one of sgd, rmsprop"),
    ({"lr_decay": "cosine"}, "train.lr_decay=cosine: expected one of step, linear"),
    ({"rmsprop_decay": 1.0}, "train.rmsprop_decay must lie in [0, 1), got 1.0"),
    ({"rmsprop_decay": -0.1}, "train.rmsprop_decay must lie in [0, 1)"),
    ({"rmsprop_eps": 0.0}, "train.rmsprop_eps must be positive"),
    ({"rmsprop_eps": "x"}, "train.rmsprop_eps=x: expected a number"),
    ({"rmsprop_eps": float("inf")}, "train.rmsprop_eps=inf: expected a finite number"),
    ({"optimizer": "rmsprop", "nesterov": True}, "train.nesterov=true needs train.optimizer=sgd"),
    ({"lr_decay": "linear", "milestones": []}, "train.lr_decay=linear needs exactly one milestone"),
    ({"lr_decay": "linear", "milestones": [1]}, "train.lr_decay=linear needs exactly one milestone"),
    ({"lr_decay": "linear", "milestones": [5, 8]}, "got [5, 8]"),
    ({"momentum_ramp": 5}, "train.momentum_ramp=5: expected a list of numbers, e.g. [1,2] or null"),
    ({"momentum_ramp": [5]}, "train.momentum_ramp=[5]: expected null or [last epoch, final momentum]"),
    ({"momentum_ramp": [2.5, 0.9]}, "train.momentum_ramp=[2.5, 0.9]: expected null or"),
    ({"momentum_ramp": [5, 1.0]}, "the final momentum must lie in [0, 1)"),
    ({"momentum_ramp": [1, 0.9]}, "train.momentum_ramp=[1, 0.9]: its first value is the epoch (2 or more)"),
    ({"augment": {"rotate": 10}}, "Unknown train.augment key(s) rotate"),
    ({"augment": {"translate": -1}}, "train.augment.translate must be a whole number of pixels"),
    ({"augment": True}, "train.augment must be a group of keys"),
    ({"momentum_ramp": [5, 0.9], "momentum": 0.0, "optimizer": "rmsprop"},
     "train.momentum_ramp with train.optimizer=rmsprop needs a positive starting train.momentum"),
])
def test_impossible_values_name_the_key(values, needle):
    cfg = OmegaConf.create({**OmegaConf.to_container(compose_config().train), **values})
    with pytest.raises(UserError, match=re.escape(needle)):
        Recipe.from_config(cfg, "train")


def test_configs_carry_the_keys_and_stage_recipes_follow_train():
    overrides = ["schedule=fitnet", "train.optimizer=rmsprop", "train.momentum=0.3", "train.lr_decay=linear",
                 "train.milestones=[9]", "train.momentum_ramp=[5,0.5]", "train.augment={flip:true}"]
    cfg = compose_config(overrides)
    for node in ("hint", "kd"):
        stage = stage_recipe(cfg, f"schedule.{node}", "test")
        assert (stage.optimizer, stage.lr_decay, stage.momentum_ramp) == ("rmsprop", "linear", (5, 0.5))
        assert stage.augment == {"flip": True}
    teacher = Recipe.from_config(cfg.teacher.train, "teacher.train")
    assert (teacher.optimizer, teacher.lr_decay, teacher.momentum_ramp, teacher.augment) == ("sgd", "step", None, None)


def test_a_recipes_augmentation_replaces_the_datasets():
    data = build_dataset(OmegaConf.create({"name": "synthetic", "train_size": 32, "test_size": 16, "channels": 1,
                                           "image_size": 8, "num_classes": 4, "augment": {"crop_padding": 2}}), CPU)
    assert data.augment == Augmentation(crop_padding=2)
    assert recipe().data_for(data) is data
    assert recipe(augment={"translate": 2}).data_for(data).augment == Augmentation(translate=2)
    assert recipe(augment={}).data_for(data).augment is None  # off for this recipe
    assert data.augment == Augmentation(crop_padding=2)  # the dataset itself is left as it is


def test_fit_trains_on_the_recipes_augmentation(monkeypatch):
    seen = []
    monkeypatch.setattr(Augmentation, "__call__", lambda self, x, generator=None: seen.append(self) or x)
    data = tiny_data()
    distiller = build_method(OmegaConf.create({"name": "ce"}), TinyNet(), None, data.info)
    fit(distiller, data, recipe(epochs=1, augment={"translate": 1}), stage="student", seed=0)
    assert seen and set(seen) == {Augmentation(translate=1)}


def test_hintons_teacher_alone_is_jittered():
    cfg = compose_config(["experiment=hinton_mnist"])
    assert cfg.dataset.augment is None
    assert Recipe.from_config(cfg.teacher.train, "teacher.train").augment == {"translate": 2}
    assert Recipe.from_config(cfg.train, "train").augment is None


def test_default_recipes_keep_their_cache_key():
    assert list(Recipe().as_dict()) == OLD_KEYS
    cfg = compose_config()
    for node, where in ((cfg.train, "train"), (cfg.teacher.train, "teacher.train")):
        assert list(Recipe.from_config(node, where).as_dict()) == OLD_KEYS
    # RMSprop's keys count only for RMSprop; a key that is used is in the key.
    assert "rmsprop_eps" not in recipe(rmsprop_eps=1e-3).as_dict()
    used = recipe(optimizer="rmsprop", rmsprop_eps=1e-3, lr_decay="linear", milestones=[5], momentum=0.5,
                  momentum_ramp=[3, 0.7])
    d = used.as_dict()
    assert {k: v for k, v in d.items() if k not in OLD_KEYS} == {
        "optimizer": "rmsprop", "rmsprop_eps": 1e-3, "lr_decay": "linear", "momentum_ramp": [3, 0.7]}
    assert json.loads(json.dumps(d)) == d
