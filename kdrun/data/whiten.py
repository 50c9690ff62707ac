"""`dataset.whiten`: global contrast normalisation, then ZCA whitening fitted on the training split.

pylearn2's preprocessing of CIFAR-10 for Maxout networks (Goodfellow et al. 2013) and FitNets (Romero et
al. 2015), make_cifar10_gcn_whitened.py: `CIFAR10(gcn=55.)`, then `preprocessing.ZCA()` fitted on train.
GCN: each image (all C*H*W values) minus its mean, scaled to L2 norm `gcn_scale`. ZCA: with the training
mean m and covariance S, x -> (x - m) @ P where P = S_b^(-1/2), S_b = S + zca_bias * I.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from kdrun.data.base import Split
from kdrun.errors import UserError, require

KEYS = ("gcn_scale", "zca_bias")
EXAMPLE = "dataset.whiten.gcn_scale=55 dataset.whiten.zca_bias=0.1"
CHUNK = 4096  # rows per float64 block: 4096 x 3072 doubles are 100 MB


@dataclass(frozen=True)
class Whitening:
    gcn_scale: float
    zca_bias: float


def whitening_from_config(cfg) -> Optional[Whitening]:
    """`dataset.whiten` -> the settings, or None when it is null or all its keys are."""
    if cfg is None or is_off(cfg):
        return None
    if not isinstance(cfg, (DictConfig, dict)):
        raise UserError(f"dataset.whiten must be null or a group of keys ({', '.join(KEYS)}), got {cfg!r}. "
                        f"pylearn2's CIFAR-10 setting: {EXAMPLE}")
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    unknown = sorted(set(values) - set(KEYS))
    require(not unknown, f"Unknown dataset.whiten key(s) {', '.join(map(str, unknown))}; "
                         f"valid keys: {', '.join(KEYS)}.")
    missing = [key for key in KEYS if values.get(key) is None]
    require(not missing, f"dataset.whiten lacks {', '.join(missing)}: give both keys, e.g. {EXAMPLE}")
    for key in KEYS:
        value = values[key]
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                f"dataset.whiten.{key} must be a number, got {value!r}.")
    require(values["gcn_scale"] > 0, f"dataset.whiten.gcn_scale must be above 0, got {values['gcn_scale']}.")
    # GCN leaves every image with zero mean, so the covariance of GCN'd data is singular along the
    # all-ones direction: without a bias, its inverse square root does not exist.
    require(values["zca_bias"] > 0, f"dataset.whiten.zca_bias must be above 0, got {values['zca_bias']}: "
                                    f"global contrast normalisation makes the covariance singular "
                                    f"(pylearn2's default is 0.1).")
    return Whitening(float(values["gcn_scale"]), float(values["zca_bias"]))


def is_off(cfg) -> bool:
    return isinstance(cfg, (DictConfig, dict)) and all(cfg.get(key) is None for key in cfg)


def global_contrast_normalize(x: torch.Tensor, scale: float, min_divisor: float = 1e-8) -> torch.Tensor:
    """Per example (a row of x, or one image): subtract its mean, divide by its L2 norm / `scale`.

    pylearn2's global_contrast_normalize with subtract_mean=True, use_std=False, sqrt_bias=0: an example
    whose norm / scale is below `min_divisor` (a constant image) is divided by 1 instead.
    """
    flat = x.reshape(x.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True) / scale
    norm = torch.where(norm < min_divisor, torch.ones_like(norm), norm)
    return (centred / norm).reshape(x.shape)


def fit_zca(x: torch.Tensor, bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    """N x D data -> (mean, P), float64 on x's device; (x - mean) @ P has covariance I when bias is 0.

    pylearn2's ZCA.fit: P = V diag(1 / sqrt(eigs)) V^T for the eigen-decomposition of
    (x - mean)^T (x - mean) / N + bias * I. Accumulated over row blocks, so x is never copied whole in float64.
    """
    n, d = x.shape
    mean = sum(block.double().sum(0) for block in x.split(CHUNK)) / n
    if n < d and bias > 0:
        return mean, low_rank_zca(x.double() - mean, bias)
    cov = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for block in x.split(CHUNK):
        centred = block.double() - mean
        cov.addmm_(centred.T, centred)
    cov /= n
    cov.diagonal().add_(bias)
    eigs, vecs = torch.linalg.eigh(cov)
    # numpy.linalg.matrix_rank's tolerance: smaller eigenvalues are rounding noise of a zero one
    tolerance = float(eigs[-1]) * d * torch.finfo(torch.float64).eps
    require(float(eigs[0]) > tolerance,
            f"ZCA whitening: the training data's covariance (+ zca_bias * I) is singular (smallest eigenvalue "
            f"{float(eigs[0]):.3g}, largest {float(eigs[-1]):.3g}). Raise dataset.whiten.zca_bias (pylearn2 uses 0.1).")
    return mean, (vecs * eigs.rsqrt()) @ vecs.T


def low_rank_zca(centred: torch.Tensor, bias: float) -> torch.Tensor:
    """The same P from the thin SVD of the N x D centred data when N < D (a small `train_size`): the
    covariance is bias * I plus a rank-N part, so P = I / sqrt(bias) + V^T diag(1 / sqrt(s^2 / N + bias)
    - 1 / sqrt(bias)) V over its N right singular vectors V. O(N^2 D) instead of eigh's O(D^3)."""
    n, d = centred.shape
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    inv_root = (s * s / n + bias).rsqrt() - bias ** -0.5
    projection = (v.T * inv_root) @ v
    projection.diagonal().add_(bias ** -0.5)
    return projection


def apply_zca_(x: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """x (N x D, float) <- (x - mean) @ projection, in place, computed in float64 row blocks."""
    for block in x.split(CHUNK):
        block.copy_((block.double() - mean) @ projection)
    return x


def _gcn_rows(x: torch.Tensor, scale: float) -> torch.Tensor:
    """N x C x H x W (any dtype) -> N x (C*H*W) float32 GCN'd rows, computed in float64 row blocks."""
    rows = torch.empty(x.shape[0], math.prod(x.shape[1:]), dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], CHUNK):
        block = x[start : start + CHUNK].reshape(-1, rows.shape[1]).double()
        rows[start : start + CHUNK] = global_contrast_normalize(block, scale)
    return rows


def whiten_splits(settings: Whitening, train: Split, val: Optional[Split], test: Split
                  ) -> tuple[Split, Optional[Split], Split]:
    """GCN every split, fit ZCA on the GCN'd `train`, whiten all three with it: float32, shapes unchanged."""
    train_rows = _gcn_rows(train.x, settings.gcn_scale)
    mean, projection = fit_zca(train_rows, settings.zca_bias)

    def whitened(split: Split, rows: Optional[torch.Tensor] = None) -> Split:
        rows = _gcn_rows(split.x, settings.gcn_scale) if rows is None else rows
        return Split(apply_zca_(rows, mean, projection).view(split.x.shape), split.y)

    return whitened(train, train_rows), whitened(val) if val is not None else None, whitened(test)


__all__ = ["Whitening", "whitening_from_config", "global_contrast_normalize", "fit_zca", "apply_zca_",
           "whiten_splits"]
