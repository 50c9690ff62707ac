"""`jacobian`: Jacobian matching, Srinivas & Fleuret 2018 ("Knowledge Transfer with Jacobian Matching", ICML).

The Jacobian of a network here is the gradient of the example's ground-truth class logit (before the
softmax) with respect to the input, J = dz_y/dx, one input-sized map per example (the paper matches the
gradient of one output rather than the full k x D Jacobian; which output and whether logit or softmax
follow AberHu/Knowledge-Distillation-Zoo's `kd_losses/sobolev.py`, the public implementation found: the
paper's own text could not be read here). Each example's J is divided by its L2 norm over the whole input;
the student learns the teacher's direction:

    loss = ce_weight * CE + alpha * KD + beta * mean over examples of ||J_S/||J_S||_2 - J_T/||J_T||_2||_2^2,

the squared distance of the paper's input-noise argument (in [0, 4]: 2 - 2 cos(J_S, J_T)). AberHu's
`F.mse_loss` also averages over the D input coordinates: its lambda 20 is beta = 20 / D here. J of each
example comes from the batch's summed logits (a student in train mode couples examples through its batch
norms, as in `grad_at`). The student's J keeps its graph (`create_graph`: a double backward); the teacher's
is computed without one, through the same teacher graph as `grad_at`'s.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.methods.config import WithKD
from kdrun.methods.grad_at import InputGradientDistiller, at_least_fp32
from kdrun.methods.registry import METHODS


def class_logit_gradient(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """dz_{i,y_i}/dx_i of every example i: the gradient of its ground-truth class logit (of the batch's sum)."""
    chosen = at_least_fp32(logits).gather(1, y.view(-1, 1)).sum()
    return torch.autograd.grad(chosen, x, create_graph=create_graph)[0]


def jacobian_loss(j_s: torch.Tensor, j_t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over the batch of ||J_S/||J_S|| - J_T/||J_T||||_2^2, each example's gradient flattened and
    divided by its L2 norm (at least `eps`: a zero gradient stays zero)."""
    s = F.normalize(at_least_fp32(j_s).flatten(1), p=2, dim=1, eps=eps)
    t = F.normalize(at_least_fp32(j_t).flatten(1), p=2, dim=1, eps=eps)
    return (s - t).pow(2).sum(dim=1).mean()


@dataclass
class JacobianConfig(WithKD):
    name: str = "jacobian"
    ce_weight: Optional[float] = 1.0
    beta: float = 1.0  # weight of the Jacobian term; kdrun's default, not a published value


@METHODS.register("jacobian")
class JacobianMatching(InputGradientDistiller):
    Config = JacobianConfig
    own_terms = ("jacobian",)
    term = "jacobian"
    gradient = staticmethod(class_logit_gradient)
    distance = staticmethod(jacobian_loss)
