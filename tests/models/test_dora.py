# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""DoRA and LoRA against PEFT (the oracle), merging, and the edge cases PEFT gets wrong."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spark_distill.models import dora as D
from spark_distill.models.lora import (
    LoRALayer,
    adapter_state_dict,
    apply_adapters,
    load_adapter_state,
    merge_adapters,
    trainable_fraction,
)

peft = pytest.importorskip("peft")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.conv(img)).flatten(1))))


def _pair(dora: bool, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Our adapted model and PEFT's, on the same base weights and the same (non-zero) adapter weights."""
    torch.manual_seed(seed)
    base = Net()
    ours = copy.deepcopy(base)
    apply_adapters(ours, targets=["conv", "fc", "head"], rank=4, alpha=8.0, dora=dora)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "fc", "head"], use_dora=dora, lora_dropout=0.0)
    theirs = peft.get_peft_model(copy.deepcopy(base), cfg)
    for name in ("conv", "fc", "head"):
        mine: LoRALayer = ours.get_submodule(name)
        peft_layer = theirs.base_model.model.get_submodule(name)
        with torch.no_grad():
            mine.lora_b.normal_(0, 0.3)  # non-zero B, so the adapter actually does something
            peft_layer.lora_A["default"].weight.copy_(mine.lora_a)
            peft_layer.lora_B["default"].weight.copy_(mine.lora_b)
            if dora:
                peft_mag = peft_layer.lora_magnitude_vector["default"].weight
                torch.testing.assert_close(peft_mag.flatten(), mine.magnitude, rtol=1e-6, atol=1e-7)
                mine.magnitude.mul_(torch.linspace(0.8, 1.2, len(mine.magnitude)))
                peft_mag.copy_(mine.magnitude.view(peft_mag.shape))
    return ours, theirs


@pytest.mark.parametrize("dora", [True, False])
def test_forward_and_gradients_match_peft(dora: bool) -> None:
    ours, theirs = _pair(dora)
    x = torch.randn(4, 3, 8, 8)
    w = torch.randn(4, 5)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-6)
    (y_ours * w).sum().backward()
    (y_theirs * w).sum().backward()
    for name in ("conv", "fc", "head"):
        mine = ours.get_submodule(name)
        peft_layer = theirs.base_model.model.get_submodule(name)
        pairs = [(mine.lora_a.grad, peft_layer.lora_A["default"].weight.grad),
                 (mine.lora_b.grad, peft_layer.lora_B["default"].weight.grad)]
        if dora:
            pairs.append((mine.magnitude.grad, peft_layer.lora_magnitude_vector["default"].weight.grad.flatten()))
        for got, want in pairs:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"{name} gradient")


def test_identity_at_start_and_only_adapters_train() -> None:
    torch.manual_seed(1)
    base = Net()
    model = copy.deepcopy(base)
    wrapped = apply_adapters(model, targets=["fc", "conv"], rank=4, alpha=8.0)
    assert wrapped == ["conv", "fc"]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), base(x), rtol=1e-6, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"conv.lora_a", "conv.lora_b", "conv.magnitude", "fc.lora_a", "fc.lora_b", "fc.magnitude"}
    n, total = trainable_fraction(model)
    print(f"trainable: {n} of {total} parameters ({100 * n / total:.2f}%)")
    assert n == 4 * 3 * 9 + 8 * 4 + 8 + 4 * 128 + 16 * 4 + 16


def test_magnitude_learns() -> None:
    torch.manual_seed(2)
    model = Net()
    apply_adapters(model, targets=["head"], rank=2, alpha=4.0)
    head: LoRALayer = model.head
    start = head.magnitude.detach().clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    x, target = torch.randn(16, 3, 8, 8), torch.randn(16, 5)
    losses = []
    for _ in range(60):
        loss = (model(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert (head.magnitude - start).abs().max() > 1e-3


@pytest.mark.parametrize("dora", [True, False])
def test_merge_replaces_wrappers_and_matches(dora: bool) -> None:
    ours, _ = _pair(dora, seed=3)
    x = torch.randn(3, 3, 8, 8)
    adapted = ours(x).detach()
    expected = {}
    for name in ("conv", "fc", "head"):
        layer: LoRALayer = ours.get_submodule(name)
        w = layer.base.weight.double().flatten(1)
        v = w + layer.scaling * layer.lora_b.double().flatten(1) @ layer.lora_a.double().flatten(1)
        if dora:
            v = v * (layer.magnitude.double() / v.norm(dim=1))[:, None]
        expected[name] = v.reshape(layer.base.weight.shape)
    merge_adapters(ours)
    assert not any(isinstance(m, LoRALayer) for m in ours.modules()), "no adapter left to apply twice"
    for name, want in expected.items():
        got = ours.get_submodule(name).weight.double()
        assert type(ours.get_submodule(name)) in (nn.Linear, nn.Conv2d)
        assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    torch.testing.assert_close(ours(x), adapted, rtol=1e-5, atol=1e-6)


def test_factored_norm_equals_the_direct_one() -> None:
    torch.manual_seed(4)
    w0, a, b = torch.randn(32, 3, 3, 3), torch.randn(4, 3, 3, 3), torch.randn(32, 4, 1, 1)
    direct = (w0.flatten(1) + 0.5 * b.flatten(1) @ a.flatten(1)).norm(dim=1)
    got = D.row_norm(w0=w0, lora_a=a, lora_b=b, scaling=0.5)
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)


def test_all_zero_rows_stay_finite() -> None:
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight[1] = 0.0
    model = nn.Sequential(layer)
    apply_adapters(model, targets=["0"], rank=2, alpha=2.0)
    x = torch.randn(5, 6)
    y = model(x)
    y.sum().backward()
    wrapped = model[0]
    assert torch.isfinite(y).all()
    for p in (wrapped.lora_a, wrapped.lora_b, wrapped.magnitude):
        assert torch.isfinite(p.grad).all()


def test_adapter_state_round_trip() -> None:
    a, _ = _pair(True, seed=5)
    b = Net()
    apply_adapters(b, targets=["conv", "fc", "head"], rank=4, alpha=8.0)
    b.load_state_dict(a.state_dict())
    state = adapter_state_dict(a)
    assert set(state) == {f"{m}.{k}" for m in ("conv", "fc", "head") for k in ("lora_a", "lora_b", "magnitude")}
    c = copy.deepcopy(b)
    load_adapter_state(c, state)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(c(x), a(x))
    from spark_distill.errors import ConfigError

    d = Net()
    apply_adapters(d, targets=["fc"], rank=2, alpha=4.0)
    with pytest.raises(ConfigError, match="does not fit this model"):
        load_adapter_state(d, state)


def test_norm_cache_follows_in_place_updates() -> None:
    torch.manual_seed(6)
    layer = LoRALayer(nn.Linear(8, 4), rank=2, alpha=2.0, dora=True)
    with torch.no_grad():
        layer.lora_b.normal_()
    first = layer._norm()
    assert layer._norm() is first, "unchanged weights: cached"
    opt = torch.optim.SGD([layer.lora_b], lr=0.5)
    layer(torch.randn(3, 8)).sum().backward()
    opt.step()
    updated = layer._norm()
    direct = D.row_norm(w0=layer.base.weight, lora_a=layer.lora_a, lora_b=layer.lora_b, scaling=layer.scaling)
    assert updated is not first and torch.equal(updated, direct)
