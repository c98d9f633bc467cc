# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The openpilot warp and YUV packing against independent per-pixel references and known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from spark_distill.openpilot.modelframe import (
    MEDMODEL_INTRINSICS,
    SBIGMODEL_INTRINSICS,
    VIEW_FROM_DEVICE,
    FrameWarp,
    cameras_for,
    get_warp_matrix,
    pack_yuv6,
    rot_from_euler,
    scale_warp,
    unpack_yuv6,
    yuv6_to_rgb,
)


def reference_pixel(src: np.ndarray, m: np.ndarray, dx: int, dy: int) -> int:
    """transform.cl warpPerspective for one destination pixel, written out literally in float32."""
    f32 = np.float32
    mm = [f32(v) for v in m.ravel()]
    x0 = mm[0] * f32(dx) + mm[1] * f32(dy) + mm[2]
    y0 = mm[3] * f32(dx) + mm[4] * f32(dy) + mm[5]
    w = mm[6] * f32(dx) + mm[7] * f32(dy) + mm[8]
    w = f32(32) / w if w != 0 else f32(0)
    x, y = int(np.rint(x0 * w)), int(np.rint(y0 * w))
    sx, sy = x >> 5, y >> 5
    rows, cols = src.shape
    cx0, cx1 = min(max(sx, 0), cols - 1), min(max(sx + 1, 0), cols - 1)
    cy0, cy1 = min(max(sy, 0), rows - 1), min(max(sy + 1, 0), rows - 1)
    v = [int(src[cy0, cx0]), int(src[cy0, cx1]), int(src[cy1, cx0]), int(src[cy1, cx1])]
    ty, tx = f32(y & 31) / f32(32), f32(x & 31) / f32(32)
    one = f32(1)
    weights = [(one - ty) * (one - tx), (one - ty) * tx, ty * (one - tx), ty * tx]
    itab = [int(np.rint(wk * f32(32768))) for wk in weights]
    return min(255, max(0, (sum(a * b for a, b in zip(v, itab, strict=True)) + (1 << 14)) >> 15))


@pytest.mark.parametrize("rpy, big, size", [
    ((0.0, 0.03, -0.02), False, (1928, 1208)),
    ((0.01, -0.05, 0.4), True, (1928, 1208)),   # strong yaw: part of the output falls off the image (clamping)
    ((0.0, 0.0, 0.0), False, (1164, 874)),
])
def test_warp_matches_per_pixel_reference(rpy: tuple, big: bool, size: tuple[int, int]) -> None:
    w, h = size
    rng = np.random.default_rng(0)
    y_src, u_src, v_src = _random_planes(rng, w, h)
    road, wide = cameras_for(w, h)
    cam = wide if big and wide is not None else road
    m = get_warp_matrix(rpy, cam.intrinsics, big=big)
    packed = FrameWarp(m, w, h).warp_i420(np.concatenate([y_src.ravel(), u_src.ravel(), v_src.ravel()]))
    y_model, u_model, v_model = unpack_yuv6(packed)
    m_uv = scale_warp(m, 0.5)
    for dy in range(0, 256, 7):
        for dx in [*list(range(0, 512, 13)), 511]:
            assert y_model[dy, dx] == reference_pixel(y_src, m, dx, dy), (dx, dy)
    for dy in range(0, 128, 5):
        for dx in [*list(range(0, 256, 11)), 255]:
            assert u_model[dy, dx] == reference_pixel(u_src, m_uv, dx, dy), (dx, dy)
            assert v_model[dy, dx] == reference_pixel(v_src, m_uv, dx, dy), (dx, dy)


