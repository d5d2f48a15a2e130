"""Video files for HVG: reading, writing and caching them (plumbing, not the method).

data.py holds the method's data (presets, `down`, the partial-view crops, the
synthetic clips); this file holds what it takes to get real videos in and out
of files, none of which a reader needs to understand HVG:

  writing        to_uint8, video_grid, side_by_side, write_video (.mp4/.gif), write_image (.png),
                 contact_sheet: what the training scripts, sample.py and
                 evaluate.py write.
  reading        find_videos, probe_video (ffmpeg's header: frames and fps),
                 read_frames (uint8 (T, H, W, 3)), resize_and_crop.
  video folders  FILE_DATASETS (kinetics600, bdd100k, ucf101, folder), video_root
                 (the checks on --data-root), VideoFolder: items of one level of
                 a preset, (video (3, T_l, H_l, W_l) float in [-1, 1], label).
  the cache      write_cache / CachedClips: every clip decoded once into uint8
                 shards that training reads through memory maps.

Shapes given to VideoFolder and CachedClips are the preset's finest clip (T_L
frames of S_L x S_L) and the factors from the level down to it; data.make_dataset
works them out, so this file knows nothing of presets and imports nothing of
hvg but flags.py (it sits below data.py).

Commands (data.py's command line uses this file):
  python data.py prepare --data kinetics600 --data-root RAW --out CACHE --preset kinetics600
  python data.py preview --data cache --data-root CACHE --preset kinetics600 --out preview
"""

import gc
import json
import math
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from flags import UserError

# ----------------------------------------------------------------------------------
# Writing videos and images.
# ----------------------------------------------------------------------------------

def to_uint8(video):
    """(C, T, H, W) float in [-1, 1] (tensor or array) -> numpy uint8 (T, H, W, 3)."""
    if isinstance(video, torch.Tensor):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video, dtype=np.float32)
    if video.shape[0] == 1:
        video = np.repeat(video, 3, axis=0)
    # x in [-1, 1] -> round((x + 1) * 127.5) in [0, 255]
    pixels = np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(1, 2, 3, 0))  # (C,T,H,W) -> (T,H,W,C)


def video_grid(videos, nrow=None, pad=1):
    """Tile N videos into one: (N, C, T, H, W) -> (C, T, H', W'), nrow videos per row
    (default ceil(sqrt(N))), `pad` black pixels between and around them."""
    n, c, t, h, w = videos.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = videos.new_full((c, t, rows * (h + pad) + pad, nrow * (w + pad) + pad), -1.0)
    for k in range(n):
        y, x = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        grid[:, :, y:y + h, x:x + w] = videos[k]
    return grid


def side_by_side(columns, clips):
    """Clips of several batches next to each other, as one video: row i holds clip i
    of every batch in `columns` (each (N, C, T, H, W)), in the columns' order."""
    tiles = torch.stack([column[i] for i in range(clips) for column in columns])
    return video_grid(tiles.float().cpu(), nrow=len(columns))


def _as_frames(video):
    """Float (C,T,H,W) in [-1,1] or uint8 (T,H,W,3) -> uint8 (T,H,W,3)."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        return video
    return to_uint8(video)


def _player_friendly(frames, min_size=64, multiple=16):
    """Upscale (nearest, integer factor) so the short side is >= min_size, then pad
    with black to multiples of `multiple` (what H.264 players and yuv420p need)."""
    t, h, w, _ = frames.shape
    scale = max(1, math.ceil(min_size / min(h, w)))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    pad_h, pad_w = -h % multiple, -w % multiple
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def write_video(path, video, fps=8):
    """Write a video as .mp4 (H.264 through imageio-ffmpeg) or .gif, by suffix.
    video: (C, T, H, W) float in [-1, 1] or uint8 (T, H, W, 3). Creates parent
    folders. Small videos are upscaled (nearest) to >= 64 px so players show them."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _player_friendly(_as_frames(video))
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        # Sizes are already multiples of 16: macro_block_size=16 then resizes nothing.
        def write():
            writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", macro_block_size=16,
                                        ffmpeg_log_level="error")
            with writer:
                for frame in frames:
                    writer.append_data(frame)
    elif suffix == ".gif":
        def write():
            imageio.mimsave(path, list(frames), duration=1000.0 / fps, loop=0)
    else:
        raise UserError(f"cannot write video {str(path)!r}: use a .mp4 or .gif file name")
    _write_once(write, path)


