# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench storage`: what each camera codec costs in bytes, speed and teacher drift.

On one route (default: a synthetic comma 3X segment, whose frames compress like real ones), for each
codec and setting: bytes per frame (road + wide), the ratio to the source HEVC bytes, encode and
decode frames/s per core (CPU time of this process), and worst pixel error. Then the drift a lossy
codec causes in the teacher: the route is ingested with that codec and labeled by the same teacher
and backend as the lossless reference, and the two label sets are compared with evaluate.metrics
(plan position error at 1, 2, 4 s, lane-line error). The yardstick is the teacher's own precision
drift: the reduced-precision backend (`--precision fp16`, CUDA only) against fp32 labels of the
lossless frames; on a CPU-only machine the torch backend runs fp32 only, so the row shows the
backend drift (ONNX Runtime vs torch, both fp32) instead, and says so.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark_distill.bench import scratch_dir
from spark_distill.data import arrays, codecs, shards
from spark_distill.evaluate.metrics import compare
from spark_distill.ingest.discover import discover_segments
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.label.run import LabelConfig, label
from spark_distill.progress import Stages
from spark_distill.synth.route import SynthConfig, write_route
from spark_distill.synth.teacher import write_teacher


@dataclass(frozen=True)
class Setting:
    """One codec at one quality."""

    codec: str  # a key of codecs.CODECS, or "plain" (the original .npy.zst, zstd level 1)
    crf: int = 0  # a lossy codec's quality

    @property
    def label(self) -> str:
        if self.codec == "plain":
            return "plain .npy.zst (zstd 1)"
        c = codecs.get_codec(self.codec)
        return f"{self.codec} crf {self.crf}" if c.lossy else f"{self.codec} ({c.ext})"


def _encode(clip: np.ndarray, s: Setting) -> tuple[str, bytes]:
    if s.codec == "plain":
        return codecs.PLAIN_EXT, arrays.encode_array(clip)
    return codecs.encode_clip(clip, s.codec, crf=s.crf)


def _decode(ext: str, data: bytes) -> np.ndarray:
    return arrays.decode_array(data) if ext == codecs.PLAIN_EXT else codecs.decode_clip(ext, data)


def read_clips(root: Path) -> list[dict[str, np.ndarray]]:
    """Every clip's decoded cameras of a frames dataset, in shard order."""
    folder = root / "frames"
    manifest = shards.read_manifest(folder, shards.FRAMES_FORMAT)
    cams = set(shards.camera_members())
    out = []
    for entry in manifest["shards"]:
        for raw in shards.iter_shard(folder / entry["name"], shards.FRAMES_MEMBERS):
            s = shards.decode_sample({k: v for k, v in raw.items() if k in cams or k == "__key__"})
            out.append({cam: s[cam] for cam in shards.CAMERAS})
    return out


