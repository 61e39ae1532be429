"""UBFC-rPPG, both public layouts, from a manual dir.

- DATASET_2 ("realistic"): `subject<N>/vid.avi` + `subject<N>/ground_truth.txt` (3 lines:
  PPG, HR, time in s).
- DATASET_1 ("simple"): `<id>-gt/*.avi` (the name varies) + `<id>-gt/gtdump.xmp` (CSV: ms, HR,
  SpO2, PPG).
Any directory under the manual dir that holds an `.avi`, a `ground_truth.txt` or a
`gtdump.xmp` is one video; the two layouts may sit side by side (`DATASET_1/`, `DATASET_2/`).
Subjects are the folder names (one video each); splits are subject-disjoint.
"""

import glob
import os

from metarppg_jax.data import ground_truth as gt_lib
from metarppg_jax.data.builders import base

GT_FILES = (("ground_truth.txt", gt_lib.read_ubfc2), ("gtdump.xmp", gt_lib.read_ubfc1))


def _pick_video(folder: str):
  videos = sorted(glob.glob(os.path.join(folder, "*.avi")))
  if os.path.join(folder, "vid.avi") in videos:
    return os.path.join(folder, "vid.avi")
  named = [v for v in videos if "vid" in os.path.basename(v).lower()]
  return (named or videos or [None])[0]


class UbfcRppg(base.RppgBuilder):
  """UBFC-rPPG (DATASET_1 and DATASET_2): face videos with a finger-oximeter PPG."""

  DOMAIN = "ubfc"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download UBFC-rPPG and pass its folder as --manual_dir: `DATASET_2/subject<N>/vid.avi` +
  `ground_truth.txt`, and/or `DATASET_1/<id>-gt/*.avi` + `gtdump.xmp`.
  """

  def _discover(self, manual_dir):
    items = []
    for folder, _, files in sorted(os.walk(manual_dir)):
      names = set(files)
      has_gt = any(name in names for name, _ in GT_FILES)
      if not has_gt and not any(f.lower().endswith(".avi") for f in files):
        continue
      rel = os.path.relpath(folder, manual_dir)
      items.append(base.Item(video_id=rel, subject=rel, paths=(folder,)))
    return sorted(items, key=lambda i: base.natural_key(i.video_id))

  def _make_example(self, item):
    folder = item.paths[0]
    for name, reader in GT_FILES:
      gt_path = os.path.join(folder, name)
      if os.path.isfile(gt_path):
        break
    else:
      raise base.Skip(base.GT_MISSING, f"{folder}: neither ground_truth.txt nor gtdump.xmp")
    video_path = _pick_video(folder)
    if video_path is None:
      raise base.Skip(base.UNREADABLE, f"{folder}: no .avi video")
    gt = base.read_gt_or_skip(reader, gt_path)
    video = base.open_video_or_skip(video_path)
    return base.example_from_video(video, gt, config=self.builder_config, source=video_path,
                                   subject=item.subject, video_id=item.video_id,
                                   domain=self.DOMAIN)
