"""Tiny user-style LightningModules and data for the PFACallback tests (imported by subprocess scripts too)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 4


def make_dataset(n: int = 96, seed: int = 0) -> TensorDataset:
    """3x8x8 images whose class is the brightest of four image quadrants: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    quadrant = [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)), (slice(4, 8), slice(0, 4)),
                (slice(4, 8), slice(4, 8))]
    for i in range(n):
        rows, cols = quadrant[int(y[i])]
        x[i, :, rows, cols] += 1.5
    return TensorDataset(x, y)


def loaders(n: int = 96, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(make_dataset(n, seed=0), batch_size=batch_size, shuffle=True)
    val = DataLoader(make_dataset(64, seed=1), batch_size=batch_size)
    return train, val


class _Classifier(pl.LightningModule):
    """Cross-entropy training, accuracy validation, SGD or Adam with an optional StepLR."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.05, scheduler: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.epoch_losses: list[float] = []
        self._batch_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self._batch_losses.append(loss.item())
        self.log("train_loss", loss)
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(sum(self._batch_losses) / max(len(self._batch_losses), 1))
        self._batch_losses = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        if not self.hparams.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.8)}


class ResidualNet(_Classifier):
    """The layers live on the module itself: stem -> residual block (conv1, conv2 + identity) -> MLP head."""

    def __init__(self, width: int = 12, optimizer: str = "sgd", lr: float = 0.05, scheduler: bool = False) -> None:
        super().__init__(optimizer, lr, scheduler)
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc1 = nn.Linear(width * 4, 16)
        self.fc2 = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = F.adaptive_max_pool2d(x, 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class WrappedNet(_Classifier):
    """The network is an attribute of the module."""

    def __init__(self, width: int = 12, optimizer: str = "sgd", lr: float = 0.05, scheduler: bool = False) -> None:
        super().__init__(optimizer, lr, scheduler)
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, NUM_CLASSES),
        )

    def forward(self, x):
        return self.net(x)


class LinearOnly(_Classifier):
    """Nothing PFA can compress: the only layer is the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, NUM_CLASSES)

    def forward(self, x):
        return self.fc(x.flatten(1))


class NoForward(_Classifier):
    """A module that runs its network in training_step only."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, NUM_CLASSES))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        pass


class TiedLM(pl.LightningModule):
    """A tiny language model whose output layer reuses the embedding's weight (weight tying)."""

    def __init__(self, vocab: int = 40, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.emb = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())
        self.dec = nn.Linear(dim, vocab)
        self.dec.weight = self.emb.weight

    def forward(self, tokens):
        return self.dec(self.body(self.emb(tokens)))

    def training_step(self, batch, batch_idx):
        tokens, targets = batch
        return F.cross_entropy(self(tokens).flatten(0, 1), targets.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def token_loader(n: int = 128, length: int = 6, vocab: int = 40) -> DataLoader:
    """Sequences whose next token is the current one plus one (mod vocab): learnable."""
    tokens = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(tokens, (tokens + 1) % vocab), batch_size=32)


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer without progress bars or summaries; checkpoints only if asked."""
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)
