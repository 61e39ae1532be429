"""Calibration of the synthetic benchmark: do the classical methods rank as on real data?

For each domain, generates videos, takes the mean RGB of a fixed box inside the known face box
and runs textbook POS, CHROM and GREEN (those of tests/test_realism.py, independent of the
project's baselines), one HR a whole video (periodogram peak in 0.7..3.5 Hz) against the mean
true HR. Prints per-video MAE with its standard error, and the fraction of videos within
5 bpm, next to the rPPG-Toolbox's figures on real UBFC-rPPG (POS 4.0, CHROM 4.0, GREEN 19.8
bpm MAE), and writes the table as JSON.

    python experiments/realism.py --videos 16 --seconds 30 --json experiments/results/realism.json
"""

import argparse
import importlib.util
import json
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_UBFC_MAE = {"POS": 4.0, "CHROM": 4.0, "GREEN": 19.8}   # rPPG-Toolbox, whole videos


def _textbook():
  """tests/test_realism.py as a module: its extractor and methods are the independent ones."""
  spec = importlib.util.spec_from_file_location("test_realism", REPO / "tests" / "test_realism.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def summarise(errors: np.ndarray) -> dict:
  """Per-video absolute errors f64[V] -> MAE, its standard error, share within 5 bpm."""
  return {"mae_bpm": float(errors.mean()),
          "se_bpm": float(errors.std(ddof=1) / np.sqrt(len(errors))) if len(errors) > 1 else 0.0,
          "within_5_bpm": float((errors <= 5).mean()),
          "errors_bpm": [round(float(e), 2) for e in errors]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=16, help="videos per domain")
  parser.add_argument("--seconds", type=float, default=30.0)
  parser.add_argument("--domains", default="source,shifted")
  parser.add_argument("--first_seed", type=int, default=1000,
                      help="seeds first_seed.. (apart from the test's 0..5)")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  textbook = _textbook()
  result = {"command": " ".join(["python", "experiments/realism.py"] + sys.argv[1:]),
            "videos_per_domain": args.videos, "seconds": args.seconds,
            "first_seed": args.first_seed, "machine": platform.processor() or platform.machine(),
            "real_ubfc_mae_bpm": REAL_UBFC_MAE, "domains": {}}
  print(f"{'domain':8} {'method':6} {'MAE bpm':>14} {'<=5 bpm':>8}   (real UBFC MAE)")
  for domain in args.domains.split(","):
    t0 = time.process_time()
    seeds = range(args.first_seed, args.first_seed + args.videos)
    errors = textbook.video_errors(domain, seeds, args.seconds)
    table = {m: summarise(e) for m, e in errors.items()}
    table["cpu_s"] = round(time.process_time() - t0, 1)
    result["domains"][domain] = table
    for m in textbook.METHODS:
      r = table[m]
      print(f"{domain:8} {m:6} {r['mae_bpm']:7.2f} +- {r['se_bpm']:4.2f} "
            f"{100 * r['within_5_bpm']:7.0f}%   ({REAL_UBFC_MAE[m]})")
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
