"""The training history: WORKDIR/history.json, one record a step.

A record is {"step": int, "epoch": int, loss terms, "lr", "adapt_lr", "step_time_s"} and, at
the end of an evaluated epoch, "val_mae". The trainer appends and rewrites it; the report plots
it (`curves`). Only process 0 writes it.

  read(workdir, *, upto_step=None) -> [record, ...]
  write(workdir, records)
  curves(records) -> {name: [(step, value), ...]} of the plotted series
"""

import json
import os
import pathlib

from absl import logging

FILE = "history.json"
CURVES = ("loss", "ordloss", "fewloss", "gradloss", "lr", "val_mae")


def read(workdir: str | os.PathLike, *, upto_step: int | None = None) -> list[dict]:
  """The records in WORKDIR (none if there is no file, or it is not valid JSON: a warning),
  cut at `upto_step` (a resumed run drops the steps after its checkpoint)."""
  path = pathlib.Path(workdir) / FILE
  if not path.is_file():
    return []
  try:
    records = json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning("%s is not valid JSON; the training curves restart here", path)
    return []
  if upto_step is not None:
    records = [r for r in records if r.get("step", 0) <= upto_step]
  return records


def write(workdir: str | os.PathLike, records: list[dict]) -> None:
  """Replaces WORKDIR/history.json atomically (a crash leaves the previous file whole)."""
  path = pathlib.Path(workdir) / FILE
  tmp = path.with_name(FILE + ".tmp")
  tmp.write_text(json.dumps(records, allow_nan=True))
  os.replace(tmp, path)


def curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
  """{name: [(step, value), ...]} of each series in CURVES that the records hold."""
  series = {}
  for name in CURVES:
    points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
    if points:
      series[name] = points
  return series
