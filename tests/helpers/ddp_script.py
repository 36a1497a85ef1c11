"""Two-process CPU DDP fit with a PFA compression; every rank saves what it ended with.

Run as ``python tests/helpers/ddp_script.py OUT_DIR [skew]`` (Lightning's DDP launcher re-runs this
command for rank 1, so it must not run under pytest). Writes ``OUT_DIR/rank{r}.pt``. With
``skew``, rank 1 replaces its summed statistics by uncorrelated ones, so the ranks decide
differently and the fit must fail with a clear error. With ``nan``, rank 1 analyses inputs holding
NaN (its responses are non-finite), and both ranks must fail with that rank's error. With ``start``, the
compression happens at the start of the fit (``compress_at=0``), after Lightning has wrapped the module.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from pfa_lightning import PFACallback  # noqa: E402
from tests.helpers.callback_models import ResidualNet, loaders, quiet_trainer  # noqa: E402


class SkewedRank1(PFACallback):
    def on_statistics(self, trainer, pl_module, stats) -> None:
        if trainer.global_rank == 1:
            for layer in stats.values():  # identity covariance: a flat spectrum, every unit kept
                layer.sum.zero_()
                layer.outer.copy_(torch.eye(layer.units, dtype=layer.outer.dtype) * layer.count)


def main(out_dir: str, skew: bool, nan: bool = False, start: bool = False) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module = ResidualNet()
    extra = {}
    if nan:  # Lightning's launcher starts rank 1 with LOCAL_RANK=1
        inputs = next(iter(loaders()[0]))[0]
        if os.environ.get("LOCAL_RANK") == "1":
            inputs = torch.full_like(inputs, float("nan"))
        extra["dataloader"] = [inputs, inputs.clone()]  # one batch for each rank's shard
    pfa = (SkewedRank1 if skew else PFACallback)(compress_at=[0 if start else 1], max_samples=64, optimizer_state="transplant",
                                                 verbose=False, **extra)
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=3, callbacks=[pfa])
    trainer.fit(module, *loaders())
    torch.save({
        "rank": trainer.global_rank,
        "history": [entry.to_dict() for entry in pfa.history],
        "widths": {name: tuple(p.shape) for name, p in module.named_parameters()},
        "params": {name: p.detach().clone() for name, p in module.named_parameters()},
    }, os.path.join(out_dir, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    mode = sys.argv[2:]
    main(sys.argv[1], skew=mode == ["skew"], nan=mode == ["nan"], start=mode == ["start"])
