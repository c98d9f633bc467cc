# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench label`: the label pass against bare inference of the same teacher.

Baseline: the backend's vision + policy calls on tensors already on the device, batch B, in a
loop (what the accelerator alone can do). Measured: the label pass end to end on a frames dataset
of at least B segments (reading shards, zstd, host->device copies, modeld state, writing labels),
with the same teacher, backend, precision and batch. Prints both and their ratio (target >= 0.9).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spark_distill.bench import scratch_dir
from spark_distill.data import arrays, shards
from spark_distill.errors import ConfigError
from spark_distill.label.backends import auto_backend, get_backend
from spark_distill.label.run import LabelConfig, label
from spark_distill.openpilot.teachers import load_teacher, random_inputs
from spark_distill.progress import Stages
from spark_distill.synth.teacher import write_teacher


def write_bench_frames(root: Path, *, segments: int, seconds: float, clip_len: int = 20, seed: int = 0,
                       shard_clips: int = 50) -> int:
    """A valid frames dataset of `segments` segments with textured random frames (content does not
    matter for throughput; decode and compression costs do, so frames compress like camera data)."""
    folder = root / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 200, size=(64, 6, 128, 256), dtype=np.uint8) + rng.integers(
        0, 56, size=(64, 6, 128, 256), dtype=np.uint8) // 4 * 4  # textured frames, drawn from a pool
    frames = round(seconds * 20)
    manifest = {"format": shards.FRAMES_FORMAT, "version": shards.FORMAT_VERSION, "tool": "bench",
                "settings": {"clip_len": clip_len, "cameras": ["road", "wide"], "log_kind": "auto",
                             "shard_clips": shard_clips},
                "car_columns": ["vEgo"] + [f"c{i}" for i in range(9)], "shards": [], "segments": [], "skipped": [],
                "partial": None}
    writer, fid = None, 0
    for s in range(segments):
        name = f"{s:08x}--0123456789--{s % 60}"
        clips = 0
        for c in range(0, frames, clip_len):
            t = min(clip_len, frames - c)
            if writer is None:
                writer = shards.ShardWriter(folder, shards.shard_name(len(manifest["shards"])), shards.FRAMES_MEMBERS)
            road = pool[(np.arange(t) + 7 * s + c) % 64]
            wide = pool[(np.arange(t) + 11 * s + c + 5) % 64]
            desire = np.zeros((t, 8), np.float32)
            desire[:, 0] = 1
            car = np.full((t, 10), 20.0, np.float32)
            meta = {"segment": name, "clip": clips, "frame_ids": list(range(fid, fid + t)),
                    "timestamps_ns": [0] * t, "calibration": {"rpy": [0, 0, 0], "valid": True}, "flags": []}
            writer.write({"__key__": shards.clip_key(name, clips), "road.npy.zst": arrays.encode_array(road),
                          "wide.npy.zst": arrays.encode_array(wide), "desire.npy.zst": arrays.encode_array(desire),
                          "traffic.npy.zst": arrays.encode_array(np.array([1, 0], np.float32)),
                          "car.npy.zst": arrays.encode_array(car),
                          "pose.npy.zst": arrays.encode_array(np.zeros((t, 12), np.float32)),
                          "gps.npy.zst": arrays.encode_array(np.zeros((t, 6))),
                          "meta.json": json.dumps(meta).encode()}, frames=t)
            fid += t
            clips += 1
            if writer.samples >= shard_clips:
                manifest["shards"].append(writer.close().to_json())
                writer = None
        manifest["segments"].append({"name": name, "sources": {}, "log": "bench", "frames_kept": frames,
                                     "frames_dropped": 0, "clips": clips, "dropped": {}, "warnings": []})
    if writer is not None:
        manifest["shards"].append(writer.close().to_json())
    shards.write_manifest(folder, manifest)
    return segments * frames


def rate(step: Callable[[], Any], device: torch.device, frames_per_step: int, *, seconds: float) -> float:
    """Frames/s of `step` run back to back for `seconds` after 3 warm-up calls (on CUDA, synced every 10 calls and at
    the end, so the host does not run ahead of what is timed)."""
    cuda = device.type == "cuda"
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
        if cuda and n % 10 == 0:
            torch.cuda.synchronize(device)
    if cuda:
        torch.cuda.synchronize(device)
    return n * frames_per_step / (time.perf_counter() - start)


def bare_inference_fps(backend, teacher, batch: int, *, seconds: float = 5.0) -> float:
    """Frames/s of vision + policy on device-resident inputs (the accelerator alone)."""
    dev = backend.device
    vin = {k: torch.from_numpy(v).to(dev) for k, v in random_inputs(teacher.vision.inputs, batch).items()}
    pin = {k: torch.from_numpy(v).to(dev) for k, v in random_inputs(teacher.policy.inputs, batch).items()}

    def step() -> None:
        backend.vision(vin)
        backend.policy(pin)

    return rate(step, dev, batch, seconds=seconds)


def bare_paths(backend: str, teacher, vision_model, policy_model, *, batch: int, precision: str,
               cache_dir: Path | None) -> Iterator[tuple[str, float]]:
    """(path, bare frames/s) of every inference path the backend offers: for torch eager (CUDA graphs on a GPU)
    and torch.compile; one path otherwise."""
    compiles = ("off", "on") if backend == "torch" else ("auto",)
    for c in compiles:
        be = get_backend(backend, teacher, vision_model, policy_model, batch=batch, precision=precision,
                         cache_dir=cache_dir, compile=c)
        name = be.name + {"off": " eager", "on": " compiled", "auto": ""}[c]
        yield name, bare_inference_fps(be, teacher, batch)
        del be


