# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""openpilot's model frame: camera intrinsics, the calibrated warp, and the 6-channel YUV packing.

Main entry points: `warp_for(...)` (a cached `FrameWarp` that turns one decoded I420 camera frame
into the packed uint8 [6, 128, 256] model input of one frame) and `unpack_yuv6` (the inverse
packing, for pictures). Sources, all commaai/openpilot:
- common/transformations/camera.py: device intrinsics, view_frame_from_device_frame
- common/transformations/model.py: medmodel / sbigmodel intrinsics, get_warp_matrix
- common/transformations/orientation.py: rot_from_euler (R = Rz(yaw) Ry(pitch) Rx(roll))
- selfdrive/modeld/transforms/transform.cl: warpPerspective (5-bit subpixel bilinear, 15-bit
  integer weights, source coordinates clamped to the border)
- common/mat.h transform_scale_buffer: the U/V matrix for the half-resolution planes
- selfdrive/modeld/transforms/loadyuv.cl: packing Y into 4 sub-planes (02/13 order), then U, V
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MODEL_W, MODEL_H = 512, 256  # model frame, Y plane
FRAME_SHAPE = (6, MODEL_H // 2, MODEL_W // 2)  # packed frame: 4 Y sub-planes, U, V

VIEW_FROM_DEVICE = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
MEDMODEL_INTRINSICS = np.array([[910.0, 0.0, 256.0], [0.0, 910.0, 47.6], [0.0, 0.0, 1.0]])
SBIGMODEL_INTRINSICS = np.array([[455.0, 0.0, 256.0], [0.0, 455.0, 0.5 * (256 + 47.6)], [0.0, 0.0, 1.0]])

log = logging.getLogger(__name__)

_INTER_BITS = 5
_INTER_TAB = 1 << _INTER_BITS
_COEF_BITS = 15


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera of a comma device, keyed by its frame size."""

    device: str
    width: int
    height: int
    focal: float
    # a downscaled copy of a camera (qcamera.ts) has its own vertical focal length and principal point
    focal_y: float | None = None
    center: tuple[float, float] | None = None

    @property
    def intrinsics(self) -> np.ndarray:
        fy = self.focal if self.focal_y is None else self.focal_y
        cx, cy = (self.width / 2, self.height / 2) if self.center is None else self.center
        return np.array([[self.focal, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# (width, height) -> (road camera, wide camera or None); openpilot common/transformations/camera.py
CAMERAS: dict[tuple[int, int], tuple[CameraModel, CameraModel | None]] = {
    (1928, 1208): (CameraModel("tici-ar0231/ox03c10", 1928, 1208, 2648.0),
                   CameraModel("tici-ar0231/ox03c10", 1928, 1208, 567.0)),
    (1344, 760): (CameraModel("tici-os04c10", 1344, 760, 1522.0 * 3 / 4),
                  CameraModel("tici-os04c10", 1344, 760, 567.0 * 3 / 4)),
    (1164, 874): (CameraModel("neo", 1164, 874, 910.0), None),
}


# qcamera.ts, the small H.264 copy of the road camera a device uploads by default: its frame size -> the device.
# openpilot system/loggerd/loggerd.h, qcam encoder info: 526x330 on QCOM2 (comma 3/3X, "keep pixel count the same?"),
# 480x360 otherwise (EON / comma two); MAIN_FPS (20). The encoder scales the whole road frame to that size, no crop
# (system/loggerd/encoder/ffmpeg_encoder.cc: libyuv::I420Scale from in_width x in_height to the frame's size), so the
# qcamera is the road camera with its intrinsics scaled by width and height separately (`scaled_camera`).
QCAMERA_SIZES = {(526, 330): "tici", (480, 360): "eon"}
_SENSOR_ROAD_SIZE = {"os04c10": (1344, 760)}  # roadCameraState.sensor -> full-resolution size; others 1928x1208


def scaled_camera(camera: CameraModel, width: int, height: int) -> CameraModel:
    """`camera` scaled as a whole frame to width x height (pixel centres map onto pixel centres)."""
    sx, sy = width / camera.width, height / camera.height
    cx, cy = camera.width / 2, camera.height / 2
    return CameraModel(f"{camera.device} qcamera", width, height, camera.focal * sx, camera.focal * sy,
                       ((cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5))


def qcamera_road_camera(width: int, height: int, sensor: str = "") -> CameraModel:
    """The road camera a qcamera.ts of this size was scaled from (`sensor`: roadCameraState.sensor, which tells
    the comma 3X's OS04C10 from the AR0231/OX03C10), scaled to the qcamera's size."""
    device = QCAMERA_SIZES.get((width, height))
    if device is None:
        known = ", ".join(f"{w}x{h}" for w, h in QCAMERA_SIZES)
        raise ValueError(f"no known qcamera is {width}x{height}; known sizes: {known}")
    full = (1164, 874) if device == "eon" else _SENSOR_ROAD_SIZE.get(sensor, (1928, 1208))
    return scaled_camera(CAMERAS[full][0], width, height)


def cameras_for(width: int, height: int) -> tuple[CameraModel, CameraModel | None]:
    """Road and wide camera models of the device whose road camera has this frame size."""
    try:
        return CAMERAS[(width, height)]
    except KeyError:
        known = ", ".join(f"{w}x{h}" for w, h in CAMERAS)
        raise ValueError(f"no known comma camera is {width}x{height}; known sizes: {known}") from None


def rot_from_euler(rpy: np.ndarray | list[float]) -> np.ndarray:
    """Rotation matrix of roll, pitch, yaw (radians), openpilot's convention Rz·Ry·Rx."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def get_warp_matrix(rpy_calib: np.ndarray | list[float], intrinsics: np.ndarray, *, big: bool) -> np.ndarray:
    """Homography mapping model-frame pixels (u, v, 1) to camera pixels (openpilot model.py)."""
    model_intrinsics = SBIGMODEL_INTRINSICS if big else MEDMODEL_INTRINSICS
    calib_from_model = np.linalg.inv(model_intrinsics @ VIEW_FROM_DEVICE)
    camera_from_calib = intrinsics @ VIEW_FROM_DEVICE @ rot_from_euler(rpy_calib)
    return camera_from_calib @ calib_from_model


def scale_warp(m: np.ndarray, s: float) -> np.ndarray:
    """openpilot's transform_scale_buffer: the same warp between planes scaled by s (pixel centres)."""
    transform_out = np.array([[1.0 / s, 0.0, 0.5], [0.0, 1.0 / s, 0.5], [0.0, 0.0, 1.0]])
    transform_in = np.array([[s, 0.0, -0.5 * s], [0.0, s, -0.5 * s], [0.0, 0.0, 1.0]])
    return transform_in @ m @ transform_out


def warp_taps(m: np.ndarray, dx: np.ndarray, dy: np.ndarray, src_w: int, src_h: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of transform.cl for destination pixels (dx, dy): x indices (4, N),
    y indices (4, N) and integer weights (4, N) summing to about 2**15."""
    mf = m.astype(np.float32).ravel()
    dxf, dyf = dx.astype(np.float32), dy.astype(np.float32)
    x0 = mf[0] * dxf + mf[1] * dyf + mf[2]
    y0 = mf[3] * dxf + mf[4] * dyf + mf[5]
    w = mf[6] * dxf + mf[7] * dyf + mf[8]
    with np.errstate(divide="ignore"):
        w = np.where(w != 0, np.float32(_INTER_TAB) / w, np.float32(0)).astype(np.float32)
    big = np.float32(2**31 - 1)
    xi = np.rint(np.clip(x0 * w, -big, big)).astype(np.int64)
    yi = np.rint(np.clip(y0 * w, -big, big)).astype(np.int64)
    sx = np.clip(xi >> _INTER_BITS, -32768, 32767)  # convert_short_sat
    sy = np.clip(yi >> _INTER_BITS, -32768, 32767)
    tabx = (xi & (_INTER_TAB - 1)).astype(np.float32) / np.float32(_INTER_TAB)
    taby = (yi & (_INTER_TAB - 1)).astype(np.float32) / np.float32(_INTER_TAB)
    x_lo, x_hi = np.clip(sx, 0, src_w - 1), np.clip(sx + 1, 0, src_w - 1)
    y_lo, y_hi = np.clip(sy, 0, src_h - 1), np.clip(sy + 1, 0, src_h - 1)
    one = np.float32(1)
    scale = np.float32(1 << _COEF_BITS)
    weights = [(one - taby) * (one - tabx), (one - taby) * tabx, taby * (one - tabx), taby * tabx]
    itab = np.clip(np.rint(np.stack(weights) * scale), -32768, 32767).astype(np.int32)
    xs = np.stack([x_lo, x_hi, x_lo, x_hi])
    ys = np.stack([y_lo, y_lo, y_hi, y_hi])
    return xs, ys, itab


def _packed_destinations() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Destination pixel coordinates in packed order: Y pixels of ch0..ch3, then U/V pixels."""
    h2, w2 = MODEL_H // 2, MODEL_W // 2
    jj, ii = np.meshgrid(np.arange(w2), np.arange(h2))  # (128, 256) each
    # loadyuv.cl: ch0 even rows/even cols, ch1 odd rows/even cols, ch2 even/odd, ch3 odd/odd
    y_dx = np.concatenate([(2 * jj + ox).ravel() for oy, ox in ((0, 0), (1, 0), (0, 1), (1, 1))])
    y_dy = np.concatenate([(2 * ii + oy).ravel() for oy, ox in ((0, 0), (1, 0), (0, 1), (1, 1))])
    return y_dx, y_dy, jj.ravel(), ii.ravel()


def _base_taps(xs: np.ndarray, ys: np.ndarray, itab: np.ndarray, src_w: int, src_h: int, stride: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Re-express clamped taps as one base index per pixel with taps at base, +1, +stride, +stride+1.

    Where the kernel clamps both taps of an axis to one source pixel, that pixel's weights are
    merged onto whichever of the two base-relative taps lands on it; the integer result is
    unchanged (w0*v + w1*v == (w0+w1)*v) and the tables are a third of the size."""
    bx = np.minimum(xs[0], src_w - 2)  # taps at bx, bx+1 are always in the row
    by = np.minimum(ys[0], src_h - 2)
    weights = np.zeros((4, xs.shape[1]), dtype=np.int32)
    for k in range(4):  # tap k sits at (xs[k], ys[k]); place its weight on the base-relative slot there
        slot = (xs[k] - bx) + 2 * (ys[k] - by)  # 0: base, 1: +1, 2: +stride, 3: +stride+1
        np.add.at(weights, (slot, np.arange(xs.shape[1])), itab[k])
    return (by * stride + bx).astype(np.intp), weights


class FrameWarp:
    """Warps one camera frame, given as its Y, U, V planes (I420), into a packed model frame [6, 128, 256].

    Planes may carry row padding (`strides`, bytes per row, as decoders lay them out), so decoded
    frames are sampled in place without a copy."""

    def __init__(self, m: np.ndarray, src_w: int, src_h: int, strides: tuple[int, int, int] | None = None) -> None:
        y_dx, y_dy, uv_dx, uv_dy = _packed_destinations()
        sy, su, sv = strides or (src_w, src_w // 2, src_w // 2)
        uw, uh = src_w // 2, src_h // 2
        yx, yy, yw = warp_taps(m, y_dx, y_dy, src_w, src_h)
        ux, uy, uvw = warp_taps(scale_warp(m, 0.5), uv_dx, uv_dy, uw, uh)
        # per plane: (row stride, base index (n,), weights of the taps at base, +1, +stride, +stride+1 (4, n));
        # output order Y00, Y10, Y01, Y11 | U | V (loadyuv.cl)
        self.parts = [(sy, *_base_taps(yx, yy, yw, src_w, src_h, sy)), (su, *_base_taps(ux, uy, uvw, uw, uh, su)),
                      (sv, *_base_taps(ux, uy, uvw, uw, uh, sv))]
        self.min_sizes = (src_h * sy, uh * su, uh * sv)
        self._interleaved = [np.ascontiguousarray(w.T) for _, _, w in self.parts]  # (n, 4): one cache line per pixel
        self.size = (src_w, src_h)

    def __call__(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Planes as flat uint8 arrays (rows of `strides` bytes) -> [6, 128, 256] uint8.

        `out`, if given, is filled and returned instead of a new array (ingest warps straight into
        its clip buffer). Runs the compiled kernel (spark_distill.warpkernel); bit-identical to `reference`."""
        kernel = _compiled_kernel()
        if out is None:
            out = np.empty(FRAME_SHAPE, dtype=np.uint8)
        elif out.shape != FRAME_SHAPE or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {FRAME_SHAPE}, got {out.dtype} "
                             f"{out.shape}")
        if kernel is None:
            out[...] = self.reference(y, u, v)
            return out
        flat = out.reshape(-1)
        start = 0
        for plane, (stride, base, _), weights, need in zip((y, u, v), self.parts, self._interleaved,
                                                           self.min_sizes, strict=True):
            _check_plane(plane, need)
            kernel(plane, stride, base, weights, flat[start:start + len(base)])
            start += len(base)
        return out

    def reference(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The numpy port of transform.cl (the reference the compiled kernel is tested against)."""
        out = np.empty(int(np.prod(FRAME_SHAPE)), dtype=np.uint8)
        start = 0
        for plane, (stride, base, weight), need in zip((y, u, v), self.parts, self.min_sizes, strict=True):
            _check_plane(plane, need)
            # tap k reads the plane shifted by its offset; np.take is ~1.5x faster than fancy indexing
            acc = np.take(plane, base) * weight[0]  # int32
            acc += np.take(plane[1:], base) * weight[1]
            acc += np.take(plane[stride:], base) * weight[2]
            acc += np.take(plane[stride + 1:], base) * weight[3]
            acc += 1 << (_COEF_BITS - 1)
            acc >>= _COEF_BITS  # weights sum to 2**15 +- 2, so 0 <= acc <= 255: the saturation is a no-op
            out[start:start + len(base)] = acc
            start += len(base)
        return out.reshape(FRAME_SHAPE)

    def warp_i420(self, i420: np.ndarray) -> np.ndarray:
        """Warp a contiguous I420 buffer: Y (H x W), then U and V (H/2 x W/2 each), any shape."""
        w, h = self.size
        flat = i420.reshape(-1)
        ys, uvs = w * h, (w // 2) * (h // 2)
        if flat.size != ys + 2 * uvs:
            raise ValueError(f"expected an I420 buffer of {ys + 2 * uvs} bytes for {w}x{h}, got {flat.size}")
        return self(flat[:ys], flat[ys:ys + uvs], flat[ys + uvs:])


def _check_plane(plane: np.ndarray, need: int) -> None:
    if plane.dtype != np.uint8 or plane.ndim != 1:
        raise ValueError(f"planes must be flat uint8 arrays, got {plane.dtype} of shape {plane.shape}")
    if plane.size < need:
        raise ValueError(f"plane of {plane.size} bytes is smaller than the warp expects ({need})")


@functools.cache
def _compiled_kernel() -> Callable[..., None] | None:
    """warpkernel.warp_plane, or None (numpy fallback, one warning) where numba is not installed or
    cannot compile it (checked on a 2x2 plane, so a failure shows here and not mid-ingest)."""
    try:
        from spark_distill.openpilot.warpkernel import warp_plane

        out = np.zeros(1, np.uint8)
        warp_plane(np.full(4, 7, np.uint8), 2, np.zeros(1, np.intp), np.array([[1 << _COEF_BITS, 0, 0, 0]], np.int32),
                   out)
        if out[0] != 7:
            raise RuntimeError(f"the compiled warp gives {out[0]} on a flat plane of 7")
    except Exception as e:  # ImportError, or any numba/LLVM compile error: the numpy port still works
        log.warning("compiled warp unavailable (%s: %s); warping with the slower numpy port", type(e).__name__, e)
        return None
    return warp_plane


@functools.lru_cache(maxsize=32)
def warp_for(rpy_calib: tuple[float, float, float], camera: CameraModel, *, big: bool,
             strides: tuple[int, int, int] | None = None) -> FrameWarp:
    """The (cached) warp of this camera into the medium (road) or small-big (wide) model frame.

    Cached by its arguments, so the per-frame call of ingest is a dictionary lookup; a new
    calibration builds new tables (~20 ms per camera)."""
    m = get_warp_matrix(rpy_calib, camera.intrinsics, big=big)
    return FrameWarp(m, camera.width, camera.height, strides)


def pack_yuv6(y: np.ndarray, u: np.ndarray, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Pack a model-frame Y (256, 512), U and V (128, 256) into [6, 128, 256] (loadyuv.cl order), into `out`
    when given (any views: strided planes are read in place)."""
    if out is None:
        out = np.empty((6, *u.shape), dtype=y.dtype)
    out[0], out[1], out[2], out[3] = y[0::2, 0::2], y[1::2, 0::2], y[0::2, 1::2], y[1::2, 1::2]
    out[4], out[5] = u, v
    return out


def unpack_yuv6(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of pack_yuv6: Y (256, 512), U (128, 256), V (128, 256)."""
    y = np.empty((MODEL_H, MODEL_W), dtype=packed.dtype)
    y[0::2, 0::2], y[1::2, 0::2], y[0::2, 1::2], y[1::2, 1::2] = packed[0], packed[1], packed[2], packed[3]
    return y, packed[4], packed[5]


def yuv6_to_rgb(packed: np.ndarray) -> np.ndarray:
    """A packed frame as an RGB image (256, 512, 3) uint8, BT.601 limited range, for pictures."""
    y, u, v = unpack_yuv6(packed)
    yf = (y.astype(np.float32) - 16.0) * (255.0 / 219.0)
    uf = np.repeat(np.repeat(u.astype(np.float32) - 128.0, 2, 0), 2, 1) * (255.0 / 224.0)
    vf = np.repeat(np.repeat(v.astype(np.float32) - 128.0, 2, 0), 2, 1) * (255.0 / 224.0)
    r = yf + 1.402 * vf
    g = yf - 0.344136 * uf - 0.714136 * vf
    b = yf + 1.772 * uf
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
