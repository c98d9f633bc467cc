# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Stand-ins of real openpilot releases: seeded random networks with exactly a release's files, input names,
shapes and dtypes, output width and metadata (the output slices as shipped, `pad` entries included), so that every
test runs on each layout the tool supports. Entry point: `write_release(out, release, size=..., seed=...)`.

The layouts are those of ../shared/openpilot_releases.md (rows in brackets):
- `0.9.6` [A]: supercombo.onnx (1, 6504), nav inputs; `0.9.7` [B]: the same without nav;
- `mid-2024` [C]: supercombo.onnx (1, 6512), meta 53, `hidden_state` 5997:-3, `pad` -3:None;
- `late-2024` [D]: supercombo.onnx (1, 6500), 5 Hz history (24 past features, pooled desire), `pad` -1:None;
- `0.10.0` [G]: driving_vision (1, 1536) + driving_policy (1, 4968) with lateral inputs, mixture plan and lead;
- `0.10.3` [I]: vision (1, 1576) with the single lead (144) and `pad` 0:None, policy (1, 1000) with the single plan
  (990) and `pad` -2:None, `desire_pulse`; history inputs float16;
- `0.11` [K]: driving_supercombo.onnx (1, 2580) with the `action` head and `action_t` input, its slices only in the
  ONNX's `output_slices` property (no _metadata.pkl).
The networks: a conv trunk per camera into the 512-wide hidden_state, a small net over the history inputs, linear
heads; the hidden_state sits at its slice and the output has the release's width (padding included).
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spark_distill.errors import ConfigError
from spark_distill.openpilot import contract as C
from spark_distill.synth.teacher import PRESETS, SIZES, TeacherSize, Trunk, _export, _init

Slices = dict[str, slice]


def _consecutive(start: int, heads: list[tuple[str, int]]) -> Slices:
    out = {}
    for name, width in heads:
        out[name] = slice(start, start + width)
        start += width
    return out


_SUPERCOMBO_HEAD = [("plan", 4955), ("lane_lines", 528), ("lane_lines_prob", 8), ("road_edges", 264), ("lead", 102),
                    ("lead_prob", 3), ("desire_state", 8)]
_A = {**_consecutive(0, [*_SUPERCOMBO_HEAD, ("meta", 48), ("desire_pred", 32), ("pose", 12),
                         ("wide_from_device_euler", 6), ("sim_pose", 12), ("road_transform", 12),
                         ("desired_curvature", 2)]), "hidden_state": slice(5992, None)}
_C = {**_consecutive(0, [*_SUPERCOMBO_HEAD, ("meta", 53), ("desire_pred", 32), ("pose", 12),
                         ("wide_from_device_euler", 6), ("sim_pose", 12), ("road_transform", 12),
                         ("desired_curvature", 2)]), "hidden_state": slice(5997, -3), "pad": slice(-3, None)}
_D = {**_consecutive(0, [*_SUPERCOMBO_HEAD, ("meta", 55), ("desire_pred", 32), ("pose", 12),
                         ("wide_from_device_euler", 6), ("road_transform", 12), ("desired_curvature", 2)]),
      "hidden_state": slice(5987, -1), "pad": slice(-1, None)}
_VISION_FRONT = [("meta", 55), ("desire_pred", 32), ("pose", 12), ("wide_from_device_euler", 6),
                 ("road_transform", 12), ("lane_lines", 528), ("lane_lines_prob", 8), ("road_edges", 264)]
_G_VISION = {**_consecutive(0, [*_VISION_FRONT, ("lead", 102), ("lead_prob", 3), ("hidden_state", 512)]),
             "pad": slice(-2, None)}
_G_POLICY = {**_consecutive(0, [("plan", 4955), ("desire_state", 8), ("desired_curvature", 2)]),
             "pad": slice(-3, None)}
_I_VISION = {**_consecutive(0, [*_VISION_FRONT, ("lead", 144), ("lead_prob", 3), ("hidden_state", 512)]),
             "pad": slice(0, None)}
_I_POLICY = {**_consecutive(0, [("plan", 990), ("desire_state", 8)]), "pad": slice(-2, None)}
_K = {**_consecutive(0, [("lane_lines", 528), ("lane_lines_prob", 8), ("road_edges", 264), ("meta", 55),
                         ("desire_pred", 32), ("pose", 12), ("wide_from_device_euler", 6), ("road_transform", 12),
                         ("plan", 990), ("lead", 144), ("lead_prob", 3), ("desire_state", 8), ("action", 4),
                         ("hidden_state", 512)]), "pad": slice(-2, None)}