def read_labels(root: Path, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vision, policy, output slices) of a label set, all clips concatenated in shard order, float32."""
    folder = root / "labels" / name
    manifest = shards.read_manifest(folder, shards.LABELS_FORMAT)
    vision, policy = [], []
    for entry in manifest["shards"]:
        for raw in shards.iter_shard(folder / entry["name"], shards.LABEL_MEMBERS):
            s = shards.decode_sample(raw)
            vision.append(s["vision"].astype(np.float32))
            policy.append(s["policy"].astype(np.float32))
    return np.concatenate(vision), np.concatenate(policy), manifest["output_slices"]


def drift(root: Path, reference: str, other: str, other_root: Path | None = None) -> dict[str, float]:
    """Teacher drift of label set `other` (of `other_root`, default `root`) against `reference`."""
    tv, tp, slices = read_labels(root, reference)
    sv, sp, _ = read_labels(other_root or root, other)
    m = compare(sv, sp, tv, tp, slices)
    return {**{f"plan@{t}s": m["plan"]["at"][t] for t in ("1", "2", "4")}, "lane_lines": m["lane_lines"]["mean"]}


def _fmt_drift(d: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in d.items())


def codec_rows(clips: list[dict[str, np.ndarray]], settings: list[Setting], source_bytes: int
               ) -> Iterator[tuple[Setting, str]]:
    """(setting, report line) of sizes and speeds; frames/s counts camera frames of both cameras as one frame."""
    frames = sum(len(c["road"]) for c in clips)
    for s in settings:
        size, enc_s, dec_s, worst = 0, 0.0, 0.0, 0
        for clip in clips:
            for cam in shards.CAMERAS:
                t0 = time.process_time()
                ext, data = _encode(clip[cam], s)
                t1 = time.process_time()
                back = _decode(ext, data)
                dec_s += time.process_time() - t1
                enc_s += t1 - t0
                size += len(data)
                worst = max(worst, int(np.abs(back.astype(np.int16) - clip[cam]).max()))
        yield s, (f"{s.label:26s} {size / frames / 1e3:8.1f} kB/frame  x{size / source_bytes:5.2f} of source HEVC  "
                  f"encode {frames / enc_s:7.1f} fps/core  decode {frames / dec_s:7.1f} fps/core  "
                  f"max |error| {worst}")


def bench_storage(*, seconds: float = 10.0, route: Path | None = None, teacher: Path | None = None,
                  lossy: tuple[tuple[str, int], ...] = (("hevc", 20), ("hevc", 28), ("av1", 30), ("av1", 40)),
                  backend: str = "onnxruntime", workdir: Path | None = None,
                  drift_check: bool = True,
                  on_progress: Callable[[int, int, str], None] | None = None) -> Iterator[str]:
    """Run the benchmark; yields report lines. `lossy`: the (codec, crf) settings measured. `on_progress(
    measurements done, total, the one now)`."""
    settings = [Setting("plain"), Setting("lossless"), *(Setting(name, crf) for name, crf in lossy)]
    step = Stages(on_progress, (route is None) + 1 + len(settings) + drift_check * (len(lossy) + 2))
    scratch = scratch_dir(workdir, "bench-storage-")
    try:
        if route is None:
            step("synthesizing 1 segment")
            yield f"synthesizing 1 segment of {seconds:g} s, 1928x1208 road + wide ..."
            write_route(scratch / "route", SynthConfig(segments=1, seconds=seconds, device="tici"))
            route = scratch / "route"
        segments = discover_segments([str(route)])
        source = sum(p.stat().st_size for s in segments for cam in shards.CAMERAS if (p := s.camera_file(cam)))
        ref = scratch / "lossless"
        step("ingest, lossless")
        kept = ingest(IngestConfig(inputs=(str(route),), out=ref, workers=1)).frames_kept
        clips = read_clips(ref)
        yield f"{len(segments)} segment(s), {kept} frames; source HEVC (road + wide) {source / kept / 1e3:.1f} kB/frame"
        for setting in settings:
            step(f"encoding and decoding: {setting.label}")
            for _, line in codec_rows(clips, [setting], source):
                yield line
        if not drift_check:
            step.end()
            return
        if teacher is None:
            teacher = scratch / "teacher"
            write_teacher(teacher, seed=1)
            yield "teacher: the synthetic stand-in (pass --teacher for openpilot's: its drift is the one that counts)"
        base = dict(teacher=(teacher,), backend=backend, batch=4, workers=2)
        step("labeling the lossless frames")
        label(LabelConfig(root=ref, name="ref", **base))
        for name, crf in lossy:
            step(f"ingest and label, {name} crf {crf}")
            root = scratch / f"{name}{crf}"
            ingest(IngestConfig(inputs=(str(route),), out=root, workers=1, codec=name, crf=crf))
            label(LabelConfig(root=root, name="ref", **base))
            yield f"teacher drift, {name} crf {crf} vs lossless (m):  {_fmt_drift(drift(ref, 'ref', 'ref', root))}"
        step("labeling with the torch backend")
        yield from _precision_row(ref, base, backend)
        step.end()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _precision_row(ref: Path, base: dict, backend: str) -> Iterator[str]:
    """The yardstick: the teacher's fp16 vs fp32 drift where the backend allows, else backend drift."""
    import torch

    if torch.cuda.is_available():
        label(LabelConfig(root=ref, name="fp16", **{**base, "backend": "torch"}, precision="fp16"))
        what = f"torch fp16 vs {backend} fp32"
    else:
        label(LabelConfig(root=ref, name="fp16", **{**base, "backend": "torch"}, precision="fp32"))
        what = f"torch fp32 vs {backend} fp32 (no CUDA: the torch backend runs fp16 on CUDA only)"
    yield f"teacher drift, {what} (m):  {_fmt_drift(drift(ref, 'ref', 'fp16'))}"
