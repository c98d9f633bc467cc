# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""`spark-distill bench train`: the training step as `train()` runs it (batched vision half, compiled halves
where --compile says, the whole step captured as one CUDA graph where --capture says, bf16 autocast and
channels-last on CUDA, fused AdamW, grad clipping), in one process:

1. Students and adapters on the same in-memory batches: each --student with our DoRA, then for the last one
   our DoRA compiled but not captured and eager (neither: what each buys), our LoRA, PEFT's DoRA, and
   training fully (--adapter none, its own batch size): ms/step, frames/s, GFLOP per clip
   (torch.utils.flop_counter), TFLOP/s and MFU; the `step` column says how each row's step ran.
2. Streaming: that student's DoRA step fed by the loader (workers, decode, collate) against the same step on
   batches already in memory (target >= 0.9).
3. The openpilot student: image mode from the loader against feature-cached from the feature cache (as train()
   runs each; the same policy adapters).
Without a dataset it writes one (textured frames, a stand-in teacher, a label pass) in a scratch folder,
sized for the batches the run needs. A row that fails reports its error and the others still run.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spark_distill.bench import scratch_dir
from spark_distill.data import shards
from spark_distill.data.pairs import shard_pairs
from spark_distill.errors import ConfigError
from spark_distill.models.compact import DEFAULT_TARGETS, PRESETS, CompactStudent
from spark_distill.models.lora import apply_adapters
from spark_distill.processes import worker_budget
from spark_distill.progress import Stages
from spark_distill.train.cache import FeatureCache
from spark_distill.train.capture import CapturedStep, make_captured_optimizer, set_lr, use_capture
from spark_distill.train.flops import count_flops, first_clips, mfu, peak_tflops
from spark_distill.train.loader import ClipStream, make_loader
from spark_distill.train.losses import LossWeights
from spark_distill.train.step import (
    Unroll,
    freeze_norms,
    loss_step,
    make_autocast,
    make_optimizer,
    on_device,
    optimizer_step,
    use_compile,
)

WARMUP = 3  # untimed steps first: the compile happens in the first; a captured step's capture in the third


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measured:
    seconds: float
    clips: int
    frames: int
    flops_per_clip: int
    peak_gb: float | None


