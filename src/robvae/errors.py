"""Exceptions raised by robvae. Every message names the problem (and the file, where there is one)."""

from __future__ import annotations


class RobvaeError(ValueError):
    """Base class: bad input, bad option or bad file. The CLI prints these as one line."""


class DataError(RobvaeError):
    """A data file is missing, corrupt, truncated or of the wrong format."""


class CheckpointError(RobvaeError):
    """A run folder's config or weights are missing, corrupt or do not match each other."""


class InputError(RobvaeError):
    """An input tensor has the wrong shape, holds NaN/inf or leaves [0, 1]."""


class LockError(RobvaeError):
    """A folder is in use by another robvae process (see :func:`robvae.fileio.folder_lock`)."""


class StudyError(RobvaeError):
    """A study could not finish: some of its trials failed (the message names one and its error)."""
