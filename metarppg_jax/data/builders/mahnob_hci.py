"""MAHNOB-HCI (HCI-Tagging) from a manual dir: frontal colour video and ECG-derived HR.

Layout: `Sessions/<N>/P<s>-Rec<k>-<date>_C1 trigger _C_Section_<N>.avi` + `Part_<s>_*.bdf`.
Heart rate per frame comes from the ECG leads EXG1-3 (R peaks, `ground_truth.read_mahnob_bdf`)
on the video's clock (the BDF `Status` channel marks video start); there is no PPG
(`has_ppg` False). The 61 fps video is resampled to 30 fps.

Configs: `full` (whole sessions) and `cvpr14` (the 30 s clip of Li et al. CVPR'14: frames
306..2136 at 61 fps; shorter sessions are skipped).
"""

import fnmatch
import os
import re

from metarppg_jax.data import ground_truth as gt_lib
from metarppg_jax.data.builders import base

CVPR14_FRAMES = (306, 2136)


def _subject(names) -> str:
  for n in names:
    m = re.match(r"P(\d+)-Rec", n) or re.match(r"Part_(\d+)_", n)
    if m:
      return f"{int(m.group(1)):02d}"
  return ""


class MahnobHci(base.RppgBuilder):
  """MAHNOB-HCI: 61 fps face videos with ECG (HR-only ground truth)."""

  DOMAIN = "mahnob"
  BUILDER_CONFIGS = [
      base.RppgConfig(name="full", description="whole sessions, 30 fps"),
      base.RppgConfig(name="cvpr14", frame_range=CVPR14_FRAMES,
                      description="the 30 s clip (frames 306..2136 at 61 fps), 30 fps"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download MAHNOB-HCI (HCI-Tagging) sessions and pass the folder holding `Sessions/` (or
  `Sessions/` itself) as --manual_dir: `Sessions/<N>/*C1 trigger*.avi` + `Part_*.bdf`.
  """

  def _discover(self, manual_dir):
    items = []
    for folder, _, files in sorted(os.walk(manual_dir)):
      videos = sorted(fnmatch.filter(files, "*C1 trigger*.avi"))
      bdfs = sorted(fnmatch.filter(files, "Part_*.bdf"))
      if not videos and not bdfs:
        continue
      session = os.path.basename(folder)
      subject = _subject(videos + bdfs) or f"session{session}"
      items.append(base.Item(video_id=session, subject=subject, paths=(folder,),
                             params=(videos[0] if videos else None,
                                     bdfs[0] if bdfs else None)))
    return sorted(items, key=lambda i: base.natural_key(i.video_id))

  def _make_example(self, item):
    folder = item.paths[0]
    video_name, bdf_name = item.params
    if bdf_name is None:
      raise base.Skip(base.GT_MISSING, f"{folder}: no Part_*.bdf file")
    if video_name is None:
      raise base.Skip(base.UNREADABLE, f"{folder}: no '*C1 trigger*.avi' video")
    gt = base.read_gt_or_skip(gt_lib.read_mahnob_bdf, os.path.join(folder, bdf_name))
    cfg = self.builder_config
    max_frames = cfg.frame_range[1] if cfg.frame_range else None
    path = os.path.join(folder, video_name)
    video = base.open_video_or_skip(path, max_frames=max_frames)
    return base.example_from_video(video, gt, config=cfg, source=path, subject=item.subject,
                                   video_id=item.video_id, domain=self.DOMAIN)
