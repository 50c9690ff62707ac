"""A published teacher from a source's archive (mdistiller's cifar_teachers.tar), fetched once into the cache's
`pretrained/` folder: downloaded to a temporary file there, checked (its size against Content-Length, its
SHA-256 against the source's or the one recorded, a readable tar that holds the member, weights that load into
the model) and only then moved into place, its SHA-256 recorded beside it (ARCHIVE.sha256) the first time. The
run's member is kept as an entry of its own (SOURCE-MODEL-DATASET.pt), which later runs load without the archive.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import io
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn as nn

from kdrun.errors import UserError
from kdrun.models.pretrained import MIRROR_ENV, Published, Source
from kdrun.training.checkpoint import foreign_globals, load_torch, save_torch, unwritable
from kdrun.training.teacher import file_lock

log = logging.getLogger("kdrun")
TIMEOUT_S = 60  # without a byte for this long, a download counts as failed


class Unusable(Exception):
    """What is wrong with an archive or its member (a clause of the user's message)."""


def archive_member(folder: Path, source: Source, published: Published, teacher: nn.Module) -> Path:
    """The member's own entry in the cache, made from the archive (fetched first when it is not there)."""
    entry = folder / f"{source.name}-{published.model}-{published.dataset}.pt"
    with file_lock(entry):
        if entry.exists():
            kept = load_torch(entry, "cached published teacher",
                              advice="Delete it and run again: kdrun takes it from the archive again.")
            teacher.load_state_dict(kept["state_dict"])
            log.info("Teacher %s reused from the cache: %s (no download).", published.model, entry)
            return entry
        state, digest = from_archive(folder, source, published, teacher)
        save_torch(entry, {"state_dict": state, "source": source.name, "member": published.member,
                           "archive_sha256": digest, "model": published.model, "dataset": published.dataset})
    return entry


def from_archive(folder: Path, source: Source, published: Published, teacher: nn.Module) -> tuple[dict, str]:
    """The member's weights (loaded into `teacher`) and the archive's SHA-256. A cached archive (or one put there
    by hand) is checked as a download is; a download that fails a check is deleted, never cached."""
    archive = folder / source.archive
    record = archive.with_name(archive.name + ".sha256")
    with file_lock(archive):
        if archive.exists():
            digest = sha256_of(archive)
            try:
                check_digest(digest, source, record)
                state = read_member(archive, source, published, teacher)
            except Unusable as e:
                raise UserError(f"The archive {archive} is not {source.name}'s {source.archive}: {e}. Delete it and "
                                f"run again to download it anew (or put a good copy there).") from None
        else:
            url = source.download_url(source.archive, source.url)
            part, digest = download(url, folder, source, archive)
            try:
                check_digest(digest, source, record)
                state = read_member(part, source, published, teacher)
            except BaseException as e:
                part.unlink(missing_ok=True)  # a corrupted or truncated download is never cached
                if isinstance(e, Unusable):
                    raise UserError(f"The download of {source.archive} from {url} is not usable: {e}. Nothing "
                                    f"was cached. Run the same command again to download it anew; or "
                                    f"{by_hand(source.archive, source.url, source.page, archive)}") from None
                raise
            os.replace(part, archive)
        if not record.exists():
            record.write_text(f"{digest}  {source.archive}\n")  # the format of sha256sum: `sha256sum -c` checks it
            log.info("Recorded the SHA-256 of %s in %s: later copies are checked against it.", archive, record)
    return state, digest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_digest(digest: str, source: Source, record: Path) -> None:
    """Against the source's SHA-256 when it is known, and against the one recorded at the first download."""
    if source.sha256 and digest != source.sha256:
        raise Unusable(f"its SHA-256 is {digest}, {source.name}'s is {source.sha256} (corrupted, or another file)")
    words = record.read_text().split() if record.exists() else []
    recorded = words[0] if words else None
    if recorded and digest != recorded:
        raise Unusable(f"its SHA-256 is {digest}, not the {recorded} recorded in {record} when the archive was "
                       f"first downloaded (corrupted, or the source replaced it: if {source.name} published a new "
                       f"file on purpose, delete {record} to accept it)")


def read_member(path: Path, source: Source, published: Published, teacher: nn.Module) -> dict:
    """The member's state_dict, loaded into `teacher` (which checks every key and shape)."""
    size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            cut = [m.name for m in members.values() if m.offset_data + m.size > size]
            if cut:
                raise Unusable(f"it ends inside {cut[0]}, after {size} bytes (truncated)")
            member = members.get(published.member)
            if member is None:
                raise Unusable(f"it holds no {published.member} (truncated, or another archive? it holds "
                               f"{len(members)} files{': ' if members else ''}{', '.join(sorted(members)[:4])})")
            data = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, EOFError) or str(e) == "unexpected end of data":  # tarfile's words for a file cut short
            raise Unusable(f"it ends inside its files, after {size} bytes (truncated)") from None
        raise Unusable(f"not a readable tar archive ({type(e).__name__}: {e})") from None
    try:
        with torch.serialization.safe_globals(foreign_globals()):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (truncated, corrupted, not a torch file)
        raise Unusable(f"its {published.member} cannot be read by torch.load ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]})") from None
    state = obj.get(source.weights_key) if source.weights_key and isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Unusable(f"its {published.member} holds no state_dict of tensors"
                       + (f" under {source.weights_key!r}" if source.weights_key else ""))
    for old, new in source.rename.items():
        state = {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}
    try:
        teacher.load_state_dict(state)
    except RuntimeError as e:
        raise Unusable(f"its {published.member} does not fit teacher={published.model} "
                       f"({' '.join(str(e).split())[:300]})") from None
    return state


def download(url: str, folder: Path, source: Source, archive: Path) -> tuple[Path, str]:
    """`url` into a temporary file in `folder`, checked against Content-Length; the file and its SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{source.archive}.", suffix=".part")
    part, h, size, expected = Path(name), hashlib.sha256(), 0, None
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            expected = response.headers.get("Content-Length")
            log.info("Downloading %s's teachers: %s%s, into %s.", source.name, url,
                     f" ({int(expected) / 1e6:.0f} MB)" if expected else "", archive)
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                h.update(block)
                size += len(block)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise unwritable(archive, e) from None  # the cache's disk, not the network
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else \
            f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
        what = f"the download of {source.archive} stopped after {size} bytes" if size else \
            f"kdrun could not download {source.archive}"
        raise UserError(f"teacher.pretrained={source.name}: {what} from {url} ({reason}). Nothing was cached. "
                        f"To use it anyway, {by_hand(source.archive, source.url, source.page, archive)}") from None
    if expected is not None and size != int(expected):
        part.unlink()
        raise UserError(f"The download of {source.archive} from {url} is not usable: it ended after {size} of "
                        f"{expected} bytes (truncated). Nothing was cached. Run the same command again to "
                        f"download it anew; or {by_hand(source.archive, source.url, source.page, archive)}")
    return part, h.hexdigest()


def by_hand(file_name: str, url: str, page: str, path: Path) -> str:
    """Where to put a source's file by hand, and where to get it (the advice of every failed download)."""
    return (f"download {file_name} yourself from {url} (listed on {page}), put it at {path.absolute()} and run "
            f"the same command again (kdrun checks it there); or set {MIRROR_ENV} to the URL of a folder that "
            f"holds a copy (e.g. {MIRROR_ENV}=http://my-mirror/kd).")
