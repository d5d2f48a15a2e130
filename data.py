"""Data for HVG: level presets, the video pyramid, partial views and the synthetic clips.

HVG trains one GAN per level. Level l works on clips of shape (T_l, H_l, W_l);
level l-1 is level l downsampled by `down` (average-pool space by the spatial
factor, keep every time-factor-th frame). This file holds everything a level needs
to see real data, in the order a reader needs it:

  presets        PRESETS["tiny"] = (LevelSpec level 1, level 2, level 3), ...
  the pyramid    down(video, tf, sf)          (B,C,T,H,W) -> (B,C,T/tf,H/sf,W/sf)
                 pad_condition(cond, K)       (...,t,h,w) -> (...,t+2K,h,w)
                 level_example(video, ...)    one partial-view training pair
  loaders        LevelDataset + make_loader: partial-view examples in batches that
                 are a pure function of (seed, sample position), so resuming and
                 workers are exact.
  synthetic      SyntheticVideos: the built-in data, no download.
  datasets       make_dataset("synthetic" | "kinetics600" | "bdd100k" | "ucf101" |
                 "folder" | "cache", ...)   items: (video (3,T_l,H_l,W_l) in [-1,1], label)

Videos are float tensors (C, T, H, W) or (B, C, T, H, W) in [-1, 1].

The default dataset, `synthetic`, is procedural: coloured disks and striped squares
bouncing over a scrolling background with a fine checker, rendered from continuous
parameters at any resolution and frame rate. It needs no download, and its levels
form an exact pyramid: down(level-l clip) == level-(l-1) clip.

Reading and writing video files (ffmpeg, folders of real videos, the decode-once
cache, .mp4/.gif/.png writing) is plumbing and lives in videos.py; the names the
other files use from here (write_video, contact_sheet, video_grid, ...) are
re-exported below.

Commands (the command line is at the end of this file):
  python data.py preview --data synthetic --preset tiny --num 4 --out preview
  python data.py prepare --data kinetics600 --data-root RAW --out CACHE --preset kinetics600
  python data.py preview --data cache --data-root CACHE --preset kinetics600 --out preview
"""

import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import flags
import videos
from flags import UserError   # noqa: F401 - data.UserError: the same class, for older imports
# Video files (videos.py) under the names the level scripts, sample.py and the tests use.
from videos import (_player_friendly, contact_sheet, probe_video, to_uint8,  # noqa: F401
                    video_grid, write_image, write_video)

# ----------------------------------------------------------------------------------
# Presets: the shape of every level.
# ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LevelSpec:
    level: int          # 1-based
    frames: int         # T_l
    size: int           # H_l == W_l
    time_factor: int    # temporal upsampling factor from level l-1 (1 for level 1)
    space_factor: int   # spatial factor from level l-1 (1 for level 1)
    crop_frames: int    # partial-view output crop length (== frames for level 1)
    context: int        # condition frames of temporal context each side (0 for level 1)
    crop_size: int | None = None   # default spatial crop of the output (largest levels), None: whole frame


