"""CIFAR ResNets (He et al. 2016): three stages of 16/32/64 channels, 6n+2 layers.

Shortcuts that change shape are 1x1 conv + BN projections (option B), so every
channel space is a real tensor dimension that surgery can shrink.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pfa_lightning.validation import fail


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-{20, 32, 44, 56, 110} for 32x32 images (any size works: global average pooling)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        from pfa_lightning.models import scaled

        if (depth - 2) % 6:
            raise fail("depth", "6n+2 for a CIFAR ResNet (20, 32, 44, 56, 110)", depth)
        n = (depth - 2) // 6
        planes = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        blocks: list[nn.Module] = []
        in_planes = planes[0]
        for stage, p in enumerate(planes):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, p, stride=2 if stage > 0 and i == 0 else 1))
                in_planes = p
        self.layer1 = nn.Sequential(*blocks[:n])
        self.layer2 = nn.Sequential(*blocks[n : 2 * n])
        self.layer3 = nn.Sequential(*blocks[2 * n :])
        self.fc = nn.Linear(planes[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
