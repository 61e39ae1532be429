r"""Remakes the pretrained model shipped in the package (metarppg_jax/weights/).

  python experiments/make_pretrained.py --config configs/default.py --workdir /tmp/pretrained \
      [--out metarppg_jax/weights] [--config.optim.num_epochs=8 ...]

Trains the config in WORKDIR (a rerun resumes; a finished run is only re-exported), takes the
checkpoint with the lowest validation MAE (else the last), evaluates it on the test split and
writes it with its config and an info.json (`pretrained.export`): the command, the training
steps, the data it was trained on, and the figures that checkpoint measured on the test split
(per-video MAE with and without adaptation, every classical method, the paired comparison of
adaptation).
"""

import copy
import json
import pathlib
import sys

from absl import app
from absl import flags

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import evaluate
from metarppg_jax import main as entry  # defines --config and --workdir, as for main
from metarppg_jax import pretrained
from metarppg_jax import train
from metarppg_jax.data import splits
from metarppg_jax.errors import MetaRPPGError

FLAGS = flags.FLAGS


def _summary(metrics: dict, split: str) -> dict:
  """Per-video MAE of every method on `split`, and adaptation's paired comparison."""
  video_mae = {m: round(by_split[split]["video"]["mae"], 3)
               for m, by_split in metrics.items() if split in by_split}
  paired = metrics.get("meta_rppg", {}).get(split, {}).get("paired", {}).get("no_adaptation")
  keep = ("num_videos", "mae_a", "mae_b", "mean_diff", "ci_low", "ci_high", "wilcoxon_p",
          "verdict")
  return {"split": split, "video_mae_bpm": video_mae,
          "adaptation_vs_none": {k: paired[k] for k in keep} if paired else None}


def make(config, workdir: str, out: str | pathlib.Path, command: str) -> pathlib.Path:
  """Trains (or resumes) `config` in `workdir`, exports its best state to `out` with the
  figures that state measures on the test split (evaluated again in WORKDIR/exported)."""
  train.train_and_evaluate(config, workdir)
  target = checkpoints.target_state(config)
  try:
    restored = checkpoints.restore_best(workdir, target)
  except MetaRPPGError:
    restored = checkpoints.restore_latest(workdir, target)
  results = evaluate.evaluate(config, pathlib.Path(workdir) / "exported", restored.state,
                              sources=splits.load(config, workdir), plots=False)
  info = {
      "command": command,
      "trained_on": (f"synthetic only: the built-in generator's {config.data.dataset} "
                     f"'{config.data.builder_config}' build, source domain "
                     f"('{config.data.train_split}' split); no real faces"),
      "steps": int(restored.state.step),
      "checkpoint": restored.path,
      "test": _summary(results["metrics"], config.data.eval_split),
  }
  shipped = copy.deepcopy(config)
  with shipped.unlocked():
    shipped.data.data_dir = ""  # a path of the machine it was trained on
  return pretrained.export(shipped, restored.state, out, info)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = configuration.validate(FLAGS.config)
  overrides = " ".join(a for a in sys.argv[1:] if a.startswith("--config."))
  command = (f"python experiments/make_pretrained.py --config {FLAGS['config'].config_filename}"
             f" --workdir DIR {overrides}").strip()
  try:
    directory = make(config, FLAGS.workdir, FLAGS.out, command)
  except MetaRPPGError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(pretrained.info(directory), indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("out", str(pretrained.WEIGHTS_DIR), "Where the model is written.")
  app.run(main, flags_parser=entry.parse_flags)
