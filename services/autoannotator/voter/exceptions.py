"""Named errors of the voter and of calibration."""

from __future__ import annotations

from autoannotator.exceptions import CalibrationError, ConfigError

__all__ = ["CalibrationError", "VoterConfigError"]


class VoterConfigError(ConfigError):
    """The pipeline config cannot drive a voter (e.g. no specialists); the message names the field."""
