"""PURE (TU Ilmenau), both layouts, from a manual dir.

- As distributed: `PURE/NN-MM/Image<ts>.png` + `PURE/NN-MM.json`.
- rPPG-Toolbox layout: `RawData/NN-MM/NN-MM/Image<ts>.png` + `RawData/NN-MM/NN-MM.json`.
In both the JSON sits beside the PNG folder and is named after it. NN is the person (the
subject), MM the setup. Frames are sorted by the integer in their name; frame times come
from the JSON's `/Image` timestamps, the pulse wave from `/FullPackage` (interpolated onto
them).
"""

import os
import re

from metarppg_jax.data import ground_truth as gt_lib
from metarppg_jax.data import video as video_lib
from metarppg_jax.data.builders import base

SEQUENCE = re.compile(r"^(\d+)-(\d+)$")


def _frame_number(name: str) -> int:
  digits = re.findall(r"\d+", name)
  return int(digits[-1]) if digits else -1


class Pure(base.RppgBuilder):
  """PURE: 10 people x 6 head-motion setups, lossless PNG frames and a 60 Hz pulse wave."""

  DOMAIN = "pure"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download PURE and pass its folder as --manual_dir: `NN-MM/*.png` + `NN-MM.json`, or the
  rPPG-Toolbox arrangement `NN-MM/NN-MM/*.png` + `NN-MM/NN-MM.json`.
  """

  def _discover(self, manual_dir):
    found = {}
    for folder, dirs, files in sorted(os.walk(manual_dir)):
      for f in files:  # a JSON whose PNG folder may be missing
        m = SEQUENCE.match(f[:-5]) if f.endswith(".json") else None
        if m:
          found.setdefault(f[:-5], (os.path.join(folder, f[:-5]), m.group(1)))
      name = os.path.basename(folder)
      m = SEQUENCE.match(name)
      if m and any(f.lower().endswith(".png") for f in files):
        found[name] = (folder, m.group(1))
    return [base.Item(video_id=k, subject=f"{int(s):02d}", paths=(folder,))
            for k, (folder, s) in sorted(found.items(), key=lambda kv: base.natural_key(kv[0]))]

  def _make_example(self, item):
    folder = item.paths[0]
    pngs = sorted((f for f in os.listdir(folder) if f.lower().endswith(".png")),
                  key=_frame_number) if os.path.isdir(folder) else []
    if not pngs:
      raise base.Skip(base.UNREADABLE, f"{folder}: no PNG frames")
    gt = base.read_gt_or_skip(gt_lib.read_pure, folder + ".json")
    if len(pngs) != gt.frame_time.shape[0]:
      raise base.Skip(base.MISMATCH, f"{folder}: {len(pngs)} PNG frames but {gt.source} lists "
                      f"{gt.frame_time.shape[0]} image timestamps")
    with base.skip_on_error(base.UNREADABLE):
      video = video_lib.ImageSequence([os.path.join(folder, p) for p in pngs], gt.frame_time)
    return base.example_from_video(video, gt, config=self.builder_config, source=folder,
                                   subject=item.subject, video_id=item.video_id,
                                   domain=self.DOMAIN)
