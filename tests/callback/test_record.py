"""The typed compression record: a round trip through plain data, and one clear error for a foreign history."""

from __future__ import annotations

import pytest
import torch

import pfa_lightning as pfa
from pfa_lightning.callback import Compression


def _recipe() -> pfa.Recipe:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(32, 4)
    return pfa.make_recipe(net, pfa.collect_responses(net, [x], progress=False), pfa.Energy(0.9), example_inputs=x[:2])


def test_a_record_round_trips_through_plain_data_with_weights_only(tmp_path):
    record = Compression(3, 120, _recipe(), 100, 60, 1000, 500, 0.9, 0.2, 0.7, True, "validation")
    data = record.to_dict()
    torch.save(data, tmp_path / "record.pt")
    again = Compression.from_dict(torch.load(tmp_path / "record.pt", weights_only=True))
    assert again.to_dict() == data and again.recipe.widths == record.recipe.widths
    assert again.footprint("params", "after") == 60 and again.accuracy("cut") == 0.2
    assert "recipe" not in again.measures() and again.measures()["flops_before"] == 1000


def test_a_foreign_history_entry_is_one_clear_error():
    with pytest.raises(pfa.PFAError, match=r"A PFA compression record lacks \['flops_after', 'flops_before'.*not "
                                           r"PFACallback's"):
        Compression.from_dict({"epoch": 1, "global_step": 2, "recipe": _recipe().to_dict(), "params_before": 1,
                               "params_after": 1})
