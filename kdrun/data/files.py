"""Finding a dataset's standard files under `dataset.root`, downloading them when allowed.

Files that are present are read as they are: no checksum is compared (a re-encoded or partial copy is
fine). Downloads use torchvision's helpers with the official archives; any failure (no network, a
refused or broken download) becomes a `UserError` that says where kdrun looked and how to fix it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from kdrun.errors import UserError

log = logging.getLogger("kdrun")


def data_root(cfg) -> Path:
    root = cfg.get("root")
    if root in (None, ""):
        raise UserError(f"dataset={cfg.name} needs dataset.root: the folder that holds (or will hold) its files.")
    return Path(str(root)).expanduser().resolve()


def find_file(folder: Path, name: str, suffixes: Sequence[str] = ("",)) -> Optional[Path]:
    """The first of `name + suffix` that is a file in `folder`, or None."""
    for suffix in suffixes:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def require_files(
    *,
    dataset: str,
    root: Path,
    folder: Path,
    names: Sequence[str],
    suffixes: Sequence[str] = ("",),
    expected: str,
    download: bool,
    fetch: Callable[[], None],
    source: str,
) -> dict[str, Path]:
    """Paths of `names` in `folder` (each may carry one of `suffixes`), downloaded first when allowed.

    `expected` describes the files for the message, `source` the official archive(s) `fetch` downloads.
    """

    def located() -> dict[str, Optional[Path]]:
        return {name: find_file(folder, name, suffixes) for name in names}

    found = located()
    failure = ""
    if download and None in found.values():
        log.info("Dataset %s: files missing under %s; downloading %s.", dataset, folder, source)
        try:
            root.mkdir(parents=True, exist_ok=True)
            fetch()
        except Exception as e:  # network, HTTP, disk and archive errors alike: the user's to fix
            failure = f"The download of {source} into {root} failed ({type(e).__name__}: {_one_line(e)}). "
        found = located()
        if not failure and None in found.values():
            failure = f"The download of {source} into {root} did not produce them. "
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return found  # type: ignore[return-value]
    what = (f"no files under {folder}" if len(missing) == len(names)
            else f"files missing under {folder}: {', '.join(missing)}")
    raise UserError(
        f"{failure}dataset={dataset}: {what} (expected {expected}). Fix it in one of two ways: set "
        f"dataset.root=DIR to the folder that holds {folder.relative_to(root).as_posix()}/, or allow the "
        f"download with dataset.download=true on a machine with internet access (it fetches {source} into "
        f"dataset.root; copy that folder here if this machine is offline)."
    )


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")
