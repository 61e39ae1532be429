r"""The paper's ablation table on any configured dataset, over training seeds.

  python experiments/ablation.py --config configs/default.py --workdir /tmp/ablation \
      --seeds 0,1,2 --results experiments/results
  python experiments/ablation.py --config configs/ubfc.py --workdir DIR \
      --config.data.data_dir=DATA --variants=full,no_prototype
  python experiments/ablation.py --config configs/default.py --workdir DIR \
      --combine A/ablation.json,B/ablation.json --results experiments/results

Trains and evaluates the base config ("full": Meta-rPPG as configured, synthetic gradient and
prototype) and every ablation of configs/ablation_*.py (their `OVERRIDES` applied to the base
config: prototype only (no synthetic gradient), synthetic gradient only (no prototype),
adaptation position estimator / both, the end-to-end baseline), each seed in
WORKDIR/<variant>/seed<k> (a rerun resumes them), all on the same dataset build (WORKDIR/data
unless the base config names one). Per variant and seed: the per-video MAE of the model as it
is meant to be used (with transductive adaptation; the end-to-end baseline without), the same
model without adaptation, and the paired gain of adaptation (mean per-video difference with its
bootstrap interval); over seeds: mean and standard deviation. Writes ablation.json and
ablation.md into WORKDIR and, with --results DIR, into DIR (the files the README includes).
"""

import copy
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
  return configuration.overrides_of(path)


def variant_config(base, variant: str, workdir: pathlib.Path):
  """The base config with the ablation applied and the shared data directory set."""
  config = copy.deepcopy(base)
  with config.unlocked():
    configuration.apply_overrides(config, overrides(variant))
    if not config.data.data_dir:
      config.data.data_dir = str(workdir / "data")
    config.mode, config.method = "train", "meta_rppg"
  return configuration.validate(config)


def _row(variant: str, seed: int, metrics: dict, split: str) -> dict:
  used = "no_adaptation" if variant == "end_to_end" else "meta_rppg"
  m, plain = metrics[used][split], metrics["no_adaptation"][split]
  gain = metrics["meta_rppg"][split].get("paired", {}).get("no_adaptation", {})
  return {"variant": variant, "seed": seed, "evaluated": used, "video_mae": m["video"]["mae"],
          "video_mae_no_adaptation": plain["video"]["mae"], "window_mae": m["mae"],
          "pearson": m["pearson"], "num_videos": m["video"]["num_videos"],
          "gain": None if used == "no_adaptation" else {
              k: gain.get(k) for k in ("mean_diff", "ci_low", "ci_high", "wilcoxon_p",
                                       "verdict")}}


def _mean_sd(values) -> tuple[float, float]:
  v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
  if not v:
    return math.nan, math.nan
  mean = sum(v) / len(v)
  sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
  return mean, sd


def summarise(rows: list[dict]) -> list[dict]:
  """One line a variant: mean and sd over seeds of each figure."""
  out = []
  for variant in dict.fromkeys(r["variant"] for r in rows):
    mine = [r for r in rows if r["variant"] == variant]
    line = {"variant": variant, "seeds": [r["seed"] for r in mine],
            "evaluated": mine[0]["evaluated"]}
    for key in ("video_mae", "video_mae_no_adaptation", "window_mae", "pearson"):
      line[key], line[key + "_sd"] = _mean_sd([r[key] for r in mine])
    gains = [r["gain"]["mean_diff"] for r in mine if r["gain"]]
    line["gain"], line["gain_sd"] = _mean_sd(gains)
    line["gain_ci_excludes_0"] = sum(
        1 for r in mine if r["gain"] and r["gain"]["ci_low"] is not None
        and (r["gain"]["ci_low"] > 0 or r["gain"]["ci_high"] < 0))
    out.append(line)
  return out


def _fmt(x, digits=2):
  return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else (
      f"{x:.{digits}f}")


def _pm(mean, sd, digits=2):
  return _fmt(mean, digits) + ("" if sd is None or not math.isfinite(sd) else
                               f" ± {_fmt(sd, digits)}")


