"""Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation").

Each sample's logits are z-scored before the temperature: (z - mean(z)) / (std(z) + eps), the std the
unbiased one over the classes (the authors' code: `logit.std(dim=-1)` with eps 1e-7), so the student
matches the teacher's logit *relations* rather than their range. The temperature then acts as a base
temperature shared by teacher and student.
"""
import torch

EPS = 1e-7


def standardize(logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each row (the last dimension) z-scored with its unbiased std; computed in at least fp32."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (std + eps)
