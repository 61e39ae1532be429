"""What a run prints: a few plain lines beside one tqdm bar a phase, both on stderr.

Library code reports its milestones with `say` (dataset ready, devices, checkpoint saved,
validation MAE). `configure(verbosity)`, called once by an entry point, sends those lines to
stderr through tqdm (so that they do not break a bar), leaving stdout to the program's results,
and keeps absl logging, which orbax, tfds and grain log through, at WARNING unless the user
asked for `-v 1` or more. Without `configure` (tests, notebooks) the lines are ordinary INFO
records of the "metarppg_jax" logger.
"""

import logging
import sys

from absl import logging as absl_logging
import tqdm

LOGGER = "metarppg_jax"


def say(message: str, *args) -> None:
  """One plain line for the user (printf-style args, as `logging`)."""
  logging.getLogger(LOGGER).info(message, *args)


class _BarSafeHandler(logging.Handler):
  """Writes each line above any active tqdm bar instead of through it."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      tqdm.tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def configure(verbosity: int) -> None:
  """Console output of an entry point: `say` lines on stderr; absl logs (ours and the
  libraries') at WARNING when verbosity < 1, as absl's -v sets them otherwise."""
  if verbosity < 1:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logger = logging.getLogger(LOGGER)
  logger.setLevel(logging.INFO)
  logger.propagate = False  # absl's root handler would print each line a second time
  if not any(isinstance(h, _BarSafeHandler) for h in logger.handlers):
    logger.addHandler(_BarSafeHandler())