_IMG = ((1, 12, 128, 256), torch.uint8)


def _hist(features: int, desire: int, *, lateral: bool, curv: bool, desire_name: str = "desire",
          dtype: torch.dtype = torch.float32) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    out = {desire_name: ((1, desire, 8), dtype), "traffic_convention": ((1, 2), dtype)}
    if lateral:
        out["lateral_control_params"] = ((1, 2), dtype)
    if curv:
        out["prev_desired_curv"] = ((1, desire, 1), dtype)
    out["features_buffer"] = ((1, features, 512), dtype)
    return out


@dataclass(frozen=True)
class Release:
    """A release's files and I/O: one model (`combined`) or a vision + policy pair."""

    name: str
    files: tuple[str, ...]  # ONNX file names: one (combined) or vision, policy
    inputs: tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], ...]  # per file, in graph order
    widths: tuple[int, ...]
    slices: tuple[Slices, ...]  # as the metadata writes them (`pad` and open or negative bounds included)
    pickle_metadata: bool = True  # a `<stem>_metadata.pkl` beside each ONNX (0.11: only the ONNX property)
    checkpoint_key: bool = False  # 2025+: the metadata names the model under `model_checkpoint`


_NAV = {"nav_features": ((1, 256), torch.float32), "nav_instructions": ((1, 150), torch.float32)}
_SUPERCOMBO_IMGS = {"input_imgs": _IMG, "big_input_imgs": _IMG}
_IMGS = {"img": _IMG, "big_img": _IMG}
RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("0.9.6", ("supercombo.onnx",), ({**_SUPERCOMBO_IMGS, **_hist(99, 100, lateral=True, curv=True), **_NAV},),
            (6504,), (_A,)),
    Release("0.9.7", ("supercombo.onnx",), ({**_SUPERCOMBO_IMGS, **_hist(99, 100, lateral=True, curv=True)},),
            (6504,), (_A,)),
    Release("mid-2024", ("supercombo.onnx",), ({**_SUPERCOMBO_IMGS, **_hist(99, 100, lateral=True, curv=True)},),
            (6512,), (_C,)),
    Release("late-2024", ("supercombo.onnx",), ({**_SUPERCOMBO_IMGS, **_hist(24, 25, lateral=True, curv=True)},),
            (6500,), (_D,)),
    Release("0.10.0", ("driving_vision.onnx", "driving_policy.onnx"),
            (_IMGS, _hist(25, 25, lateral=True, curv=True, dtype=torch.float16)), (1536, 4968), (_G_VISION, _G_POLICY),
            checkpoint_key=True),
    Release("0.10.3", ("driving_vision.onnx", "driving_policy.onnx"),
            (_IMGS, _hist(25, 25, lateral=False, curv=False, desire_name="desire_pulse", dtype=torch.float16)),
            (1576, 1000), (_I_VISION, _I_POLICY), checkpoint_key=True),
    Release("0.11", ("driving_supercombo.onnx",),
            ({**_IMGS, "desire_pulse": ((1, 25, 8), torch.float32), "traffic_convention": ((1, 2), torch.float32),
              "action_t": ((1, 2), torch.float32), "features_buffer": ((1, 24, 512), torch.float32)},),
            (2580,), (_K,), pickle_metadata=False),
)}


class HistoryNet(nn.Module):
    """A small net over the history inputs (features per step squeezed, then everything flattened)."""

    def __init__(self, inputs: dict[str, tuple[int, ...]], out: int = 128) -> None:
        super().__init__()
        self.names = list(inputs)
        self.step = nn.Linear(C.FEATURE_LEN, 16)
        total = sum((s[1] * 16 if n == "features_buffer" else int(torch.tensor(s[1:]).prod()))
                    for n, s in inputs.items())
        self.mlp = nn.Sequential(nn.Linear(total, out), nn.ReLU())

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [torch.relu(self.step(x[n].float())).flatten(1) if n == "features_buffer" else x[n].float().flatten(1)
                 for n in self.names]
        return self.mlp(torch.cat(parts, dim=1))


def _place(heads: torch.Tensor, hidden: torch.Tensor, at: int) -> torch.Tensor:
    """The output vector: the heads with the hidden_state inserted at its slice's start."""
    return torch.cat([heads[:, :at], hidden, heads[:, at:]], dim=1)


