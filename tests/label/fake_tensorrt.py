# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""A small fake of the TensorRT 10 Python API, for testing the tensorrt backend's logic on the CPU.

It implements just the calls the backend makes. An "engine" is the ONNX bytes behind a header; an
execution context runs them with ONNX Runtime, reading inputs from and writing outputs to the raw
addresses the backend hands it (CPU tensors' data pointers), as TensorRT does with device memory.
"""

from __future__ import annotations

import ctypes
import enum

import numpy as np
import onnx
import onnxruntime as ort

__version__ = "10.99.0-fake"
BUILDS: list[str] = []  # one entry per engine built, so tests can see the cache working
HEADER = b"FAKETRT1"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.Enum):
    FP16 = 0
    BF16 = 1


_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 2: DataType.UINT8, 6: DataType.INT32}
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.UINT8: np.uint8, DataType.INT32: np.int32}


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class _Network:
    def __init__(self) -> None:
        self.onnx: bytes | None = None


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network, self.errors = network, []

    def parse(self, data: bytes) -> bool:
        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except Exception as e:
            self.errors.append(str(e))
            return False
        self.network.onnx = data
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"timing"

    def serialize(self) -> bytes:
        return self.data


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        assert len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))
        self.shapes[name] = hi


class _Config:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[_Profile] = []
        self.timing: _TimingCache | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.timing

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
        model = onnx.load_from_string(network.onnx)
        inputs = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
        assert config.profiles and set(config.profiles[0].shapes) == inputs, "every input needs a profile shape"
        BUILDS.append(model.graph.output[0].name)
        return HEADER + network.onnx


class _Engine:
    def __init__(self, onnx_bytes: bytes) -> None:
        self.model = onnx.load_from_string(onnx_bytes)
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        init = {i.name for i in self.model.graph.initializer}
        self.io = [(i.name, TensorIOMode.INPUT, i) for i in self.model.graph.input if i.name not in init]
        self.io += [(o.name, TensorIOMode.OUTPUT, o) for o in self.model.graph.output]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return next(m for n, m, _ in self.io if n == name)

    def get_tensor_dtype(self, name: str) -> DataType:
        value = next(v for n, _, v in self.io if n == name)
        return _ONNX_TO_TRT[value.type.tensor_type.elem_type]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    @staticmethod
    def _view(address: int, shape: tuple, dtype: type) -> np.ndarray:
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = (ctypes.c_char * count).from_address(address)
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        e = self.engine
        feeds = {n: self._view(self.addresses[n], self.shapes[n], _NP[e.get_tensor_dtype(n)]).copy()
                 for n, mode, _ in e.io if mode == TensorIOMode.INPUT}
        outputs = e.session.run(None, feeds)
        for (n, _, _), value in zip([io for io in e.io if io[1] == TensorIOMode.OUTPUT], outputs, strict=True):
            dst = self._view(self.addresses[n], value.shape, _NP[e.get_tensor_dtype(n)])
            dst[...] = value
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        if not data.startswith(HEADER):
            return None
        return _Engine(data[len(HEADER):])