def _pyramid(shapes, crop_frames=8, context=3, last_crop_size=None):
    """Build a preset from [(frames, size), ...], level 1 first. Factors are the ratios
    between consecutive levels; level 1 always sees its whole clip (no partial view).
    `context` 3: the default upsampling generator's temporal receptive field
    (upsample_level.UpsampleGenerator), so its windows give exactly the whole video.
    `last_crop_size`: the finest level also trains on spatial crops of that size (its
    frames are the largest: a spatial crop keeps its training step as cheap as the
    level below's; the generator is fully convolutional, so it samples whole frames)."""
    specs = [LevelSpec(1, shapes[0][0], shapes[0][1], 1, 1, shapes[0][0], 0)]
    for level, ((t0, s0), (t1, s1)) in enumerate(zip(shapes, shapes[1:]), start=2):
        crop_size = last_crop_size if level == len(shapes) else None
        specs.append(LevelSpec(level, t1, s1, t1 // t0, s1 // s0, crop_frames, context, crop_size))
    return tuple(specs)


PRESETS = {
    # A seconds-per-step preset for tests and laptops.
    "tiny": _pyramid([(8, 16), (16, 32), (32, 64)], last_crop_size=32),
    # The paper's three-level model: 48 frames at 256x256 in the end.
    "kinetics600": _pyramid([(12, 64), (24, 128), (48, 256)], last_crop_size=128),
    "bdd100k": _pyramid([(12, 64), (24, 128), (48, 256)], last_crop_size=128),
    "ucf101": _pyramid([(12, 64), (24, 128)]),
    # tiny's finest shape as one level: one DVD-GAN-style GAN that generates 32x64x64
    # directly (experiments/ablations.py, variant `single`). Its synthetic clips are
    # exactly tiny's level-3 clips (same scenes, same pixels: tests/test_ablations.py).
    "tiny_single": _pyramid([(32, 64)]),
}


def _check_preset(preset):
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def level_spec(preset, level):
    """The LevelSpec of `level` (1-based) in `preset`."""
    specs = _check_preset(preset)
    if not isinstance(level, (int, np.integer)) or not 1 <= level <= len(specs):
        raise UserError(f"preset {preset!r} has levels 1..{len(specs)}, not {level!r}")
    return specs[level - 1]


def num_levels(preset):
    return len(_check_preset(preset))


def pyramid_factors(preset, level):
    """(time, space) factors from level `level` up to the preset's finest level:
    down(finest clip, *pyramid_factors(preset, l)) has level l's shape."""
    specs = _check_preset(preset)[level:]
    return math.prod(s.time_factor for s in specs), math.prod(s.space_factor for s in specs)


def frame_time(preset, level):
    """Time between two frames of `level`, in units of level-1 frames:
    frame_time_l = 1 / (product of the time factors of levels 2..l).
    So level l-1's frame j is at the same time as level l's frame j * tf."""
    specs = _check_preset(preset)[:level]
    return 1.0 / math.prod(s.time_factor for s in specs)


# ----------------------------------------------------------------------------------
# The pyramid: down, pad_condition, level_example.
# ----------------------------------------------------------------------------------

def down(video, time_factor, space_factor):
    """down_l: a level-l video to level l-1's shape.

    (B, C, T, H, W) -> (B, C, ceil(T/tf), H/sf, W/sf)   (also (C, T, H, W))
    Space: average pooling over sf x sf blocks, so a coarse pixel is the mean of the
    fine pixels it covers. Time: keep frames 0, tf, 2tf, ... (no temporal blur: the
    coarse level is a lower frame rate, not a motion-blurred one).
    """
    if video.shape[-1] % space_factor or video.shape[-2] % space_factor:
        raise ValueError(f"down: spatial size {tuple(video.shape[-2:])} is not divisible "
                         f"by the space factor {space_factor}")
    video = video[..., ::time_factor, :, :]
    if space_factor == 1:
        return video
    *lead, t, h, w = video.shape
    # (..., t, H, W) -> (..., t, H/sf, sf, W/sf, sf) -> mean over the two sf axes
    blocks = video.reshape(*lead, t, h // space_factor, space_factor, w // space_factor, space_factor)
    return blocks.mean(axis=(-3, -1)) if isinstance(video, np.ndarray) else blocks.mean(dim=(-3, -1))


def pad_condition(condition, context):
    """Give the condition `context` extra frames on each side by replicating its first
    and last frame: (..., t, h, w) -> (..., t + 2K, h, w).

    In training, a crop in the middle of the clip sees real neighbouring frames as
    context; at the ends of the clip (and of a sampled video) there are none, and
    replicating the edge frame is what both training and windowed sampling use, so
    the generator sees the same thing in both.
    """
    if context == 0:
        return condition
    first = condition[..., :1, :, :]
    last = condition[..., -1:, :, :]
    reps = [1] * (condition.ndim - 3) + [context, 1, 1]
    if isinstance(condition, np.ndarray):
        return np.concatenate([np.tile(first, reps), condition, np.tile(last, reps)], axis=-3)
    return torch.cat([first.repeat(*reps), condition, last.repeat(*reps)], dim=-3)


def level_example(video, preset, level, crop_frames=None, context=None, crop_size=None,
                  rng=None, crop_start=None):
    """One training example for `level` from a real clip at the level's full shape.

    video: (C, T_l, H_l, W_l). Level 1 is trained on whole clips: {"target": video}.
    Levels >= 2 are trained on partial views (HVG sec. 3.2):

        cond   = down(video, tf, sf)                    (C, T_l/tf, h, w)
        padded = pad_condition(cond, K)                 (C, T_l/tf + 2K, h, w)
        s      = crop start in output frames, a multiple of tf, uniform in [0, T_l - crop]
        j0     = s / tf                                 the matching condition frame
        target    = video[:, s : s + crop]              (C, crop, H, W)
        condition = padded[:, j0 : j0 + crop/tf + 2K]   (C, crop/tf + 2K, h, w)

    Condition frame K + j (of the crop) is at the same time as target frame j * tf:
    the K frames before and after are the temporal context. With crop_size, target
    and condition are also cropped in space at the same place (crop_size and
    crop_size / sf pixels). Returns {"target", "condition", "crop_start"}.
    """
    spec = level_spec(preset, level)
    if level == 1:
        return {"target": video}
    tf, sf = spec.time_factor, spec.space_factor
    crop = spec.crop_frames if crop_frames is None else crop_frames
    K = spec.context if context is None else context
    _, T, H, W = video.shape
    if crop > T or crop < tf or crop % tf:
        raise UserError(f"crop_frames={crop} must be a multiple of level {level}'s time factor "
                        f"{tf}, at most its {T} frames")
    if K < 0 or K > T // tf:
        raise UserError(f"context={K} must be in 0..{T // tf} (the condition clip's length)")
    if crop_size is not None and (crop_size > min(H, W) or crop_size % sf or crop_size < sf):
        raise UserError(f"crop_size={crop_size} must be a multiple of the space factor {sf}, "
                        f"at most the level's size {min(H, W)}")
    rng = np.random.default_rng() if rng is None else rng

    # Crop start s in output frames, a multiple of tf so it lands on a condition frame.
    if crop_start is None:
        s = int(rng.integers(0, (T - crop) // tf + 1)) * tf
    else:
        s = int(crop_start)
        if s % tf or not 0 <= s <= T - crop:
            raise UserError(f"crop_start={s} must be a multiple of {tf} in 0..{T - crop}")
    j0 = s // tf

    condition = pad_condition(down(video, tf, sf), K)  # (C, T/tf + 2K, h, w)
    target = video[:, s:s + crop]                       # (C, crop, H, W)
    # Padded frame j0 + K is condition frame j0 = output frame s: the crop's first frame.
    condition = condition[:, j0:j0 + crop // tf + 2 * K]  # (C, crop/tf + 2K, h, w)

    if crop_size is not None:
        # Same place in both: the top-left corner is a multiple of sf.
        y = int(rng.integers(0, (H - crop_size) // sf + 1)) * sf
        x = int(rng.integers(0, (W - crop_size) // sf + 1)) * sf
        target = target[:, :, y:y + crop_size, x:x + crop_size]
        c = crop_size // sf
        condition = condition[:, :, y // sf:y // sf + c, x // sf:x // sf + c]
    return {"target": target, "condition": condition, "crop_start": s}

# ----------------------------------------------------------------------------------
# LevelDataset and make_loader: reproducible batches.
# ----------------------------------------------------------------------------------

class LevelDataset(Dataset):
    """Training examples of one level, indexed by GLOBAL sample position.

    position = batch * global_batch + rank * local_batch + i, where batch counts the real
    batches drawn (d_steps of them per generator step). Everything random about
    the example at a position is drawn from numpy.random.default_rng([seed, position]),
    and the base video is chosen by position too:
      unbounded base (synthetic): base index = position, every video fresh;
      finite base of N videos: epoch e = position // N, base index =
        permutation_{seed, e}[position % N] (a new shuffle every epoch).
    So a batch is a pure function of (seed, positions): resuming at step k gives the
    batches an uninterrupted run would have seen, whatever the number of workers.
    __getitem__(position) -> level_example(...) + {"label": int}
    """

    def __init__(self, base, preset, level, seed, crop_frames=None, context=None, crop_size=None):
        self.base, self.preset, self.level, self.seed = base, preset, level, seed
        self.crop_frames, self.context, self.crop_size = crop_frames, context, crop_size
        self.num_classes = getattr(base, "num_classes", 0)
        self._permutation = (None, None)  # (epoch, permutation), cached per worker

    def __len__(self):
        return sys.maxsize  # positions are unbounded; make_loader never asks for len

    def base_index(self, position):
        n = len(self.base)
        if isinstance(self.base, SyntheticVideos):
            return position % n
        epoch = position // n
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))
        return int(self._permutation[1][position % n])

    def __getitem__(self, position):
        rng = np.random.default_rng([self.seed, position])
        index = self.base_index(position)
        # Real datasets draw their clip start / crop / flip from the same rng.
        if hasattr(self.base, "load"):
            video, label = self.base.load(index, rng)
        else:
            video, label = self.base[index]
        example = level_example(video, self.preset, self.level, self.crop_frames, self.context,
                                self.crop_size, rng=rng)
        example["label"] = label
        return example


class _PositionBatches(torch.utils.data.Sampler):
    """Batch b on rank r holds positions b*B*world + r*B + i, i < B, for b = start, ..."""

    def __init__(self, batch_size, start_batch, rank, world_size):
        self.batch_size, self.start_batch = batch_size, start_batch
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        b = self.start_batch
        while True:
            first = (b * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            b += 1


def _worker_ignores_stop_signals(worker_id):
    """DataLoader workers ignore Ctrl-C and SIGTERM: the training process decides.

    A terminal's Ctrl-C reaches the whole process group, workers included. A worker
    left to Python's default dies of KeyboardInterrupt, and the training process,
    waiting on its next batch, crashes instead of finishing the step and saving
    (training.StopRequest). Ignoring the signal is safe: a worker still exits when
    the training process closes the loader or dies (DataLoader watches its parent).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset, batch_size, start_batch=0, num_workers=0, rank=0, world_size=1,
                pin_memory=False):
    """An infinite iterator of batches (dicts of stacked tensors) from a LevelDataset.
    Batch b on rank r holds positions b*batch_size*world_size + r*batch_size + i;
    start_batch=k resumes exactly at the k-th batch."""
    loader = DataLoader(dataset, batch_sampler=_PositionBatches(batch_size, start_batch, rank, world_size),
                        num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=num_workers > 0,
                        worker_init_fn=_worker_ignores_stop_signals if num_workers > 0 else None)
    return iter(loader)

# ----------------------------------------------------------------------------------
# The synthetic dataset.
# ----------------------------------------------------------------------------------

# Saturated object colours, in [-1, 1]. Objects take distinct ones.
PALETTE = np.array([
    [1.0, -0.8, -0.8],   # red
    [-0.8, 0.9, -0.8],   # green
    [-0.6, -0.5, 1.0],   # blue
    [1.0, 0.9, -0.9],    # yellow
    [-0.9, 0.9, 0.9],    # cyan
    [0.9, -0.8, 0.9],    # magenta
    [1.0, 0.2, -0.9],    # orange
], dtype=np.float32)


def _bounce(start, velocity, low, high, t):
    """Position at times t of a point moving at constant velocity between two walls,
    reflecting off them: a triangle wave. Closed form, so any frame rate works.
        u = (start - low + velocity * t) mod 2L,  L = high - low
        p = low + L - |u - L|
    """
    span = high - low
    u = np.mod(start - low + velocity * t, 2 * span)
    return low + span - np.abs(u - span)


def _grid_direction(rng):
    """One of the 8 directions on the pixel grid: (dx, dy) in {-1, 0, 1}^2, not (0, 0)."""
    while True:
        direction = rng.integers(-1, 2, size=2)
        if direction.any():
            return direction


class SyntheticVideos(Dataset):
    """Procedural videos: 1-3 coloured objects bouncing over a scrolling background.

    Structure at both scales, as real video has:
      global layout and motion: disks and squares (radius 0.09-0.19 of the frame)
        moving with constant velocity and bouncing off the walls, over a smooth
        background that scrolls;
      fine detail: sharp edges, stripes inside the squares, a small "eye" inside
        each disk, a fine checker on the background (cells of 2 finest-level
        pixels: a flat tint at the coarsest level, a 1-pixel checker at the next,
        visible texture at the finest).
    Item i is a pure function of (seed, i), rendered from continuous parameters:
    space is the unit square, time is in level-1 frames, frame t is at t * frame_time.

    Rendering is area averaging (supersampling): each pixel is the mean of an s x s
    grid of point samples, s = sample_grid / size, so every size samples the same
    sample_grid x sample_grid grid. make_dataset sets sample_grid to the preset's
    finest size: the finest level is point-sampled and every coarser level is the
    exact average of it, so down(level-l clip) equals the level-(l-1) clip up to
    float rounding (tests/test_data.py checks it).

    Whole-pixel motion. Everything moves a whole number of pixels per frame, at
    every level: velocities are multiples of one coarsest-level pixel per level-1
    frame, which (space and time factors both 2) is one pixel per frame at every
    level, and positions, sizes, stripes and checker cells sit on the pixel grid.
    Why: a texture near a level's pixel size that moves by a fraction of a pixel
    aliases into flicker (a 1-pixel checker is visible at one phase and averages
    to a flat tint half a pixel later; stripes blink on and off), so a level would
    be asked to reproduce flicker that its condition does not determine, and a
    judge would tell real from generated by the flicker alone. On the pixel grid,
    every level shows each texture the same way in every frame: crisp where it can
    hold it, an exact flat average where it cannot.

    __getitem__(i) -> (video float (3, frames, size, size) in [-1, 1], label),
    label = number of objects - 1 (num_classes = 3).
    """

    num_classes = 3
    class_names = ("one object", "two objects", "three objects")

    def __init__(self, frames, size, frame_time, seed=0, length=10**9, sample_grid=None,
                 coarsest=None):
        self.frames, self.size, self.frame_time = frames, size, frame_time
        self.seed, self.length = seed, length
        # Samples per pixel along each axis (at least 4 x 4 by default).
        sample_grid = max(size, 64) if sample_grid is None else sample_grid
        self.samples = max(1, math.ceil(sample_grid / size))
        # The pixel grids: the finest (sample_grid) and the coarsest (level 1's size).
        self.finest = sample_grid
        self.coarsest = size if coarsest is None else coarsest
        self.step = 1.0 / self.coarsest       # velocity unit: one coarsest pixel per level-1 frame
        self.cell = 2.0 / self.finest         # positions, sizes, checker cells: 2 finest pixels

    def __len__(self):
        return self.length

    def scene(self, index):
        """The continuous parameters of video `index`, on the pixel grid (class doc)."""
        rng = np.random.default_rng([self.seed, index])
        num_objects = int(rng.integers(1, 4))
        colours = rng.choice(len(PALETTE), size=num_objects, replace=False)
        cell, step = self.cell, self.step
        objects = []
        for k in range(num_objects):
            radius = cell * int(rng.integers(round(0.09 / cell), round(0.19 / cell) + 1))
            # 8 directions, each moving axis by one coarsest pixel per level-1 frame
            # (0.0625-0.088 frame widths on tiny): one pixel per frame at every level.
            direction = _grid_direction(rng)
            cells = int(round((1 - 2 * radius) / cell))   # positions on the grid between the walls
            objects.append(dict(
                kind=("disk", "square")[int(rng.integers(2))],
                radius=radius,
                # On the finest grid (1/finest), not the coarser `cell` grid: a start
                # always on even finest pixels would make frame 0 special at the
                # finest level (odd frames are one pixel off), i.e. tell a clip from
                # its reverse. Between the walls, which sit on the cell grid.
                start=radius + rng.integers(0, 2 * cells + 1, size=2) / self.finest,
                velocity=step * direction.astype(np.float64),
                colour=PALETTE[colours[k]],
                stripe_period=2 * cell * rng.choice([2, 4]),   # squares: stripes 2 or 4 cells wide
                stripe_axis=int(rng.integers(2)),
                eye=rng.uniform(-0.4, 0.4, size=2) * radius,   # disks: a small part
            ))
        scroll = _grid_direction(rng)
        return dict(
            objects=objects,
            label=num_objects - 1,
            background=rng.uniform(-0.5, 0.0, size=3).astype(np.float32),
            tint=rng.uniform(-0.3, 0.3, size=3).astype(np.float32),
            waves=rng.uniform(0.5, 1.5, size=2),                # cycles per frame width
            phases=rng.uniform(0, 2 * np.pi, size=2),
            scroll=step * scroll.astype(np.float64),            # frame widths per level-1 frame
            # The checker's phase at t = 0, in whole finest pixels along each axis. A
            # fixed phase would make frame 0 special (its checker always starts with a
            # bright cell top-left), and a judge could tell a clip from its reverse.
            checker_phase=rng.integers(0, 4, size=2) / self.finest,   # 0-3 finest pixels
            checker=np.float32(rng.uniform(0.08, 0.2)),  # |background| <= 1 without clipping
        )

    def render(self, scene):
        """(3, frames, size, size) float32 numpy in [-1, 1]."""
        n = self.size * self.samples
        coords = ((np.arange(n) + 0.5) / n).astype(np.float32)  # sample centres in [0, 1]
        t = (np.arange(self.frames) * self.frame_time).astype(np.float32)[:, None, None]  # (T,1,1)
        x = coords[None, None, :]  # (1, 1, n)
        y = coords[None, :, None]  # (1, n, 1)

        # Background: a smooth field sin(2 pi f x' + a) + sin(2 pi f y' + b) plus a fine
        # checker sign(sin(pi x' / cell)) * sign(sin(pi y' / cell)), both moving with
        # (x', y') = (x - v_x t, y - v_y t): the whole background scrolls.
        bx = x - np.float32(scene["scroll"][0]) * t  # (T, 1, n)
        by = y - np.float32(scene["scroll"][1]) * t  # (T, n, 1)
        smooth = 0.5 * (np.sin(2 * np.pi * scene["waves"][0] * bx + scene["phases"][0])
                        + np.sin(2 * np.pi * scene["waves"][1] * by + scene["phases"][1]))
        # Cells of self.cell: sign(sin(pi x / cell)) flips at every multiple of the cell.
        px, py = (np.float32(p) for p in scene["checker_phase"])
        checker = (np.sign(np.sin(np.pi / self.cell * (bx - px)))
                   * np.sign(np.sin(np.pi / self.cell * (by - py))))
        image = (scene["background"][:, None, None, None]
                 + scene["tint"][:, None, None, None] * smooth[None]
                 + scene["checker"] * checker[None]).astype(np.float32)  # (3, T, n, n)

        # Objects, painted in order over the background.
        for obj in scene["objects"]:
            r = obj["radius"]
            cx = _bounce(obj["start"][0], obj["velocity"][0], r, 1 - r, t).astype(np.float32)
            cy = _bounce(obj["start"][1], obj["velocity"][1], r, 1 - r, t).astype(np.float32)
            dx, dy = x - cx, y - cy  # (T, 1, n), (T, n, 1): offsets from the centre
            colour = obj["colour"][:, None, None, None]  # (3, 1, 1, 1)
            if obj["kind"] == "disk":
                inside = dx ** 2 + dy ** 2 <= r ** 2                     # (T, n, n)
                eye = (dx - obj["eye"][0]) ** 2 + (dy - obj["eye"][1]) ** 2 <= (0.3 * r) ** 2
                value = np.where(eye[None], -colour, colour)  # a small part, opposite colour
            else:
                inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)          # (T, n, n)
                along = dx if obj["stripe_axis"] == 0 else dy
                stripes = np.sin(2 * np.pi * along / obj["stripe_period"]) > 0
                value = np.where(stripes[None], colour, 0.3 * colour)  # (3, T, ., .)
            image = np.where(inside[None], value, image)

        # Area average: (3, T, size*s, size*s) -> (3, T, size, s, size, s) -> mean.
        s = self.samples
        image = image.reshape(3, self.frames, self.size, s, self.size, s).mean(axis=(3, 5))
        return np.clip(image, -1.0, 1.0)

    def __getitem__(self, index):
        scene = self.scene(index)
        return torch.from_numpy(np.ascontiguousarray(self.render(scene))), scene["label"]

# ----------------------------------------------------------------------------------
# make_dataset: one entry point for every data source.
# ----------------------------------------------------------------------------------

DATASETS = ("synthetic", "kinetics600", "bdd100k", "ucf101", "folder", "cache")


def make_dataset(data, data_root, preset, level, seed=0, frame_stride=None, random_crop=False,
                 hflip=False, **options):
    """A Dataset whose items are (video (3, T_l, H_l, W_l) float in [-1, 1], label int)
    at level `level`'s full shape, with a `num_classes` attribute (0: no labels).

    Every level sees the same pyramid: a clip is made at the preset's finest shape
    and brought to level l with down(), so down(level-l item) matches level l-1.
    """
    spec = level_spec(preset, level)
    if data == "synthetic":
        finest = PRESETS[preset][-1]
        # Sample grid = the finest size: coarser levels are exact averages of it.
        return SyntheticVideos(spec.frames, spec.size, frame_time(preset, level), seed=seed,
                               sample_grid=finest.size, coarsest=PRESETS[preset][0].size, **options)
    if data not in DATASETS:
        raise UserError(f"unknown dataset {data!r}; valid: {', '.join(DATASETS)}")
    # Video files (videos.py): the preset's finest clip, brought to level l by the
    # factors between them, the same down() as for synthetic clips.
    finest = PRESETS[preset][-1]
    time_step, space_factor = pyramid_factors(preset, level)
    if data == "cache":
        return videos.CachedClips(data_root, preset, finest.frames, finest.size, time_step,
                                  space_factor, seed=seed, hflip=hflip)
    root = videos.video_root(data, data_root)
    stride = videos.FILE_DATASETS[data]["stride"] if frame_stride is None else frame_stride
    if stride < 1:
        raise UserError(f"--frame-stride must be >= 1, not {stride}")
    return videos.VideoFolder(root, finest.frames, finest.size, time_step, space_factor, seed=seed,
                              frame_stride=stride, random_crop=random_crop, hflip=hflip, name=data,
                              **options)

# ----------------------------------------------------------------------------------
# Command line: prepare a cache, preview what each level trains on.
# ----------------------------------------------------------------------------------

def prepare_cache(data, data_root, out, preset, frame_stride=None, clips_per_video=1,
                  shard_megabytes=512, workers=8, seed=0, random_crop=False):
    """`python data.py prepare`: decode every usable video of a dataset once, into
    finest-level uint8 clips under `out` (videos.write_cache says how). Train on them
    with --data cache --data-root OUT."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {str(out)!r} exists and is not an empty folder; pass a new folder")
    if data in ("synthetic", "cache"):
        raise UserError(f"prepare reads video files; --data {data} needs no cache")
    if clips_per_video < 1:
        raise UserError(f"--clips-per-video must be >= 1, not {clips_per_video}")
    dataset = make_dataset(data, data_root, preset, num_levels(preset), seed=seed,
                           frame_stride=frame_stride, random_crop=random_crop)
    return videos.write_cache(dataset, out, preset, data, data_root, clips_per_video,
                              shard_megabytes, workers, seed)


def preview(data, data_root, preset, num, out, seed=0, frame_stride=None, fps=8):
    """Write `num` clips per level (OUT/level<l>/<i>.mp4) and OUT/contact_sheet.png:
    for each clip, one row per level, so the pyramid of each clip is visible."""
    out = Path(out)
    rows, written = [], []
    datasets = [make_dataset(data, data_root, preset, level, seed=seed, frame_stride=frame_stride)
                for level in range(1, num_levels(preset) + 1)]
    for i in range(num):
        for level, dataset in enumerate(datasets, start=1):
            index = i % len(dataset)
            # The same rng for every level: the same clip, crop and flip at each level.
            rng = np.random.default_rng([seed, index])
            video, _ = dataset.load(index, rng) if hasattr(dataset, "load") else dataset[index]
            path = out / f"level{level}" / f"{i}.mp4"
            # Keep real time: level l has prod(tf) times level 1's frame rate.
            write_video(path, video, fps=fps / frame_time(preset, level))
            written.append(path)
            rows.append(video)
    sheet = out / "contact_sheet.png"
    write_image(sheet, contact_sheet(rows, size=max(64, PRESETS[preset][0].size)))
    return written + [sheet]


def build_parser() -> flags.ArgumentParser:
    """`data.py prepare ...` and `data.py preview ...`; every number has its range (flags.py)."""
    def number(flag, interval, help, zero_means=None):
        # A numeric flag: its type refuses values outside `interval`, --help shows it.
        return dict(type=flags.ranged(flag, int, interval, help),
                    help=flags.ranged_help(help, interval, zero_means))

    parser = flags.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "preview"):
        command = commands.add_parser(name)
        command.add_argument("--data", default="synthetic" if name == "preview" else None,
                             required=name == "prepare", choices=DATASETS)
        command.add_argument("--data-root", default=None)
        command.add_argument("--preset", default="tiny", choices=list(PRESETS))
        command.add_argument("--out", required=True)
        command.add_argument("--frame-stride", default=None, **number(
            "--frame-stride", "[1, inf)", "source frames between clip frames (default: per dataset)"))
        command.add_argument("--seed", default=0, **number("--seed", "[0, 2**32)", "seed of the clips"))
    prepare = commands.choices["prepare"]
    prepare.add_argument("--clips-per-video", default=1, **number(
        "--clips-per-video", "[1, inf)", "clips cut from each video"))
    prepare.add_argument("--workers", default=8, **number("--workers", "[1, inf)", "parallel decoders"))
    prepare.add_argument("--shard-megabytes", default=512, **number(
        "--shard-megabytes", "[1, inf)", "size of each cache file"))
    commands.choices["preview"].add_argument("--num", default=4, **number("--num", "[1, inf)",
                                                                          "clips per level"))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        index = prepare_cache(args.data, args.data_root, args.out, args.preset, args.frame_stride,
                              args.clips_per_video, args.shard_megabytes, args.workers, args.seed)
        print(f"wrote {index}; train with --data cache --data-root {args.out} --preset {args.preset}")
    else:
        files = preview(args.data, args.data_root, args.preset, args.num, args.out, args.seed,
                        args.frame_stride)
        print(f"wrote {len(files)} files under {args.out} (contact sheet: {files[-1]})")


if __name__ == "__main__":
    flags.run_main(main)
