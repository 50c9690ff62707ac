"""A 'model' that returns fixed logits, so a method's losses can be checked by hand."""
import torch


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits
