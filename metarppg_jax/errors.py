"""The project's exceptions: every error a user can act on is one of these.

`MetaRPPGError` is the base; `DataError` is bad input data (videos, ground truth, datasets),
`CheckpointError` a checkpoint that cannot be read or does not fit, `ConfigError` a config
field that is unknown or out of range. Messages name the file (or field) and the problem.
"""


class MetaRPPGError(Exception):
  """Base class of every error this project raises on purpose."""


class DataError(MetaRPPGError):
  """Input data (a video, a ground-truth file, a dataset) is missing or unusable."""


class CheckpointError(MetaRPPGError):
  """A checkpoint is missing, corrupt, unsafe, or does not match the model."""


class ConfigError(MetaRPPGError):
  """A config field is unknown or has a value out of range."""
