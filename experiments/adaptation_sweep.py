r"""How much test-time adaptation changes a trained model, over its hyperparameters.

  python experiments/adaptation_sweep.py --workdir DIR [--split validation_shifted] \
      [--adapt_lr 1e-5,1e-4,1e-3,1e-2] [--fewshots 1,2] [--json OUT.json]

Restores the workdir's best checkpoint (else its latest) and, for every inner learning rate
and number of support windows (the queries are the windows after them), evaluates Meta-rPPG
with and without the transductive adaptation on the same query windows of `--split`: per-video MAE of both and the paired
difference (bootstrap 95 % interval, Wilcoxon p; `metrics.paired_comparison`). Choose the
adaptation's hyperparameters on a validation split (validation_shifted: the test domain,
videos disjoint from test), never on test.
"""

import argparse
import copy
import json
import sys

import numpy as np

from metarppg_jax import checkpoints
from metarppg_jax import configuration
from metarppg_jax import evaluate
from metarppg_jax import metrics
from metarppg_jax.data import splits
from metarppg_jax.errors import MetaRPPGError


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(",") if v]


def _per_video(config, sig, truth, data) -> np.ndarray:
  scored = evaluate.score(config, sig, truth, data)
  return metrics.video_abs_errors(np.asarray(scored["hr_pred"]).ravel(), truth.ravel(),
                                  np.repeat(np.arange(len(data.video_ids)), truth.shape[1]))


def _restore(config, workdir: str):
  """The best checkpoint by validation MAE, else the latest."""
  try:
    return checkpoints.restore_best(workdir, checkpoints.target_state(config)).state
  except MetaRPPGError:
    return evaluate.restore_state(config, workdir).state


def sweep(workdir: str, split: str, adapt_lrs: list[float], fewshots: list[int]) -> dict:
  """{"rows": [{adapt_lr, fewshots, mae_adapted, mae_not_adapted, paired}], ...}."""
  base = configuration.read(workdir)
  sources = splits.load(base, workdir)
  source = splits.source(base, sources, split)
  state = _restore(base, workdir)
  rows = []
  for shots in fewshots:
    config = copy.deepcopy(base)
    with config.unlocked():
      # The same windows a video whatever the support: more support, fewer queries.
      config.eval.queries = base.eval.queries + base.meta.fewshots - shots
      config.meta.fewshots = shots
    data = evaluate.load_eval_data(config, source, split)
    truth = evaluate.true_hr(config, data)
    plain = _per_video(config, evaluate.model_signal(config, state, data.x, adapt=False),
                       truth, data)
    for lr in adapt_lrs:
      with config.unlocked():
        config.optim.adapt_lr = lr
      adapted = _per_video(config, evaluate.model_signal(config, state, data.x, adapt=True),
                           truth, data)
      paired = metrics.paired_comparison(adapted, plain)
      rows.append({"adapt_lr": lr, "fewshots": shots, "videos": len(data.video_ids),
                   "mae_adapted": float(np.nanmean(adapted)),
                   "mae_not_adapted": float(np.nanmean(plain)), "paired": paired})
      print(f"fewshots {shots} adapt_lr {lr:g}: adapted {rows[-1]['mae_adapted']:.2f} vs "
            f"{rows[-1]['mae_not_adapted']:.2f} bpm per video; difference "
            f"{paired['mean_diff']:+.2f} [{paired['ci_low']:+.2f}, "
            f"{paired['ci_high']:+.2f}], {paired['verdict']}", flush=True)
  return {"workdir": workdir, "split": split, "trained_adapt_lr": base.optim.adapt_lr,
          "trained_fewshots": base.meta.fewshots, "rows": rows}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", default="validation_shifted")
  parser.add_argument("--adapt_lr", default="1e-5,1e-4,1e-3,1e-2")
  parser.add_argument("--fewshots", default="1,2")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  try:
    result = sweep(args.workdir, args.split, _floats(args.adapt_lr),
                   [int(v) for v in args.fewshots.split(",")])
  except MetaRPPGError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2, default=float)
  return 0


if __name__ == "__main__":
  sys.exit(main())
