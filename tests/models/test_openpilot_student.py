# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The openpilot student is the teacher itself at start: over a segment's first clip it reproduces the
label set (same modeld histories, same zero start); DoRA wraps its policy's dense layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spark_distill.data.pairs import shard_pairs
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.label.run import LabelConfig, label
from spark_distill.models.lora import apply_adapters
from spark_distill.models.openpilot import DEFAULT_TARGETS, OpenpilotStudent
from spark_distill.synth.releases import write_release
from spark_distill.synth.teacher import write_teacher
from spark_distill.train.loader import ClipStream, make_loader
from spark_distill.train.step import Unroll
from tests.models.segment_starts import segment_start_outputs


@pytest.fixture(scope="module", params=["v1", "0.10.3"])  # the project's own layout (split-lateral), 0.10.3's
def labeled(request, tici_route, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(f"op-{request.param}")
    ingest(IngestConfig(inputs=(str(tici_route[0]),), out=root, workers=1, clip_len=10, shard_clips=4))
    if request.param == "v1":
        write_teacher(root / "teacher", seed=4)
    else:
        write_release(root / "teacher", request.param, seed=4)
    label(LabelConfig(root=root, teacher=(root / "teacher",), backend="onnxruntime", batch=2, name="set"))
    return root, root / "teacher"


def test_reproduces_the_teachers_labels_from_a_segment_start(labeled) -> None:
    root, teacher = labeled
    pairs, manifest = shard_pairs(root, "set", split="train", val_fraction=0, seed=0)
    student = OpenpilotStudent.from_onnx([teacher])
    checked = 0
    for v, p, tv, tp in segment_start_outputs(student, pairs, manifest, 10):
        np.testing.assert_allclose(v, tv, rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(p, tp, rtol=2e-3, atol=1e-3)
        checked += 1
    assert checked == 2, "both segments' first clips compared"


def test_dora_targets_the_policy_dense_layers(labeled) -> None:
    _, teacher = labeled
    student = OpenpilotStudent.from_onnx([teacher])
    wrapped = apply_adapters(student, targets=DEFAULT_TARGETS, rank=4, alpha=8.0)
    assert wrapped and all(n.startswith("policy.") for n in wrapped)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in student.parameters()) // 10
    img = torch.zeros(1, 12, 128, 256, dtype=torch.uint8)
    _, p, _ = student(img, img, torch.zeros(1, 8), torch.tensor([[1.0, 0.0]]), student.initial_state(1))
    assert p.shape == (1, student.teacher.policy.width) and torch.isfinite(p).all()


def test_fine_tuning_the_openpilot_student_runs_and_checkpoints(labeled, tmp_path: Path) -> None:
    from spark_distill.models.checkpoint import latest_checkpoint
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    root, teacher = labeled
    cfg = TrainConfig(root=root, labels="set", run="op", runs_dir=tmp_path, student="openpilot", student_onnx=teacher,
                      batch_size=1, max_steps=2, lr=1e-4, warmup_steps=1, burn_in=4, val_fraction=0.5,
                      mask_warmup=False, workers=1, log_every=1, device="cpu", adapter_rank=4, adapter_alpha=8.0)
    result = train(cfg)
    assert result.steps == 2 and result.val_before is not None and np.isfinite(result.val_after)
    assert latest_checkpoint(tmp_path / "op" / "checkpoints") is not None


def test_feature_cached_mode_matches_image_mode_and_skips_images(labeled, tmp_path: Path) -> None:
    """With the vision half frozen, the teacher's stored hidden_state is what the student's own vision computes:
    the policy loss is the same without decoding a single image."""
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train
    from spark_distill.train.losses import LossWeights
    from spark_distill.train.step import loss_step

    root, teacher = labeled
    pairs, manifest = shard_pairs(root, "set", split="train", val_fraction=0, seed=0)
    student = OpenpilotStudent.from_onnx([teacher])
    apply_adapters(student, targets=DEFAULT_TARGETS, rank=4, alpha=8.0)
    unroll = Unroll(student).eval()
    weights = LossWeights(lanes=0, edges=0, lead=0, probs=0)  # policy terms only: vision is not trained here
    losses = {}
    for images in (True, False):
        stream = ClipStream(pairs, manifest, batch=2, clip_len=10, burn_in=4, seed=0, train=False,
                            mask_warmup=False, images=images)
        batch = next(iter(make_loader(stream)))
        assert ("road" in batch) == images
        with torch.no_grad():
            loss, _ = loss_step(unroll, batch, manifest["output_slices"], weights, torch.device("cpu"),
                                lambda: torch.autocast("cpu", enabled=False))
        losses[images] = float(loss)
    assert abs(losses[True] - losses[False]) <= 1e-3 * abs(losses[True]) + 1e-3, losses
    cfg = TrainConfig(root=root, labels="set", run="fc", runs_dir=tmp_path, student="openpilot", student_onnx=teacher,
                      batch_size=1, max_steps=2, warmup_steps=1, burn_in=4, val_fraction=0.5, mask_warmup=False,
                      workers=1, device="cpu", adapter_rank=4, adapter_alpha=8.0)
    result = train(cfg)
    assert result.feature_cached and result.feature_cache_gb is not None, "the clips came from the feature cache"


def test_every_clip_starts_from_the_history_modeld_had(labeled, tici_route, tmp_path: Path) -> None:
    """Given each clip's history from the label set (loader.History, the preceding shard read where a shard starts
    mid-segment), the student reproduces the labels on every clip, not only on a segment's first: the training
    regime is the one modeld runs in. From the zero state a mid-segment clip gives other outputs (the test can
    fail)."""
    from spark_distill.train.loader import CONTEXT_KEYS

    _, teacher = labeled
    root = tmp_path / "ds"  # 3 clips a shard: each segment's 4th clip starts the next shard
    ingest(IngestConfig(inputs=(str(tici_route[0]),), out=root, workers=1, clip_len=10, shard_clips=3))
    label(LabelConfig(root=root, teacher=(teacher,), backend="onnxruntime", batch=2, name="set"))
    pairs, manifest = shard_pairs(root, "set", split="train", val_fraction=0, seed=0)
    assert len(pairs) == 3
    student = OpenpilotStudent.from_onnx([teacher])
    stream = ClipStream(pairs, manifest, batch=1, clip_len=10, burn_in=0, seed=0, train=False, mask_warmup=False,
                        images=False, history=student.history_frames)
    hidden = slice(*manifest["output_slices"]["vision"]["hidden_state"])
    unroll = Unroll(student).eval()
    mid, off = 0, []
    with torch.no_grad():
        for batch in make_loader(stream):
            n = int(batch["mask"][0].sum())
            args = (None, None, batch["desire"], batch["traffic"], batch["v_ego"], batch["start"])
            kw = {"hidden": batch["vision"][..., hidden].float(), "delays": batch["delays"]}
            _, p = unroll(*args, **kw, history=tuple(batch[k] for k in CONTEXT_KEYS))
            want = batch["policy"][0, :n].float().numpy()
            np.testing.assert_allclose(p[0, :n].numpy(), want, rtol=2e-3, atol=1e-3, err_msg=batch["keys"][0])
            if not bool(batch["start"][0]):
                mid += 1
                _, zero = unroll(*args, **kw)
                off.append(float(np.abs(zero[0, :n].numpy() - want).max()))
    assert mid >= 4 and max(off) > 0.05, (mid, off)