def table_md(summary: list[dict], split: str, base_name: str) -> str:
  lines = [f"Ablation ({base_name}, split `{split}`): mean ± sd over training seeds. Per-video "
           "MAE (bpm) of the model with transductive adaptation (the end-to-end baseline "
           "has none), of the same model without it, and the paired gain of adaptation "
           "(adapted - not adapted per video: negative helps), with the number of seeds whose "
           "bootstrap 95 % interval excludes 0.", "",
           "| variant | seeds | MAE per video | without adaptation | gain (bpm) | seeds with "
           "CI excl. 0 | Pearson r |", "|---|---:|---:|---:|---:|---:|---:|"]
  for r in summary:
    gain = "n/a" if r["evaluated"] == "no_adaptation" else _pm(r["gain"], r["gain_sd"])
    lines.append(
        f"| {r['variant']} | {len(r['seeds'])} | {_pm(r['video_mae'], r['video_mae_sd'])} | "
        f"{_pm(r['video_mae_no_adaptation'], r['video_mae_no_adaptation_sd'])} | {gain} | "
        f"{r['gain_ci_excludes_0']}/{len(r['seeds'])} | {_pm(r['pearson'], r['pearson_sd'], 3)} |")
  return "\n".join(lines) + "\n"


def write_table(rows: list[dict], directory: pathlib.Path, split: str, base_name: str) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  summary = summarise(rows)
  (directory / "ablation.json").write_text(json.dumps(
      {"split": split, "dataset": base_name, "summary": summary, "runs": rows}, indent=2,
      default=lambda x: None) + "\n")
  (directory / "ablation.md").write_text(table_md(summary, split, base_name))


def run(base, workdir: str | pathlib.Path, variants=VARIANTS, seeds=(0,),
        results: str | pathlib.Path | None = None) -> list[dict]:
  """Trains and evaluates every variant and seed; returns the rows (also written)."""
  workdir = configuration.prepare_workdir(workdir)
  rows = []
  for variant in variants:
    for seed in seeds:
      config = variant_config(base, variant, workdir)
      with config.unlocked():
        config.seed = int(seed)
      logging.info("ablation %s seed %d: %s", variant, seed, overrides(variant) or "base")
      out = train.train_and_evaluate(config, workdir / variant / f"seed{seed}")
      rows.append(_row(variant, int(seed), out["metrics"], config.data.eval_split))
      for directory in [workdir] + ([pathlib.Path(results)] if results else []):
        write_table(rows, directory, config.data.eval_split, config.data.dataset)
  return rows


def combine(paths, directory: str | pathlib.Path) -> list[dict]:
  """Merges the rows of several ablation.json (runs split over processes or machines, e.g.
  one variant each) into one table in `directory`; they must share split and dataset."""
  loaded = [json.loads(pathlib.Path(p).read_text()) for p in paths]
  keys = {(d["split"], d["dataset"]) for d in loaded}
  if len(keys) != 1:
    raise configuration.ConfigError(f"cannot combine ablations of different splits/datasets: "
                                    f"{sorted(keys)}")
  order = {v: i for i, v in enumerate(VARIANTS)}
  rows = sorted((r for d in loaded for r in d["runs"]),
                key=lambda r: (order.get(r["variant"], len(order)), r["seed"]))
  split, dataset = keys.pop()
  write_table(rows, pathlib.Path(directory), split, dataset)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  if FLAGS.combine:
    combine(FLAGS.combine, FLAGS.results or FLAGS.workdir)
    print((pathlib.Path(FLAGS.results or FLAGS.workdir) / "ablation.md").read_text())
    return
  try:
    rows = run(FLAGS.config, FLAGS.workdir, tuple(FLAGS.variants),
               tuple(int(v) for v in FLAGS.seeds), FLAGS.results)
  except MetaRPPGError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
  print((pathlib.Path(FLAGS.workdir) / "ablation.md").read_text())
  del rows


if __name__ == "__main__":
  flags.DEFINE_list("variants", list(VARIANTS), f"Which of {VARIANTS}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of every variant.")
  flags.DEFINE_string("results", None, "Also write ablation.json/.md here "
                      "(experiments/results: the files the README includes).")
  flags.DEFINE_list("combine", [], "Only merge these ablation.json files (e.g. one variant "
                    "each, run in parallel) into --results (else --workdir); trains nothing.")
  app.run(main, flags_parser=entry.parse_flags)
