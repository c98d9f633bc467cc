# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Defaults that adapt to the data: workers, batch, warm-up mask, validation split, micro-batches, and a first
training run on the smallest dataset a user makes (one short segment) with default options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.data.index import ClipRef, SegmentPlan
from spark_distill.data.pairs import ShardPair, val_clips
from spark_distill.errors import ConfigError
from spark_distill.models.restore import build_architecture
from spark_distill.train import sizing
from spark_distill.train.config import TrainConfig
from spark_distill.train.sizing import TrainingData, fit_to_data, fit_to_memory, measure_memory, sized_as
from spark_distill.train.step import Unroll, make_autocast


def _pair(shard: int, segment: str, clips: range) -> ShardPair:
    return ShardPair(f"s{shard}", Path(f"s{shard}"), Path(f"l{shard}"), tuple(f"{segment}--c{c:05d}" for c in clips))


def _data(train: list[ShardPair], val: list[ShardPair] = (), frames: int = 400, clip_len: int = 20) -> TrainingData:
    segments = {k.rsplit("--c", 1)[0] for p in (*train, *val) for k in p.keys}
    return TrainingData(list(train), list(val), clip_len, dict.fromkeys(segments, frames), 100)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**({"root": Path("ds"), "labels": "x", "run": "r"} | kw))


def test_a_single_segment_holds_out_its_last_clips() -> None:
    one = [SegmentPlan("a", tuple(ClipRef(0, f"a--c{i:05d}") for i in range(10)))]
    assert val_clips(one, fraction=0.1, seed=0) == {"a--c00009"}
    assert val_clips(one, fraction=0.35, seed=0) == {"a--c00006", "a--c00007", "a--c00008", "a--c00009"}
    assert val_clips(one, fraction=0.0, seed=0) == set()
    lone = [SegmentPlan("a", (ClipRef(0, "a--c00000"),))]
    assert val_clips(lone, fraction=0.5, seed=0) == set(), "a segment of one clip trains"
    two = [SegmentPlan(n, (ClipRef(0, f"{n}--c00000"), ClipRef(0, f"{n}--c00001"))) for n in ("a", "b")]
    held = val_clips(two, fraction=0.1, seed=0)
    assert len(held) == 2 and len({k.split("--")[0] for k in held}) == 1, "several segments: whole segments"


def test_workers_and_batch_are_capped_by_what_the_shards_feed() -> None:
    cfg, notes = fit_to_data(_cfg(workers=2, batch_size=32), _data([_pair(0, "a", range(9))]))
    assert (cfg.workers, cfg.batch_size) == (1, 9)
    assert any("--workers 2 -> 1" in n for n in notes) and any("--batch-size 32 -> 9" in n for n in notes)
    cfg, notes = fit_to_data(_cfg(workers=2, batch_size=4), _data([_pair(i, "a", range(10 * i, 10 * i + 10))
                                                                   for i in range(4)]))
    assert (cfg.workers, cfg.batch_size, notes) == (2, 4, []), "what fits is left alone"
    cfg, notes = fit_to_data(_cfg(batch_size=4, grad_accum=8), _data([_pair(0, "a", range(9))]))
    assert cfg.grad_accum == 2 and any("--grad-accum 8 -> 2" in n for n in notes), "an epoch must take a step"
    with pytest.raises(ConfigError, match="cannot feed 4 ranks"):
        fit_to_data(_cfg(world=4), _data([_pair(0, "a", range(9))]))


def test_warmup_mask_is_dropped_only_where_it_leaves_nothing() -> None:
    short = _data([_pair(0, "a", range(3))], [_pair(1, "b", range(3))], frames=60)  # 3 s segments, 5 s warm-up
    cfg, notes = fit_to_data(_cfg(), short)
    assert cfg.mask_warmup is False and any("warm-up mask off" in n for n in notes)
    long = _data([_pair(0, "a", range(8))], [_pair(1, "b", range(8))], frames=160)  # 8 s: 3 s past the warm-up
    cfg, notes = fit_to_data(_cfg(), long)
    assert cfg.mask_warmup is True and not any("mask" in n for n in notes)


def test_warmup_steps_and_learning_rate_follow_the_schedule_and_adapter() -> None:
    cfg, _ = fit_to_data(_cfg(batch_size=4, epochs=10), _data([_pair(0, "a", range(16))]))
    assert cfg.warmup_steps == 4, "10% of 10 epochs x 4 steps"
    cfg, _ = fit_to_data(_cfg(batch_size=1, epochs=100), _data([_pair(0, "a", range(16))]))
    assert cfg.warmup_steps == 100, "at most 100"
    assert (_cfg().adapter, _cfg().lr) == ("none", 1e-3), "a built-in student from random weights trains fully"
    assert (_cfg(student="compact-xs", adapter="dora").lr) == 5e-4
    assert _cfg(lr=0.01).lr == 0.01