def write_image(path, image):
    """Write a uint8 (H, W, 3) image as PNG, creating parent folders."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_once(lambda: imageio.imwrite(path, np.asarray(image, dtype=np.uint8), format="png"), path)


def _write_once(write, path) -> None:
    """Run `write()`; if it fails with an OSError (a full disk), raise it once, cleanly.

    imageio's Pillow writer (GIF, PNG) that failed half-way tries to flush and close
    its file again when it is garbage-collected, fails again, and Python prints that
    second failure as "Exception ignored in ... Traceback ..." on stderr, after the
    script's own one-line error. So the failed writer is collected here, with that
    report silenced, and the first failure is raised as a plain OSError. (ffmpeg
    writing .mp4 does not report a full disk at all: the .gif written next does.)
    """
    failure, hook = None, sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        try:
            write()
        except OSError as error:
            failure = OSError(error.errno, error.strerror or str(error), str(path))
        if failure is not None:
            # Leaving the except block dropped the traceback holding the failed writer;
            # what is left of it in reference cycles goes now, silently.
            gc.collect()
    finally:
        sys.unraisablehook = hook
    if failure is not None:
        raise failure


def contact_sheet(rows, size=None, pad=2):
    """One image showing videos frame by frame: a row per video, its frames left to
    right, each frame resized (nearest) to a common height (`size`, default the
    tallest video's). rows: list of (C, T, H, W) in [-1, 1] -> uint8 (H', W', 3)."""
    height = size or max(int(v.shape[-2]) for v in rows)
    strips = []
    for video in rows:
        frames = to_uint8(video)  # (T, H, W, 3)
        t, h, w, _ = frames.shape
        width = max(1, round(w * height / h))
        # Nearest resize by index lookup: output pixel (i, j) <- input (i*h/H, j*w/W).
        ys = (np.arange(height) * h // height)
        xs = (np.arange(width) * w // width)
        frames = frames[:, ys][:, :, xs]  # (T, height, width, 3)
        gap = np.zeros((t, height, pad, 3), np.uint8)
        # (T, height, width + pad, 3) -> (height, T * (width + pad), 3)
        strips.append(np.concatenate([frames, gap], axis=2).transpose(1, 0, 2, 3).reshape(height, -1, 3))
    full = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, pad), (0, full - s.shape[1]), (0, 0))) for s in strips]
    return np.concatenate(strips, axis=0)

# ----------------------------------------------------------------------------------
# Reading video files, and folders of them.
# ----------------------------------------------------------------------------------

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
# Folder names that hold a split, not a class: videos directly inside them are unlabelled.
SPLIT_FOLDERS = {"train", "training", "val", "valid", "validation", "test", "testing", "videos"}

# Per dataset: the default frame stride, the sub-folders tried first under --data-root
# (so ROOT can be the dataset's top folder), and what the user should get.
FILE_DATASETS = {
    "kinetics600": dict(stride=2, subdirs=("train",),  # every other frame, as DVD-GAN
                        what="a folder of Kinetics-600 clips (train/<class>/<id>.mp4 or flat "
                             "train/*.mp4), e.g. from github.com/cvdfoundation/kinetics-dataset"),
    "bdd100k": dict(stride=2, subdirs=("videos/train", "train"),
                    what="the BDD100K videos (videos/train/*.mov) from bdd-data.berkeley.edu"),
    "ucf101": dict(stride=1, subdirs=(),
                   what="the UCF101 videos (<Class>/v_<Class>_gXX_cYY.avi) from "
                        "www.crcv.ucf.edu/data/UCF101.php"),
    "folder": dict(stride=1, subdirs=(),
                   what="a folder (searched recursively) of .mp4 .avi .mov .mkv .webm .gif files"),
}


def video_root(data, data_root):
    """Check --data-root for a file dataset and return the folder to search."""
    what = FILE_DATASETS[data]["what"]
    advice = (f"--data {data} needs --data-root pointing to {what}. These videos cannot be "
              f"downloaded here: get them, pass --data-root DIR (or a cache made by "
              f"`python data.py prepare`, with --data cache), or train on --data synthetic")
    if data_root is None:
        raise UserError(f"no --data-root given. {advice}")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise UserError(f"--data-root {str(data_root)!r} does not exist. {advice}")
    if not root.is_dir():
        raise UserError(f"--data-root {str(data_root)!r} is a file, not a folder. {advice}")
    if not any(root.iterdir()):
        raise UserError(f"--data-root {str(data_root)!r} is an empty folder. {advice}")
    for sub in FILE_DATASETS[data]["subdirs"]:
        if (root / sub).is_dir():
            return root / sub
    return root


