"""Architectures beyond VGG/ResNet: what is not supported is refused before any change with one
PFAError naming the layer, never an arithmetic crash inside Torch-Pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models import shufflenet_v2_x0_5

import pfa_lightning as pfa


class _InputBroadcastNet(torch.nn.Module):
    """Adds the input image, broadcast into a conv's channels by view -> expand -> reshape: an index map
    Torch-Pruning cannot follow (it divides by zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        image = x.view(n, 3, 1, h, w).expand(-1, -1, 3, -1, -1).reshape(n, 9, h, w)[:, :8]
        y = torch.relu(self.conv_a(x)) + image
        return self.fc(torch.relu(self.conv_b(y)).mean((2, 3)))


def test_what_torch_pruning_cannot_map_is_refused_with_one_clear_error_naming_a_layer():
    torch.manual_seed(0)
    model = _InputBroadcastNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 8, 8)
    with pytest.raises(pfa.PFAError, match=r"_InputBroadcastNet at an expand operation while following the channels of layer 'conv_a'.*ZeroDivisionError.*not changed"):
        pfa.collect_responses(model, [x], progress=False)
    with pytest.raises(pfa.PFAError, match="ZeroDivisionError"):  # the cause, for a bug report
        pfa.make_recipe(model, pfa.ResponseStats({}), pfa.Uniform(0.5), example_inputs=x[:2])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_channel_shuffle_is_fenced_the_layers_inside_each_branch_are_cut():
    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = pfa.graph.ModelGraph(model, x)
    assert graph.dg.fences == 16  # one channel shuffle per block
    cuttable = {s.root for s in graph.spaces if not s.reaches_output}
    # a branch's hidden channels never cross a shuffle; its output (concatenated, then shuffled) does
    assert "stage3.1.branch2.0" in cuttable and "stage3.1.branch2.5" in graph.fenced
    # the depthwise conv of a downsampling branch reads the shuffled stream: left whole
    assert "stage3.0.branch1.0" in graph.fenced and "stage3.0.branch1.0" not in cuttable


def test_a_cut_between_channel_shuffles_removes_exactly_the_cut_channels():
    """Cutting a ShuffleNet branch's hidden channels equals silencing them where the branch reads them last."""
    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    reference = copy.deepcopy(model)
    removed = [0, 5, 17]
    with torch.no_grad():
        reference.stage3[1].branch2[5].weight[:, removed] = 0
        expected = reference(x)
    pfa.graph.ModelGraph(model, x[:2]).prune({"stage3.1.branch2.0": removed})
    assert model.stage3[1].branch2[0].out_channels == 48 - len(removed)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


class _Shuffle1d(torch.nn.Module):
    """A channel shuffle on 3-D tensors (view -> transpose -> view of a 4-D tensor) before a grouped conv:
    Torch-Pruning maps it without an error, wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = torch.nn.Conv1d(3, 8, 3, padding=1)
        self.conv_b = torch.nn.Conv1d(8, 8, 1, groups=2)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv_a(x))
        n, c, length = y.shape
        y = y.view(n, 2, c // 2, length).transpose(1, 2).reshape(n, c, length)
        return self.fc(torch.relu(self.conv_b(y)).mean(2))


def test_a_shuffle_of_any_rank_is_fenced():
    model = _Shuffle1d().eval()
    graph = pfa.graph.ModelGraph(model, torch.randn(2, 3, 16))
    # conv_a's channels are shuffled; conv_b is a grouped conv reading them (its input and output may be
    # tied): both left whole, so nothing is cut wrongly
    assert graph.dg.fences == 1 and graph.fenced == ["conv_a", "conv_b"]
    assert not [s.root for s in graph.spaces if not s.reaches_output]


def _samples(n: int, size: int, channels: int = 3, seed: int = 0) -> list[torch.Tensor]:
    x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return [x[i:i + 64] for i in range(0, n, 64)]


class _GroupedNet(torch.nn.Module):
    """conv -> ReLU -> grouped conv (2 groups) -> ReLU -> conv -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.conv3(x).mean((2, 3)))


