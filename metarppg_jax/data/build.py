r"""Builds an rPPG dataset into array_record files, and loads built ones.

  python -m metarppg_jax.data.build --dataset ubfc_rppg --manual_dir ~/UBFC \
      --data_dir ~/rppg_data [--config NAME] [--overwrite]

Shows progress, prints each skipped video with its reason, and exits with status 1 and a
message naming the problem when nothing usable is left (nothing is written then).
`build_dataset` and `load_dataset` are the library forms that training and evaluation use.
"""

import os
import sys
from typing import Optional

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from metarppg_jax import console
from metarppg_jax.data.builders import BUILDERS
from metarppg_jax.errors import DataError

# Built without a manual dir on first use.
GENERATED = ("synthetic_rppg",)


def get_builder(name: str, *, data_dir: str, config: Optional[str] = None):
  """The builder object of dataset `name` (nothing is built or read yet)."""
  if name not in BUILDERS:
    raise DataError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
  cls = BUILDERS[name]
  names = [c.name for c in cls.BUILDER_CONFIGS]
  if config and config not in names:
    raise DataError(f"dataset {name} has no config {config!r}; choose one of {names}")
  return cls(data_dir=os.fspath(data_dir), config=config or None)


def is_built(name: str, *, data_dir: str, config: Optional[str] = None) -> bool:
  builder = get_builder(name, data_dir=data_dir, config=config)
  return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))


def build_dataset(name: str, *, data_dir: str, manual_dir: Optional[str] = None,
                  config: Optional[str] = None, overwrite: bool = False):
  """Builds dataset `name` (config `config`) under `data_dir`; reuses a finished build.

  Returns:
    The prepared tfds builder; `builder.skipped` lists the skipped videos with reasons.
  Raises:
    DataError: unknown dataset/config, missing manual dir, or no usable video.
  """
  builder = get_builder(name, data_dir=data_dir, config=config)
  if builder.USES_MANUAL_DIR:
    if not manual_dir:
      raise DataError(f"dataset {name} is built from files you downloaded: pass manual_dir "
                      f"(--manual_dir). {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
    if not os.path.isdir(manual_dir):
      raise DataError(f"{manual_dir}: manual dir for {name} does not exist")
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir else None, download_mode=mode)
  # One bar a build (the builder's, over videos); tfds's own split and shuffle bars would add
  # several more.
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=download_config)
  return builder


def load_dataset(name: str, data_dir: str, config: Optional[str] = None, *,
                 manual_dir: Optional[str] = None) -> dict:
  """{split: random-access data source} of a built dataset.

  Generated datasets (synthetic_rppg) are built on first use; others must be built first
  (or `manual_dir` given, then they are built now).

  Each record is a dict: frames uint8[T, 64, 64, 3], mask uint8[T, 64, 64], ppg f32[T],
  hr f32[T], has_ppg, has_hr (bool), fps (float), num_frames (int, T), subject, video_id,
  domain (bytes).
  """
  if not is_built(name, data_dir=data_dir, config=config):
    if name not in GENERATED and not manual_dir:
      builder = get_builder(name, data_dir=data_dir, config=config)
      raise DataError(
          f"dataset {name} (config {builder.builder_config.name}) is not built in {data_dir}; "
          f"run: python -m metarppg_jax.data.build --dataset {name} --manual_dir DIR "
          f"--data_dir {data_dir}")
    build_dataset(name, data_dir=data_dir, manual_dir=manual_dir, config=config)
  builder = get_builder(name, data_dir=data_dir, config=config)
  return dict(builder.as_data_source())


def format_skips(skipped) -> str:
  if not skipped:
    return "no video skipped"
  lines = [f"{len(skipped)} video(s) skipped:"]
  lines += [f"  {s['video_id']}: {s['reason']}: {s['message']}" for s in skipped]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program (importing this module must not add
  flags that clash with another program's, e.g. main's --config)."""
  flags.DEFINE_string("dataset", None, f"one of {sorted(BUILDERS)}")
  flags.DEFINE_string("manual_dir", None, "folder of the downloaded dataset (real datasets)")
  flags.DEFINE_string("data_dir", None, "where to write the built dataset")
  flags.DEFINE_string("config", None, "builder config (default: the dataset's first)")
  flags.DEFINE_bool("overwrite", False, "rebuild even if a finished build exists")
  flags.mark_flags_as_required(["dataset", "data_dir"])


def main(argv):
  del argv
  console.configure(FLAGS.verbosity)
  try:
    builder = build_dataset(FLAGS.dataset, data_dir=FLAGS.data_dir,
                            manual_dir=FLAGS.manual_dir, config=FLAGS.config,
                            overwrite=FLAGS.overwrite)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_skips(builder.skipped))
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"built {builder.name}/{builder.builder_config.name} in {builder.data_dir}: {splits}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
