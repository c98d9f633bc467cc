# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The delays modeld feeds, read from each segment's log: liveDelay at each frame, carParams, the fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spark_distill.data import shards
from spark_distill.ingest.delays import SegmentDelays
from spark_distill.ingest.logs import LogData, Stream, load_schema, read_log
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.synth.route import (
    FRAME_NS,
    LONG_ACTUATOR_DELAY,
    STEER_ACTUATOR_DELAY,
    T0_NS,
    SynthConfig,
    live_lateral_delay,
    write_route,
)


def _clips(root: Path) -> list[dict]:
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    return [shards.decode_sample(s) for e in manifest["shards"]
            for s in shards.iter_shard(root / "frames" / e["name"], shards.FRAMES_MEMBERS)]


def test_the_default_schema_reads_live_delay() -> None:
    """openpilot-logging's log.capnp predates liveDelay (@146): the default schema has it added."""
    schema = load_schema()
    ev = schema.Event.new_message(logMonoTime=5)
    ev.init("liveDelay").lateralDelay = 0.27
    (back,) = list(schema.Event.read_multiple_bytes(ev.to_bytes()))
    assert back.which() == "liveDelay" and back.liveDelay.lateralDelay == pytest.approx(0.27)


def test_ingest_stores_each_frames_logged_delay_and_where_it_came_from(tmp_path: Path) -> None:
    """Segment 0 logs liveDelay (drifting within the segment, other values per segment) and carParams; segment 1
    (fault no-delays) neither: openpilot's defaults, and the manifest says so."""
    cfg = SynthConfig(segments=2, seconds=1.5, device="eon", faults=("no-delays",), dongle="00000000000000d1",
                      start="2026-11-30--10-00-00")
    route = tmp_path / "route"
    write_route(route, cfg)
    root = tmp_path / "ds"
    ingest(IngestConfig(inputs=(str(route),), out=root, workers=1, clip_len=10, shard_clips=4))
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    logged, fallback = (s["delays"] for s in manifest["segments"])
    assert logged["lat_source"] == "liveDelay.lateralDelay"
    assert logged["long_source"] == "carParams.longitudinalActuatorDelay"
    assert logged["long_delay"] == pytest.approx(LONG_ACTUATOR_DELAY)
    assert logged["live_delay_messages"] == 6  # 4 Hz over 1.5 s
    assert logged["lat_range"] == pytest.approx([live_lateral_delay(0, 0.0), live_lateral_delay(0, 1.25 / 1.5)],
                                                 abs=1e-6)  # rounded to 1 us
    assert fallback == {"lat_source": "default", "long_source": "default", "lat_delay": 0.2, "long_delay": 0.15}

    span = round(cfg.seconds * 20) * FRAME_NS
    for clip in _clips(root):
        meta = clip["meta"]
        n = len(meta["frame_ids"])
        if meta["segment"] == manifest["segments"][1]["name"]:
            assert meta["lat_delay"] == [0.2] * n and meta["long_delay"] == 0.15
            continue
        want = []
        for t in meta["timestamps_ns"]:  # the liveDelay message in force (4 Hz, 7 ms after each quarter second)
            k = max(0, (t - T0_NS - 7_000_000) // 250_000_000)  # before the first: the first
            want.append(live_lateral_delay(0, k * 250_000_000 / span))
        np.testing.assert_allclose(meta["lat_delay"], want, atol=1e-6)
        assert len(set(meta["lat_delay"])) > 1  # the value changes within the clip, frame by frame
        assert meta["long_delay"] == pytest.approx(LONG_ACTUATOR_DELAY)


def test_without_live_delay_the_lateral_delay_is_lagds_first_estimate() -> None:
    """carParams but no liveDelay (a release before lagd): steerActuatorDelay + 0.2, as lagd starts and as the
    2024 supercombo's modeld fed it; neither: the defaults."""
    params = Stream(np.array([1], np.int64), np.array([[STEER_ACTUATOR_DELAY, 0.4]]))
    d = SegmentDelays.from_log(LogData(Path("x"), {"car_params": params}, {}))
    assert d.lat_source == "carParams.steerActuatorDelay + 0.2"
    assert d.long_source == "carParams.longitudinalActuatorDelay"
    assert d.lateral_at(np.array([0, 10**9])) == [pytest.approx(STEER_ACTUATOR_DELAY + 0.2)] * 2
    assert d.record() == {"lat_source": d.lat_source, "long_source": d.long_source, "long_delay": 0.4,
                          "lat_delay": pytest.approx(0.32)}
    none = SegmentDelays.from_log(LogData(Path("x"), {}, {}))
    assert (none.lat_fixed, none.long_delay, none.lat_source, none.long_source) == (0.2, 0.15, "default", "default")


def test_live_delay_is_read_from_a_written_log(tmp_path: Path) -> None:
    """The log reader's liveDelay and carParams streams, from a route's rlog."""
    route = tmp_path / "r"
    write_route(route, SynthConfig(segments=1, seconds=1.0, device="eon", dongle="00000000000000d2",
                                   start="2026-11-30--11-00-00"))
    (seg,) = route.iterdir()
    log = read_log(next(seg.glob("rlog*")), load_schema())
    assert log.streams["live_delay"].values[:, 0] == pytest.approx([live_lateral_delay(0, f) for f in (0, 0.25, 0.5,
                                                                                                       0.75)])
    assert log.streams["car_params"].values.tolist() == [[pytest.approx(STEER_ACTUATOR_DELAY),
                                                          pytest.approx(LONG_ACTUATOR_DELAY)]]
    assert log.unknown_events == 0