class ReleaseVision(nn.Module):
    """Images in; the hidden_state and vision heads out (a split release's vision)."""

    def __init__(self, size: TeacherSize, names: list[str], width: int, hidden_at: int) -> None:
        super().__init__()
        self.names, self.hidden_at = names, hidden_at
        self.road, self.wide = Trunk(size), Trunk(size)
        self.hidden = nn.Sequential(nn.Linear(2 * self.road.out_features, C.FEATURE_LEN), nn.ReLU())
        self.heads = nn.Linear(C.FEATURE_LEN, width - C.FEATURE_LEN)

    def encode(self, road: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        return self.hidden(torch.cat([self.road(road), self.wide(wide)], dim=1))

    def forward(self, road: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        hidden = self.encode(road, wide)
        return _place(self.heads(hidden), hidden, self.hidden_at)


class ReleasePolicy(nn.Module):
    def __init__(self, inputs: dict[str, tuple[int, ...]], width: int) -> None:
        super().__init__()
        self.names = list(inputs)
        self.history = HistoryNet(inputs)
        self.out = nn.Linear(128, width)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.out(self.history(dict(zip(self.names, args, strict=True))))


class ReleaseCombined(nn.Module):
    """One model: images and history inputs in, every head and this frame's hidden_state out."""

    def __init__(self, size: TeacherSize, inputs: dict[str, tuple[int, ...]], width: int, hidden_at: int) -> None:
        super().__init__()
        self.names = list(inputs)
        self.images = [n for n in self.names if n in ("img", "big_img", "input_imgs", "big_input_imgs")]
        self.vision = ReleaseVision(size, self.images, width, hidden_at)
        self.history = HistoryNet({n: s for n, s in inputs.items() if n not in self.images})
        self.heads = nn.Linear(C.FEATURE_LEN + 128, width - C.FEATURE_LEN)
        self.hidden_at = hidden_at

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = dict(zip(self.names, args, strict=True))
        road, wide = (x[n] for n in self.images)
        hidden = self.vision.encode(road, wide)
        heads = self.heads(torch.cat([hidden, self.history(x)], dim=1))
        return _place(heads, hidden, self.hidden_at)


def _hidden_at(slices: Slices, width: int) -> int:
    return slices["hidden_state"].indices(width)[0]


def write_release(out: Path, release: str, *, size: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """Write a seeded random-weight stand-in of `release` (RELEASES) into `out`; returns the paths written."""
    if release not in RELEASES:
        raise ConfigError(f"unknown release {release!r}; choose one of {', '.join(RELEASES)}")
    if size not in PRESETS:
        raise ConfigError(f"unknown teacher size {size!r}; choose one of {', '.join(SIZES)}")
    spec, preset = RELEASES[release], PRESETS[size]()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for k, (file, inputs, width, slices) in enumerate(zip(spec.files, spec.inputs, spec.widths, spec.slices,
                                                          strict=True)):
        shapes = {n: s for n, (s, _) in inputs.items()}
        if len(spec.files) == 1:
            module: nn.Module = ReleaseCombined(preset, shapes, width, _hidden_at(slices, width))
        elif k == 0:
            module = ReleaseVision(preset, list(shapes), width, _hidden_at(slices, width))
        else:
            module = ReleasePolicy(shapes, width)
        _init(module, seed + k)
        stem = file.removesuffix(".onnx")
        role = {"driving_vision": "vision_model", "driving_policy": "policy_model"}.get(stem, "model")
        name = f"stand-in-{release}-{size}-seed{seed}"
        props = {"output_slices": base64.b64encode(pickle.dumps(slices)).decode(), role: name}
        zeros = {n: torch.zeros(s, dtype=d) for n, (s, d) in inputs.items()}
        _export(module, zeros, out / file, props)
        paths[stem] = out / file
        if spec.pickle_metadata:  # openpilot's get_model_metadata.py
            meta = {("model_checkpoint" if spec.checkpoint_key else role): name, "output_slices": slices,
                    "input_shapes": shapes, "output_shapes": {"outputs": (1, width)}}
            pkl = out / f"{stem}_metadata.pkl"
            tmp = pkl.with_name(pkl.name + ".tmp")
            tmp.write_bytes(pickle.dumps(meta))
            tmp.replace(pkl)
            paths[f"{stem}_metadata"] = pkl
    return paths
