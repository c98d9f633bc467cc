# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Camera clip codecs: lossless round trips bit-exactly, hevc within a PSNR, and shards decode any of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spark_distill.data import arrays, codecs, shards
from spark_distill.errors import ConfigError, DatasetError
from spark_distill.openpilot.modelframe import pack_yuv6


def camera_like_clip(t: int, seed: int = 0) -> np.ndarray:
    """(t, 6, 128, 256) packed frames of a smooth moving gradient plus sensor-like noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:256, 0:512]
    frames = []
    for i in range(t):
        y = 60 + 0.3 * rows + 40 * np.sin((cols + 4 * i) / 40.0) + rng.normal(0, 3, (256, 512))
        u = 128 + 10 * np.cos(np.mgrid[0:128, 0:256][1] / 30.0)
        v = np.full((128, 256), 120.0)
        frames.append(pack_yuv6(*(np.clip(p, 0, 255).astype(np.uint8) for p in (y, u, v))))
    return np.stack(frames)


@pytest.mark.parametrize("t", [1, 20])
def test_lossless_round_trip_is_exact(t: int) -> None:
    rng = np.random.default_rng(t)
    for clip in (camera_like_clip(t), rng.integers(0, 256, (t, 6, 128, 256), dtype=np.uint8)):
        ext, data = codecs.encode_clip(clip, "lossless")
        assert ext == "y6d.zst"
        np.testing.assert_array_equal(codecs.decode_clip(ext, data), clip)


def test_lossless_is_smaller_than_plain_zstd_on_camera_like_frames() -> None:
    clip = camera_like_clip(4)
    _, data = codecs.encode_clip(clip, "lossless")
    assert len(data) < 0.85 * len(arrays.encode_array(clip))


@pytest.mark.parametrize(("codec", "fine_crf", "coarse_crf"), [("hevc", 18, 35), ("av1", 20, 50)])
def test_lossy_round_trip_keeps_frames_and_quality(codec: str, fine_crf: int, coarse_crf: int) -> None:
    clip = camera_like_clip(5)
    ext, fine = codecs.encode_clip(clip, codec, crf=fine_crf)
    _, coarse = codecs.encode_clip(clip, codec, crf=coarse_crf)
    assert ext == codec and len(coarse) < len(fine) < 0.5 * len(arrays.encode_array(clip))
    out = codecs.decode_clip(ext, fine)
    assert out.shape == clip.shape and out.dtype == np.uint8
    mse = np.mean((out.astype(float) - clip) ** 2)
    assert 10 * np.log10(255**2 / mse) > 32  # PSNR, dB
    assert np.abs(out.astype(int) - clip).max() > 0  # it is lossy: a test of a copy would pass otherwise


def test_shards_decode_any_codec_transparently() -> None:
    clip = camera_like_clip(2)
    members = shards.encode_cameras({"road": clip}, codec="lossless", crf=20)
    members |= shards.encode_cameras({"wide": clip}, codec="hevc", crf=20)
    assert sorted(members) == ["road.y6d.zst", "wide.hevc"]
    sample = shards.decode_sample({"__key__": "k--c00000", **members, "desire.npy.zst": arrays.encode_array(
        np.ones((2, 8), np.float32))})
    np.testing.assert_array_equal(sample["road"], clip)
    assert sample["wide"].shape == clip.shape and sample["desire"].shape == (2, 8)
    assert set(members) <= set(shards.camera_members()) <= set(shards.FRAMES_MEMBERS)


def test_missing_members_wants_exactly_one_member_per_camera() -> None:
    full = dict.fromkeys(shards.FRAMES_REQUIRED, b"")
    assert shards.missing_members({**full, "road.hevc": b"", "wide.npy.zst": b""}) == []
    problems = shards.missing_members({**full, "road.hevc": b"", "road.y6d.zst": b""})
    assert len(problems) == 2 and "(has 2)" in problems[0] and "(has 0)" in problems[1]


def test_bad_codec_names_and_members_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown codec 'av2'; available: av1, hevc, lossless"):
        codecs.encode_clip(camera_like_clip(1), "av2")
    with pytest.raises(DatasetError, match="unknown camera member extension"):
        codecs.decode_clip("webp", b"")
    with pytest.raises(DatasetError, match=r"undecodable hevc|hevc camera member holds no frames"):
        codecs.decode_clip("hevc", b"\x00\x00\x01garbage")
    with pytest.raises(DatasetError, match=r"undecodable av1|av1 camera member holds no frames"):
        codecs.decode_clip("av1", b"\x12\x00\x0a\x0bgarbage")


def test_each_lossy_codec_has_its_quality_scale_and_default() -> None:
    from spark_distill.ingest.run import IngestConfig

    assert IngestConfig(inputs=("x",), out=Path("o"), codec="hevc").crf == 20
    assert IngestConfig(inputs=("x",), out=Path("o"), codec="av1").crf == 30
    assert IngestConfig(inputs=("x",), out=Path("o"), codec="av1", crf=60).crf == 60
    assert IngestConfig(inputs=("x",), out=Path("o")).crf is None  # lossless
    with pytest.raises(ConfigError, match=r"--crf must be in 0\.\.51 for hevc \(x265\), got 60"):
        IngestConfig(inputs=("x",), out=Path("o"), codec="hevc", crf=60)
    with pytest.raises(ConfigError, match=r"--crf must be in 0\.\.63 for av1 \(SVT-AV1\), got 64"):
        IngestConfig(inputs=("x",), out=Path("o"), codec="av1", crf=64)


def test_an_av1_dataset_is_ingested_labeled_and_verified(tici_route, tmp_path: Path) -> None:
    """ingest --codec av1 (default quality), label, inspect --verify: every reader takes the av1 members."""
    from typer.testing import CliRunner

    from spark_distill.cli import app
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.teacher import write_teacher

    route, root = tici_route[0], tmp_path / "ds"
    assert ingest(IngestConfig(inputs=(str(route),), out=root, workers=1, clip_len=10, shard_clips=3,
                               codec="av1")).frames_kept == 80
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    assert manifest["settings"]["codec"] == "av1" and manifest["settings"]["crf"] == 30
    first = next(shards.iter_shard(root / "frames" / manifest["shards"][0]["name"], shards.FRAMES_MEMBERS))
    assert {"road.av1", "wide.av1"} <= set(first)
    assert shards.decode_sample(first)["road"].shape == (10, 6, 128, 256)
    write_teacher(root / "teacher", seed=1)
    assert label(LabelConfig(root=root, teacher=(root / "teacher",), backend="onnxruntime", batch=4,
                             name="set")).frames == 80
    r = CliRunner().invoke(app, ["inspect", str(root), "--verify"])
    assert r.exit_code == 0 and "verified frames: 3 shards, 8 clips" in r.output, r.output


def test_the_whole_chain_runs_on_a_lossy_dataset(tici_route, tmp_path: Path) -> None:
    """ingest --codec hevc, then label, train (stopped and resumed), export, eval and inspect --verify."""
    from typer.testing import CliRunner

    from spark_distill.cli import app
    from spark_distill.export.run import ExportConfig, export
    from spark_distill.ingest.run import IngestConfig, ingest
    from spark_distill.label.run import LabelConfig, label
    from spark_distill.synth.teacher import write_teacher
    from spark_distill.train.config import TrainConfig
    from spark_distill.train.loop import train

    route, root = tici_route[0], tmp_path / "ds"
    cfg = IngestConfig(inputs=(str(route),), out=root, workers=1, clip_len=10, shard_clips=3, codec="hevc", crf=30)
    assert ingest(cfg).frames_kept == 80
    manifest = shards.read_manifest(root / "frames", shards.FRAMES_FORMAT)
    assert manifest["settings"]["codec"] == "hevc" and manifest["settings"]["crf"] == 30
    first = next(shards.iter_shard(root / "frames" / manifest["shards"][0]["name"], shards.FRAMES_MEMBERS))
    assert {"road.hevc", "wide.hevc"} <= set(first) and not set(first) & {"road.npy.zst", "road.y6d.zst"}
    assert ingest(cfg).segments_already == 2  # a re-run resumes (nothing left to do)
    with pytest.raises(ConfigError, match="codec='hevc', not 'lossless'"):
        ingest(IngestConfig(inputs=(str(route),), out=root, workers=1, clip_len=10, shard_clips=3))
    write_teacher(root / "teacher", seed=1)
    label(LabelConfig(root=root, teacher=(root / "teacher",), backend="onnxruntime", batch=4, name="set"))
    base = dict(root=root, labels="set", runs_dir=tmp_path / "runs", run="a", student="compact-xs", batch_size=2,
                max_steps=2, warmup_steps=1, burn_in=2, val_fraction=0.25, mask_warmup=False, workers=1, device="cpu")
    assert train(TrainConfig(stop_at=1, **base)).interrupted
    assert train(TrainConfig(resume=True, **base)).steps == 2
    export(ExportConfig(source=tmp_path / "runs" / "a", output=tmp_path / "onnx", verify_frames=4))
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(root), "--labels", "set", "--model", str(tmp_path / "onnx"),
                            "--out", str(tmp_path / "eval"), "--include-warmup"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(root), "--verify"])
    assert r.exit_code == 0 and "verified frames: 3 shards, 8 clips" in r.output, r.output