def _random_planes(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (rng.integers(0, 256, size=(h, w), dtype=np.uint8),
            rng.integers(0, 256, size=(h // 2, w // 2), dtype=np.uint8),
            rng.integers(0, 256, size=(h // 2, w // 2), dtype=np.uint8))


def test_warp_reads_padded_planes_in_place() -> None:
    """Decoders pad rows; sampling the padded planes gives the same result as a contiguous copy."""
    w, h, pad = 1164, 874, 52
    planes = _random_planes(np.random.default_rng(1), w, h)
    m = get_warp_matrix((0.0, 0.02, 0.01), cameras_for(w, h)[0].intrinsics, big=False)
    padded = [np.pad(p, ((0, 0), (0, pad))) for p in planes]
    strides = tuple(p.shape[1] for p in padded)
    got = FrameWarp(m, w, h, strides=strides)(*(p.ravel() for p in padded))
    want = FrameWarp(m, w, h).warp_i420(np.concatenate([p.ravel() for p in planes]))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size, big, pad", [((1928, 1208), False, 64), ((1928, 1208), True, 0),
                                           ((1164, 874), False, 0)])
def test_compiled_warp_is_bit_identical_to_the_numpy_reference(size: tuple[int, int], big: bool, pad: int) -> None:
    """Full-size random frames (and padded rows, as decoders give) through the compiled kernel and the numpy port."""
    w, h = size
    rng = np.random.default_rng(7)
    road, wide = cameras_for(w, h)
    cam = wide if big and wide is not None else road
    for rpy in ((0.0, 0.03, -0.02), (0.02, -0.06, 0.45)):  # the second pushes part of the frame off the image
        padded = [np.pad(p, ((0, 0), (0, pad))) for p in _random_planes(rng, w, h)]
        warp = FrameWarp(get_warp_matrix(rpy, cam.intrinsics, big=big), w, h,
                         strides=tuple(p.shape[1] for p in padded))
        flat = [p.ravel() for p in padded]
        got, want = warp(*flat), warp.reference(*flat)
        assert got.dtype == np.uint8 and got.shape == (6, 128, 256)
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(got)) > 200  # a real warp of noise, not a constant both sides agree on


def test_compiled_warp_is_bit_identical_on_extreme_values() -> None:
    """All-255 and all-0 planes: the rounding and the weight sums at the saturation edges match."""
    w, h = 1164, 874
    warp = FrameWarp(get_warp_matrix((0.0, 0.0, 0.1), cameras_for(w, h)[0].intrinsics, big=False), w, h)
    for value in (0, 1, 254, 255):
        buf = np.full(w * h * 3 // 2, value, np.uint8)
        got = warp.warp_i420(buf)
        np.testing.assert_array_equal(got, warp.reference(buf[:w * h], buf[w * h:w * h * 5 // 4], buf[w * h * 5 // 4:]))
        assert (got == value).all()


def test_warp_fills_a_given_array_and_runs_compiled() -> None:
    """`out=` (ingest warps straight into its clip arrays) gets the same pixels as a fresh array, from the
    numba kernel (with its prefetch hints), not the numpy fallback; a wrong `out` is refused."""
    from spark_distill.openpilot import modelframe

    assert modelframe._compiled_kernel() is not None
    w, h = 1928, 1208
    warp = FrameWarp(get_warp_matrix((0.0, 0.03, -0.02), cameras_for(w, h)[0].intrinsics, big=False), w, h)
    planes = [p.ravel() for p in _random_planes(np.random.default_rng(3), w, h)]
    clip = np.zeros((2, 6, 128, 256), np.uint8)
    frame = clip[1]
    assert warp(*planes, out=frame) is frame
    np.testing.assert_array_equal(clip[1], warp.reference(*planes))
    assert not clip[0].any()
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        warp(*planes, out=np.zeros((6, 128, 256), np.int16))


def test_warp_rejects_a_short_plane() -> None:
    w, h = 1164, 874
    warp = FrameWarp(get_warp_matrix((0.0, 0.0, 0.0), cameras_for(w, h)[0].intrinsics, big=False), w, h)
    y, u, v = (p.ravel() for p in _random_planes(np.random.default_rng(2), w, h))
    with pytest.raises(ValueError, match="smaller than the warp expects"):
        warp(y[:-1], u, v)


def test_packing_follows_loadyuv_channel_order() -> None:
    y = np.arange(256 * 512, dtype=np.uint32).reshape(256, 512)
    u = np.full((128, 256), 7)
    v = np.full((128, 256), 9)
    packed = pack_yuv6(y, u, v)
    assert packed.shape == (6, 128, 256)
    assert packed[0, 3, 5] == y[6, 10]  # even row, even col
    assert packed[1, 3, 5] == y[7, 10]  # odd row, even col
    assert packed[2, 3, 5] == y[6, 11]  # even row, odd col
    assert packed[3, 3, 5] == y[7, 11]  # odd row, odd col
    assert (packed[4] == 7).all() and (packed[5] == 9).all()
    y2, u2, v2 = unpack_yuv6(packed)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(u2, u)
    np.testing.assert_array_equal(v2, v)


def _project(k: np.ndarray, rpy: tuple, point: np.ndarray) -> np.ndarray:
    p = k @ VIEW_FROM_DEVICE @ rot_from_euler(rpy) @ point
    return p[:2] / p[2]


@pytest.mark.parametrize("big", [False, True])
def test_known_point_lands_where_the_intrinsics_say(big: bool) -> None:
    """A blob drawn where the camera sees a 3D point appears in the model frame where the model
    camera (medmodel / sbigmodel intrinsics, calibration removed) sees that point."""
    w, h = 1928, 1208
    rpy = (0.0, 0.04, -0.03)
    road, wide = cameras_for(w, h)
    cam = wide if big else road
    point = np.array([30.0, 2.0, 1.0])  # calibrated frame: 30 m ahead, 2 m right, 1 m below the camera
    u, v = _project(cam.intrinsics, rpy, point)
    y_cam = np.full((h, w), 16, np.uint8)
    r = 12 if not big else 4
    y_cam[round(v) - r:round(v) + r + 1, round(u) - r:round(u) + r + 1] = 235
    uv = np.full((h // 2) * (w // 2) * 2, 128, np.uint8)
    packed = FrameWarp(get_warp_matrix(rpy, cam.intrinsics, big=big), w, h).warp_i420(
        np.concatenate([y_cam.ravel(), uv]))
    y, _, _ = unpack_yuv6(packed)
    weight = np.clip(y.astype(float) - 16, 0, None)
    rows, cols = np.indices(y.shape)
    found = np.array([(cols * weight).sum(), (rows * weight).sum()]) / weight.sum()
    expected = _project(SBIGMODEL_INTRINSICS if big else MEDMODEL_INTRINSICS, (0, 0, 0), point)
    np.testing.assert_allclose(found, expected, atol=0.6)


def test_horizon_is_at_the_model_principal_point() -> None:
    far = np.array([1e6, 0.0, 0.0])
    np.testing.assert_allclose(_project(MEDMODEL_INTRINSICS, (0, 0, 0), far), [256.0, 47.6], atol=1e-3)


def test_yuv6_to_rgb_grey_is_grey() -> None:
    packed = np.full((6, 128, 256), 128, np.uint8)
    packed[:4] = 126
    rgb = yuv6_to_rgb(packed)
    assert rgb.shape == (256, 512, 3)
    assert np.ptp(rgb) == 0 and 120 < rgb[0, 0, 0] < 135


def test_unknown_camera_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no known comma camera is 640x480"):
        cameras_for(640, 480)


def test_qcamera_intrinsics_are_the_road_cameras_scaled() -> None:
    """A point seen by the road camera lands, in the qcamera (the whole frame scaled), where scaling its pixel
    position puts it (pixel centres onto pixel centres); sizes and sensors as openpilot's loggerd writes them."""
    from spark_distill.openpilot.modelframe import CAMERAS, qcamera_road_camera

    for (w, h), sensor, full in (((526, 330), "ox03c10", (1928, 1208)), ((526, 330), "os04c10", (1344, 760)),
                                 ((480, 360), "", (1164, 874))):
        small, big = qcamera_road_camera(w, h, sensor), CAMERAS[full][0]
        point = np.array([3.0, -1.2, 20.0])  # view frame: right, down, forward
        p_big, p_small = big.intrinsics @ point, small.intrinsics @ point
        expect = (p_big[:2] / p_big[2] + 0.5) * np.array([w / full[0], h / full[1]]) - 0.5
        np.testing.assert_allclose(p_small[:2] / p_small[2], expect, rtol=1e-9)
        assert (small.width, small.height) == (w, h)
    with pytest.raises(ValueError, match="no known qcamera is 640x480"):
        qcamera_road_camera(640, 480)