class Stepper:
    """The training step on one student (what train() runs per batch, without its bookkeeping)."""

    def __init__(self, student: nn.Module, *, slices: dict, device: torch.device, compiled: bool,
                 captured: bool = False) -> None:
        self.student, self.slices, self.device, self.compiled = student, slices, device, compiled
        if device.type == "cuda":
            student.to(memory_format=torch.channels_last)
        student.to(device)
        self.model = Unroll(student, channels_last=device.type == "cuda")
        if compiled:
            torch._dynamo.reset()  # each row's own graphs, within the recompile limit
            self.model.compile_halves()
        self.model.train()
        freeze_norms(student)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.autocast, self.weights = make_autocast(device, "auto"), LossWeights()
        self.captured = None
        if captured:
            self.opt = make_captured_optimizer(self.params, lr=1e-5, weight_decay=0.01, device=device)
            self.captured = CapturedStep(self.model, self.params, self.opt, slices=slices, weights=self.weights,
                                         autocast=make_autocast(device, "auto", cache=False), grad_clip=1.0,
                                         device=device)
        else:
            self.opt = make_optimizer(self.params, lr=1e-5, weight_decay=0.01, device=device)

    def __call__(self, batch: dict) -> None:
        if self.captured is not None:  # as train() runs it, less its one read of the loss
            set_lr(self.opt, 1e-5)
            self.captured(batch)
            return
        loss, _ = loss_step(self.model, batch, self.slices, self.weights, self.device, self.autocast)
        if loss is not None:
            loss.backward()
        optimizer_step(self.opt, self.params, lr=1e-5, grad_clip=1.0)

    def mode(self) -> str:
        """How the step ran: captured as one CUDA graph (or the fixed-shape step eagerly, on CPU or after a failed
        capture), compiled halves, or eager."""
        parts = ["compiled"] if self.compiled else []
        if self.captured is not None:
            parts.append("graph" if self.captured.graphed else "fixed, no graph" if self.captured.failed is None
                         else "capture failed")
        return "+".join(parts) or "eager"

    def flops_per_clip(self, batch: dict) -> int:
        """FLOPs of one step on the batch's first clip (the eager halves: the same arithmetic)."""
        eager = Unroll(self.student)

        def one() -> None:
            loss, _ = loss_step(eager, first_clips(batch, 1), self.slices, self.weights, self.device, self.autocast)
            if loss is not None:
                loss.backward()

        grads = [p.grad for p in self.params]  # a captured step's gradients are the graph's static buffers
        for p in self.params:
            p.grad = None
        flops = count_flops(one)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        return flops

    def timed(self, batches: Iterable[dict], *, steps: int) -> Measured:
        """`steps` timed steps after WARMUP untimed ones."""
        it = on_device(batches, self.device)
        clips = frames = 0
        first = None
        for i in range(WARMUP + steps):
            if i == WARMUP:
                _sync(self.device)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                start = time.perf_counter()
            batch = next(it)
            first = first or batch
            self(batch)
            if i >= WARMUP:
                clips += len(batch["keys"])
                frames += int(batch["mask"].numel())
        _sync(self.device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else None
        return Measured(seconds, clips, frames, self.flops_per_clip(first), peak)


def _cycle(batches: list[dict]) -> Iterator[dict]:
    while True:
        yield from batches


def _ours(student: nn.Module, rank: int, *, dora: bool) -> nn.Module:
    apply_adapters(student, targets=DEFAULT_TARGETS, rank=rank, alpha=2.0 * rank, dora=dora)
    return student


def _full(student: nn.Module) -> nn.Module:
    for p in student.parameters():
        p.requires_grad_(True)
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


def segments_needed(*, batch: int, steps: int, workers: int, seconds: float, clip_len: int) -> int:
    """Synthetic segments for the streaming run: every loader worker yields the same number of batches, and
    WARMUP + steps of them are read (5% spare for the uneven deal of 4-clip shards)."""
    clips = workers * math.ceil((WARMUP + steps) / workers) * batch
    per_segment = max(1, round(seconds * 20) // clip_len)
    return math.ceil(1.05 * clips / per_segment) + 1


def _row(name: str, batch: int, m: Measured, peak: float | None, mode: str) -> str:
    ms = m.seconds / (m.clips / batch) * 1000
    tflops = m.flops_per_clip * m.clips / m.seconds / 1e12
    util = mfu(tflops * 1e12, peak)
    mem = f"{m.peak_gb:7.2f}" if m.peak_gb is not None else "    CPU"
    return (f"  {name:26s} {batch:5d} {ms:9.1f} {m.frames / m.seconds:10.0f} {m.flops_per_clip / 1e9:10.2f} "
            f"{tflops:8.3f} {'n/a' if util is None else f'{100 * util:.2f}%':>7s} {mem}  {mode}")


def bench_train(*, root: Path | None = None, labels: str | None = None, student_onnx: Path | None = None,
                students: tuple[str, ...] = ("compact-xs", "compact"), batch: int = 128, full_batch: int = 32,
                steps: int = 5, adapter_rank: int = 16, workers: int = 0,
                segments: int | None = None, seconds: float = 6.0, device: str | None = None,
                compile: str = "auto", capture: str = "auto", peak: float | None = None,
                openpilot_size: str = "bench", workdir: Path | None = None,
                streaming_only: bool = False, repeat: int = 1,
                on_progress: Callable[[int, int, str], None] | None = None) -> Iterator[str]:
    """Run the benchmark; yields report lines. `streaming_only`: the last student's DoRA row and its
    streaming row, nothing else. `repeat`: the dataset's shards read that many times over (a small dataset
    standing for a large one: every clip the loader yields is still read and decoded). `on_progress(rows
    done, rows, the row now)`."""
    if not students or any(p not in PRESETS for p in students):
        raise ConfigError(f"--student {','.join(students)}: choose {' or '.join(PRESETS)} (comma-separated for both)")
    if full_batch > batch or min(batch, full_batch, steps, repeat) < 1 or workers < 0:
        raise ConfigError("--full-batch-size must be <= --batch-size; sizes, --steps and --repeat >= 1, "
                          "--workers >= 0")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = workers or worker_budget(accelerator=dev.type == "cuda")  # 0: auto, as train resolves it
    compiled = use_compile(compile, dev)
    captured = use_capture(capture, dev)[0]
    peak = peak_tflops(dev, peak)
    step = Stages(on_progress, 1 + (root is None))  # the rows are counted once they are known
    scratch = scratch_dir(workdir, "bench-train-")
    try:
        cached_note = "given dataset (page cache: as the machine left it)"
        if root is None:
            step("writing and labeling the synthetic dataset")
            n = segments or segments_needed(batch=batch, steps=steps, workers=workers, seconds=seconds, clip_len=20)
            started = time.perf_counter()
            root, labels, _ = ensure_dataset(scratch, segments=n, seconds=seconds, clip_len=20)
            cached_note = (f"{n} synthetic {seconds:g} s segments written and labeled by this run in "
                           f"{time.perf_counter() - started:.0f} s (in the page cache)")
        elif labels is None:
            raise ConfigError("--labels is needed with a dataset root")
        pairs, manifest = shard_pairs(root, labels, split="train", val_fraction=0)
        pairs = pairs * repeat
        clip_len = int(shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)["settings"]["clip_len"])
        slices = manifest["output_slices"]
        where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        yield (f"device {where} | torch {torch.__version__} | compile {'on' if compiled else 'off'} | capture "
               f"{'on' if captured else 'off'} | "
               f"{'bf16 autocast, channels-last' if dev.type == 'cuda' else 'fp32'} | peak "
               f"{'n/a' if peak is None else f'{peak:g} TFLOP/s dense bf16'} | clips of {clip_len} frames | "
               f"{steps} timed steps after {WARMUP}")
        yield f"dataset: {cached_note}" + (f"; its shards read {repeat} times over" if repeat > 1 else "")

        def stream(images: bool = True, w: int = workers) -> ClipStream:
            return ClipStream(pairs, manifest, batch=batch, clip_len=clip_len, burn_in=min(5, clip_len - 1), seed=0,
                              workers=w, mask_warmup=False, images=images)

        if len(stream(w=1)) < 2 or len(stream()) < WARMUP + steps:
            raise ConfigError(f"the dataset gives {len(stream())} batches of {batch} clips to {workers} workers; "
                              f"--steps {steps} needs {WARMUP + steps} (more segments or a smaller --batch-size)")
        held = [b for _, b in zip(range(2), make_loader(stream(w=1), pin_memory=dev.type == "cuda"), strict=False)]
        held_full = [first_clips(b, full_batch) for b in held]
        vision = {k: slice(*v) for k, v in slices["vision"].items()}
        policy = {k: slice(*v) for k, v in slices["policy"].items()}

        def student(preset: str) -> CompactStudent:
            torch.manual_seed(0)
            return CompactStudent(PRESETS[preset](), vision, policy)

        def attempt(name: str, run: Callable[[], str]) -> str:
            try:
                return run()
            except Exception as e:  # one failed row must not lose the others of a GPU run
                return f"  {name:26s} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()

        yield "1. students and adapters, batches in memory:"
        yield f"  {'row':26s} {'clips':>5s} {'ms/step':>9s} {'frames/s':>10s} {'GFLOP/clip':>10s} {'TFLOP/s':>8s} " \
              f"{'MFU':>7s} {'peak GB':>7s}  step"
        main = students[-1]  # the student of the comparison rows
        Row = tuple[str, Callable[[], nn.Module], int, bool, bool]  # name, student, clips, compiled, captured

        def ours(preset: str, dora: bool = True) -> nn.Module:
            return _ours(student(preset), adapter_rank, dora=dora)

        rows: list[Row] = [(f"{p} our DoRA", lambda p=p: ours(p), batch, compiled, captured)
                           for p in (students[-1:] if streaming_only else students)]
        if not streaming_only:
            if captured and compiled:  # the step before capture, for the gain
                rows.append((f"{main} our DoRA uncaptured", lambda: ours(main), batch, True, False))
            if compiled or captured:
                rows.append((f"{main} our DoRA eager", lambda: ours(main), batch, False, False))
            rows.append((f"{main} our LoRA", lambda: ours(main, dora=False), batch, compiled, captured))
            try:
                import peft  # noqa: F401

                rows.append((f"{main} PEFT DoRA", lambda: _peft(student(main), DEFAULT_TARGETS, adapter_rank,
                                                                2.0 * adapter_rank, True), batch, compiled, captured))
            except ImportError:
                yield "  peft is not installed: PEFT row skipped"
            rows.append((f"{main} full (none)", lambda: _full(student(main)), full_batch, compiled, captured))
        op_rows = 0 if streaming_only or (student_onnx is None and not (scratch / "ds").exists()) else 2
        step.total = step.done + 1 + len(rows) + op_rows
        rates: dict[str, float] = {}
        streamed = "2. streaming: not measured (the DoRA row failed)"

        def streaming(step: Stepper) -> str:  # the same step (already compiled) fed by the loader
            loader = make_loader(stream(), pin_memory=dev.type == "cuda")
            m = step.timed(iter(loader), steps=steps)
            del loader
            rate = m.clips / m.seconds
            return (f"2. streaming ({workers} workers): {rate:8.1f} clips/s; in memory: {rates['in memory']:8.1f} "
                    f"clips/s; ratio {rate / rates['in memory']:.2f} (target >= 0.90)")

        for name, build, size, comp, capt in rows:

            def run(name: str = name, build: Any = build, size: int = size, comp: bool = comp, capt: bool = capt
                    ) -> str:
                nonlocal streamed
                s = Stepper(build(), slices=slices, device=dev, compiled=comp, captured=capt)
                m = s.timed(_cycle(held if size == batch else held_full), steps=steps)
                rates[name] = m.frames / m.seconds
                if name == f"{main} our DoRA":
                    rates["in memory"] = m.clips / m.seconds
                    streamed = attempt("streaming", lambda: streaming(s))
                return _row(name, size, m, peak, s.mode())

            step(name + (" (and streaming)" if name == f"{main} our DoRA" else ""))
            yield attempt(name, run)
        dora, lora, theirs = (rates.get(f"{main} {k}") for k in ("our DoRA", "our LoRA", "PEFT DoRA"))
        if dora and lora:
            yield f"  our DoRA step / our LoRA step: {lora / dora:.2f} (target <= 1.30)" + (
                f"; PEFT DoRA step / our DoRA step: {dora / theirs:.2f}" if theirs else "")
        yield streamed
        if streaming_only:
            step.end()
            return

        # 3. feature-cached vs image mode (openpilot student), both from the loader
        if student_onnx is None and (scratch / "ds").exists():  # our own dataset: our own stand-in
            from spark_distill.synth.teacher import write_teacher

            student_onnx = scratch / "openpilot"
            write_teacher(student_onnx, size=openpilot_size)
        if student_onnx is None:
            yield "3. feature-cached: skipped (give --student-onnx, the ONNX pair the label set came from)"
            step.end()
            return
        from spark_distill.models.openpilot import DEFAULT_TARGETS as OP_TARGETS
        from spark_distill.models.openpilot import OpenpilotStudent

        yield (f"3. openpilot student ({student_onnx.name}), DoRA r{adapter_rank} on its policy; image mode from the "
               "loader, feature-cached from the feature cache:")
        op_rates: dict[bool, float] = {}
        for images in (True, False):

            def op_run(images: bool = images) -> str:
                torch.manual_seed(0)
                op = OpenpilotStudent.from_onnx([student_onnx])
                apply_adapters(op, targets=OP_TARGETS, rank=adapter_rank, alpha=2.0 * adapter_rank)
                note = ""
                if images:
                    batches: Iterable[dict] = make_loader(stream(), pin_memory=dev.type == "cuda")
                else:  # as train() runs it: the clips decoded once into device memory (train/cache.py)
                    started = time.perf_counter()
                    cache = FeatureCache.fill(stream(images=False), device=dev, workers=workers)
                    if cache is None:
                        batches = make_loader(stream(images=False), pin_memory=dev.type == "cuda")
                        note = " (streamed: the cache does not fit)"
                    else:
                        batches = (b for e in itertools.count() for b in cache.batches(e))
                        note = (f" (cache: {len(cache.rows)} clips, {cache.nbytes / 1e9:.2f} GB, filled in "
                                f"{time.perf_counter() - started:.1f} s)")
                s = Stepper(op, slices=slices, device=dev, compiled=compiled, captured=captured)
                m = s.timed(iter(batches), steps=steps)
                del batches
                op_rates[images] = m.clips / m.seconds
                return _row("image mode" if images else "feature-cached", batch, m, peak, s.mode()) + note

            step("openpilot student, " + ("image mode" if images else "feature-cached"))
            yield attempt("image mode" if images else "feature-cached", op_run)
        if len(op_rates) == 2:
            yield (f"  openpilot student: image mode {op_rates[True]:8.1f} clips/s, feature-cached "
                   f"{op_rates[False]:8.1f} clips/s: {op_rates[False] / op_rates[True]:.1f}x (target >= 10)")
        step.end()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
