"""The configured dataset's splits, as random-access data sources (built on first use).

  data_dir(config, workdir) -> where datasets are built: config.data.data_dir, else WORKDIR/data
  load(config, workdir) -> {split: data source}   (`build.load_dataset`)
  source(config, sources, split) -> that split's data source (ConfigError naming the choices)
  shortest_video(source) -> the fewest frames of any of its videos
"""

import os

import ml_collections

from metarppg_jax import console
from metarppg_jax.data import build
from metarppg_jax.errors import ConfigError


def data_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
  """Where datasets are built: config.data.data_dir, else WORKDIR/data."""
  return config.data.data_dir or os.path.join(os.fspath(workdir), "data")


def load(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """{split: data source} of the configured dataset (the synthetic one is built on first use)."""
  where = data_dir(config, workdir)
  sources = build.load_dataset(config.data.dataset, where, config.data.builder_config or None,
                               manual_dir=config.data.manual_dir or None)
  sizes = ", ".join(f"{split} {len(s)}" for split, s in sorted(sources.items()))
  console.say("dataset %s ready in %s (videos: %s)", config.data.dataset, where, sizes)
  return sources


def source(config: ml_collections.ConfigDict, sources: dict, split: str):
  """sources[split], or a ConfigError naming the splits the dataset has."""
  if split not in sources:
    raise ConfigError(
        f"dataset {config.data.dataset} has no split {split!r} (it has {sorted(sources)}); set "
        "--config.data.train_split / --config.data.eval_split")
  return sources[split]


def shortest_video(source) -> int:
  """The fewest frames of any video of `source`."""
  return min(int(source[i]["num_frames"]) for i in range(len(source)))
