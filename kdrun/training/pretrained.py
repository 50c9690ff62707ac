"""`teacher.pretrained=SOURCE`: a published teacher instead of one kdrun trains (kdrun.models.pretrained lists
the sources). An archive source is fetched into kdrun's cache (kdrun.training.pretrained_archive); torchvision's
weights come through its weights API into torch.hub's cache ($TORCH_HOME/hub/checkpoints), where they stay."""
from __future__ import annotations

import http.client
import logging
import os
import urllib.error
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from kdrun.data.base import Dataset
from kdrun.errors import UserError
from kdrun.models import NODE_KEYS, model_defaults, model_label
from kdrun.models.pretrained import SOURCES, Published, Source
from kdrun.training.loop import evaluate
from kdrun.training.pretrained_archive import archive_member, by_hand

log = logging.getLogger("kdrun")
REPLACE_IT = "Put torchvision's file there instead, or delete it: the same command then downloads it anew."


def check_pretrained(cfg: DictConfig) -> Optional[Published]:
    """Refuse, before anything is downloaded or trained, what `teacher.pretrained` cannot give."""
    name = cfg.teacher.get("pretrained")
    if name is None:
        return None
    source = SOURCES.get(str(name))
    if cfg.teacher.get("checkpoint"):
        raise UserError(f"teacher.pretrained={name} and teacher.checkpoint={cfg.teacher.checkpoint} both give the "
                        f"teacher's weights. Give one of them: teacher.checkpoint=null for {name}'s, or "
                        f"teacher.pretrained=null to load your file.")
    if cfg.teacher.get("epoch") is not None:
        raise UserError(f"teacher.epoch={cfg.teacher.epoch} picks an epoch of a teacher kdrun trains, but "
                        f"teacher.pretrained={name} gives published weights. Give one of them: teacher.epoch=null, "
                        f"or teacher.pretrained=null to train the teacher and distil from its epoch "
                        f"{cfg.teacher.epoch}.")
    label = model_label(cfg.teacher)
    published = source.published(label, str(cfg.dataset.name))
    given = {k: v for k, v in OmegaConf.to_container(cfg.teacher, resolve=True).items() if k not in NODE_KEYS}
    changed = [f"teacher.{k}={v}" for k, v in given.items() if v != model_defaults(label).get(k)]
    if changed:
        raise UserError(f"teacher.pretrained={name} gives the weights of teacher={label} as published, with its "
                        f"default arguments, but {', '.join(changed)} changes it. Leave that out, or "
                        f"teacher.pretrained=null to train the teacher you describe.")
    return published


def published_record(cfg: DictConfig) -> dict:
    """What metrics.json records of a published teacher: its source and the accuracy the source reports."""
    published = check_pretrained(cfg)
    if published is None:
        return {}
    return {"teacher_pretrained": str(cfg.teacher.pretrained), "teacher_published_acc": published.published_acc}


def obtain_pretrained(cfg: DictConfig, teacher: nn.Module, data: Dataset) -> tuple[float, str]:
    """Fill `teacher` with the published weights; their test accuracy on this run's test split and their file."""
    published = check_pretrained(cfg)
    source = SOURCES.get(str(cfg.teacher.pretrained))
    if source.kind == "torchvision":
        path = hub_weights(source, published, teacher)
    else:
        path = archive_member(Path(cfg.cache_dir).expanduser() / "pretrained", source, published, teacher)
    acc = evaluate(teacher, data, data.test)
    log.info("Teacher %s: %s's published weights, %s (test acc %.2f%% here, %.2f%% published).",
             published.model, source.name, path, acc, published.published_acc)
    return acc, str(path)


def hub_weights(source: Source, published: Published, teacher: nn.Module) -> Path:
    """torchvision's weights (`published.weights`, e.g. ResNet18_Weights.IMAGENET1K_V1) loaded into `teacher`,
    as `weights.get_state_dict` loads them: from torch.hub's cache, or downloaded there (from the mirror when
    one is set) and checked against the hash in the file's name, which torch.hub does before it keeps a file."""
    from torchvision.models import get_weight

    weights = get_weight(published.weights)
    name = os.path.basename(urlparse(weights.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    url = source.download_url(name, weights.url)
    if not path.exists():
        log.info("Downloading torchvision's %s: %s, into %s.", published.weights, url, path)
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, file_name=name,
                                                   weights_only=True)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else \
            f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
        raise UserError(f"teacher.pretrained={source.name}: kdrun could not download {name} from {url} ({reason}). "
                        f"Nothing was cached. To use it anyway, {by_hand(name, weights.url, source.page, path)}") \
            from None
    except Exception as e:  # noqa: BLE001  (torch.hub's hash check, which keeps no file; a file torch cannot read)
        detail = " ".join(str(e).split())[:300]
        if "invalid hash value" in str(e):
            raise UserError(f"teacher.pretrained={source.name}: the download of {name} from {url} is not usable "
                            f"({detail}). Nothing was cached. Run the same command again to download it anew; or "
                            f"{by_hand(name, weights.url, source.page, path)}") from None
        raise UserError(f"teacher.pretrained={source.name}: the file {path} in torch.hub's cache cannot be read "
                        f"({type(e).__name__}: {detail}). {REPLACE_IT}") from None
    try:
        teacher.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"teacher.pretrained={source.name}: the file {path} in torch.hub's cache does not fit "
                        f"teacher={published.model} ({' '.join(str(e).split())[:300]}). {REPLACE_IT}") from None
    return path
