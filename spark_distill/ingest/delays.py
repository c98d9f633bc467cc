# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The delays modeld feeds, from a segment's own log. Main entry point: `SegmentDelays.from_log(log)`.

- lateral: what modeld reads each frame, `sm["liveDelay"].lateralDelay` (+ LAT_SMOOTH_SECONDS: 0.0 in 0.10.0's
  modeld.py): the liveDelay value in force at each frame (the segment's first value before its first message: lagd
  publishes ~4 Hz and the value carries over from the previous segment). A log without liveDelay (older releases,
  or a fork without lagd): `carParams.steerActuatorDelay + 0.2`, lagd's own first estimate and the 2024 supercombo
  modeld's lateral delay; without carParams either, DEFAULT_LAT_DELAY.
- longitudinal: `carParams.longitudinalActuatorDelay` (older logs: `longitudinalActuatorDelayUpperBound`, the same
  field) (+ LONG_SMOOTH_SECONDS: 0.0 there); without carParams, DEFAULT_LONG_DELAY (openpilot's own default,
  `get_std_params`: "use .15s for now").
The smoothing seconds are modeld constants of each release, not log values, and are not added here: later modeld
sources (the action_t era) are seen with LONG_SMOOTH_SECONDS 0.3 and LAT_SMOOTH_SECONDS 0.0 or 0.1.
`record()` is the frames manifest's per-segment `delays` (docs/formats.md); each clip's meta.json carries its
frames' values (`lat_delay` per frame, `long_delay`), which the label pass feeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spark_distill.ingest.logs import LAGD_INITIAL_EXTRA, LogData, Stream
from spark_distill.openpilot.releases import DEFAULT_LAT_DELAY, DEFAULT_LONG_DELAY

LAT_LIVE = "liveDelay.lateralDelay"
LAT_CAR = "carParams.steerActuatorDelay + 0.2"
LONG_CAR = "carParams.longitudinalActuatorDelay"
DEFAULT = "default"


@dataclass
class SegmentDelays:
    """One segment's delays: `live` the liveDelay stream (None: not logged), `lat_fixed` the lateral delay where
    there is none, `long_delay`, and where each came from."""

    live: Stream | None
    lat_fixed: float
    lat_source: str
    long_delay: float
    long_source: str

    @classmethod
    def from_log(cls, log: LogData) -> SegmentDelays:
        live = log.streams.get("live_delay")
        params = log.streams.get("car_params")
        steer, longitudinal = (params.values[-1] if params is not None else (np.nan, np.nan))
        if np.isfinite(steer):
            lat_fixed, lat_source = round(float(steer) + LAGD_INITIAL_EXTRA, 6), LAT_CAR
        else:
            lat_fixed, lat_source = DEFAULT_LAT_DELAY, DEFAULT
        if live is not None and len(live.times):
            lat_source = LAT_LIVE
        if np.isfinite(longitudinal):
            long_delay, long_source = round(float(longitudinal), 6), LONG_CAR
        else:
            long_delay, long_source = DEFAULT_LONG_DELAY, DEFAULT
        return cls(live if lat_source == LAT_LIVE else None, lat_fixed, lat_source, long_delay, long_source)

    def lateral_at(self, t: np.ndarray) -> list[float]:
        """The lateral delay in force at each time in `t` (ns), rounded to 1 us (float32's precision here)."""
        if self.live is None:
            return [self.lat_fixed] * len(t)
        values = self.live.at(t)[:, 0]
        values[~np.isfinite(values)] = self.live.values[0, 0]  # before the segment's first message
        return [round(float(x), 6) for x in values]

    def record(self) -> dict[str, Any]:
        """The frames manifest's `delays` of this segment."""
        out: dict[str, Any] = {"lat_source": self.lat_source, "long_source": self.long_source,
                               "long_delay": self.long_delay}
        if self.live is None:
            out["lat_delay"] = self.lat_fixed
        else:
            v = self.live.values[:, 0]
            out["lat_delay"] = round(float(np.median(v)), 6)
            out["lat_range"] = [round(float(v.min()), 6), round(float(v.max()), 6)]
            out["live_delay_messages"] = len(v)
        return out