def find_videos(root):
    """All video files under root (recursively, following links), sorted."""
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        found += [Path(folder) / f for f in files if f.lower().endswith(VIDEO_SUFFIXES)]
    return sorted(found)


def class_name(path, root):
    """The class of a video: its folder's name when videos sit in per-class folders
    (train/<class>/<id>.mp4, <Class>/v_x.avi); None when they sit directly in ROOT or
    in a split folder (train/*.mp4)."""
    parent = path.parent
    if parent == root or parent.name.lower() in SPLIT_FOLDERS:
        return None
    return parent.name


def _ffmpeg_header(path):
    """(duration in seconds, frames per second) of a video's first video stream, from
    the header ffmpeg prints for `ffmpeg -i FILE` (nothing is decoded)."""
    import subprocess

    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            capture_output=True, text=True, errors="replace", timeout=60)
    # e.g. "  Duration: 00:00:10.01, start: ..." and
    #      "  Stream #0:0: Video: h264 (...), yuv420p, 340x256, 25 fps, 25 tbr, ..."
    duration = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", result.stderr)
    video = re.search(r"Stream #.*Video:.*", result.stderr)
    fps = video and (re.search(r"([\d.]+) fps", video.group(0)) or re.search(r"([\d.]+) tbr", video.group(0)))
    if not (duration and fps):
        raise OSError(f"ffmpeg found no video stream with a duration in {path}")
    hours, minutes, seconds = duration.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds), float(fps.group(1))


def probe_video(path):
    """(number of frames, frames per second, None), or (None, None, reason) when the
    file cannot be read. Cheap: reads the header, decodes nothing. For ffmpeg formats
    the count is an estimate (duration x fps); reading a clip checks it again."""
    # Open the file first: an empty or unreadable file would otherwise show up as an
    # ffmpeg decoding error, and the user would look for damage instead of a
    # half-finished download or the file's permissions.
    try:
        with open(path, "rb") as file:
            if not file.read(1):
                return None, None, "empty (0 bytes)"
    except PermissionError:
        return None, None, "not readable (permission denied: check the owner/mode)"
    except OSError as error:
        return None, None, f"not readable ({error.strerror or error})"
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image

            with Image.open(path) as image:
                return int(getattr(image, "n_frames", 1)), None, None
        duration, fps = _ffmpeg_header(path)
        return int(math.floor(duration * fps + 1e-6)), fps, None
    except Exception:  # noqa: BLE001 - every failure means the same here: unusable file
        return None, None, "could not be decoded"


def _to_rgb(frame):
    """A decoded frame -> uint8 (H, W, 3): grayscale is repeated, RGBA composited on black."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 4:
        alpha = frame[:, :, 3:].astype(np.float32) / 255.0
        frame = np.round(frame[:, :, :3] * alpha).astype(np.uint8)
    return frame.astype(np.uint8, copy=False)


def read_frames(path, start, count, step, fps=None):
    """Frames start, start + step, ... (count of them) of a video file, as uint8
    (count, H, W, 3). Raises EOFError when the video has fewer frames. `fps` (from
    probe_video) turns the start frame into a seek time; read from the header if None."""
    kept = []
    needed_last = start + (count - 1) * step
    if path.suffix.lower() == ".gif":
        import imageio.v3 as iio

        for i, frame in enumerate(iio.imiter(path, plugin="pillow")):
            if i >= start and (i - start) % step == 0:
                kept.append(_to_rgb(frame))
            if i >= needed_last:
                break
    else:
        import imageio_ffmpeg

        # Seek in the container first (-ss before -i is frame accurate when decoding),
        # so long videos do not decode everything before the clip.
        if start > 0 and fps is None:
            fps = _ffmpeg_header(path)[1]
        seek = ["-ss", f"{start / fps:.6f}"] if start > 0 else None
        frames = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", input_params=seek)
        try:
            width, height = next(frames)["size"]
            for i, raw in enumerate(frames):
                if i % step == 0:
                    # rgb24 bytes -> (H, W, 3); ffmpeg already made gray/RGBA into RGB
                    kept.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
                if i >= needed_last - start:
                    break
        finally:
            frames.close()
    if len(kept) < count:
        raise EOFError(f"{path} has fewer than {needed_last + 1} frames")
    return np.stack(kept[:count])


def resize_and_crop(frames, size, rng=None, random_crop=False, hflip=False):
    """uint8 (T, h, w, 3) -> uint8 (T, size, size, 3): resize so the shorter side is
    `size` (area-like antialiased bilinear when shrinking, bilinear when growing),
    then crop size x size at the centre (or at random), optionally mirror."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T,3,h,w)
    h, w = video.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=scale < 1)
    if random_crop:
        y = int(rng.integers(0, new_h - size + 1))
        x = int(rng.integers(0, new_w - size + 1))
    else:
        y, x = (new_h - size) // 2, (new_w - size) // 2
    video = video[:, :, y:y + size, x:x + size]
    if hflip and rng.random() < 0.5:
        video = video.flip(-1)
    # (T, 3, size, size) -> (T, size, size, 3)
    return video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _uint8_to_level(clip, space_factor):
    """Finest-level uint8 frames (T, S, S, 3), already the level's frames in time
    -> float (3, T, S/sf, S/sf) in [-1, 1] at the level's resolution."""
    # np.array copies: clips from the cache are read-only memory maps.
    video = torch.from_numpy(np.array(clip)).permute(3, 0, 1, 2).float()  # (T,S,S,3) -> (3,T,S,S)
    video = video / 127.5 - 1.0  # [0, 255] -> [-1, 1]
    if space_factor == 1:
        return video
    # The spatial half of data.down, written out (this file sits below data.py): a
    # coarse pixel is the mean of the sf x sf fine pixels it covers.
    # (3, T, S, S) -> (3, T, S/sf, sf, S/sf, sf) -> mean over the two sf axes
    c, t, s, _ = video.shape
    return video.reshape(c, t, s // space_factor, space_factor, s // space_factor,
                         space_factor).mean(dim=(-3, -1))


