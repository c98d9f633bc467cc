# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Which delays modeld's loop feeds each segment: the ones ingest read from its log (frames manifest `delays`,
each clip's meta.json `lat_delay` per frame and `long_delay`), openpilot's defaults where the log had none, or the
label pass's `--lat-delay` / `--long-delay` overrides for every segment. To a log's delays modeld adds its release's
smoothing seconds (`Layout.smooth`: 0.10.1+ LONG_SMOOTH_SECONDS 0.3 ...); an override is the value fed as it is. The
label pass, the openpilot student's training and eval all take them from here, so they feed what the labels were made
with. Main entry points:
`DelayChoice` (`.of_labels(manifest)`), `.clip` / `.per_frame`, `.record`; `summary` for the label pass's table.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from spark_distill.openpilot.releases import DEFAULT_LAT_DELAY, DEFAULT_LONG_DELAY

OVERRIDE_LAT, OVERRIDE_LONG = "--lat-delay", "--long-delay"
NOT_INGESTED = "default (the frames dataset predates per-segment delays)"


@dataclass(frozen=True)
class DelayChoice:
    """The overrides of a label pass (None: each segment's own, from its log) and the release's smoothing seconds
    (lateral, longitudinal) added to a log's delays."""

    lat: float | None = None
    long: float | None = None
    smooth: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def of_labels(cls, manifest: dict[str, Any]) -> DelayChoice:
        """The overrides a label set was made with (its manifest's `lat_delay` / `long_delay`; a set from before
        per-segment delays recorded the one pair it fed every segment) and its `smooth_seconds` (a set from before
        them: none added)."""
        lat, long = manifest.get("lat_delay"), manifest.get("long_delay")
        smooth = manifest.get("smooth_seconds") or (0.0, 0.0)
        return cls(None if lat is None else float(lat), None if long is None else float(long),
                   (float(smooth[0]), float(smooth[1])))

    def clip(self, meta: dict[str, Any], n: int) -> tuple[np.ndarray, float]:
        """(lateral delay fed at each of the clip's `n` frames (n,) float32, its longitudinal delay fed): the log's
        plus the smoothing seconds, or the override."""
        if self.lat is not None:
            lat = np.full(n, self.lat, np.float32)
        else:
            logged = np.asarray(meta.get("lat_delay", [DEFAULT_LAT_DELAY] * n), np.float64)[:n]
            lat = (logged + self.smooth[0]).astype(np.float32)
        if self.long is not None:
            return lat, float(self.long)
        return lat, float(meta.get("long_delay", DEFAULT_LONG_DELAY)) + self.smooth[1]

    def per_frame(self, meta: dict[str, Any]) -> np.ndarray:
        """(n, 2) float32 [lateral, longitudinal] delay fed at each of the clip's frames (`clip`'s, stacked)."""
        n = len(meta["frame_ids"])
        lat, long = self.clip(meta, n)
        return np.stack([lat, np.full(n, long, np.float32)], 1)

    def record(self, segment: dict[str, Any]) -> dict[str, Any]:
        """The label manifest's `delays` of one frames-manifest `segment` entry: what was fed and where it came from."""
        found = segment.get("delays") or {}
        lat: dict[str, Any] = ({"value": self.lat, "source": OVERRIDE_LAT} if self.lat is not None else
                               {"value": found.get("lat_delay", DEFAULT_LAT_DELAY),
                                "source": found.get("lat_source", NOT_INGESTED)})
        if self.lat is None and "lat_range" in found:
            lat["range"], lat["per_frame"] = found["lat_range"], True
        long = ({"value": self.long, "source": OVERRIDE_LONG} if self.long is not None else
                {"value": found.get("long_delay", DEFAULT_LONG_DELAY),
                 "source": found.get("long_source", NOT_INGESTED)})
        return {"lat_delay": lat, "long_delay": long}


def summary(records: Iterable[dict[str, Any]]) -> str:
    """One line of what `DelayChoice.record` says was fed, counted over segments: "lateral: liveDelay.lateralDelay
    x2, default x1; longitudinal: --long-delay 0.2 x3"."""
    records = list(records)
    parts = []
    for key, name in (("lat_delay", "lateral"), ("long_delay", "longitudinal")):
        counts = collections.Counter(r[key]["source"] + (f" {r[key]['value']:g}" if r[key]["source"].startswith("--")
                                                         else "") for r in records)
        parts.append(f"{name}: " + ", ".join(f"{source} x{n}" for source, n in counts.most_common()))
    return "; ".join(parts)
