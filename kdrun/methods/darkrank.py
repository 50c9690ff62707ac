"""`darkrank`: cross-sample similarity transfer, Chen, Wang & Zhang, AAAI 2018 ("DarkRank").

Each example of the batch is a query in turn; the other examples are its candidates, scored by each model
on its own embedding (the classifier's input, as RKD) with the paper's score function

    S(q, x) = -darkrank_alpha * ||f_q - f_x||_2 ^ darkrank_beta        (on L2-normalised f, `normalize`).

A list pi = (pi_1, ..., pi_n) of candidates has the Plackett-Luce (ListMLE / ListNet) probability

    P(pi | S) = prod_{k=1..n} exp(S_{pi_k}) / sum_{l=k..n} exp(S_{pi_l}).

The candidate list of a query is the teacher's `list_length` nearest other examples (null: all of them),
and a permutation's probability is taken over that list only (the denominators run over the list, as in
the authors' ListNet operator and RKD's HardDarkRank). With pi_t that list in the teacher's order:

- `transfer: hard`: -log P(pi_t | S_student), the likelihood of the teacher's top permutation;
- `transfer: soft`: KL(P(. | S_teacher) || P(. | S_student)) summed over all list_length! permutations of
  the list (feasible for short lists only: list_length is at most 8, 40320 permutations).

Both are averaged over the queries. The teacher is fixed: only the student's scores carry gradients.

Against the authors' MXNet code (TuSimple/DarkRank): every example is a query (their operators take the
first half of each batch, which their paired re-id sampler fills with same-identity pairs; a classification
batch has no such half); the soft term is the KL (theirs is the cross-entropy -sum P_t log P_s, which
differs by the teacher's entropy, a constant: the same gradients); the score is written with the paper's
alpha and beta (their script scales the squared distance and raises it to a power instead).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.errors import require
from kdrun.methods.config import WithFeatures
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller, flat, zero_like_graph
from kdrun.schema.choice import Choice

MAX_SOFT_LIST = 8  # 8! = 40320 permutations per query


def darkrank_scores(e: torch.Tensor, alpha: float, beta: float, normalize: bool = True) -> torch.Tensor:
    """b x b scores S[q, x] = -alpha * ||e_q - e_x||^beta (the diagonal is never a candidate)."""
    e = flat(e)
    if normalize:
        e = F.normalize(e, p=2, dim=1)
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    return -alpha * d.pow(beta)


def candidate_lists(t_scores: torch.Tensor, list_length: Optional[int]) -> torch.Tensor:
    """b x n: each query's candidates (the other examples) in the teacher's order, best first, cut to the
    teacher's `list_length` nearest (None: all b - 1)."""
    b = t_scores.shape[0]
    n = b - 1 if list_length is None else min(int(list_length), b - 1)
    masked = t_scores.detach().masked_fill(torch.eye(b, dtype=torch.bool, device=t_scores.device), float("-inf"))
    return masked.topk(n, dim=1, largest=True, sorted=True).indices


def plackett_luce_log_prob(s: torch.Tensor) -> torch.Tensor:
    """log P(the order of the last axis | scores s): sum_k s_k - logsumexp(s_k, ..., s_n)."""
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    return (s - tail).sum(-1)


def hard_per_query(s_scores: torch.Tensor, t_scores: torch.Tensor, list_length: Optional[int]) -> torch.Tensor:
    """b: each query's -log P(pi_teacher | S_student)."""
    order = candidate_lists(t_scores, list_length)
    return -plackett_luce_log_prob(s_scores.gather(1, order))


def soft_per_query(s_scores: torch.Tensor, t_scores: torch.Tensor, list_length: int) -> torch.Tensor:
    """b: each query's KL(P(. | S_teacher) || P(. | S_student)) over the permutations of its list."""
    order = candidate_lists(t_scores, list_length)
    n = order.shape[1]
    perms = torch.tensor(list(itertools.permutations(range(n))), device=order.device)  # n! x n
    log_s = plackett_luce_log_prob(s_scores.gather(1, order)[:, perms])  # b x n!
    log_t = plackett_luce_log_prob(t_scores.detach().gather(1, order)[:, perms])
    return (log_t.exp() * (log_t - log_s)).sum(1)


