"""Shared helpers: compose configs with hydra.compose, run the CLI in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from kdrun.configs import CONFIG_DIR, register_configs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own teacher cache, so no test sees another's teachers."""
    monkeypatch.setenv("KDRUN_CACHE_DIR", str(tmp_path / "cache"))


def compose_config(overrides=(), return_hydra_config: bool = False):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_refusal(overrides) -> str:
    """kdrun's message for a config that the schema refuses as Hydra composes it (the test fails when the
    config composes, or when the error is not one kdrun words for the user)."""
    from kdrun.errors import UserError
    from kdrun.schema.errors import user_error

    try:
        compose_config(overrides)
    except Exception as e:  # noqa: BLE001  (what the CLI catches)
        error = user_error(e)
        assert isinstance(error, UserError), f"not worded for the user: {e!r}"
        return str(error)
    raise AssertionError(f"{overrides} composed, but should have been refused")


def group_options(group: str) -> list[str]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def kdrun_cli(args, cwd, env=None, timeout=300, entry="kdrun") -> subprocess.CompletedProcess:
    """Run `kdrun ARGS` (or another console script) as a user would, from `cwd`."""
    module = {"kdrun": "kdrun", "kdrun-report": "kdrun.results.report"}[entry]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in Path(root).rglob("metrics.json"))


def read_toml(text: str) -> dict:
    """tomllib (Python 3.11+), or its backport tomli (the dev extra installs it on 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib.loads(text)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# Quick settings for runs in tests: tiny synthetic data, one short epoch each.
QUICK = ["dataset=synthetic", "dataset.train_size=64", "dataset.test_size=32", "dataset.image_size=8",
         "train.epochs=1", "train.batch_size=32", "teacher.train.epochs=1", "teacher.train.batch_size=32",
         "teacher=mlp", "teacher.hidden=[32]", "student=mlp", "student.hidden=[16]", "progress=false"]
