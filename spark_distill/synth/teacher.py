# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Stand-in teachers: seeded convolutional networks with exactly openpilot's split-model I/O contract.

Main entry point: `write_teacher(out, size="tiny"|"bench")`, which writes `driving_vision.onnx`,
`driving_policy.onnx`, openpilot-format `*_metadata.pkl` and the `output_slices` metadata property inside each ONNX
(as openpilot's get_model_metadata.py reads it), in the project's own layout "v1" (the one the shipped fitted teacher
has, recognised as openpilot 0.10.0's `split-lateral`: its inputs, the project's slices without padding). A
release's exact layout is `synth/releases.py` (`synth-teacher --release`); the former "v2" (0.10.1's inputs with
mixture heads and no pad) was a layout no release shipped and is gone: 0.10.1 .. 0.10.3's is `--release 0.10.3`.

Inputs: vision `img`, `big_img` uint8 [1, 12, 128, 256]; policy `desire` [1, 25, 8], `traffic_convention` [1, 2],
`lateral_control_params` [1, 2], `prev_desired_curv` [1, 25, 1], `features_buffer` [1, 25, 512].
Outputs: one flat float32 vector `outputs` [1, N] each.

Sizes: `tiny` for tests (a plain conv trunk, ~0.05 GFLOPs per frame); `bench` is built like the real
vision model: two EfficientNet-B2-shaped trunks (MBConv blocks: 1x1 expand, 3x3 depthwise, 1x1
project; B2's widths and depths, no squeeze-excitation) on the 12x128x256 inputs, 1.68 GFLOPs per
frame. Source of the estimate: a vision-sized CNN measured on an H100 before this project (two
EfficientNet-B2 trunks on the same inputs, 1.81 GFLOPs/frame; benchmarks/label.md), the shape of openpilot's
supercombo backbone (an EfficientNet). Depthwise blocks
matter: per FLOP they run several times slower on GPUs than plain 3x3 convolutions, so a plain
trunk of the same FLOPs would flatter every throughput figure.
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

from spark_distill.errors import ConfigError
from spark_distill.openpilot import contract as C

SIZES = ("tiny", "bench")
CONTRACTS = ("v1",)  # the project's own layout; every other is a release's (synth/releases.py)
V2_GONE = ("--contract v2 was a layout no openpilot release shipped and is gone; --release 0.10.3 writes the "
           "layout of 0.10.1 .. 0.10.3 (desire_pulse, no lateral inputs)")


@dataclass(frozen=True)
class TeacherSize:
    """Trunk stages (channels, repeats, stride, expansion) and the policy MLP width."""

    stages: tuple[tuple[int, int, int, int], ...]
    stem: int
    mbconv: bool  # EfficientNet blocks, else plain 3x3 convs
    policy_width: int


def tiny() -> TeacherSize:
    return TeacherSize(stages=((8, 1, 2, 1), (16, 1, 2, 1), (32, 1, 2, 1), (32, 1, 2, 1)), stem=0, mbconv=False,
                       policy_width=128)


def bench() -> TeacherSize:
    # EfficientNet-B2 (width 1.1, depth 1.2): stem 32, then (channels, repeats, stride, expansion)
    return TeacherSize(stages=((16, 2, 1, 1), (24, 3, 2, 6), (48, 3, 2, 6), (88, 4, 2, 6), (120, 4, 1, 6),
                               (208, 5, 2, 6), (352, 2, 1, 6)), stem=32, mbconv=True, policy_width=1024)


PRESETS = {"tiny": tiny, "bench": bench}


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


class MBConv(nn.Module):
    """EfficientNet's inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid), nn.BatchNorm2d(mid), nn.SiLU(),
                   nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.skip else self.block(x)


class Trunk(nn.Module):
    """A conv trunk (plain or EfficientNet-style), a 1x1 squeeze and a flatten that keeps the spatial layout."""

    def __init__(self, size: TeacherSize) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, down = 12, 0
        if size.stem:
            layers.append(_conv(cin, size.stem, 2))
            cin, down = size.stem, 1
        for channels, repeats, stride, expand in size.stages:
            for r in range(repeats):
                s = stride if r == 0 else 1
                layers.append(MBConv(cin, channels, s, expand) if size.mbconv else _conv(cin, channels, s))
                cin = channels
            down += stride == 2
        self.stages = nn.Sequential(*layers)
        self.squeeze = nn.Conv2d(cin, 8, 1)
        self.out_features = 8 * (128 >> down) * (256 >> down)

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
    """A temporal model over the 5 s feature history, plus desire, traffic and the lateral inputs."""

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


def _check(contract: str) -> None:
    if contract == "v2":
        raise ConfigError(V2_GONE)
    if contract not in CONTRACTS:
        raise ConfigError(f"unknown contract {contract!r}: the stand-in's own layout is v1; a release's is --release")


def policy_inputs(contract: str = "v1") -> dict[str, tuple[int, ...]]:
    _check(contract)
    t = C.INPUT_HISTORY_BUFFER_LEN
    return {"desire": (1, t, C.DESIRE_LEN), "traffic_convention": (1, C.TRAFFIC_CONVENTION_LEN),
            "lateral_control_params": (1, C.LATERAL_CONTROL_PARAMS_LEN),
            "prev_desired_curv": (1, t, C.PREV_DESIRED_CURV_LEN), "features_buffer": (1, t, C.FEATURE_LEN)}


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
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constants (horizons, scales) traced as constants
        torch.onnx.export(module, tuple(inputs.values()), buf, input_names=list(inputs), output_names=["outputs"],
                          opset_version=17, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(path)


def contract_slices(contract: str = "v1") -> tuple[dict[str, slice], dict[str, slice]]:
    """(vision, policy) output slices of the project's own layout (a meta head of 48, mixture heads, no pad)."""
    _check(contract)
    return C.layout(C.VISION_HEADS, meta_width=48), C.layout(C.POLICY_HEADS_V1)


def write_pair(out: Path, vision: nn.Module, policy: nn.Module, *, contract: str = "v1", model_name: str
               ) -> dict[str, Path]:
    """Export a vision/policy module pair with openpilot's metadata (pkl and ONNX property) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    vision_slices, policy_slices = contract_slices(contract)
    vin = {"img": torch.zeros(1, 12, 128, 256, dtype=torch.uint8),
           "big_img": torch.zeros(1, 12, 128, 256, dtype=torch.uint8)}
    paths = {}
    for name, module, inputs, slices in (
        ("driving_vision", vision, vin, vision_slices),
        ("driving_policy", policy, {k: torch.zeros(s) for k, s in policy_inputs(contract).items()}, policy_slices),
    ):
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
        tmp = pkl.with_name(pkl.name + ".tmp")
        tmp.write_bytes(pickle.dumps(metadata))
        tmp.replace(pkl)
        paths[name], paths[f"{name}_metadata"] = onnx_path, pkl
    return paths


def write_teacher(out: Path, *, size: str = "tiny", contract: str = "v1", seed: int = 0) -> dict[str, Path]:
    """Write a seeded, randomly initialised stand-in teacher pair with metadata into `out`; returns the paths.
    `contract`: "v1", the one layout of the project's own (kept as a name: the fitted teacher's fit.json records it)."""
    if size not in PRESETS:
        raise ConfigError(f"unknown teacher size {size!r}; choose one of {', '.join(SIZES)}")
    vision_slices, policy_slices = contract_slices(contract)
    preset = PRESETS[size]()
    vision = StandInVision(preset, vision_slices)
    policy = StandInPolicy(preset, policy_inputs(contract), max(s.stop for s in policy_slices.values()))
    _init(vision, seed)
    _init(policy, seed + 1)
    return write_pair(out, vision, policy, contract=contract, model_name=f"stand-in-{size}-{contract}-seed{seed}")


def gflops_per_frame(size: str) -> float:
    """2 x multiply-adds of the vision model for one frame (both cameras), counted by running it."""
    preset = PRESETS[size]()
    model = StandInVision(preset, C.layout(C.VISION_HEADS)).eval()
    macs = 0

    def count(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            macs += out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        x = torch.zeros(1, 12, 128, 256, dtype=torch.uint8)
        model(x, x)
    for h in hooks:
        h.remove()
    return 2 * macs / 1e9
