# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench train`: three measurements, each against a baseline run in the same process.

1. Adapters: optimizer step time and peak memory of the same student with our DoRA, our LoRA, PEFT's
   DoRA and PEFT's LoRA (same targets, rank, alpha, batches; targets: DoRA <= 1.3x LoRA, faster than
   PEFT's DoRA).
2. Streaming: steps/s with batches streamed from the shards (DataLoader workers, decode, collate)
   against the same batches already in memory (target >= 0.9).
3. Feature-cached: samples/s of the openpilot student trained from the teacher's stored vision
   features against image mode (the same policy adapters).
Without a dataset it writes one (textured frames, a stand-in teacher, a label pass) in a scratch folder.
"""

from __future__ import annotations

import copy
import fnmatch
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spark_distill import shards
from spark_distill.bench import scratch_dir
from spark_distill.errors import ConfigError
from spark_distill.train.data import ClipStream, make_loader, shard_pairs
from spark_distill.train.loop import Unroll, _autocast, _freeze_norms, loss_step
from spark_distill.train.lora import apply_adapters
from spark_distill.train.losses import LossWeights
from spark_distill.train.students.compact import DEFAULT_TARGETS, PRESETS, CompactStudent


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(student: nn.Module, batches: Iterable[dict], *, steps: int, warmup: int, slices: dict,
                device: torch.device, amp: str = "auto") -> tuple[float, int, float | None]:
    """(seconds of `steps` optimizer steps after `warmup` ones, clips in them, peak GB on CUDA or None)."""
    model = Unroll(student).to(device)
    model.train()
    _freeze_norms(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    autocast, weights = _autocast(device, amp), LossWeights()
    it = iter(batches)
    clips = 0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        batch = next(it)
        loss, _ = loss_step(model, batch, slices, weights, device, autocast)
        if loss is not None:
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            clips += len(batch["keys"])
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return seconds, clips, peak


def _cycle(batches: list[dict]) -> Iterator[dict]:
    while True:
        yield from batches


def _ours(student: nn.Module, rank: int, *, dora: bool) -> nn.Module:
    apply_adapters(student, targets=DEFAULT_TARGETS, rank=rank, alpha=2.0 * rank, dora=dora)
    return student


def _peft(student: nn.Module, targets: list[str], rank: int, alpha: float, dora: bool) -> nn.Module:
    import peft

    names = [n for n, m in student.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
             and any(fnmatch.fnmatchcase(n, p) for p in targets)]
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_dora=dora, target_modules=names)
    model = peft.inject_adapter_in_model(cfg, student)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def ensure_dataset(scratch: Path, *, segments: int, seconds: float, clip_len: int) -> tuple[Path, str, Path]:
    """A labeled dataset in `scratch`: textured frames, the tiny stand-in teacher, the fastest backend."""
    from spark_distill.bench.label import write_bench_frames
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.teacher import write_teacher

    root, teacher = scratch / "ds", scratch / "teacher"
    write_bench_frames(root, segments=segments, seconds=seconds, clip_len=clip_len, shard_clips=4)
    write_teacher(teacher, size="tiny")
    label(LabelConfig(root=root, teacher=(teacher,), name="bench", batch=min(segments, 32), workers=4))
    return root, "bench", teacher


def bench_train(*, root: Path | None = None, labels: str | None = None, student_onnx: Path | None = None,
                student: str = "compact", batch: int = 8, steps: int = 10, rank: int = 16, workers: int = 4,
                segments: int = 16, seconds: float = 6.0, device: str | None = None,
                workdir: Path | None = None) -> Iterator[str]:
    """Run the benchmark; yields report lines."""
    if student not in PRESETS:
        raise ConfigError(f"--student {student!r}: choose {' or '.join(PRESETS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scratch = scratch_dir(workdir, "bench-train-")
    try:
        if root is None:
            root, labels, teacher = ensure_dataset(scratch, segments=segments, seconds=seconds, clip_len=20)
            student_onnx = student_onnx or teacher
        elif labels is None:
            raise ConfigError("--labels is needed with a dataset root")
        pairs, manifest = shard_pairs(root, labels, split="train", val_fraction=0)
        clip_len = int(shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)["settings"]["clip_len"])
        slices = manifest["output_slices"]
        where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        yield (f"device {where} | torch {torch.__version__} | student {student}, batch {batch} x {clip_len} frames, "
               f"rank {rank}, {steps} timed steps")

        def stream(images: bool = True, w: int = workers) -> ClipStream:
            return ClipStream(pairs, manifest, batch=batch, clip_len=clip_len, burn_in=min(5, clip_len - 1), seed=0,
                              workers=w, mask_warmup=False, images=images)

        if min(len(stream(w=1)), len(stream())) < steps + 2:
            raise ConfigError(f"the dataset gives {len(stream())} batches of {batch} clips to {workers} workers; "
                             f"--steps {steps} needs {steps + 2} (more segments or a smaller --batch-size)")
        held = [b for _, b in zip(range(steps + 2), make_loader(stream(w=1)), strict=False)]
        vision = {k: slice(*v) for k, v in slices["vision"].items()}
        policy = {k: slice(*v) for k, v in slices["policy"].items()}
        torch.manual_seed(0)
        base = CompactStudent(PRESETS[student](), vision, policy)

        # 1. adapters on the same student and batches
        yield "adapters (same student, targets, batches):"
        results: dict[str, tuple[float, float | None]] = {}
        variants: list[tuple[str, Any]] = [("our LoRA", lambda m: _ours(m, rank, dora=False)),
                                           ("our DoRA", lambda m: _ours(m, rank, dora=True))]
        try:
            import peft  # noqa: F401

            variants += [("PEFT LoRA", lambda m: _peft(m, DEFAULT_TARGETS, rank, 2.0 * rank, False)),
                         ("PEFT DoRA", lambda m: _peft(m, DEFAULT_TARGETS, rank, 2.0 * rank, True))]
        except ImportError:
            yield "  peft is not installed: PEFT rows skipped"
        for name, wrap in variants:
            m = wrap(copy.deepcopy(base))
            secs, _, peak = timed_steps(m, _cycle(held), steps=steps, warmup=2, slices=slices, device=dev)
            results[name] = (secs / steps * 1000, peak)
            del m
        lora_ms = results["our LoRA"][0]
        for name, (ms, peak) in results.items():
            mem = f"{peak:6.2f} GB peak" if peak is not None else "   (CPU)"
            yield f"  {name:10s} {ms:9.1f} ms/step  {mem}  {ms / lora_ms:5.2f}x our LoRA"
        dora_ms = results["our DoRA"][0]
        yield f"  our DoRA / our LoRA: {dora_ms / lora_ms:.2f} (target <= 1.30)" + (
            f"; PEFT DoRA / our DoRA: {results['PEFT DoRA'][0] / dora_ms:.2f} (target > 1)"
            if "PEFT DoRA" in results else "")

        # 2. streaming vs the same batches in memory
        m = _ours(copy.deepcopy(base), rank, dora=True)
        mem_s, clips, _ = timed_steps(m, iter(held), steps=steps, warmup=2, slices=slices, device=dev)
        m = _ours(copy.deepcopy(base), rank, dora=True)
        loader = make_loader(stream(), pin_memory=dev.type == "cuda")
        str_s, _, _ = timed_steps(m, iter(loader), steps=steps, warmup=2, slices=slices, device=dev)
        del loader
        yield (f"streaming ({workers} workers): {clips / str_s:8.1f} clips/s; in memory: {clips / mem_s:8.1f} "
               f"clips/s; ratio {mem_s / str_s:.2f} (target >= 0.90)")

        # 3. feature-cached vs image mode (openpilot student)
        if student_onnx is None:
            yield "feature-cached: skipped (give --student-onnx, the ONNX pair the label set came from)"
            return
        from spark_distill.train.students.openpilot import DEFAULT_TARGETS as OP_TARGETS
        from spark_distill.train.students.openpilot import OpenpilotStudent

        rates = {}
        for images in (True, False):
            torch.manual_seed(0)
            op = OpenpilotStudent.from_onnx([student_onnx])
            apply_adapters(op, targets=OP_TARGETS, rank=rank, alpha=2.0 * rank)
            loader = make_loader(stream(images=images), pin_memory=dev.type == "cuda")
            secs, n, _ = timed_steps(op, iter(loader), steps=steps, warmup=2, slices=slices, device=dev)
            rates[images] = n / secs
            del loader, op
        yield (f"openpilot student: image mode {rates[True]:8.1f} clips/s, feature-cached {rates[False]:8.1f} "
               f"clips/s: {rates[False] / rates[True]:.1f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
