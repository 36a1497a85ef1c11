"""CIFAR-style VGG with BatchNorm (as in Li et al. 2017 and the PFA paper)."""

from __future__ import annotations

from torch import Tensor, nn

from pfa_lightning.validation import fail

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG for small images: 3x3 conv -> BN -> ReLU blocks, 5 max-pools, then FC(512) -> BN -> ReLU -> FC.

    VGG-16 with 10 classes has about 15M parameters. ``input_size`` must be divisible by 32.
    """

    def __init__(self, name: str = "vgg16", num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0, input_size: int = 32) -> None:
        super().__init__()
        from pfa_lightning.models import scaled

        if input_size % 32:
            raise fail("input_size", "a multiple of 32 for VGG", input_size)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG_CONFIGS[name]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = scaled(int(item), width)
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        spatial = (input_size // 32) ** 2
        hidden = scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * spatial, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
