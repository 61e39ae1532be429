r"""Entry point: train and evaluate, or evaluate a checkpoint.

  python -m metarppg_jax.main --config configs/default.py --workdir /tmp/metarppg
  python -m metarppg_jax.main --config configs/default.py --workdir /tmp/metarppg \
      --config.mode=evaluate --config.restore_from=best
  python -m metarppg_jax.main --config configs/default.py --workdir /tmp/pos \
      --config.mode=evaluate --config.method=pos

Any config field can be overridden with `--config.<group>.<field>=VALUE`. The config is
validated before any work starts; the resolved config is written to WORKDIR/config.json.
Errors the user can act on (`MetaRPPGError`: bad config, data, checkpoint) end the program
with their message (once, on stderr) and exit status 1, without a traceback.

The console: one progress bar a phase (dataset build, training, evaluation) and a few plain
lines (`console.say`) on stderr; the results table and the report's path on stdout at the end.
The libraries' logs (orbax, tfds, grain) show from `-v 1` on (`console.configure`).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from metarppg_jax import configuration
from metarppg_jax import console
from metarppg_jax.errors import ConfigError, MetaRPPGError

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report and plots.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (e.g. configs/default.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> dict:
  """Trains and evaluates (mode "train") or evaluates (mode "evaluate"); returns the results."""
  configuration.validate(config)
  # Imported here so that `--help` and config errors do not pay for importing JAX.
  from metarppg_jax import evaluate  # pylint: disable=g-import-not-at-top
  from metarppg_jax import sharding  # pylint: disable=g-import-not-at-top
  from metarppg_jax import train  # pylint: disable=g-import-not-at-top
  # One process of several (config.mesh.* or JAX_COORDINATOR_ADDRESS...): must come before
  # the first use of the devices.
  sharding.initialize_distributed(config)
  if config.mode == "train":
    if config.method not in configuration.LEARNED_METHODS:
      raise ConfigError(
          f"method={config.method!r} is a classical method and has nothing to train; run it "
          "with --config.mode=evaluate")
    return train.train_and_evaluate(config, workdir)
  return evaluate.evaluate(config, workdir)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad command line reported as a one-line error (exit 1).

  ml_collections raises AttributeError / KeyError / TypeError / ValueError from inside flag
  parsing for an override that names no config field or has the wrong type.
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    print(f"error: ConfigError: bad config on the command line ({type(e).__name__}: {e}); "
          f"check the overrides {overrides}: each must name a field of the config file "
          "(e.g. --config.optim.lr=0.001) with a value of its type", file=sys.stderr)
  sys.exit(1)


def summary(results: dict) -> str:
  """The results table of each split and where the report is: the run's last words."""
  from metarppg_jax import reports  # pylint: disable=g-import-not-at-top
  by_split = [s for r in results["metrics"].values() for s in r]
  lines = []
  for split in dict.fromkeys(by_split):
    lines += ["", f"{split}:"] + reports.results_table(results["metrics"], split)
  report = results["files"].get("report")
  if report:
    lines += ["", f"report: {report}"]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  console.configure(FLAGS.verbosity)
  try:
    results = run(FLAGS.config, FLAGS.workdir)
  except MetaRPPGError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
  print(summary(results))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
