"""A tiny convolutional network with feature points, for the feature methods' tests."""
import torch.nn as nn


class TinyConv(nn.Module):
    """A stem, two stages (8x8, then 4x4; post-ReLU outputs and pre-activations) and a classifier: enough for
    every feature method."""

    def __init__(self, widths=(4, 6), num_classes=3):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1),
                                    nn.BatchNorm2d(widths[1]), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer2(self.layer1(self.stem(x)))).flatten(1))

    def feature_points(self):
        return {"stages": ["layer1", "layer2"], "preact": ["layer1.2:in", "layer2.2:in"], "embedding": ["fc:in"]}