def step_graph_fps(backend: str, t: Any, vm: Any, pm: Any, *, batch: int, precision: str, cache_dir: Path,
                   seconds: float = 3.0) -> float | None:
    """Frames/s of the label pass's whole captured step (frame gather, modeld state, both models, outputs)
    replayed back to back on clips already on the device: no readers, no copies. None where the step is not
    captured (the CPU, ONNX Runtime, TensorRT)."""
    from spark_distill.label.step import LabelStep

    be = get_backend(backend, t, vm, pm, batch=batch, precision=precision, cache_dir=cache_dir, compile="auto")
    if be.device.type != "cuda":
        return None
    step = LabelStep(teacher=t, backend=be, batch=batch, clip_len=20)
    if not step.graphs:
        return None
    return rate(step.graphs[0].replay, be.device, batch, seconds=seconds)


def loop_fps(result: Any) -> float:
    """Frames/s of a LabelResult's labeling loop from its first step, without the set-up (reader start-up, step
    capture, the rows' first clips)."""
    loop = result.profile.get("label pass s", 0.0)
    return result.frames / loop if loop else 0.0


def ratio_lines(result: Any, bare_fps: float, path: str) -> Iterator[str]:
    """The label pass against bare inference: the labeling loop (the pass's rate on a dataset of any length) and
    end to end (reader start-up, step capture, the loop, the writers' drain: fixed seconds, heavy on a short set)."""
    loop = loop_fps(result)
    fixed = result.seconds - result.profile.get("label pass s", 0.0)
    yield f"ratio labeling loop / bare ({path}):{'':<{max(0, 14 - len(path))}}{loop / bare_fps:10.2f}  (target >= 0.90)"
    yield (f"ratio end to end / bare ({path}):{'':<{max(0, 16 - len(path))}}{result.frames_per_s / bare_fps:10.2f}"
           f"  ({fixed:.2f} s of set-up and drain in {result.seconds:.2f} s)")


def profile_lines(profile: dict[str, float]) -> Iterator[str]:
    """The label pass's profile (LabelResult.profile) as report lines: ms per step by stage."""
    steps = int(profile.get("steps", 0))
    yield f"profile over {steps} steps (ms per step; readers and writer: summed over their processes):"
    for key, value in profile.items():
        if key.endswith("s/step"):
            yield f"  {key[: -len(' s/step')]:<28}{value * 1000:9.2f}"
    yield f"  accelerator busy fraction     {profile.get('busy fraction', 0.0):9.2f}"
    yield f"  clips spilled out of the slab {profile.get('clips spilled', 0.0):9.0f}"
    for key, value in profile.items():
        if key.startswith("set-up: "):
            yield f"  {key[: -len(' s')]:<44}{value:6.2f} s"
    yield ("  step: one CUDA graph per step (frame gather, modeld state, both models, outputs)"
           if profile.get("captured step") else "  step: uncaptured (ops launched one by one)")


def bench_label(*, teacher: Path | None = None, size: str = "bench", backend: str = "auto", precision: str = "auto",
                batch: int = 64, seconds: float = 10.0, workers: int = 0, compile: str = "auto",
                workdir: Path | None = None,
                on_progress: Callable[[int, int, str], None] | None = None) -> Iterator[str]:
    """Run the benchmark; yields report lines. `on_progress(measurements done, total, the one now)`."""
    if compile not in ("auto", "on", "off"):
        raise ConfigError(f"--compile {compile!r}: choose auto, on or off")
    step = Stages(on_progress, (teacher is None) + 3)  # + the bare step graph, on a GPU
    scratch = scratch_dir(workdir, "bench-label-")
    try:
        if teacher is None:
            step("writing the stand-in teacher")
            teacher = scratch / "teacher"
            write_teacher(teacher, size=size)
        step(f"writing {batch} segments of frames")
        frames = write_bench_frames(scratch / "ds", segments=batch, seconds=seconds)
        t, vm, pm = load_teacher([teacher])
        name = auto_backend() if backend == "auto" else backend
        probe = get_backend(name, t, vm, pm, batch=1, precision=precision, compile="off")
        where = probe.describe().get("gpu") or str(probe.device)
        on_gpu = probe.device.type == "cuda"
        yield f"teacher {t.name} ({size}), backend {name} {probe.precision} on {where}, batch {batch}"
        del probe
        step.total += on_gpu
        step("bare inference")
        bare = dict(bare_paths(name, t, vm, pm, batch=batch, precision=precision,
                               cache_dir=scratch / "ds" / "labels" / ".engines"))
        for path, fps in bare.items():
            yield f"bare inference, {path + ' (device-resident inputs)':<35}{fps:10.1f} frames/s"
        best = max(bare, key=bare.__getitem__)
        if on_gpu:
            step("bare whole step graph")
        graph_fps = on_gpu and step_graph_fps(name, t, vm, pm, batch=batch, precision=precision,
                                              cache_dir=scratch / "ds" / "labels" / ".engines")
        if graph_fps:
            yield f"bare whole step graph (modeld state + both models): {graph_fps:10.1f} frames/s"
        step("label pass")
        result = label(LabelConfig(root=scratch / "ds", teacher=(teacher,), backend=name, precision=precision,
                                   batch=batch, workers=workers, compile=compile))
        used = "compiled" if result.backend.get("compiled") else "eager"
        yield f"label pass end to end ({frames} frames, {used}):      {result.frames_per_s:10.1f} frames/s"
        yield f"labeling loop alone (set-up excluded):{'':<9}{loop_fps(result):10.1f} frames/s"
        yield from profile_lines(result.profile)
        yield from ratio_lines(result, bare[best], best)
        step.end()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
