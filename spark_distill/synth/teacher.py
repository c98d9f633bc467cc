# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Stand-in teachers: seeded convolutional networks with exactly openpilot's split-model I/O contract.

Main entry point: `write_teacher(out, size="tiny"|"bench", contract="v1"|"v2")`, which writes
`driving_vision.onnx`, `driving_policy.onnx`, openpilot-format `*_metadata.pkl` and the
`output_slices` metadata property inside each ONNX (as openpilot's get_model_metadata.py reads it).

Inputs: vision `img`, `big_img` uint8 [1, 12, 128, 256]; policy v1 `desire` [1, 25, 8],
`traffic_convention` [1, 2], `lateral_control_params` [1, 2], `prev_desired_curv` [1, 25, 1],
`features_buffer` [1, 25, 512]; v2 `desire_pulse`, `traffic_convention`, `features_buffer`.
Outputs: one flat float32 vector `outputs` [1, N] each.

Sizes: `tiny` for tests (a few MFLOPs per frame); `bench` is sized like the real vision model:
two conv trunks totalling ~1.8 GFLOPs per frame, the figure of ANCHORS.md's vision-sized CNN (two
EfficientNet-B2 trunks on 12x128x256 inputs), itself the shape of openpilot's supercombo backbone.
"""

from __future__ import annotations

import base64
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spark_distill import contract as C
from spark_distill.errors import ConfigError

SIZES = ("tiny", "bench")
CONTRACTS = ("v1", "v2")


@dataclass(frozen=True)
class TeacherSize:
    """Trunk widths per stage and extra 3x3 convs per stage."""

    widths: tuple[int, ...]
    depth: int
    policy_width: int


def tiny() -> TeacherSize:
    return TeacherSize(widths=(8, 16, 32, 32), depth=0, policy_width=128)


def bench() -> TeacherSize:
    return TeacherSize(widths=(32, 64, 128, 192, 256), depth=1, policy_width=1024)  # 1.74 GFLOPs/frame


PRESETS = {"tiny": tiny, "bench": bench}


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


class Trunk(nn.Module):
    """A plain conv trunk: stride-2 stages, a 1x1 squeeze and a flatten that keeps the spatial layout."""

    def __init__(self, size: TeacherSize) -> None:
        super().__init__()
        layers, cin = [], 12
        for w in size.widths:
            layers.append(_conv(cin, w, 2))
            layers += [_conv(w, w, 1) for _ in range(size.depth)]
            cin = w
        self.stages = nn.Sequential(*layers)
        self.squeeze = nn.Conv2d(cin, 8, 1)
        h, w = 128 >> len(size.widths), 256 >> len(size.widths)
        self.out_features = 8 * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 12, 128, 256) uint8
        x = x.float() * (1.0 / 255.0) - 0.5  # openpilot feeds raw uint8; normalisation is in the graph
        return self.squeeze(self.stages(x)).flatten(1)


class StandInVision(nn.Module):
    def __init__(self, size: TeacherSize, slices: dict[str, slice]) -> None:
        super().__init__()
        self.road, self.wide = Trunk(size), Trunk(size)
        self.hidden = nn.Sequential(nn.Linear(2 * self.road.out_features, C.FEATURE_LEN), nn.ReLU())
        width = max(s.stop for s in slices.values()) - C.FEATURE_LEN
        self.heads = nn.Linear(C.FEATURE_LEN, width)

    def forward(self, img: torch.Tensor, big_img: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(torch.cat([self.road(img), self.wide(big_img)], dim=1))  # (B, 512)
        return torch.cat([self.heads(hidden), hidden], dim=1)  # hidden_state is the last slice


class StandInPolicy(nn.Module):
    """A temporal model over the 5 s feature history, plus desire, traffic (and v1's extra inputs)."""

    def __init__(self, size: TeacherSize, inputs: dict[str, tuple[int, ...]], width: int) -> None:
        super().__init__()
        self.names = list(inputs)
        self.temporal = nn.Sequential(nn.Linear(C.FEATURE_LEN, 64), nn.ReLU())
        extra = sum(int(np.prod(s[1:])) for n, s in inputs.items() if n != "features_buffer")
        self.mlp = nn.Sequential(nn.Linear(C.INPUT_HISTORY_BUFFER_LEN * 64 + extra, size.policy_width), nn.ReLU(),
                                 nn.Linear(size.policy_width, size.policy_width), nn.ReLU())
        self.out = nn.Linear(size.policy_width, width)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.names, args, strict=True))
        feats = self.temporal(x["features_buffer"]).flatten(1)  # (B, 25*64)
        rest = [x[n].flatten(1) for n in self.names if n != "features_buffer"]
        return self.out(self.mlp(torch.cat([feats, *rest], dim=1)))


