"""Files that must survive a kill at any moment: written to a temporary file, then renamed."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from kdrun.errors import UserError


def atomic_write(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise unwritable(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600: the mode open() would give
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a kill or a full disk leaves the old file, never half a new one
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise unwritable(path, e) from None
        raise


def current_umask() -> int:
    """The process's umask: from /proc on Linux, else by setting it and putting it back at once (the one
    way POSIX offers, which a thread creating a file in between would see)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unwritable(path: Path, e: OSError) -> UserError:
    return UserError(f"Cannot write {path} ({e.strerror or e}). Free disk space, or choose a writable place "
                     f"for runs (hydra.run.dir=DIR, hydra.sweep.dir=DIR) or for the teacher cache (cache_dir=DIR).")


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def load_torch(path: Path, what: str = "checkpoint"):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, unpickling refused
        raise UserError(
            f"The {what} {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"kdrun does not start over silently: restore the file, or delete it to redo that work."
        ) from None
