"""Hydra callbacks (`hydra.callbacks` in conf/config.yaml).

`OutputDirCheck` makes sure the run (or sweep) directory and the teacher cache can be written before
Hydra creates them; otherwise Hydra would fail inside its own job set-up with a Python traceback.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class OutputDirCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_dirs(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_dirs(config, "hydra.sweep.dir")


def check_dirs(config: DictConfig, key: str) -> None:
    where = config.hydra.run.dir if key == "hydra.run.dir" else config.hydra.sweep.dir
    if where is None or not str(where).strip():  # e.g. hydra.run.dir=$RUN_DIR with RUN_DIR unset
        refuse(f"{key} is empty (an unset $VARIABLE in the command?): the run would be written into the current "
               f"directory. Give the directory: {key}=DIR.")
    cache = config.get("cache_dir")
    if cache is not None and not str(cache).strip():
        refuse("cache_dir is empty (an unset $VARIABLE in the command?): the teacher cache would be written into "
               "the current directory. Give it a directory, cache_dir=DIR, or leave the key out (outputs/cache, "
               "or the environment variable KDRUN_CACHE_DIR).")
    problem = cache_problem(Path(str(cache))) if cache else None
    if problem:
        refuse(cache_unwritable(cache, problem))
    problem = writable_dir_problem(Path(str(where)))
    if problem:
        refuse(f"The output directory {where} cannot be written ({problem}). Choose another one with "
               f"{key}=DIR, or start kdrun in a directory you can write to (runs go to ./outputs/).")


def cache_unwritable(cache, problem: str) -> str:
    return (f"The teacher cache cache_dir={cache} cannot be written ({problem}). Choose another one with "
            f"cache_dir=DIR (or the environment variable KDRUN_CACHE_DIR).")


def cache_problem(cache: Path) -> str | None:
    """The cache and the `teachers/` folder in it, where entries go."""
    return creatable_dir_problem(cache) or creatable_dir_problem(cache.expanduser() / "teachers")


def writable_dir_problem(path: Path) -> str | None:
    """Create the directory (Hydra would) and a file in it: the only test that holds for root, too."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def creatable_dir_problem(path: Path) -> str | None:
    """Without creating anything: the nearest existing ancestor must be a writable directory."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.is_symlink() and not candidate.exists():
            return f"{candidate} is a link to nothing"
        if candidate.exists():
            if not candidate.is_dir():
                return f"{candidate} is a file, not a directory"
            if not os.access(candidate, os.W_OK | os.X_OK):
                return f"{candidate} is not writable"
            return None
    return None


def refuse(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.exit(2)
