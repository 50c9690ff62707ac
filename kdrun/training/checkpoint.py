"""Files that must survive a kill at any moment: written to a temporary file, then renamed."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdrun.errors import UserError


def atomic_write(path: Path, write) -> None:
    from kdrun.distributed import is_main

    if not is_main():  # several processes run one run: rank 0 writes its files
        return
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
    """Tensors are written as CPU tensors: a file a GPU run wrote loads with a plain torch.load on a machine
    without one."""
    atomic_write(path, lambda f: torch.save(on_cpu(obj), f))


def on_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        copy = obj.copy()  # its own type (an OrderedDict, a defaultdict)
        for k, v in obj.items():
            copy[k] = on_cpu(v)
        if hasattr(obj, "_metadata"):  # a state dict's module versions, which load_state_dict reads
            copy._metadata = obj._metadata
        return copy
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


OWN_FILE_ADVICE = "kdrun does not start over silently: restore the file, or delete it to redo that work."


def foreign_globals() -> list:
    """What other KD code pickles next to the weights, and nothing that runs code. RepDistiller sets the lr
    from `np.sum(...)`, so its optimiser states hold numpy.float64 (pickled as numpy 1's
    `numpy.core.multiarray.scalar` or numpy 2's `numpy._core.multiarray.scalar`, with its dtype, whose
    state is set on the dtype's own class), and its `*_last.pth` pickles the script's argparse options."""
    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 renamed core
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtypes, argparse.Namespace]


def load_torch(path: Path, what: str = "checkpoint", advice: str = OWN_FILE_ADVICE, foreign: bool = False):
    """A torch file through the weights-only unpickler: tensors and plain data (and, for files other code
    wrote, `foreign_globals`), never an arbitrary class, whose unpickling could run any code."""
    try:
        with torch.serialization.safe_globals(foreign_globals() if foreign else []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if refused:
            raise UserError(
                f"The {what} {path} holds a pickled {refused.group(1)} object. kdrun will not unpickle it: "
                f"unpickling a class can run any code. Save the weights alone, "
                f"torch.save(model.state_dict(), path), and give that file."
            ) from None
        raise unreadable(path, what, e, advice) from None
    except Exception as e:  # truncated, not a torch file
        raise unreadable(path, what, e, advice) from None


def unreadable(path: Path, what: str, e: Exception, advice: str) -> UserError:
    return UserError(f"The {what} {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                     f"{advice}")