class VideoFolder(Dataset):
    """Real videos under a folder; items at one level of a preset.

    A clip is the preset's finest clip: T_L = clip_frames frames taken every
    `frame_stride` frames from a random start, resized (shorter side) and cropped to
    the finest size S_L = clip_size; level l is down(clip, time_step, space_factor),
    the factors between level l and the finest level (data.pyramid_factors). Only
    the frames level l keeps are decoded into arrays, so a level-1 item costs the
    decoding of the clip's span, not T_L resizes.

    Videos that cannot be read or are shorter than T_L * stride frames are found when
    the dataset is built (from file headers), skipped, and reported in one warning.
    A file that still fails when read (a bad header estimate, a broken stream) is
    counted in `load_failures` and replaced by another video; training goes on.
    """

    def __init__(self, root, clip_frames, clip_size, time_step=1, space_factor=1, seed=0,
                 frame_stride=1, random_crop=False, hflip=False, probe=True, workers=16,
                 name="folder"):
        self.root, self.seed = Path(root), seed
        self.frame_stride, self.random_crop, self.hflip = frame_stride, random_crop, hflip
        self.clip_frames, self.clip_size = clip_frames, clip_size
        self.time_step, self.space_factor = time_step, space_factor
        self.needed = self.clip_frames * frame_stride  # source frames one clip spans
        self.load_failures, self.workers = 0, workers

        videos = find_videos(self.root)
        if not videos:
            others = [p.name for p in self.root.rglob("*") if p.is_file()][:3]
            raise UserError(f"no video files ({' '.join(VIDEO_SUFFIXES)}) under {str(self.root)!r}"
                            + (f" (other files there, e.g. {', '.join(others)})" if others else "")
                            + f". {name} needs {FILE_DATASETS.get(name, FILE_DATASETS['folder'])['what']}")
        # Labels come from every video found, so they do not depend on which files fail.
        classes = [class_name(p, self.root) for p in videos]
        self.class_names = sorted({c for c in classes if c is not None})
        label_of = {c: i for i, c in enumerate(self.class_names)}
        self.num_classes = len(self.class_names)

        if probe:
            counts = self._probe(videos)
        else:
            counts = [(None, None, None)] * len(videos)  # lengths unknown: checked when read
        self.videos, self.labels, self.num_frames, self.fps = [], [], [], []
        skipped, examples = {}, {}  # reason -> count, reason -> the first file with it
        for path, cls, (frames, fps, problem) in zip(videos, classes, counts):
            if problem is None and frames is not None and frames < self.needed:
                problem = f"shorter than {self.needed} frames"
            if problem:
                skipped[problem] = skipped.get(problem, 0) + 1
                examples.setdefault(problem, path.relative_to(self.root))
                continue
            self.videos.append(path)
            self.labels.append(-1 if cls is None else label_of[cls])
            self.num_frames.append(frames)
            self.fps.append(fps)
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
        # One file per reason, so the user knows where to look.
        named = "; ".join(f"{why}: {str(path)!r}" for why, path in examples.items())
        if not self.videos:
            raise UserError(f"found {len(videos)} videos under {str(self.root)!r} but none is usable "
                            f"({reasons}; e.g. {named}); a clip needs {self.clip_frames} frames at "
                            f"stride {frame_stride}. Check the files, or build a cache with a smaller "
                            f"stride: python data.py prepare --frame-stride N ... (then --data cache)")
        if skipped:
            # Once, when the dataset is built: not once per bad file, not once per epoch.
            warnings.warn(f"skipped {len(videos) - len(self.videos)} of {len(videos)} videos under "
                          f"{self.root}: {reasons} (e.g. {named}); training uses the other "
                          f"{len(self.videos)}. Fix or remove those files to use them", stacklevel=4)

    def _probe(self, videos):
        """Frame counts from the headers, in parallel threads (each one is an ffmpeg
        process, so threads run concurrently)."""
        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            results = pool.map(probe_video, videos)
            return list(tqdm(results, total=len(videos), desc=f"reading headers under {self.root}",
                             disable=len(videos) < 200, file=sys.stderr))

    def __len__(self):
        return len(self.videos)

    def clip(self, index, rng, frame_step=1, start=None):
        """The finest-level clip of video `index` as uint8 (T_L / frame_step, S, S, 3)
        (every frame_step-th frame), start drawn from rng unless given."""
        path, total = self.videos[index], self.num_frames[index]
        if start is None:
            start = 0 if total is None else int(rng.integers(0, total - self.needed + 1))
        count = self.clip_frames // frame_step
        step = self.frame_stride * frame_step
        try:
            frames = read_frames(path, start, count, step, self.fps[index])
        except EOFError:
            if start == 0:
                raise
            frames = read_frames(path, 0, count, step)  # the header over-counted: use the start
        return resize_and_crop(frames, self.clip_size, rng, self.random_crop, self.hflip)

    def load(self, index, rng):
        """(video (3, T_l, H_l, W_l) float in [-1, 1], label). A video that fails to read
        is counted and replaced by another one drawn from rng."""
        for _ in range(20):
            try:
                clip = self.clip(index, rng, frame_step=self.time_step)
                return _uint8_to_level(clip, self.space_factor), self.labels[index]
            except Exception as error:  # noqa: BLE001 - a bad file must not stop training
                self.load_failures += 1
                if self.load_failures == 1:
                    warnings.warn(f"could not read {self.videos[index]} ({type(error).__name__}: "
                                  f"{error}); using another video instead. Further failures are "
                                  f"counted in dataset.load_failures", stacklevel=2)
                index = int(rng.integers(len(self.videos)))
        raise UserError(f"20 videos in a row under {str(self.root)!r} failed to read "
                        f"({self.load_failures} failures so far); check the files")

    def __getitem__(self, index):
        return self.load(index, np.random.default_rng([self.seed, index]))

