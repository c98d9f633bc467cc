# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Exceptions. Only cli.py catches SparkDistillError; each message is one line naming the fix (exit codes and
when to warn or note instead: docs/conventions.md)."""


class SparkDistillError(Exception):
    """Base class; `exit_code` 2 means bad input or configuration, 1 a runtime failure."""

    exit_code = 2


class ConfigError(SparkDistillError):
    """An option or config value is invalid."""


class MissingDependencyError(SparkDistillError):
    """An optional dependency is not installed."""


class DatasetError(SparkDistillError):
    """A frames dataset or label set on disk is missing, corrupt or inconsistent."""


class IngestError(SparkDistillError):
    """Ingest cannot use an input."""


class CorruptLogError(IngestError):
    """A log file has no readable events."""


class UnsupportedVideoError(IngestError):
    """A camera file cannot be decoded."""


class LabelError(SparkDistillError):
    """The label pass cannot run."""


class UnknownTeacherError(LabelError):
    """A teacher or backend name is not registered."""


class TrainError(SparkDistillError):
    """Training cannot run."""


class ExportError(SparkDistillError):
    """Export cannot run or its verification failed."""

    exit_code = 1


class OnnxMismatchError(ExportError):
    """The exported ONNX disagrees with the torch model."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut at `limit` characters: what a one-line error quotes."""
    return (str(e).splitlines() or [""])[0][:limit]
