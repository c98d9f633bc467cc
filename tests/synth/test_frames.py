# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Drives rendered straight into a frames dataset hold what ingest makes of the same drive's route; driver styles
move the car (pose, camera) consistently and name the route apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spark_distill.cli import app
from spark_distill.data import shards
from spark_distill.errors import ConfigError
from spark_distill.ingest.run import IngestConfig, ingest
from spark_distill.synth.frames import write_dataset
from spark_distill.synth.route import Dynamics, SynthConfig, parse_driver, route_name, write_route


def _samples(root: Path) -> dict[str, dict]:
    folder = root / "frames"
    out = {}
    for entry in shards.read_manifest(folder, shards.FRAMES_FORMAT)["shards"]:
        for s in shards.iter_shard(folder / entry["name"], shards.FRAMES_MEMBERS):
            d = shards.decode_sample(s)
            out[d["__key__"]] = d
    return out


def test_rendered_dataset_matches_the_ingested_route(tmp_path: Path) -> None:
    cfg = SynthConfig(segments=1, seconds=2.0, varied=True, seed=3, driver="keep-left:0.4")
    other = SynthConfig(segments=1, seconds=2.0, varied=True, seed=4)
    manifest = write_dataset(tmp_path / "ds", [cfg, other], workers=2)
    write_route(tmp_path / "route", cfg)
    ingest(IngestConfig(inputs=(str(tmp_path / "route"),), out=tmp_path / "ing", workers=1))
    ingested = shards.read_manifest(tmp_path / "ing" / "frames", shards.FRAMES_FORMAT)
    assert manifest["segments"][0]["name"] == ingested["segments"][0]["name"]
    assert [s["frames_kept"] for s in manifest["segments"]] == [40, 40]
    assert manifest["car_columns"] == ingested["car_columns"] and manifest["settings"]["clip_len"] == 20
    rendered, real = _samples(tmp_path / "ds"), _samples(tmp_path / "ing")
    assert set(real) < set(rendered) and len(rendered) == 4
    for key, r in real.items():
        x = rendered[key]
        for member in ("desire", "car", "pose", "traffic"):
            np.testing.assert_allclose(x[member], r[member], atol=1e-5, err_msg=member)
        np.testing.assert_allclose(x["gps"], r["gps"], atol=1e-5)
        assert x["meta"]["frame_ids"] == r["meta"]["frame_ids"]
        assert x["meta"]["timestamps_ns"] == r["meta"]["timestamps_ns"]
        # the same geometry; HEVC, sensor noise and the warp's resampling make the pixels differ a little
        assert np.abs(x["road"].astype(int) - r["road"]).mean() < 8.0
    with pytest.raises(ConfigError, match="holds a dataset"):
        write_dataset(tmp_path / "ds", [cfg])


def test_driver_styles_move_the_car_and_the_lead() -> None:
    base = SynthConfig(segments=1, seconds=10.0, varied=True, seed=5)
    left = SynthConfig(segments=1, seconds=10.0, varied=True, seed=5, driver="keep-left:0.4")
    gap = SynthConfig(segments=1, seconds=10.0, varied=True, seed=5, driver="gap:2.5")
    d0, d1, d2 = (Dynamics(c, 10.0) for c in (base, left, gap))
    for t in (0.0, 3.3, 7.1):
        assert d1.lateral(t) == pytest.approx(d0.lateral(t) - 0.4)  # left of where the teacher's drives hold it
        assert d1.pose(t).lateral == pytest.approx(d0.pose(t).lateral - 0.4)  # what the camera renders
        assert d1.speed(t) == d0.speed(t) and d1.lateral_velocity(t) == pytest.approx(d0.lateral_velocity(t))
        wave = d0.lead_distance(t) - d0.drive.d0
        assert d2.lead_distance(t) == pytest.approx(2.5 * d2.speed(t) + wave)
        h = 1e-4  # the rate is the distance's derivative
        slope = (d2.lead_distance(t + h) - d2.lead_distance(t - h)) / (2 * h)
        assert d2.lead_rate(t) == pytest.approx(slope, rel=1e-4)
    assert len({route_name(c) for c in (base, left, gap)}) == 3
    assert route_name(SynthConfig(varied=True, seed=5)) == route_name(SynthConfig(varied=True, seed=5, driver=None))
    assert parse_driver("keep-right:0.3,gap:1.5").offset == pytest.approx(0.3)
    for bad in ("keep-left", "keep-left:2", "gap:9", "fast", ""):
        with pytest.raises(ConfigError, match="--driver"):
            parse_driver(bad)


def test_synth_route_driver_option(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["synth-route", str(tmp_path / "r"), "--segments", "1", "--seconds", "1",
                                 "--varied", "--driver", "keep-left:0.4"])
    assert r.exit_code == 0, r.output
    bad = CliRunner().invoke(app, ["synth-route", str(tmp_path / "b"), "--driver", "sideways:1"])
    assert bad.exit_code == 2 and "--driver 'sideways:1'" in bad.output
