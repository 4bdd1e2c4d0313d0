"""Named errors of the voter and of calibration."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError, ConfigError


class VoterConfigError(ConfigError):
    """The pipeline config cannot drive a voter (e.g. no specialists); the message names the field."""


class CalibrationError(AutoAnnotatorError):
    """A calibration set or target cannot be used (bad rows, unknown labels, unreachable target)."""
