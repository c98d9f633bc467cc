# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A fresh built-in student's heads started at the label set's mean outputs (`TrainConfig.head_init`).

The teacher's raw outputs are metres (a plan reaches ~200 m at 10 s), a fresh head outputs ~0 and AdamW
moves a bias by about the learning rate per step: without this a short run spends all of its steps
walking the biases towards the right scale. `label-mean` is the default; `random` keeps PyTorch's init; a
trained student (openpilot's, or a run) keeps its heads. Entry point: `label_means(pairs, manifest,
clip_len)`, read from the label shards alone (no image is touched), over at most `max_clips` clips past each
segment's teacher warm-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spark_distill.data import shards
from spark_distill.data.pairs import ShardPair

HEAD_INITS = ("random", "label-mean")


def label_means(pairs: list[ShardPair], manifest: dict[str, Any], clip_len: int, *, max_clips: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean vision vector, mean policy vector) float32 over the pairs' clips whose frames are past the teacher
    warm-up (all clips where none is), each entry over its finite values only: a label set from a log has NaN
    rows (frames without a message) and NaN columns (heads the log does not carry, whose mean is 0)."""
    warmup = int(manifest["warmup_frames"])
    late: list[tuple[np.ndarray, np.ndarray]] = []
    early: list[tuple[np.ndarray, np.ndarray]] = []
    for pair in pairs:
        wanted = set(pair.keys)
        for raw in shards.iter_shard(pair.labels, shards.LABEL_MEMBERS):
            if raw["__key__"] not in wanted:
                continue
            lab = shards.decode_sample(raw)
            _, clip = shards.split_clip_key(raw["__key__"])
            (late if clip * clip_len >= warmup else early).append((lab["vision"], lab["policy"]))
            if len(late) >= max_clips:
                break
        if len(late) >= max_clips:
            break
    chosen = late or early
    means = []
    for k in range(2):
        rows = np.concatenate([c[k] for c in chosen]).astype(np.float64)  # (frames, width)
        finite = np.isfinite(rows)
        counts = finite.sum(0)
        sums = np.where(finite, rows, 0.0).sum(0)
        means.append(torch.from_numpy(np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)).float())
    return means[0], means[1]