def test_micro_batches_where_activations_do_not_fit(labeled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spark_distill.data import shards

    slices = shards.read_manifest(labeled / "labels" / "set", shards.LABELS_FORMAT)["output_slices"]
    student, _ = build_architecture({"kind": "compact", "preset": "compact-xs"}, slices)
    unroll, cpu = Unroll(student), torch.device("cpu")
    autocast = make_autocast(cpu, "auto")
    frozen = sizing.activation_bytes(unroll, clip_len=4, device=cpu, autocast=autocast)
    for p in student.parameters():
        p.requires_grad_(False)
    assert sizing.activation_bytes(unroll, clip_len=4, device=cpu, autocast=autocast) < frozen / 5, \
        "a frozen backbone saves no activations"
    for p in student.parameters():
        p.requires_grad_(True)
    per_clip = sizing.activation_bytes(unroll, clip_len=4, device=cpu, autocast=autocast)
    monkeypatch.setattr(sizing, "free_memory", lambda device: int(per_clip * 6.5))  # room for 3 clips
    memory = measure_memory(unroll, clip_len=4, device=cpu, autocast=autocast)
    assert memory.free == int(per_clip * 6.5) and memory.per_clip > 0
    cfg, notes = fit_to_memory(_cfg(batch_size=8, grad_accum=2), memory)
    assert (cfg.batch_size, cfg.grad_accum) == (2, 6) and "8 -> 2 clips x 3 accumulated" in notes[0]
    monkeypatch.setattr(sizing, "free_memory", lambda device: int(per_clip * 10.5))  # room for 5 of 9 clips
    cfg, _ = fit_to_memory(_cfg(batch_size=9), measure_memory(unroll, clip_len=4, device=cpu, autocast=autocast))
    assert (cfg.batch_size, cfg.grad_accum) == (4, 2), "two micro-batches of 4 fit in the 9 clips a worker has"
    monkeypatch.setattr(sizing, "free_memory", lambda device: per_clip * 100)
    assert fit_to_memory(_cfg(batch_size=8), measure_memory(unroll, clip_len=4, device=cpu, autocast=autocast))[1] == []


def _tensors_with_a_graph() -> int:
    import gc

    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor) and o.grad_fn is not None)


def test_the_activation_probe_keeps_no_graph(labeled: Path) -> None:
    """The probe's graph is freed with its outputs: a pack hook that kept the tensor itself made a reference cycle
    that held 320 of its tensors (and the gradient accumulators it made on the default stream, which the H100's
    training-step capture then refused) for the whole run."""
    from spark_distill.data import shards

    slices = shards.read_manifest(labeled / "labels" / "set", shards.LABELS_FORMAT)["output_slices"]
    student, _ = build_architecture({"kind": "compact", "preset": "compact-xs"}, slices)
    unroll, cpu = Unroll(student), torch.device("cpu")
    before = _tensors_with_a_graph()
    assert sizing.activation_bytes(unroll, clip_len=4, device=cpu, autocast=make_autocast(cpu, "fp32")) > 1e6
    assert _tensors_with_a_graph() == before


def test_resume_keeps_the_recorded_sizing(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("batch_size: 3\ngrad_accum: 4\nworkers: 1\nlr: 0.5\n")
    cfg = sized_as(_cfg(batch_size=32, workers=2, lr=0.1), tmp_path / "config.yaml")
    assert (cfg.batch_size, cfg.grad_accum, cfg.workers, cfg.lr) == (3, 4, 1, 0.1)
    (tmp_path / "config.yaml").write_text("[torn")
    with pytest.raises(ConfigError, match="unreadable"):
        sized_as(_cfg(), tmp_path / "config.yaml")


def test_first_run_on_one_short_segment_with_default_options(faulty_routes, tmp_path: Path) -> None:
    """One 2 s segment (shorter than the 5 s warm-up), default options: it trains and reports validation."""
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.teacher import write_teacher

    root = tmp_path / "ds"
    ingest(IngestConfig(inputs=(str(faulty_routes["missing-wide"][0]),), out=root, workers=1, clip_len=10))
    write_teacher(tmp_path / "t", seed=1)
    label(LabelConfig(root=root, teacher=(tmp_path / "t",), backend="onnxruntime", name="set"))
    r = CliRunner().invoke(app, ["train", str(root), "--labels", "set", "--runs-dir", str(tmp_path / "runs"),
                                 "--max-steps", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for said in ("--batch-size 32 -> 3", "warm-up mask off"):
        assert said in r.output, (said, r.output)
    assert "--workers" not in r.output, "auto workers are fitted to the one shard without a note"
    run = tmp_path / "runs" / "set-compact-none"
    assert "\nworkers: 1\n" in (run / "config.yaml").read_text(), "the resolved count is what a resume reads"
    import json

    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(val) == 2 and all(v["loss"] > 0 for v in val), "validation before and after, on the held-out tail"


def test_auto_workers_take_the_cores_beside_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from spark_distill.processes import worker_budget

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert worker_budget(accelerator=True) == 14 and worker_budget(accelerator=False) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks share the 16 cores
    assert worker_budget(accelerator=True) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert worker_budget(accelerator=True) == worker_budget(accelerator=False) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    many = [_pair(i, "a", range(10 * i, 10 * i + 10)) for i in range(20)]
    cfg, notes = fit_to_data(_cfg(device="cuda", batch_size=4), _data(many))
    assert (cfg.workers, notes) == (14, []), "--workers 0 (the default) resolves into the run's config"
    assert fit_to_data(_cfg(device="cpu", batch_size=4), _data(many))[0].workers == 2
    cfg, notes = fit_to_data(_cfg(device="cuda", batch_size=4), _data(many[:5]))
    assert (cfg.workers, notes) == (5, []), "auto is capped by the shards without a note"


def test_on_gpu_reads_the_device_asked_for_and_defaults_to_what_the_machine_has() -> None:
    from spark_distill.processes import on_gpu

    assert on_gpu("cuda") and on_gpu("cuda:1") and not on_gpu("cpu")
    assert on_gpu(None) == torch.cuda.is_available()
