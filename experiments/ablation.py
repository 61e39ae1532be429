r"""The paper's ablation table on any configured dataset.

  python experiments/ablation.py --config configs/default.py --workdir /tmp/ablation
  python experiments/ablation.py --config configs/ubfc.py --workdir DIR \
      --config.data.data_dir=DATA --variants=full,no_prototype

Trains and evaluates the base config ("full": Meta-rPPG as configured) and every ablation of
configs/ablation_*.py (their `OVERRIDES` applied to the base config: no synthetic gradient, no
prototype, adaptation position estimator / both, the end-to-end baseline), each in
WORKDIR/<variant> (a rerun resumes them), all on the same dataset build (WORKDIR/data unless
the base config names one). Writes WORKDIR/ablation.json and WORKDIR/ablation.md: per variant
the test MAE, RMSE, Pearson r and per-video MAE of the model as it is meant to be used (with
transductive adaptation; the end-to-end baseline without), and the no-adaptation MAE beside.
"""

import copy
import importlib.util
import json
import math
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from metarppg_jax import configuration
from metarppg_jax import main as entry  # defines --config and --workdir, as for main
from metarppg_jax import train
from metarppg_jax.errors import MetaRPPGError

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
VARIANTS = ("full", "no_synthetic_gradient", "no_prototype", "adapt_estimator", "adapt_both",
            "end_to_end")

FLAGS = flags.FLAGS


def overrides(variant: str) -> dict:
  """The config changes of an ablation (configs/ablation_<variant>.py OVERRIDES)."""
  if variant == "full":
    return {}
  path = CONFIGS / f"ablation_{variant}.py"
  if variant not in VARIANTS or not path.is_file():
    raise configuration.ConfigError(f"unknown ablation {variant!r}; choose from {VARIANTS}")
  spec = importlib.util.spec_from_file_location(f"ablation_{variant}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return dict(module.OVERRIDES)


def variant_config(base, variant: str, workdir: pathlib.Path):
  """The base config with the ablation applied and the shared data directory set."""
  config = copy.deepcopy(base)
  with config.unlocked():
    configuration.apply_overrides(config, overrides(variant))
    if not config.data.data_dir:
      config.data.data_dir = str(workdir / "data")
    config.mode, config.method = "train", "meta_rppg"
  return configuration.validate(config)


def _row(variant: str, metrics: dict, split: str) -> dict:
  used = "no_adaptation" if variant == "end_to_end" else "meta_rppg"
  m = metrics[used][split]
  return {"variant": variant, "evaluated": used, "mae": m["mae"], "rmse": m["rmse"],
          "pearson": m["pearson"], "video_mae": m["video"]["mae"],
          "mae_no_adaptation": metrics["no_adaptation"][split]["mae"],
          "num_windows": m["num_windows"]}


def _fmt(x, digits=2):
  return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else (
      f"{x:.{digits}f}")


def write_table(rows: list[dict], workdir: pathlib.Path, split: str, base_name: str) -> None:
  (workdir / "ablation.json").write_text(json.dumps(
      rows, indent=2, default=lambda x: None) + "\n")
  lines = [f"# Ablation ({base_name}, split `{split}`)", "",
           "MAE, RMSE in bpm per HR window; the model with transductive adaptation (the "
           "end-to-end baseline has none); the last column the same model without adaptation.",
           "", "| variant | MAE | RMSE | Pearson r | MAE per video | MAE no adaptation | windows |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {_fmt(r['mae'])} | {_fmt(r['rmse'])} | "
                 f"{_fmt(r['pearson'], 3)} | {_fmt(r['video_mae'])} | "
                 f"{_fmt(r['mae_no_adaptation'])} | {r['num_windows']} |")
  finite = [r for r in rows if isinstance(r["mae"], float) and math.isfinite(r["mae"])]
  if finite:
    best = min(finite, key=lambda r: r["mae"])
    lines += ["", f"Lowest MAE: **{best['variant']}** ({best['mae']:.2f} bpm)."]
  (workdir / "ablation.md").write_text("\n".join(lines) + "\n")


def run(base, workdir: str | pathlib.Path, variants=VARIANTS) -> list[dict]:
  """Trains and evaluates every variant; returns the table rows (also written)."""
  workdir = configuration.prepare_workdir(workdir)
  rows = []
  for variant in variants:
    config = variant_config(base, variant, workdir)
    logging.info("ablation %s: %s", variant, overrides(variant) or "base config")
    results = train.train_and_evaluate(config, workdir / variant)
    rows.append(_row(variant, results["metrics"], config.data.eval_split))
    write_table(rows, workdir, config.data.eval_split, config.data.dataset)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  try:
    rows = run(FLAGS.config, FLAGS.workdir, tuple(FLAGS.variants))
  except MetaRPPGError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
  print((pathlib.Path(FLAGS.workdir) / "ablation.md").read_text())
  del rows


if __name__ == "__main__":
  flags.DEFINE_list("variants", list(VARIANTS), f"Which of {VARIANTS}.")
  app.run(main, flags_parser=entry.parse_flags)
