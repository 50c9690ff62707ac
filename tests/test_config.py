"""The config tree composes (hydra.compose) for every combination of group options."""
import itertools

import pytest

from conftest import compose_config, group_options
from kdrun.models import MODELS

GROUPS = ("dataset", "method", "schedule")


def test_every_contract_group_exists():
    for group in ("dataset", "teacher", "student", "method", "schedule", "experiment"):
        assert group_options(group) or group == "experiment", group


def test_defaults_compose_to_the_embedded_run():
    cfg = compose_config()
    assert (cfg.dataset.name, cfg.teacher.name, cfg.student.name, cfg.method.name, cfg.schedule.name) == (
        "digits", "mlp_1200", "mlp_800", "kd", "single")
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones"):
        assert key in cfg.train and key in cfg.teacher.train
    assert cfg.teacher.checkpoint is None
    assert {"root", "download", "train_size", "test_size", "val_size"} <= set(cfg.dataset)


def test_every_combination_of_group_options_composes():
    options = [group_options(g) for g in GROUPS]
    for combo in itertools.product(*options):
        cfg = compose_config([f"{g}={o}" for g, o in zip(GROUPS, combo)])
        for g, o in zip(GROUPS, combo):
            assert cfg[g].name == o or g == "schedule"


def test_every_registered_model_is_a_teacher_and_a_student_option():
    assert set(MODELS.names()) <= set(group_options("teacher"))
    assert set(MODELS.names()) <= set(group_options("student"))


def test_model_constructor_arguments_are_config_keys():
    cfg = compose_config(["teacher=mlp_1200", "teacher.dropout=0.5", "student=mlp", "student.hidden=[10,20]"])
    assert cfg.teacher.dropout == 0.5 and list(cfg.student.hidden) == [10, 20]


@pytest.mark.parametrize("experiment", [e for e in group_options("experiment")])
def test_every_experiment_preset_composes(experiment):
    compose_config([f"experiment={experiment}"])
