"""The original Meta-rPPG release's `data/example.pth`, from a manual dir.

A dict of lists, one entry a video: `image` f32[T, 3, 64, 64] face crops at 30 fps, `mask`
(same shape, 0/255), `ppg` f32[T]. Read with `torch.load(weights_only=True)` only (needs
torch). Splits follow the original: the first 5 videos train, the last one tests, any in
between validate. Each video is its own subject (the file does not say who is who).
The original's colour helpers reverse channels [2, 1, 0], so the images are taken as BGR and
stored RGB (config `rgb` keeps the order as it is). There is no HR (`has_hr` False).
"""

import dataclasses
import os

import numpy as np

from metarppg_jax.data import ground_truth as gt_lib
from metarppg_jax.data.builders import base

FILE = "example.pth"
FPS = 30.0


@dataclasses.dataclass
class ExampleConfig(base.RppgConfig):
  channel_order: str = "bgr"   # of the stored images: bgr (flipped to RGB) or rgb


class MetaRppgExample(base.RppgBuilder):
  """Meta-rPPG's example.pth: pre-cropped faces, skin masks and PPG."""

  DOMAIN = "meta_rppg_example"
  BUILDER_CONFIGS = [ExampleConfig(name="bgr", channel_order="bgr"),
                     ExampleConfig(name="rgb", channel_order="rgb")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the original release's `example.pth` in the folder passed as --manual_dir.
  """

  def _split_generators(self, dl_manager):
    self._doc = None
    return super()._split_generators(dl_manager)

  def _load(self, path):
    if self._doc is None:
      self._doc = gt_lib.read_meta_rppg_example(path)  # DataError: the whole file is bad
    return self._doc

  def _discover(self, manual_dir):
    path = os.path.join(manual_dir, FILE)
    if not os.path.isfile(path):
      raise base.DataError(f"{path}: missing; put the original release's {FILE} there")
    doc = self._load(path)
    return [base.Item(video_id=f"{i:02d}", subject=f"{i:02d}", paths=(path,), params=i)
            for i in range(len(doc["image"]))]

  def _assign_splits(self, items):
    n = len(items)
    split = {}
    for i, item in enumerate(items):
      split[item.video_id] = ("test" if i == n - 1 and n > 1 else
                              "train" if i < 5 else "validation")
    return split

  def _make_example(self, item):
    doc = self._load(item.paths[0])
    i = item.params
    name = f"{item.paths[0]}: video {i}"
    image, mask, ppg = doc["image"][i], doc["mask"][i], doc["ppg"][i]
    if image.ndim != 4 or image.shape[1:] != (3, base.CROP_SIZE, base.CROP_SIZE):
      raise base.Skip(base.MISMATCH, f"{name}: image has shape {image.shape}, expected "
                      f"[T, 3, {base.CROP_SIZE}, {base.CROP_SIZE}]")
    t = image.shape[0]
    if mask.shape[0] != t or mask.shape[-2:] != image.shape[-2:] or ppg.shape != (t,):
      raise base.Skip(base.MISMATCH, f"{name}: image {image.shape}, mask {mask.shape} and ppg "
                      f"{ppg.shape} do not match")
    for what, v in (("image", image), ("mask", mask), ("ppg", ppg)):
      if not np.all(np.isfinite(v)):
        raise base.Skip(base.NON_FINITE, f"{name}: {what} has non-finite values")
    if image.min() < 0 or image.max() > 255.5:
      raise base.Skip(base.GT_INVALID, f"{name}: image values span {image.min():.3g}.."
                      f"{image.max():.3g}, expected pixel values 0..255")
    if t < self.builder_config.window:
      raise base.Skip(base.TOO_SHORT, f"{name}: {t} frames, a window is "
                      f"{self.builder_config.window}")
    frames = np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if self.builder_config.channel_order == "bgr":
      frames = frames[..., ::-1]
    skin = mask.reshape(t, -1, base.CROP_SIZE, base.CROP_SIZE) > 0
    if not np.all(skin == skin[:, :1]):
      raise base.Skip(base.GT_INVALID, f"{name}: mask channels differ; expected one skin mask "
                      "repeated over the 3 channels")
    skin = skin[:, 0]
    return {"frames": np.ascontiguousarray(frames), "mask": skin.astype(np.uint8),
            "ppg": ppg.astype(np.float32), "hr": np.full(t, np.nan, np.float32),
            "has_ppg": True, "has_hr": False, "fps": np.float32(FPS),
            "subject": item.subject, "video_id": item.video_id, "domain": self.DOMAIN}
