# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The openpilot student of every supported layout is the teacher itself at start: over a segment's first clip it
reproduces the label set made by the label pass (modeld's loop of that era, one implementation); DoRA wraps the
dense layers it should; the feature-cached mode applies to split models only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spark_distill.data.pairs import shard_pairs
from spark_distill.errors import ConfigError
from spark_distill.models.lora import apply_adapters
from spark_distill.models.openpilot import OpenpilotStudent
from tests.models.segment_starts import segment_start_outputs
from tests.releases import CLIP_LEN, LAYOUT_RELEASES, label_set, release_datasets


@pytest.fixture(scope="module")
def root(tici_route, tmp_path_factory) -> Path:
    return release_datasets(tmp_path_factory, tici_route[0])


@pytest.mark.parametrize("layout", list(LAYOUT_RELEASES))
def test_reproduces_the_label_pass_from_a_segment_start(root: Path, layout: str) -> None:
    release = LAYOUT_RELEASES[layout]
    pairs, manifest = shard_pairs(root, label_set(release), split="train", val_fraction=0, seed=0)
    assert manifest["layout"] == layout
    student = OpenpilotStudent.from_onnx([root / "teachers" / release])
    assert student.layout.key == layout and student.combined == (manifest["loop"]["topology"] == "combined")
    checked = 0
    for v, p, tv, tp in segment_start_outputs(student, pairs, manifest, CLIP_LEN):
        assert len(tv) == CLIP_LEN
        assert v.shape[-1] == tv.shape[-1] and p.shape[-1] == tp.shape[-1]
        # the labels are float16: agreement to its precision over frames whose histories (features 4 apart at
        # 5 Hz, 1 apart at 20 Hz, the pooled desire, the own previous curvature) fill up
        np.testing.assert_allclose(v, tv, rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(p, tp, rtol=2e-3, atol=2e-3)
        assert np.abs(tp[1:] - tp[:1]).max() > 1e-3, "the policy output changes along the clip"
        checked += 1
    assert checked == 2, "both segments' first clips compared"


@pytest.mark.parametrize("layout", ["supercombo-5hz", "split"])
def test_dora_targets_and_the_feature_cached_mode(root: Path, layout: str, tmp_path: Path) -> None:
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.setup import feature_cached

    release = LAYOUT_RELEASES[layout]
    student = OpenpilotStudent.from_onnx([root / "teachers" / release])
    targets = student.default_targets
    wrapped = apply_adapters(student, targets=targets, rank=4, alpha=8.0)
    if student.combined:  # one graph: its dense layers (the stand-in's hidden projection, history net and heads)
        assert wrapped == targets and all(n.startswith("model.") for n in wrapped)
        assert len(wrapped) == 3
    else:
        assert wrapped and all(n.startswith("policy.") for n in wrapped)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in student.parameters()) // 10
    manifest = shard_pairs(root, label_set(release), split="train", val_fraction=0, seed=0)[1]
    cfg = TrainConfig(root=root, labels=label_set(release), run="r", runs_dir=tmp_path, student="openpilot",
                      student_onnx=root / "teachers" / release, feature_cached="auto")
    assert feature_cached(cfg, student, manifest) is (not student.combined)
    if student.combined:
        with pytest.raises(ConfigError, match="combined openpilot model"):
            feature_cached(replace(cfg, feature_cached="on"), student, manifest)


@pytest.mark.parametrize("layout", list(LAYOUT_RELEASES))
def test_every_clip_reproduces_the_label_pass_from_the_history_modeld_had(root: Path, layout: str) -> None:
    """Mid-segment clips too, split and combined: the state built from the label set's history (loader.History,
    `state_from_history`) is the one modeld had; the first `pair_skip` frames of a clip, whose earlier image is
    not in the clip, are left out (the burn-in). From the zero state the same clips give other outputs."""
    import torch

    from spark_distill.train.loader import CONTEXT_KEYS, ClipStream, make_loader
    from spark_distill.train.step import Unroll

    release = LAYOUT_RELEASES[layout]
    pairs, manifest = shard_pairs(root, label_set(release), split="train", val_fraction=0, seed=0)
    student = OpenpilotStudent.from_onnx([root / "teachers" / release])
    stream = ClipStream(pairs, manifest, batch=1, clip_len=CLIP_LEN, burn_in=student.pair_skip, seed=0, train=False,
                        mask_warmup=False, history=student.history_frames)
    unroll = Unroll(student).eval()
    mid, off = 0, []
    with torch.no_grad():
        for batch in make_loader(stream):
            keep = batch["mask"][0].numpy()
            args = [batch[k] for k in ("road", "wide", "desire", "traffic", "v_ego", "start")]
            v, p = unroll(*args, delays=batch["delays"], history=tuple(batch[k] for k in CONTEXT_KEYS))
            tv, tp = batch["vision"][0].float().numpy()[keep], batch["policy"][0].float().numpy()[keep]
            # agreement to < 1e-2 (from the zero state: > 5e-2): the history comes from the float16 label set
            # (modeld held it in float32), and the burn-in frames, whose older image is the clip's first, push
            # slightly other features into it (up to 8e-3 on the policy at the first frames past the burn-in)
            np.testing.assert_allclose(v[0].numpy()[keep], tv, rtol=2e-3, atol=1e-2, err_msg=batch["keys"][0])
            np.testing.assert_allclose(p[0].numpy()[keep], tp, rtol=2e-3, atol=1e-2, err_msg=batch["keys"][0])
            if not bool(batch["start"][0]):
                mid += 1
                _, zero = unroll(*args, delays=batch["delays"])
                off.append(float(np.abs(zero[0].numpy()[keep] - tp).max()))
    assert mid >= 4 and max(off) > 0.05, (mid, off)
