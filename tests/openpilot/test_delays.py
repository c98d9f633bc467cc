# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Which delays a label pass feeds each clip and what its manifest records: the log's, the overrides, the defaults."""

from __future__ import annotations

import numpy as np
import pytest

from spark_distill.openpilot.delays import NOT_INGESTED, DelayChoice, summary

LOGGED = {"name": "a--0", "delays": {"lat_source": "liveDelay.lateralDelay", "lat_delay": 0.31,
                                     "lat_range": [0.3, 0.32], "live_delay_messages": 4,
                                     "long_source": "carParams.longitudinalActuatorDelay", "long_delay": 0.35}}
FALLBACK = {"name": "b--0", "delays": {"lat_source": "default", "lat_delay": 0.2, "long_source": "default",
                                       "long_delay": 0.15}}
META = {"lat_delay": [0.3, 0.3, 0.31], "long_delay": 0.35}


def test_each_frame_gets_its_logged_delay_unless_overridden() -> None:
    lat, long = DelayChoice().clip(META, 3)
    assert lat.dtype == np.float32 and lat.tolist() == pytest.approx([0.3, 0.3, 0.31]) and long == 0.35
    lat, long = DelayChoice(lat=0.5).clip(META, 3)
    assert lat.tolist() == [0.5] * 3 and long == 0.35
    lat, long = DelayChoice(long=0.1).clip(META, 2)  # a short last clip: its own frames
    assert lat.tolist() == pytest.approx([0.3, 0.3]) and long == 0.1


def test_a_clip_from_before_per_segment_delays_gets_openpilots_defaults() -> None:
    lat, long = DelayChoice().clip({"frame_ids": [1, 2]}, 2)
    assert lat.tolist() == pytest.approx([0.2, 0.2]) and long == 0.15


def test_the_manifest_records_what_was_fed_and_where_from() -> None:
    assert DelayChoice().record(LOGGED) == {
        "lat_delay": {"value": 0.31, "source": "liveDelay.lateralDelay", "range": [0.3, 0.32], "per_frame": True},
        "long_delay": {"value": 0.35, "source": "carParams.longitudinalActuatorDelay"}}
    assert DelayChoice().record(FALLBACK) == {"lat_delay": {"value": 0.2, "source": "default"},
                                              "long_delay": {"value": 0.15, "source": "default"}}
    assert DelayChoice(lat=0.4, long=0.2).record(LOGGED) == {"lat_delay": {"value": 0.4, "source": "--lat-delay"},
                                                             "long_delay": {"value": 0.2, "source": "--long-delay"}}
    old = DelayChoice().record({"name": "c--0"})  # a frames manifest from before ingest read the delays
    assert old["lat_delay"] == {"value": 0.2, "source": NOT_INGESTED} and old["long_delay"]["value"] == 0.15


def test_a_label_set_s_overrides_come_back_from_its_manifest() -> None:
    assert DelayChoice.of_labels({"lat_delay": None, "long_delay": None}) == DelayChoice()
    assert DelayChoice.of_labels({"lat_delay": 0.3, "long_delay": None}) == DelayChoice(lat=0.3)
    assert DelayChoice.of_labels({"lat_delay": 0.2, "long_delay": 0.15}) == DelayChoice(0.2, 0.15)  # an older set


def test_the_summary_counts_segments_by_source() -> None:
    assert summary([DelayChoice().record(s) for s in (LOGGED, FALLBACK, LOGGED)]) == (
        "lateral: liveDelay.lateralDelay x2, default x1; longitudinal: carParams.longitudinalActuatorDelay x2, "
        "default x1")
    assert summary([DelayChoice(long=0.2).record(s) for s in (LOGGED, FALLBACK)]) == (
        "lateral: liveDelay.lateralDelay x1, default x1; longitudinal: --long-delay 0.2 x2")
