# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The compiled inner loop of modelframe.FrameWarp (numba). Entry point: `warp_plane`.

Per output pixel it does exactly what the numpy reference (`FrameWarp.reference`) does: four
uint8 taps at base, +1, +stride, +stride+1 times int32 weights, summed in int32, + 2**14, >> 15
(transform.cl's fixed-point bilinear), so the result is bit-identical. The tables are built once
per calibration by modelframe; this module only runs them. Imported lazily (numba costs ~0.3 s to
import); the first call compiles, or loads the on-disk cache (`cache=True`).
"""

from __future__ import annotations

import numba
import numpy as np

_COEF_BITS = 15


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _warp_plane(plane: np.ndarray, stride: int, base: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    half = np.int32(1 << (_COEF_BITS - 1))
    for i in range(base.shape[0]):
        b = base[i]
        acc = (np.int32(plane[b]) * weights[i, 0] + np.int32(plane[b + 1]) * weights[i, 1]
               + np.int32(plane[b + stride]) * weights[i, 2] + np.int32(plane[b + stride + 1]) * weights[i, 3])
        out[i] = np.uint8((acc + half) >> _COEF_BITS)


def warp_plane(plane: np.ndarray, stride: int, base: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """Fill `out` (uint8, n) from `plane` (flat uint8) with `base` (intp, n) and `weights` (int32, n x 4).

    The caller guarantees every tap lies inside `plane` (no bounds checks here)."""
    _warp_plane(plane, stride, base, weights, out)
