# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The synthetic route writer: real cereal events, real HEVC, and the faults it promises."""

from __future__ import annotations

import dataclasses
from collections import Counter

import av
import pytest

from spark_distill.errors import ConfigError
from spark_distill.ingest.logs import load_schema, read_log_bytes
from spark_distill.synth.route import SynthConfig


def test_segment_files_and_events(tici_route) -> None:
    _, truths, _ = tici_route
    seg = truths[0].path
    assert sorted(p.name for p in seg.iterdir()) == ["ecamera.hevc", "fcamera.hevc", "rlog.bz2"]
    with av.open(str(seg / "fcamera.hevc"), format="hevc") as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        assert stream.codec_context.name == "hevc" and (frames[0].width, frames[0].height) == (1928, 1208)
    assert len(frames) == 40
    raw, warnings = read_log_bytes(seg / "rlog.bz2")
    kinds = Counter(ev.which() for ev in load_schema().Event.read_multiple_bytes(raw))
    assert not warnings
    assert kinds["roadEncodeIdx"] == kinds["wideRoadEncodeIdx"] == kinds["roadCameraState"] == 40
    assert kinds["carState"] == 200 and kinds["livePose"] == 40 and kinds["initData"] == 1
    for k in ("liveCalibration", "gpsLocationExternal", "driverMonitoringState", "drivingModelData"):
        assert kinds[k] > 0, k


def test_faults_show_in_the_files(faulty_routes) -> None:
    _, drops = faulty_routes["encoder-drops"]
    assert drops.in_video.count(False) == 2 and drops.indexed.count(False) == 2
    _, missing = faulty_routes["missing-encode-idx"]
    assert missing.in_video.count(False) == 0 and missing.indexed.count(False) == 3
    _, wide = faulty_routes["missing-wide"]
    assert not (wide.path / "ecamera.hevc").exists() and not wide.has_wide
    _, eon = faulty_routes["truncated-log"]
    assert not (eon.path / "ecamera.hevc").exists(), "1164x874 devices have no wide camera"
    _, warnings = read_log_bytes(next(eon.path.glob("rlog*")))
    assert warnings, "the truncated log is detectably truncated"


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="unknown device"):
        SynthConfig(device="pixel")
    with pytest.raises(ConfigError, match="unknown log format"):
        SynthConfig(log_format="gz")
    with pytest.raises(ConfigError, match="16 lowercase hex digits"):
        SynthConfig(dongle="0123456789ABCDEF")
    with pytest.raises(ConfigError, match="YYYY-MM-DD--HH-MM-SS"):
        SynthConfig(start="2026-11-26 12:00:00")


def test_route_names_follow_the_options() -> None:
    from spark_distill.synth.route import route_name, segment_dir_name

    base = route_name(SynthConfig(varied=True, seed=11))
    assert base == ("21cf2f0c9ec0237e", "2026-09-20--05-06-12")  # the same options: the same name, on every run
    assert route_name(SynthConfig(varied=True, seed=11, seconds=10, faults=())) == base  # 10 s is 10.0 s
    others = [SynthConfig(varied=True, seed=23), SynthConfig(seed=11), SynthConfig(varied=True, seed=11, device="eon"),
              SynthConfig(varied=True, seed=11, faults=("encoder-drops",)),
              SynthConfig(varied=True, seed=11, segments=3)]
    names = [route_name(c) for c in others]
    assert len({d for d, _ in [base, *names]}) == 6 and len({s for _, s in [base, *names]}) == 6  # each part differs
    faults = ("encoder-drops", "missing-encode-idx")
    assert route_name(SynthConfig(faults=faults)) == route_name(SynthConfig(faults=faults[::-1]))
    given = SynthConfig(dongle="0123456789abcdef", start="2026-11-26--12-00-00")
    assert segment_dir_name(given, 3) == "0123456789abcdef_2026-11-26--12-00-00--3"
    assert segment_dir_name(dataclasses.replace(given, layout="device"), 0) == "2026-11-26--12-00-00--0"
    assert route_name(SynthConfig(dongle="0123456789abcdef"))[0] == "0123456789abcdef"


def test_drives_of_two_seeds_ingest_into_one_dataset(tmp_path) -> None:
    """The issue's steps: two varied drives of other seeds, made from the command line, ingested together."""
    from typer.testing import CliRunner

    from spark_distill.cli import app
    from spark_distill.data.dataset import summarize

    runner = CliRunner()
    made = {}
    for route, seed in (("train", "11"), ("held", "23"), ("again", "11")):
        r = runner.invoke(app, ["synth-route", str(tmp_path / route), "--varied", "--seed", seed, "--segments", "1",
                                "--seconds", "1", "--device", "eon"])
        assert r.exit_code == 0, r.output
        made[route] = sorted(p.name for p in (tmp_path / route).iterdir())
    assert made["again"] == made["train"] != made["held"]  # the same drive keeps its name
    r = runner.invoke(app, ["ingest", str(tmp_path / "train"), str(tmp_path / "held"), "--out", str(tmp_path / "ds"),
                            "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert summarize(tmp_path / "ds")["segments"] == 2


def test_varied_drives_differ_and_keep_the_classic_one() -> None:
    from spark_distill.synth.route import LANE_WIDTHS, Drive, Dynamics

    classic = Dynamics(SynthConfig(seed=3), 20.0)
    assert classic.drive == Drive() and classic.rpy == SynthConfig().rpy and classic.lc == 10.0
    assert classic.drive.lane_width == 3.7  # the classic drive's road is unchanged
    drives = [Dynamics(SynthConfig(varied=True, seed=s), 20.0) for s in range(8)]
    assert len({d.drive for d in drives}) == 8 and len({d.rpy for d in drives}) == 8
    assert {d.drive.direction for d in drives} == {-1, 1}
    widths = [d.drive.lane_width for d in drives]  # lanes of their own width, which a lane change crosses
    assert all(LANE_WIDTHS[0] <= w <= LANE_WIDTHS[1] for w in widths) and max(widths) - min(widths) > 0.3, widths
    for d in drives:  # the whole lane change fits in the route, and the state names its direction
        assert 0.0 <= d.lc <= 20.0 - 4.0
        state, direction = d.lane_change_state(d.lc + 0.5)
        assert state == "laneChangeStarting" and direction == ("left" if d.drive.direction < 0 else "right")
        assert abs(d.lateral(d.lc + 4.0) - d.lateral(d.lc) - d.drive.lane_width * d.drive.direction) < 1.0
        assert d.pose(1.0).lane_width == d.lane_width(1.0) == d.drive.lane_width
        t = 3.0  # speed and lead rate are the derivatives of distance and lead distance
        assert abs((d.distance(t + 1e-4) - d.distance(t - 1e-4)) / 2e-4 - d.speed(t)) < 1e-3
        assert abs((d.lead_distance(t + 1e-4) - d.lead_distance(t - 1e-4)) / 2e-4 - d.lead_rate(t)) < 1e-3


def test_segments_written_in_parallel_are_the_same_bytes(tmp_path) -> None:
    from spark_distill.synth.route import write_route

    cfg = SynthConfig(segments=2, seconds=1.0, device="eon", faults=("encoder-drops",))
    write_route(tmp_path / "one", cfg, workers=1)
    truths = write_route(tmp_path / "two", cfg, workers=2)
    assert [t.faults for t in truths] == [(), ("encoder-drops",)]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