# ----------------------------------------------------------------------------------
# The decode-once cache: python data.py prepare ...
# ----------------------------------------------------------------------------------

CACHE_FORMAT = "hvg-clips-v1"


def write_cache(dataset, out, preset, source, data_root, clips_per_video=1,
                shard_megabytes=512, workers=8, seed=0):
    """Decode every usable video of `dataset` (a VideoFolder at the preset's finest
    level) once into finest-level uint8 clips.

    Writes OUT/shard_00000.npy, ... each uint8 (N, T_L, S_L, S_L, 3), and OUT/index.json
    {format, preset, frames, size, frame_stride, source, class_names, labels, shards}.
    Training then reads clips with np.load(mmap_mode="r"): no decoding, no resizing.
    Clip starts are spread evenly over each video (clips_per_video of them).
    `python data.py prepare` checks the flags, builds the VideoFolder and calls this.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    jobs = []  # (video index, start frame)
    for index, total in enumerate(dataset.num_frames):
        span = 0 if total is None else total - dataset.needed
        # Starts at (k + 0.5) / clips of the free span: one clip per video is centred.
        starts = sorted({round((k + 0.5) / clips_per_video * span) for k in range(clips_per_video)})
        jobs += [(index, start) for start in starts]

    def decode(job):
        index, start = job
        rng = np.random.default_rng([seed, index, start])
        try:
            return dataset.clip(index, rng, start=start), dataset.labels[index]
        except Exception:  # noqa: BLE001 - counted and reported below
            return None, None

    clip_bytes = dataset.clip_frames * dataset.clip_size ** 2 * 3
    per_shard = max(1, shard_megabytes * 2**20 // clip_bytes)
    shards, labels, pending, failed = [], [], [], 0

    def flush():
        name = f"shard_{len(shards):05d}.npy"
        np.save(out / name, np.stack(pending))  # (N, T, S, S, 3) uint8
        shards.append({"file": name, "clips": len(pending)})
        pending.clear()

    progress = tqdm(total=len(jobs), desc="decoding clips", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Chunks of jobs, so decoded clips never pile up in memory ahead of the writer.
        chunk = 4 * workers
        for begin in range(0, len(jobs), chunk):
            for clip, label in pool.map(decode, jobs[begin:begin + chunk]):
                progress.update()
                if clip is None:
                    failed += 1
                    continue
                pending.append(clip)
                labels.append(label)
                if len(pending) == per_shard:
                    flush()
    progress.close()
    if pending:
        flush()
    if not labels:
        raise UserError(f"none of the {len(jobs)} clips from {str(data_root)!r} could be decoded")
    if failed:
        warnings.warn(f"{failed} of {len(jobs)} clips could not be decoded and were left out")
    index = dict(format=CACHE_FORMAT, preset=preset, frames=dataset.clip_frames,
                 size=dataset.clip_size, frame_stride=dataset.frame_stride, source=source,
                 data_root=str(data_root), class_names=dataset.class_names, labels=labels,
                 shards=shards)
    # index.json last, and atomically: a cache with an index is a complete cache.
    tmp = out / "index.json.tmp"
    tmp.write_text(json.dumps(index))
    tmp.replace(out / "index.json")
    return out / "index.json"


class CachedClips(Dataset):
    """Clips prepared by `python data.py prepare`, read through memory maps.

    Items: (video (3, T_l, H_l, W_l) float in [-1, 1], label) at one level, made from
    the cached finest clip with the same down() as every other dataset.
    """

    def __init__(self, root, preset, clip_frames, clip_size, time_step=1, space_factor=1,
                 seed=0, hflip=False):
        # `preset` is the preset's name, for the messages; its finest clip is
        # clip_frames x clip_size x clip_size, and the level is (time_step, space_factor) below it.
        self.seed, self.hflip = seed, hflip
        self.time_step, self.space_factor = time_step, space_factor
        if root is None or not (Path(root) / "index.json").is_file():
            raise UserError(f"--data cache needs --data-root pointing to a folder made by "
                            f"`python data.py prepare`; no index.json in {str(root)!r}")
        root = Path(root)
        try:
            index = json.loads((root / "index.json").read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {root / 'index.json'} ({error}); re-run prepare") from error
        shape = (clip_frames, clip_size, clip_size, 3)
        cached = (index.get("frames"), index.get("size"), index.get("size"), 3)
        if index.get("format") != CACHE_FORMAT or cached != shape:
            raise UserError(f"cache {str(root)!r} holds clips of {cached[:3]} prepared for preset "
                            f"{index.get('preset')!r}, but --preset {preset} needs {shape[:3]}; run "
                            f"`python data.py prepare ... --preset {preset}` into a new folder")
        self.shards = []
        for shard in index["shards"]:
            path = root / shard["file"]
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise UserError(f"cache shard {str(path)!r} is missing, truncated or corrupt "
                                f"({error}); re-run `python data.py prepare`") from error
            if array.dtype != np.uint8 or array.shape != (shard["clips"], *shape):
                raise UserError(f"cache shard {str(path)!r} holds {array.dtype} {array.shape}, "
                                f"expected uint8 {(shard['clips'], *shape)} (from another preset "
                                f"or run?); re-run `python data.py prepare` into a new folder")
            self.shards.append(array)
        self.labels = index["labels"]
        self.class_names = index["class_names"]
        self.num_classes = len(self.class_names)
        # Clip i lives in shard k at offset i - starts[k].
        self.starts = np.cumsum([0] + [s["clips"] for s in index["shards"]])

    def __len__(self):
        return int(self.starts[-1])

    def load(self, index, rng):
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        clip = self.shards[k][index - self.starts[k], ::self.time_step]  # (T_l, S, S, 3), read from disk
        if self.hflip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        return _uint8_to_level(clip, self.space_factor), self.labels[index]

    def __getitem__(self, index):
        return self.load(index, np.random.default_rng([self.seed, index]))