def test_a_grouped_convolution_is_cut_by_whole_positions_and_computes_the_same():
    torch.manual_seed(0)
    model = _GroupedNet().eval()
    with torch.no_grad():  # conv1's units 1 and 5 (position 1 of each of conv2's input groups) never fire
        model.conv1.weight[[1, 5]] = 0
        model.conv1.bias[[1, 5]] = -1
    data = _samples(256, 8)
    x = data[0][:4]
    reference = model(x)
    stats = pfa.collect_responses(model, data, layers=["conv1"], progress=False)
    recipe = pfa.make_recipe(model, stats, pfa.Uniform(0.75), example_inputs=x)
    assert recipe["conv1"].kept_indices == [0, 2, 3, 4, 6, 7]  # the dead position goes, in both groups
    pfa.apply_recipe(model, recipe, example_inputs=x)
    assert model.conv2.groups == 2 and model.conv2.in_channels == 6
    torch.testing.assert_close(model(x), reference)  # the kept inputs still meet their own group's filters


def test_grouped_convolution_widths_stay_legal_under_a_footprint_target():
    model = _GroupedNet().eval()
    data = _samples(256, 8)
    recipe = pfa.make_recipe(model, pfa.collect_responses(model, data, progress=False), pfa.Footprint(0.5),
                             example_inputs=data[0][:2])
    for name in ("conv1", "conv2"):  # conv2's outputs, too, are in 2 groups of 4 consecutive channels
        kept = recipe[name].kept_indices
        assert len(kept) % 2 == 0 and [k - 4 for k in kept[len(kept) // 2:]] == kept[:len(kept) // 2]
    pfa.apply_recipe(model, recipe, example_inputs=data[0][:2])
    assert model(data[0][:2]).shape == (2, 4)


def test_groupnorm_keeps_its_group_count_and_its_channels_in_their_groups():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    data = _samples(256, 8)
    full = pfa.count_params(model)
    stats = pfa.collect_responses(model, data, progress=False)
    assert stats["0"].response == "0 -> 1 -> ReLU"  # read after the GroupNorm and the activation
    recipe = pfa.make_recipe(model, stats, pfa.Footprint(0.4), example_inputs=data[0][:2])
    for name in ("0", "3"):
        kept = recipe[name].kept_indices
        per_group = len(kept) // 4
        assert len(kept) % 4 == 0 and len(kept) < 16
        assert [[k % 4 for k in kept[g * per_group:(g + 1) * per_group]] for g in range(4)] == [
            [k % 4 for k in kept[:per_group]]] * 4
    pfa.apply_recipe(model, recipe, example_inputs=data[0][:2])
    assert model[1].num_groups == 4 and model[1].num_channels == recipe["0"].kept
    assert pfa.count_params(model) <= 0.4 * full
    assert model(data[0][:2]).shape == (2, 4)


@pytest.mark.parametrize("strategy", [pfa.KL(), pfa.Footprint(0.3, metric="params"), pfa.Footprint(0.4, metric="flops")])
def test_round_to_makes_every_kept_width_a_multiple_and_targets_still_hold(strategy):
    from pfa_lightning.models import build

    model = build("vgg11", num_classes=4, width=0.25).eval()  # widths 16..128, not all multiples of 24
    data = _samples(160, 32)
    stats = pfa.collect_responses(model, data, progress=False)
    full = {"params": pfa.count_params(model), "flops": pfa.count_flops(model, data[0][:1])}
    recipe = pfa.make_recipe(model, stats, strategy, example_inputs=data[0][:2], round_to=24)
    assert all(layer.kept % 24 == 0 or layer.kept == layer.original for layer in recipe)
    assert any(layer.kept < layer.original for layer in recipe)
    pfa.apply_recipe(model, recipe, example_inputs=data[0][:2])
    if isinstance(strategy, pfa.Footprint):
        now = pfa.count_params(model) if strategy.metric == "params" else pfa.count_flops(model, data[0][:1])
        assert now <= strategy.ratio * full[strategy.metric]


def test_a_bad_round_to_is_refused_by_name():
    model = _GroupedNet().eval()
    data = _samples(128, 8)
    stats = pfa.collect_responses(model, data, progress=False)
    with pytest.raises(pfa.PFAError, match="round_to.*integer >= 1.*0"):
        pfa.make_recipe(model, stats, pfa.KL(), example_inputs=data[0][:2], round_to=0)
