"""What a tracker keeps between the attempts of a run (or the jobs of a sweep): `trackers.json` in the run
(or sweep) directory, e.g. the id of the wandb or MLflow run that a resumed run goes on logging to. Deleting
the directory forgets it, so a new run in the same place starts new tracker runs."""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

from kdrun.training.checkpoint import save_json

STATE_FILE = "trackers.json"


def read_state(directory: Path) -> dict:
    try:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(directory: Path, name: str, value) -> None:
    """Set one tracker's entry, keeping the others'."""
    save_json(Path(directory) / STATE_FILE, {**read_state(directory), name: value})


@contextlib.contextmanager
def locked(directory: Path):
    """Hold the directory's state for the block: the jobs of a sweep run in several processes at once."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with open(Path(directory) / ".trackers.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
