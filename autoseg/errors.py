"""Typed exceptions. Every message says what was expected, what was found and how to fix it."""
from __future__ import annotations


class AutosegError(Exception):
    """Base class of every error autoseg raises on purpose (the CLI shows these without a traceback)."""


class ImageIOError(AutosegError):
    """An image file could not be read or written."""


class DatasetError(AutosegError):
    """A dataset folder is malformed. `problems` lists every problem found, one line each."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        details = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(message + details)


class PlanError(AutosegError):
    """A plan or fingerprint file is invalid, or no valid plan exists for the data."""


class ConfigError(AutosegError):
    """A training/prediction option or a configuration document is invalid."""


class RegistryError(AutosegError):
    """A component name is not registered."""


class CheckpointError(AutosegError):
    """A checkpoint or run folder is missing, corrupt or incompatible."""


class PreprocessingError(AutosegError):
    """A preprocessed case is missing or corrupt."""


class DistributedError(AutosegError):
    """A data-parallel run could not start, or its ranks lost contact (another rank failed or hung)."""
