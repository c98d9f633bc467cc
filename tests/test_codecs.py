# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Camera clip codecs: lossless round trips bit-exactly, hevc within a PSNR, and shards decode any of them."""

from __future__ import annotations

import numpy as np
import pytest

from spark_distill import codecs, shards
from spark_distill.errors import ConfigError, DatasetError
from spark_distill.modelframe import pack_yuv6


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
    assert len(data) < 0.85 * len(shards.encode_array(clip))


def test_hevc_round_trip_keeps_frames_and_quality() -> None:
    clip = camera_like_clip(5)
    ext, fine = codecs.encode_clip(clip, "hevc", crf=18)
    _, coarse = codecs.encode_clip(clip, "hevc", crf=35)
    assert ext == "hevc" and len(coarse) < len(fine) < 0.5 * len(shards.encode_array(clip))
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
    sample = shards.decode_sample({"__key__": "k--c00000", **members, "desire.npy.zst": shards.encode_array(
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
    with pytest.raises(ConfigError, match="unknown codec 'av2'; available: hevc, lossless"):
        codecs.encode_clip(camera_like_clip(1), "av2")
    with pytest.raises(DatasetError, match="unknown camera member extension"):
        codecs.decode_clip("webp", b"")
    with pytest.raises(DatasetError, match=r"undecodable hevc|no frames"):
        codecs.decode_clip("hevc", b"\x00\x00\x01garbage")
