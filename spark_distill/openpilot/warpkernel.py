# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The compiled inner loop of modelframe.FrameWarp (numba). Entry point: `warp_plane`.

Per output pixel it does exactly what the numpy reference (`FrameWarp.reference`) does: four
uint8 taps at base, +1, +stride, +stride+1 times int32 weights, summed in int32, + 2**14, >> 15
(transform.cl's fixed-point bilinear), so the result is bit-identical. The tables are built once
per calibration by modelframe; this module only runs them. Imported lazily (numba costs ~0.3 s to
import); the first call compiles, or loads the on-disk cache (`cache=True`).

Inside ingest the source frame was just written by the decoder and mostly sits in L3 or memory, so
the gathers wait on it: the kernel prefetches the two source rows of the pixel `PREFETCH_AHEAD`
outputs ahead (an LLVM prefetch hint; no effect on results). On a frame fresh from the decoder
that cut the warp's CPU time by ~30% (0.125 -> 0.089 s per 100 road + wide frames); distances of
16-48 gained less, 1280 less again.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_COEF_BITS = 15
PREFETCH_AHEAD = 256  # output pixels


@intrinsic
def _prefetch(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """llvm.prefetch(&arr[idx], read, keep in all cache levels, data): a hint, never a fault."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)  # mangled for typed or opaque pointers
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _warp_plane(plane: np.ndarray, stride: int, base: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    half = np.int32(1 << (_COEF_BITS - 1))
    n = base.shape[0]
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            ahead = base[i + PREFETCH_AHEAD]
            _prefetch(plane, ahead)
            _prefetch(plane, ahead + stride)
        b = base[i]
        acc = (np.int32(plane[b]) * weights[i, 0] + np.int32(plane[b + 1]) * weights[i, 1]
               + np.int32(plane[b + stride]) * weights[i, 2] + np.int32(plane[b + stride + 1]) * weights[i, 3])
        out[i] = np.uint8((acc + half) >> _COEF_BITS)


def warp_plane(plane: np.ndarray, stride: int, base: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """Fill `out` (uint8, n) from `plane` (flat uint8) with `base` (intp, n) and `weights` (int32, n x 4).

    The caller guarantees every tap lies inside `plane` (no bounds checks here)."""
    _warp_plane(plane, stride, base, weights, out)
