# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Arrays as shard members: `.npy` bytes in a zstd frame with a content checksum (`encode_array`), read back
without a copy and without ever unpickling (`decode_array`, `decode_array_into`). Every array member of a frames
or label shard, and every reader of one, goes through here (docs/formats.md, "Array members")."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import zstandard

from spark_distill.errors import DatasetError, first_line

_ZSTD_LEVEL = 1


def encode_array(arr: np.ndarray, *, level: int = _ZSTD_LEVEL) -> bytes:
    """`.npy` bytes of `arr`, zstd-compressed with a content checksum (a flipped bit in the data is an error
    when read, not silently different pixels or labels; it costs 4 bytes and no measurable time).

    The header and the array's memory are fed to the compressor as they are (no .npy copy in between),
    with the content size in the frame header (decode_array decompresses straight into the array)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject:
        raise ValueError("object arrays cannot be stored (they would need pickle)")
    header = io.BytesIO()
    fields = np.lib.format.header_data_from_array_1_0(arr)
    try:
        np.lib.format.write_array_header_1_0(header, fields)
    except ValueError:  # a header too long for .npy 1.0 (np.save switches to 2.0 likewise)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, fields)
    head = header.getvalue()
    body = np.frombuffer(arr.reshape(-1), np.uint8) if arr.size else b""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj(size=len(head) + arr.nbytes)
    return compressor.compress(head) + compressor.compress(body) + compressor.flush()


def decode_array(data: bytes) -> np.ndarray:
    """Inverse of encode_array; never unpickles. Raises DatasetError on bytes that are not such an array."""
    return _decoded(data, None)


def decode_array_into(data: bytes, out: np.ndarray) -> np.ndarray:
    """Decode an `encode_array` member straight into the leading rows of `out` (C-contiguous; the array's dtype
    and trailing dimensions must be out's) with no intermediate copy; returns that view of `out`. Raises
    DatasetError on bytes that are not such an array."""
    return _decoded(data, out)



def _decoded(data: bytes, out: np.ndarray | None) -> np.ndarray:
    """The one decoder: the .npy header read from the zstd stream, then the data decompressed straight into the
    array's memory (a new array, or the leading rows of `out`); the frame's content checksum is verified."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            head = _read_exactly(reader, 10)
            version = np.lib.format.read_magic(io.BytesIO(head[:8]))
            if version == (1, 0):
                head += _read_exactly(reader, int.from_bytes(head[8:10], "little"))
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(head[8:]))
            else:
                head += _read_exactly(reader, 2)
                head += _read_exactly(reader, int.from_bytes(head[8:12], "little"))
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(io.BytesIO(head[8:]))
            if dtype.hasobject:
                raise ValueError("object arrays are not accepted")
            if out is None:
                arr = np.empty(shape, dtype, order="F" if fortran else "C")
            elif dtype != out.dtype or fortran or len(shape) != out.ndim or shape[1:] != out.shape[1:] \
                    or shape[0] > out.shape[0]:
                raise ValueError(f"a {dtype} array of shape {shape} does not fit {out.dtype} {out.shape}")
            else:
                arr = out[: shape[0]]
            flat, filled = memoryview(arr.reshape(-1, order="A")).cast("B"), 0  # a view in the array's own order
            while filled < arr.nbytes and (n := reader.readinto(flat[filled:])):
                filled += n
            if filled != arr.nbytes or reader.read(1):  # the last read checks the frame's checksum
                raise ValueError("the array's size disagrees with its header")
            return arr
    except (zstandard.ZstdError, ValueError, TypeError, SyntaxError, EOFError, OverflowError, MemoryError) as e:
        raise DatasetError(f"not a zstd-compressed .npy array ({type(e).__name__}: {first_line(e, 120)})") from e


def _read_exactly(reader: Any, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise EOFError("truncated zstd frame")
    return data