def policy_inputs(contract: str) -> dict[str, tuple[int, ...]]:
    t = C.INPUT_HISTORY_BUFFER_LEN
    if contract == "v1":
        return {"desire": (1, t, C.DESIRE_LEN), "traffic_convention": (1, C.TRAFFIC_CONVENTION_LEN),
                "lateral_control_params": (1, C.LATERAL_CONTROL_PARAMS_LEN),
                "prev_desired_curv": (1, t, C.PREV_DESIRED_CURV_LEN), "features_buffer": (1, t, C.FEATURE_LEN)}
    return {"desire_pulse": (1, t, C.DESIRE_LEN), "traffic_convention": (1, C.TRAFFIC_CONVENTION_LEN),
            "features_buffer": (1, t, C.FEATURE_LEN)}


def _init(module: nn.Module, seed: int) -> None:
    """Seeded weights, with BatchNorm statistics that keep activations O(1) through the trunk."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.01
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.weight.data.fill_(0.7)
            m.bias.data.zero_()


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path, props: dict[str, str]) -> None:
    import onnx

    module.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(module, tuple(inputs.values()), buf, input_names=list(inputs), output_names=["outputs"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(path)


def write_teacher(out: Path, *, size: str = "tiny", contract: str = "v1", seed: int = 0) -> dict[str, Path]:
    """Write a stand-in teacher pair with metadata into `out`; returns the written paths."""
    if size not in PRESETS:
        raise ConfigError(f"unknown teacher size {size!r}; choose one of {', '.join(SIZES)}")
    if contract not in CONTRACTS:
        raise ConfigError(f"unknown contract {contract!r}; choose one of {', '.join(CONTRACTS)}")
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[size]()
    meta_width = 48 if contract == "v1" else 55
    vision_slices = C.layout(C.VISION_HEADS, meta_width=meta_width)
    policy_slices = C.layout(C.POLICY_HEADS_V1 if contract == "v1" else C.POLICY_HEADS_V2)
    vision = StandInVision(preset, vision_slices)
    pin = policy_inputs(contract)
    policy = StandInPolicy(preset, pin, max(s.stop for s in policy_slices.values()))
    _init(vision, seed)
    _init(policy, seed + 1)
    vin = {"img": torch.zeros(1, 12, 128, 256, dtype=torch.uint8),
           "big_img": torch.zeros(1, 12, 128, 256, dtype=torch.uint8)}
    paths = {}
    for name, module, inputs, slices in (
        ("driving_vision", vision, vin, vision_slices),
        ("driving_policy", policy, {k: torch.zeros(s) for k, s in pin.items()}, policy_slices),
    ):
        model_name = f"stand-in-{size}-{contract}-seed{seed}"
        props = {"output_slices": base64.b64encode(pickle.dumps(slices)).decode(),
                 ("vision_model" if name == "driving_vision" else "policy_model"): model_name}
        onnx_path = out / f"{name}.onnx"
        _export(module, inputs, onnx_path, props)
        width = max(s.stop for s in slices.values())
        metadata = {  # openpilot selfdrive/modeld/get_model_metadata.py
            ("vision_model" if name == "driving_vision" else "policy_model"): model_name,
            "output_slices": slices,
            "input_shapes": {k: tuple(v.shape) for k, v in inputs.items()},
            "output_shapes": {"outputs": (1, width)},
        }
        pkl = out / f"{name}_metadata.pkl"
        pkl.write_bytes(pickle.dumps(metadata))
        paths[name], paths[f"{name}_metadata"] = onnx_path, pkl
    return paths


def gflops_per_frame(size: str) -> float:
    """Multiply-adds x 2 of the vision pair for one frame (both cameras), counted from the conv/linear shapes."""
    preset = PRESETS[size]()
    total, h, w, cin = 0, 128, 256, 12
    for width in preset.widths:
        h, w = h // 2, w // 2
        total += h * w * width * cin * 9 + preset.depth * h * w * width * width * 9
        cin = width
    total += h * w * 8 * cin
    total = 2 * total + 2 * 8 * h * w * C.FEATURE_LEN  # two trunks, the hidden layer
    return 2 * total / 1e9