def darkrank_hard(s_scores: torch.Tensor, t_scores: torch.Tensor, list_length: Optional[int]) -> torch.Tensor:
    """The hard transfer from b x b score matrices, averaged over the queries."""
    if len(s_scores) < 2:
        return zero_like_graph(s_scores)
    return hard_per_query(s_scores, t_scores, list_length).mean()


def darkrank_soft(s_scores: torch.Tensor, t_scores: torch.Tensor, list_length: int) -> torch.Tensor:
    """The soft transfer from b x b score matrices, averaged over the queries."""
    if len(s_scores) < 2:
        return zero_like_graph(s_scores)
    return soft_per_query(s_scores, t_scores, list_length).mean()


def darkrank_loss(f_s: torch.Tensor, f_t: torch.Tensor, transfer: str = "soft", list_length: Optional[int] = 4,
                  alpha: float = 3.0, beta: float = 3.0, normalize: bool = True) -> torch.Tensor:
    s = darkrank_scores(f_s, alpha, beta, normalize)
    t = darkrank_scores(f_t.detach(), alpha, beta, normalize)
    if str(transfer) == "hard":
        return darkrank_hard(s, t, list_length)
    return darkrank_soft(s, t, list_length)


class Transfer(Choice):
    soft = "soft"
    hard = "hard"


@dataclass
class DarkRankConfig(WithFeatures):
    name: str = "darkrank"
    transfer: Transfer = Transfer.soft
    list_length: Optional[int] = 4
    darkrank_alpha: float = 3.0
    darkrank_beta: float = 3.0
    normalize: bool = True


@METHODS.register("darkrank")
class DarkRank(WeightedDistiller):
    own_terms = ("darkrank",)
    Config = DarkRankConfig

    @classmethod
    def validate(cls, cfg):
        super().validate(cfg)
        require(str(cfg.transfer) in Transfer.names(),
                f"method.transfer={cfg.transfer}: expected one of {', '.join(Transfer.names())}.")
        for key in ("darkrank_alpha", "darkrank_beta"):
            require(float(cfg[key]) > 0, f"method.{key} must be positive (the score is -darkrank_alpha * "
                                         f"distance^darkrank_beta), got {cfg[key]}.")
        n = cfg.list_length
        if n is None:
            require(str(cfg.transfer) == "hard", "method.list_length=null (every other example of the batch) "
                    "works with method.transfer=hard only: the soft transfer sums over all list_length! "
                    f"permutations. Set method.list_length to 2..{MAX_SOFT_LIST} (the authors used 4).")
        else:
            require(int(n) >= 2, f"method.list_length must be at least 2 (a list of one has one order), got {n}.")
            require(str(cfg.transfer) == "hard" or int(n) <= MAX_SOFT_LIST,
                    f"method.list_length={n} is too long for the soft transfer, which sums over all "
                    f"list_length! permutations: use at most {MAX_SOFT_LIST}, or method.transfer=hard.")

    def __init__(self, student, teacher, cfg, info):
        super().__init__(student, teacher, cfg, info)
        self.transfer = str(cfg.transfer)
        self.list_length = None if cfg.list_length is None else int(cfg.list_length)
        self.score_alpha, self.score_beta = float(cfg.darkrank_alpha), float(cfg.darkrank_beta)
        self.normalize = bool(cfg.normalize)
        self.s_path, self.t_path = self.single_path("student"), self.single_path("teacher")
        self.watch([self.s_path], [self.t_path])

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if "darkrank" in needed:
            out["darkrank"] = darkrank_loss(batch.s_feats[self.s_path], batch.t_feats[self.t_path], self.transfer,
                                            self.list_length, self.score_alpha, self.score_beta, self.normalize)
        return out
