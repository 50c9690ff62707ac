"""The config tree composes (hydra.compose) for every combination of group options."""
import itertools

import pytest

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_config, group_options
from kdrun.configs import CONFIG_DIR, register_configs
from kdrun.models import MODELS

GROUPS = ("dataset", "method", "schedule")
DEFAULT_DATASET = "digits"


def test_every_contract_group_exists():
    for group in ("dataset", "teacher", "student", "method", "schedule", "experiment"):
        assert group_options(group), group


def test_defaults_compose_to_the_embedded_run():
    cfg = compose_config()
    assert (cfg.dataset.name, cfg.teacher.name, cfg.student.name, cfg.method.name, cfg.schedule.name) == (
        "digits", "mlp_1200", "mlp_800", "kd", "single")
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones"):
        assert key in cfg.train and key in cfg.teacher.train
    assert cfg.teacher.checkpoint is None
    assert {"root", "download", "train_size", "test_size", "val_size"} <= set(cfg.dataset)


SETTINGS_OF = {"kd_ls": "kd", "dkd_ls": "dkd", "mlkd_ls": "mlkd"}  # method options that are a method at a paper's settings


def test_every_combination_of_group_options_composes():
    """Every method on the one-stage schedule and on fitnet's (which overrides the method group), every
    schedule with kd, every dataset with each of those two schedules (composition checks each node against
    its own schema; the stage lists built from them are tests/test_schedules.py's)."""
    register_configs()
    GlobalHydra.instance().clear()
    methods, schedules, datasets = (group_options(g) for g in GROUPS[1:] + GROUPS[:1])
    combos = [(DEFAULT_DATASET, m, s) for m, s in itertools.product(methods, ["single", "fitnet"])]
    combos += [(DEFAULT_DATASET, "kd", s) for s in schedules]
    combos += [(d, "kd", s) for d, s in itertools.product(datasets, ["single", "fitnet"])]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        for combo in combos:
            cfg = compose("config", overrides=[f"{g}={o}" for g, o in zip(GROUPS, combo)])
            assert (cfg.dataset.name, cfg.method.name) == (combo[0], SETTINGS_OF.get(combo[1], combo[1]))
            assert cfg.schedule.name == combo[2]


def test_every_registered_model_is_a_teacher_and_a_student_option():
    assert set(MODELS.names()) <= set(group_options("teacher"))
    assert set(MODELS.names()) <= set(group_options("student"))


def test_model_constructor_arguments_are_config_keys():
    cfg = compose_config(["teacher=mlp_1200", "teacher.dropout=0.5", "student=mlp", "student.hidden=[10,20]"])
    assert cfg.teacher.dropout == 0.5 and list(cfg.student.hidden) == [10, 20]


@pytest.mark.parametrize("experiment", [e for e in group_options("experiment")])
def test_every_experiment_preset_composes(experiment):
    compose_config([f"experiment={experiment}"])
