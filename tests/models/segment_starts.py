# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The openpilot student run over each segment's first clip beside its labels: what the reproduce-the-label-pass
tests compare (one loop for every contract and release)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from spark_distill.train.loader import ClipStream, make_loader
from spark_distill.train.step import Unroll


def segment_start_outputs(student: torch.nn.Module, pairs: Any, manifest: dict[str, Any], clip_len: int
                          ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(student vision, student policy, label vision, label policy) over the masked frames of every clip that starts
    a segment, the student unrolled from its zero state as modeld starts."""
    stream = ClipStream(pairs, manifest, batch=1, clip_len=clip_len, burn_in=0, seed=0, train=False,
                        mask_warmup=False)
    unroll = Unroll(student).eval()
    with torch.no_grad():
        for batch in make_loader(stream):
            if not bool(batch["start"][0]):
                continue
            v, p = unroll(batch["road"], batch["wide"], batch["desire"], batch["traffic"], batch["v_ego"],
                          batch["start"], delays=batch["delays"])  # each frame's, as the label pass fed them
            n = int(batch["mask"][0].sum())
            yield (v[0, :n].numpy(), p[0, :n].numpy(), batch["vision"][0, :n].float().numpy(),
                   batch["policy"][0, :n].float().numpy())
