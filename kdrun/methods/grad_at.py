"""`grad_at`: gradient-based attention transfer, Zagoruyko & Komodakis 2017 ("Paying More Attention to
Attention", ICLR), Section 3.2.

The attention of a network is the gradient of its loss with respect to the input, J = dL/dx (L the
cross-entropy of the example's label). The student learns to have the teacher's:

    loss = ce_weight * CE + alpha * KD + beta / 2 * mean over examples of ||J_S(x) - J_T(x)||_2,

J of each example from its own cross-entropy (the batch's summed, so it does not depend on the batch
size), the L2 norm over the whole input. The student's J keeps its graph (`create_graph`: a double
backward trains the student through its own input gradient); the teacher's is computed without one.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.methods.config import WithKD
from kdrun.methods.registry import METHODS
from kdrun.methods.weighted import WeightedDistiller


def input_gradient(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """dCE_i/dx_i of every example i (the gradient of the summed cross-entropy, per example)."""
    loss = F.cross_entropy(at_least_fp32(logits), y, reduction="sum")
    return torch.autograd.grad(loss, x, create_graph=create_graph)[0]


def grad_at_loss(j_s: torch.Tensor, j_t: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||J_S - J_T||_2, each example's gradients flattened."""
    return (at_least_fp32(j_s) - at_least_fp32(j_t)).flatten(1).norm(dim=1).mean()


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class GradATConfig(WithKD):
    name: str = "grad_at"
    ce_weight: Optional[float] = 1.0
    beta: float = 1.0  # the paper's beta (the term is beta / 2 times the distance); kdrun's default


class InputGradientDistiller(WeightedDistiller):
    """A method whose term (`term`) is `distance(J_S, J_T)` between the student's and the teacher's input
    gradients, each `gradient(logits, y, x, create_graph)`: the student's with its graph (a double backward),
    the teacher's without."""
    input_gradients = True
    term: str

    def teacher_forward(self, x):
        """The teacher's logits, and (kept for `terms`) a graph from a copy of the input to them, through
        the frozen teacher: what its input gradient needs. The logits returned carry no graph (KD's)."""
        x_t = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.teacher(x_t)
        self._teacher_graph = (x_t, logits)
        return logits.detach(), {}

    def terms(self, needed, batch):
        out = super().terms(needed, batch)
        if self.term in needed:
            x_t, t_logits = self._teacher_graph
            j_t = self.gradient(t_logits, batch.y, x_t, create_graph=False)
            j_s = self.gradient(batch.s_logits, batch.y, batch.x, create_graph=True)
            out[self.term] = self.distance(j_s, j_t)
        self._teacher_graph = None
        return out


@METHODS.register("grad_at")
class GradientAttentionTransfer(InputGradientDistiller):
    Config = GradATConfig
    term = "grad_at"
    gradient = staticmethod(input_gradient)
    distance = staticmethod(grad_at_loss)

    def weights(self, epoch, phase="main"):
        weights = super().weights(epoch, phase)
        if phase == "main":
            weights["grad_at"] = self.beta / 2
        return weights
