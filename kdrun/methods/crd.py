"""`crd`: contrastive representation distillation, Tian et al., ICLR 2020 (RepDistiller's crd/).

Both embeddings go through a linear head to `feat_dim` and are L2-normalised (v_s, v_t). A memory
bank keeps, per training example, a momentum average (`nce_m`) of its student and of its teacher
embedding. For each example i of the batch, the positive is its own bank entry and `nce_k`
negatives are drawn uniformly from the other examples of the training split (RepDistiller's default
'exact' mode draws them from the other classes instead). Scores p = exp(v . m / nce_t) / Z, with Z
estimated once, on the first batch, as mean(exp(.)) * N. With K negatives and the uniform noise
distribution 1/N, NCE's loss per anchor is
    -log(p_pos / (p_pos + K/N)) - sum_negatives log((K/N) / (p_neg + K/N)),
averaged over the batch, once with the student as anchor against the teacher bank and once the
other way round, and summed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller, flat
from kdrun.models.features import feature_shapes
from kdrun.schema.choice import Choice
from kdrun import distributed

log = logging.getLogger("kdrun")
EPS = 1e-7
NEGATIVES = ("other_classes", "uniform")


def nce_loss(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """p: batch x (1 + K) normalised scores, the positive in column 0."""
    k = p.shape[1] - 1
    noise = k / n_data  # K * P_noise
    log_positive = torch.log(p[:, 0] / (p[:, 0] + noise + EPS))
    log_negatives = torch.log(noise / (p[:, 1:] + noise + EPS))
    return -(log_positive.sum() + log_negatives.sum()) / p.shape[0]


class ContrastMemory(nn.Module):
    """One student and one teacher embedding per training example, and the NCE constants Z.

    `labels` (the training split's): negatives from other classes; None: from all other examples.
    Several processes (DDP): every process updates its banks with every process's rows, so the banks stay
    equal without being broadcast each step (`synchronised_by_method`)."""

    synchronised_by_method = True

    def __init__(self, dim: int, size: int, k: int, temperature: float, momentum: float,
                 labels: torch.Tensor | None = None):
        super().__init__()
        self.k, self.temperature, self.momentum = k, temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)  # uniform entries of variance 1/dim: vectors of norm about 1
        self.register_buffer("student_bank", torch.rand(size, dim) * 2 * bound - bound)
        self.register_buffer("teacher_bank", torch.rand(size, dim) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: unset
        self._z_checked = False  # read z once, not once per batch (a device sync)
        self.by_class = labels is not None
        if self.by_class:  # derived from the data: kept out of the state dict
            labels = labels.long()
            counts = torch.bincount(labels.cpu())
            others = size - counts
            self.register_buffer("labels", labels, persistent=False)
            self.register_buffer("order", torch.argsort(labels.cpu(), stable=True).to(labels.device), persistent=False)
            self.register_buffer("start", (torch.cumsum(counts, 0) - counts).to(labels.device), persistent=False)
            self.register_buffer("count", counts.to(labels.device), persistent=False)
            self.register_buffer("short", (others < k).to(labels.device), persistent=False)
            self.any_short = bool((others[counts > 0] < k).any())

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """batch x (1 + k) bank rows: the example itself, then its k negatives."""
        negatives = self.other_classes(index) if self.by_class else self.uniform(index)
        return torch.cat([index[:, None], negatives], dim=1)

    def uniform(self, index: torch.Tensor) -> torch.Tensor:
        draws = torch.randint(0, len(self.student_bank) - 1, (len(index), self.k), device=index.device)
        return draws + (draws >= index[:, None]).long()  # skip the positive

    def other_classes(self, index: torch.Tensor) -> torch.Tensor:
        """k distinct examples of other classes per row: the k smallest of uniform keys, the own class's
        keys set above every other (one top-k on the device, no loop over classes)."""
        y = self.labels[index]
        keys = torch.rand(len(index), len(self.labels), device=index.device)
        keys.masked_fill_(self.labels[None, :] == y[:, None], 2.0)
        negatives = keys.topk(self.k, dim=1, largest=False, sorted=False).indices
        if self.any_short:  # classes with fewer than k others: k draws from them with replacement
            count, start = self.count[y][:, None], self.start[y][:, None]
            others = len(self.labels) - count
            r = (torch.rand(len(index), self.k, device=index.device) * others).long().clamp_max(others - 1)
            drawn = self.order[r + (r >= start).long() * count]  # the r-th example outside the class
            negatives = torch.where(self.short[y][:, None], drawn, negatives)
        return negatives

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.sample(index) if rows is None else rows
        n = len(self.student_bank)
        # student anchors against teacher memories, and the other way round
        e_s = torch.exp(torch.bmm(self.teacher_bank[rows], v_s[:, :, None]).squeeze(2) / self.temperature)
        e_t = torch.exp(torch.bmm(self.student_bank[rows], v_t[:, :, None]).squeeze(2) / self.temperature)
        if not self._z_checked:
            if self.z[0] < 0:
                world = distributed.world_size()  # several processes: the mean over all their first batches
                z = torch.stack([e_s.detach().mean() * n, e_t.detach().mean() * n])
                self.z.copy_(distributed.sum_over_processes(z) / world)
                log.info("crd: NCE normalisation constants Z set to %.1f (student anchors), %.1f (teacher anchors).",
                         *self.z.tolist())
            self._z_checked = True
        everyone = distributed.gather_rows(index)
        self.update(self.student_bank, distributed.gather_rows(v_s.detach()), everyone)
        self.update(self.teacher_bank, distributed.gather_rows(v_t.detach()), everyone)
        return e_s / self.z[0], e_t / self.z[1]

    @torch.no_grad()
    def update(self, bank: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> None:
        mixed = bank[index] * self.momentum + v.detach() * (1 - self.momentum)
        bank.index_copy_(0, index, F.normalize(mixed, dim=1))


class Negatives(Choice):
    other_classes = "other_classes"
    uniform = "uniform"


@dataclass
class CRDConfig(WithFeatures):
    name: str = "crd"
    beta: float = 0.8
    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5
    negatives: Negatives = Negatives.other_classes


@METHODS.register("crd")
class ContrastiveRepresentation(WeightedDistiller):
    own_terms = ("crd",)
    Config = CRDConfig

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require(int(cfg.feat_dim) >= 1, f"method.feat_dim must be at least 1, got {cfg.feat_dim}.")
        require(int(cfg.nce_k) >= 1, f"method.nce_k (negatives per example) must be at least 1, got {cfg.nce_k}.")
        require(float(cfg.nce_t) > 0, f"method.nce_t (NCE temperature) must be positive, got {cfg.nce_t}.")
        require(0 <= float(cfg.nce_m) < 1, f"method.nce_m (memory momentum) must lie in [0, 1), got {cfg.nce_m}.")
        require(cfg.negatives in NEGATIVES, f"method.negatives={cfg.negatives}: expected one of "
                                            f"{', '.join(NEGATIVES)}.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        n, k = int(info.train_size), int(cfg.nce_k)
        require(k < n, f"crd draws method.nce_k={k} negatives per example from the other examples of the "
                       f"training split, which has only {n}: the memory bank holds one entry per training "
                       f"example. Set method.nce_k to at most {max(n - 1, 1)} (RepDistiller uses 16384 of "
                       f"CIFAR-100's 50000), or train on more data.")
        self.s_path, self.t_path = self.single_path("student"), self.single_path("teacher")
        s_shape = feature_shapes(student, [self.s_path], self.sample_input(), "student")[self.s_path]
        t_shape = feature_shapes(teacher, [self.t_path], self.sample_input(), "teacher")[self.t_path]
        dim = int(cfg.feat_dim)
        self.embed_s = nn.Linear(math.prod(s_shape), dim)
        self.embed_t = nn.Linear(math.prod(t_shape), dim)
        labels = None
        if cfg.negatives == "other_classes":
            labels = info.train_labels
            require(labels is not None and len(labels) == n, "crd: method.negatives=other_classes needs the "
                    "training split's labels, and none came with the data; use method.negatives=uniform.")
            require(int(torch.unique(labels).numel()) > 1, "crd: method.negatives=other_classes draws negatives "
                    "from the other classes, and the training split has one class. Use method.negatives=uniform.")
        self.memory = ContrastMemory(dim, n, k, float(cfg.nce_t), float(cfg.nce_m), labels)
        self.watch([self.s_path], [self.t_path])

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "crd" in needed:
            if batch.index is None:
                raise ValueError("crd needs the batch's positions in the training split (forward_train's index)")
            v_s = F.normalize(self.embed_s(flat(batch.s_feats[self.s_path])), dim=1)
            v_t = F.normalize(self.embed_t(flat(batch.t_feats[self.t_path])), dim=1)
            p_s, p_t = self.memory(v_s, v_t, batch.index)
            n = len(self.memory.student_bank)
            out["crd"] = nce_loss(p_s, n) + nce_loss(p_t, n)
        return out
