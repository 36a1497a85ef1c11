"""A small CNN in the spirit of the paper's "SimpleCNN": four conv layers and two FC layers."""

from __future__ import annotations

from torch import Tensor, nn

from pfa_lightning.validation import fail


class SimpleCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool -> FC(256) -> FC(classes); flatten keeps the spatial map."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, input_size: int = 32) -> None:
        super().__init__()
        from pfa_lightning.models import scaled

        if input_size % 4:
            raise fail("input_size", "a multiple of 4 for SimpleCNN", input_size)
        c1, c2, hidden = scaled(32, width), scaled(64, width), scaled(256, width)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, c1), *block(c1, c1), nn.MaxPool2d(2),
            *block(c1, c2), *block(c2, c2), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * (input_size // 4) ** 2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
