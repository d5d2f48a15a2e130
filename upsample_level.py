"""Upsampling levels of HVG (level 2, 3, ...): refine the previous level's video
in time (x time_factor) and space (x space_factor), trained on partial views.

Level l takes the level-(l-1) video c (the *condition*) and noise z, and produces
a video with time_factor x more frames and space_factor x more pixels that stays
faithful to c while adding the detail c lacks:

    condition c  (B, 3, t, h, w)          t = crop/tf + 2K frames: the crop + context
      -> 3-D encoder at c's resolution     (B, C, t, h, w)       temporal receptive field
      -> keep the central t - 2K frames    (B, C, t-2K, h, w)    the context is only read
      -> learned temporal upsampling       (B, C, (t-2K)*tf, h, w)   (only the aligned
                                                                      frames with --inbetween matched)
      -> residual up-blocks per frame      (B, C', (t-2K)*tf, h*sf, w*sf)
      -> + interpolated condition          (B, 3, crop, H, W), clamped to [-1, 1]
      -> frames aligned with c: each sf x sf block's mean set to c's pixel
      -> frames in between: block-matched from the aligned frames on each side

Training never sees the whole video: each example is a *partial view*, a crop of
`crop_frames` output frames plus the matching condition frames with `context`
extra frames on each side (data.level_example). The level's cost is therefore
fixed however long the videos are. At sampling time it is run over the whole
video in windows of the same shape (`upsample` below; sample.py chains the levels).

Three discriminators judge the output: spatial D_S and temporal D_T (as in level
1) on the output crop, and the matching discriminator D_M on (condition, output)
pairs, which keeps the output grounded to its input.

    python upsample_level.py --level 2                 # -> runs/tiny/level2/
    python upsample_level.py --level 3
    python upsample_level.py --level 2 --preset kinetics600 --data kinetics600 --data-root /data/k600/train
    python upsample_level.py --level 2 --no-matching   # ablation: no D_M
    python upsample_level.py --level 2 --context 0     # ablation: no temporal context
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from tqdm import tqdm

from data import (LevelDataset, LevelSpec, UserError, down, level_spec, make_dataset, make_loader,
                  num_levels, pad_condition, video_grid)
from discriminators import (MatchingDiscriminator, SpatialDiscriminator, TemporalDiscriminator,
                            discriminator_stats, hinge_d_loss, hinge_g_loss, orthogonal_init,
                            sn_conv2d, sn_conv3d)
import level1
from level1 import ConditionalBatchNorm, Level1Generator, UpBlock
from metrics import TrainingEvaluator   # --eval-every: the two-sample test (+ FVD)
from training import (StopRequest, TrainConfig, autocast, check_architecture, check_finite,
                      checkpoint_state, cleanup_distributed, count_flops, load_checkpoint,
                      load_state, log_line, make_grad_scaler, option, parse_config, peak_flops,
                      per_rank_batch, prepare_out_dir, release_out_dir, resolve_amp,
                      restore_checkpoint, run_main, save_checkpoint, seed_everything,
                      set_aside_previous_checkpoint, setup_distributed, standing_statistics,
                      step_seed, tensorboard_writer, training_command, unwrap, update_ema,
                      wrap_ddp, write_samples)


# ----------------------------------------------------------------------------------
# Configuration (the command line is generated from this dataclass).
# ----------------------------------------------------------------------------------

@dataclass
class UpsampleConfig(TrainConfig):
    """An upsampling level's flags: training.TrainConfig's (data, run, model widths,
    optimisation) with this level's defaults, plus the level, its partial view and
    the matching discriminator."""
    level: int = option(2, "which level of the hierarchy to train (2, 3, ...; level 1 "
                                  "is trained by `python level1.py`)", "[2, inf)")
    # Partial views (defaults: the preset's table).
    crop_frames: int | None = option(None, "output frames per training crop (default: the preset's)",
                                     "[1, inf)")
    context: int | None = option(None, "condition frames of temporal context on each side "
                                       "(default: the preset's)", "[0, inf)",
                                 zero_means="no context (ablation)")
    crop_size: int | None = option(None, "spatial crop of the output in pixels (default: the preset's, "
                                         "set for the largest level)", "[0, inf)",
                                   zero_means="whole frames")
    cond_from: str | None = option(None, "run folder of the trained previous level (e.g. runs/tiny/level1): "
                                         "half of G's conditions are then its samples, not real data")
    cond_bank: int = option(64, "previous-level videos sampled once for --cond-from", "[1, inf)")
    # The matching discriminator.
    matching: bool = option(True, "use the matching discriminator D_M (--no-matching: ablation)")
    # Pooled by 2, the output is the spatial part of down(output): the pair still holds
    # the condition next to what the output gives back (discriminators.py, D_M's comment).
    matching_pool: bool = option(True, "D_M sees the (condition, output) pair 2x average-pooled in "
                                       "space: 4x cheaper, and within noise of full resolution "
                                       "(docs/quality.md; --no-matching-pool: full resolution)")
    matching_weight: float = option(1.0, "weight of the matching discriminator's loss", "[0, inf)",
                                    zero_means="D_M has no effect (--no-matching does not even build it)")
    # Model.
    padding: str = option("replicate", "how G's convolutions pad frame borders: replicate (edge "
                                       "pixels repeated, so a border looks like content running "
                                       "on) or zeros (the generator can tell where the border is, "
                                       "and draws lines along it)",
                          choices=["zeros", "replicate"])
    motion_radius: int = option(1, "largest motion, in output pixels per output frame, that "
                                   "in-between frames follow (block matching between aligned "
                                   "frames; the built-in data moves 1)", "[0, inf)",
                                zero_means="in-between frames are cross-fades (the old base)")
    global_motion: bool = option(True, "where block matching cannot tell the motion (a flat or "
                                       "finely textured background, or beside an object), "
                                       "in-between pixels follow the frame's own motion "
                                       "(motion_interpolate_condition; --no-global-motion: the "
                                       "window's motion everywhere, as before)")
    grid_features: bool = option(False, "G's detail adds a texture placed on the pixel grid: "
                                        "Fourier features of (t, y, x) at periods 2 and 4 times "
                                        "amplitudes it computes, so it can draw a texture finer "
                                        "than the condition's pixels where the condition is flat "
                                        "(grid_features; tried, not the default: docs/quality.md "
                                        "section 18)")
    exact_condition: bool = option(True, "G's condition-aligned frames give their condition "
                                         "frame back exactly: each sf x sf block's mean is set to "
                                         "the condition pixel under it (--no-exact-condition: the "
                                         "learned frames as they come, as before)")
    inbetween: str = option("matched", "how G makes the frames between condition-aligned ones: "
                                       "matched (block matching between its own aligned output "
                                       "frames, --motion-radius) or learned (learned detail on a "
                                       "base matched between condition frames, as before)",
                            choices=["matched", "learned"])
    encoder_blocks: int = option(1, "3-D residual blocks that read the condition (each adds 2 "
                                    "condition frames of temporal receptive field)", "[0, inf)",
                                 zero_means="none (ablation)")
    # This level's defaults for TrainConfig's flags (crops are small: batch 4, 600 steps;
    # at half as many steps the level scores as at 800: docs/quality.md section 6; 600
    # pays for the in-between frames' block matching: section 11).
    steps: int = option(600, "generator steps to train for (the run stops at this step)", "[1, inf)")
    batch_size: int = option(4, "global batch size (split across torchrun processes)", "[1, inf)")
    sample_every: int = option(400, "steps between sample videos", "[0, inf)",
                               zero_means="only at the end")
    ckpt_every: int = option(200, "steps between checkpoints (always one at the end)", "[0, inf)",
                             zero_means="only at the end")
    num_samples: int = option(4, "videos in each sample grid", "[1, inf)")
    z_dim: int = option(64, "latent size", "[1, inf)")
    k_frames: int = option(4, "frames the spatial discriminator scores per crop", "[1, inf)")
    ema_decay: float = option(0.99, "EMA decay of G's weights", "[0, 1)",
                              zero_means="no averaging, the EMA generator is G")
    ema_start: int = option(50, "steps before the EMA starts averaging (it copies G until then)",
                            "[0, inf)", zero_means="average from the first step")

    def check(self) -> None:
        """Flag combinations this level cannot train with (see TrainConfig.check)."""
        super().check()
        spec, crop, context, crop_size = crop_settings(self)   # level, crop, context, crop size
        size = crop_size or spec.size
        # D_T (and D_M with its pooling) halve the frames, then halve them down to 4x4:
        # the discriminators take square frames whose side is a power of two, >= 16.
        if size < 16 or size & (size - 1):
            fits = [s for s in (2**n for n in range(4, 16)) if s <= spec.size and s % spec.space_factor == 0]
            raise UserError(
                f"--crop-size {size}: the discriminators take square crops whose side is a power "
                f"of two, at least 16; for level {self.level} of {self.preset!r} use one of "
                f"{', '.join(map(str, fits))} (or 0: whole {spec.size}x{spec.size} frames)")
        if self.k_frames > crop:
            raise UserError(
                f"--k-frames {self.k_frames}: the spatial discriminator picks frames of the "
                f"{crop}-frame training crops; use --k-frames {crop} or fewer (or a longer "
                "--crop-frames)")


ARCHITECTURE_FIELDS = ("preset", "level", "class_conditional", "z_dim", "g_ch", "d_ch",
                       "encoder_blocks", "matching", "matching_pool", "temporal_pool", "padding",
                       "motion_radius", "global_motion", "exact_condition", "inbetween",
                       "grid_features")


# ----------------------------------------------------------------------------------
# The conditional generator G_l(c, z).
# ----------------------------------------------------------------------------------

class EncoderBlock3d(nn.Module):
    """Residual 3-D block at the condition's resolution: where frames talk to each other.

        h = conv_b(relu(cbn_b(conv_a(relu(cbn_a(x)))))),   out = x + h
    Both convolutions are 3x3x3, so each block widens the temporal receptive field
    by 2 condition frames (1 per convolution, on each side).
    """

    def __init__(self, channels: int, cond_dim: int, padding_mode: str = "replicate"):
        super().__init__()
        self.bn_a = ConditionalBatchNorm(channels, cond_dim)
        self.conv_a = sn_conv3d(channels, channels, 3, padding=1, padding_mode=padding_mode)
        self.bn_b = ConditionalBatchNorm(channels, cond_dim)
        self.conv_b = sn_conv3d(channels, channels, 3, padding=1, padding_mode=padding_mode)

    def _norm(self, bn, x, cond):
        # Conditional BN is 2-D: fold time into the batch and back.
        b, c, t, h, w = x.shape
        x2d = x.transpose(1, 2).reshape(b * t, c, h, w)                     # (B*T, C, H, W)
        y = bn(x2d, cond.repeat_interleave(t, dim=0))
        return y.view(b, t, c, h, w).transpose(1, 2)                        # (B, C, T, H, W)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv_a(F.relu(self._norm(self.bn_a, x, cond)))
        h = self.conv_b(F.relu(self._norm(self.bn_b, h, cond)))
        return x + h


def interpolate_condition(condition: torch.Tensor, time_factor: int, space_factor: int) -> torch.Tensor:
    """The condition brought to the output's shape by plain interpolation: the base
    the generator adds detail to.

    Time: output frame j*tf + r lies r/tf of the way from condition frame j to j+1
    (data.down keeps frame j*tf as condition frame j), so
        base_{j*tf + r} = (1 - r/tf) * c_j + (r/tf) * c_{j+1}
    with the last frame repeated past the end. Space: bilinear.
    (B, 3, t, h, w) -> (B, 3, t*tf, h*sf, w*sf)
    """
    b, c, t, h, w = condition.shape
    following = torch.cat([condition[:, :, 1:], condition[:, :, -1:]], dim=2)   # c_{j+1}
    frac = torch.arange(time_factor, dtype=condition.dtype, device=condition.device) / time_factor
    frac = frac.view(1, 1, 1, time_factor, 1, 1)
    # (B, 3, t, 1, h, w) and (1, 1, 1, tf, 1, 1) -> (B, 3, t, tf, h, w) -> (B, 3, t*tf, h, w)
    video = torch.lerp(condition.unsqueeze(3), following.unsqueeze(3), frac).flatten(2, 3)
    if space_factor == 1:
        return video
    frames = video.transpose(1, 2).reshape(b * t * time_factor, c, h, w)      # (B*T, 3, h, w)
    frames = F.interpolate(frames, scale_factor=space_factor, mode="bilinear", align_corners=False)
    return frames.view(b, t * time_factor, c, h * space_factor, w * space_factor).transpose(1, 2)


def shifter(frames: torch.Tensor, reach: int):
    """shift(dy, dx) for |dy|, |dx| <= reach: frames (..., H, W) moved by (dy, dx) whole
    pixels, down and right, out[..., y, x] = frames[..., y - dy, x - dx], the border
    pixels repeated. Every shift is a view into one padded copy (padding once)."""
    *lead, h, w = frames.shape
    padded = F.pad(frames.reshape(-1, 1, h, w), (reach, reach, reach, reach), mode="replicate")
    padded = padded.view(*lead, h + 2 * reach, w + 2 * reach)
    return lambda dy, dx: padded[..., reach - dy:reach - dy + h, reach - dx:reach - dx + w]


def shift_frames(frames: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Frames (..., H, W) moved by (dy, dx) whole pixels (see shifter)."""
    return shifter(frames, max(abs(dy), abs(dx)))(dy, dx)


def box_mean(frames: torch.Tensor, width: int, padding: int = 0) -> torch.Tensor:
    """The mean over width x width blocks of frames (..., H, W), stride 1, `padding`
    zeros on each side: F.avg_pool2d's numbers, from running sums (a block's sum is
    the difference of two running sums, along the rows and then the columns), which on
    a CPU is several times faster than avg_pool2d at these sizes."""
    frames = F.pad(frames, (padding, padding, padding, padding))
    sums = F.pad(frames.cumsum(-2), (0, 0, 1, 0))
    rows = sums[..., width:, :] - sums[..., :-width, :]
    sums = F.pad(rows.cumsum(-1), (1, 0))
    return (sums[..., width:] - sums[..., :-width]) / (width * width)


def box_blur(frames: torch.Tensor, width: int) -> torch.Tensor:
    """Each pixel of frames (N, C, H, W) the mean of the width x width block at it (an
    even width reaches one pixel further right and down), the border repeated."""
    if width <= 1:
        return frames
    before, after = (width - 1) // 2, width // 2
    return box_mean(F.pad(frames, (before, after, before, after), mode="replicate"), width)


def extend_from_held(cost: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """cost (..., H, W) known where `held` (H, W, on the CPU), a rectangle, is true: each pixel
    outside it takes the cost of the nearest pixel in it (border repeated), so pixels
    near the frame's border, which no compared pixel reaches, take the motion of the
    content next to them. No held pixel at all: the motion costs infinity."""
    if bool(held.all()):
        return cost
    rows, cols = held.any(dim=1).nonzero(), held.any(dim=0).nonzero()
    if len(rows) == 0:
        return torch.full_like(cost, float("inf"))
    top, bottom, left, right = rows[0].item(), rows[-1].item() + 1, cols[0].item(), cols[-1].item() + 1
    h, w = held.shape
    inner = cost[..., top:bottom, left:right]
    lead = inner.shape[:-2]
    padded = F.pad(inner.reshape(-1, 1, *inner.shape[-2:]), (left, w - right, top, h - bottom), mode="replicate")
    return padded.reshape(*lead, h, w)


# global_motion: a pixel's window cost counts at most this much towards the frame's
# motion (costs are sums over the 3 colours of mean |differences| in [-1, 1] pixels:
# 0.1 is a clear mismatch), so an object that moves otherwise adds at most its area
# times the cap and the background, most of the frame, decides.
GLOBAL_COST_CAP = 0.1


def grid_features(frames: int, height: int, width: int, first_frame: int = 0,
                  sub: int = 1, device=None) -> torch.Tensor:
    """Where each output pixel sits on the grid: Fourier features of (t, y, x) at the
    two highest frequencies the output holds. (frames, GRID_FEATURES, H, W), values in
    {-1, 0, 1}.

    Per axis a in (y, x): 1, cos(pi a) = (-1)^a (period 2), cos(pi a / 2) and
    sin(pi a / 2) (period 4). Every product of a y one and an x one but the constant
    (15), and those of them with a period-4 factor (12) also times (-1)^j, j =
    first_frame + f // sub the condition frame of output frame f: 27 features.

    Why: convolutions are the same at every pixel, and with replicate padding
    nothing marks where a pixel is; on a region where the condition is flat, every
    pixel of the output sees the same input and gets the same detail. So the network
    alone cannot draw a texture finer than the condition's pixels there: the data's
    background checker (cells of 2 finest pixels) is flat in the condition, and the
    judge tells real level-3 clips from the same clips without it every time
    (docs/quality.md, section 18). A checker of either period in any phase is a sum
    of these features times amplitudes that the network computes (per pixel, from
    the condition and z): a product, so the texture goes where the network puts it
    (the background) and not elsewhere (the objects). Aligned frames are tf = 2
    frames apart: a texture scrolling one pixel per frame moves 2 pixels between
    them, which leaves a period-2 texture as it was and turns a period-4 one over,
    hence (-1)^j on the period-4 features only.
    The phase is the frame's own, so the grid is counted from the video's first
    pixel and first frame: windows of a video pass their first frame, so all of
    them agree (upsample, sample.upsample_chunks).

    An option (--grid-features), not the default: trained, level 3 draws the checker
    in its aligned frames, but the in-between frames matched from them do not carry
    it (a period-4 texture two pixels on is matched by a motion of +1 and -1 alike),
    and level 2 put the texture on its objects; the judge's number fell on no seed
    tried at either level (docs/quality.md, section 18).
    """
    def axis(n):
        a = torch.arange(n, dtype=torch.float32)
        half = torch.pi * a / 2
        # cos/sin of multiples of pi/2 are exactly 0, +-1: rounded, not 6e-17.
        return torch.stack([torch.ones(n), torch.cos(torch.pi * a), torch.cos(half), torch.sin(half)]).round()
    ys, xs = axis(height), axis(width)                                       # (4, H), (4, W)
    space = (ys[:, None, :, None] * xs[None, :, None, :]).flatten(0, 1)[1:]  # (15, H, W): no constant
    # Products with a period-4 factor: y index >= 2 or x index >= 2 (of the 4 x 4, less the constant).
    period4 = [k - 1 for k in range(1, 16) if k // 4 >= 2 or k % 4 >= 2]
    parity = 1.0 - 2.0 * ((first_frame + torch.arange(frames) // sub) % 2).float()   # (-1)^j
    return torch.cat([space[None].expand(frames, -1, -1, -1),
                      parity[:, None, None, None] * space[period4][None]], dim=1).to(device)


GRID_FEATURES = 27


def motion_interpolate_condition(condition: torch.Tensor, time_factor: int, space_factor: int,
                                 radius: int, smooth: int | None = None,
                                 global_motion: bool = False) -> torch.Tensor:
    """The base with its in-between frames motion-compensated instead of cross-faded.

    interpolate_condition's in-between frame is a cross-fade: an object that moves
    from A (frame j) to B (frame j+1) shows as two half-bright copies, at A and at B,
    where the data has one object, halfway. The generator's detail then has to erase
    one ghost and draw an object where neither is; trained, it mostly does not, and
    the judge tells the new frames apart about as often as a plain cross-fade
    (docs/quality.md, section 10). So the base moves things itself, by block
    matching (frame-rate up-conversion, as in TV sets): for each pixel of in-between
    frame j*tf + r, each candidate motion u (whole output pixels per output frame,
    |u_y|, |u_x| <= radius) pairs the pixel of frame j it came from, x - r*u, with
    the pixel of frame j+1 it goes to, x + (tf - r)*u, both brought to the output
    size as before. The motion whose two pixels agree best, summed over a window of
    (2*sf + 1)^2 pixels around it, wins, and the base is their cross-fade (two
    copies of the same thing, in one place):
        cost(u)  = box(sum_colour |S(A_u) - S(B_u)|),  A_u = up(c_j) moved by r*u,
                                                       B_u = up(c_{j+1}) moved by -(tf - r)*u
        base     = (1 - r/tf) * A_u* + (r/tf) * B_u*,   u* = argmin cost (ties: the
                   smallest motion first, so flat regions keep u = 0, the cross-fade).
    A hard choice, so a change of the input by float rounding can flip a pixel whose
    two best motions tie to within it (tests/test_sample.py bounds how rarely).
    Frames aligned with the condition (r = 0) are interpolate_condition's. No
    learned weights: the generator's detail starts from a base with things in place.
    S is a box blur `smooth` pixels wide (default 2*sf: two condition pixels): the
    motion is found on the frames without their finest texture. A texture of period
    p matches itself moved by p, so on the data's 1-pixel checker (period 2 in the
    condition) the motions u and -u agree equally well, and the base picked either,
    pixel by pixel, and showed the texture torn. The blur averages such textures
    flat, and the motion of the objects and the smooth background decides.
    At the frame's border, where a motion brings in content that frame j (or j+1)
    does not hold, only the frame that holds it is used, and only pixels both hold
    are compared: repeating the border pixel instead smeared a row of it into every
    in-between frame, and the judge found the border. radius 0 is the plain
    cross-fade. Reads frames j and j+1 only, like the cross-fade, so the temporal
    receptive field is unchanged.

    global_motion (the levels' default, --global-motion): where the window cannot
    tell the motion, the frame's own motion decides. A window on the background
    alone sees only the fine texture, which the blur flattens, and a smooth tint:
    every motion fits about as well, the smallest (none) wins, and the texture that
    moves under it is cross-faded away (or, at twice its period, drawn in the wrong
    phase); a window beside an object hands the object's motion to the background
    pixels in it, a halo. So each pair of frames also gets one frame-wide motion,
    the candidate with the least mean cost over the frame, each pixel's cost capped
    at GLOBAL_COST_CAP so that objects moving otherwise cannot outvote the
    background (on the built-in data it is the background's scroll 97% of the time
    at level 3), and each pixel takes the frame's motion instead of the window's
    where its two source pixels agree better at that pixel itself, unblurred.
    docs/quality.md, section 17.
    (B, 3, t, h, w) -> (B, 3, t*tf, h*sf, w*sf)
    """
    base = interpolate_condition(condition, time_factor, space_factor)
    if radius == 0 or time_factor == 1:
        return base
    tf = time_factor
    frame_j = base[:, :, ::tf]                                                   # up(c_j)
    frame_next = torch.cat([frame_j[:, :, 1:], frame_j[:, :, -1:]], dim=2)       # up(c_{j+1})
    smooth = 2 * space_factor if smooth is None else smooth
    b, c, t, h, w = frame_j.shape

    def blurred(video):                                                          # S, frame by frame
        return box_blur(video.transpose(1, 2).reshape(b * t, c, h, w), smooth).view(b, t, c, h, w).transpose(1, 2)

    smooth_j, smooth_next = blurred(frame_j), blurred(frame_next)
    reach = radius * (tf - 1)                                                    # the largest shift
    shift_j, shift_next, shift_smooth_j, shift_smooth_next = (
        shifter(video, reach) for video in (frame_j, frame_next, smooth_j, smooth_next))
    window = 2 * space_factor + 1
    # Candidate motions, smallest first: a later one must be clearly better to replace it.
    motions = sorted(((dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)),
                     key=lambda u: (u[0] ** 2 + u[1] ** 2, u))
    frames = list(base.unbind(2))                                                # output frames
    # The masks below depend on the shapes only: made on the CPU, where the code can
    # look at them (also when the video lives on a GPU, or on the meta device).
    rows, cols = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)

    def inside(dy, dx, low=0, high=0):
        """(h, w) on the CPU: 1 where shift_frames(., dy, dx) reads a pixel of the frame
        (at least `low` pixels from its top and left, `high` from its bottom and right)."""
        y, x = rows - dy, cols - dx
        return ((y >= low) & (y < h - high) & (x >= low) & (x < w - high)).float()

    def on_device(mask):
        return mask.to(device=base.device, dtype=base.dtype)

    # Blurred pixels within reach of the border are averages over repeated border pixels:
    # not a picture of the scene that moves, so they are not compared.
    blur_reach = ((smooth - 1) // 2, smooth // 2) if smooth > 1 else (0, 0)

    def window_cost(forward, back):
        """(B, t, h, w): the blurred frames' mean difference over the window's pixels that
        both frames hold, for the pixels of frame j moved by `forward` and of frame j+1
        by `back`."""
        both = inside(*forward, *blur_reach) * inside(*back, *blur_reach)
        diff = (shift_smooth_j(*forward) - shift_smooth_next(*back)).abs().sum(dim=1)
        held = box_mean(both, window, window // 2)
        cost = box_mean(diff * on_device(both), window, window // 2) / on_device(held.clamp_min(1e-6))
        return extend_from_held(cost, held > 0)

    def motion(r, forward, back):
        """Frames j*tf + r by one candidate motion: (cost, raw, pair, candidate). cost:
        window_cost; candidate (B, 3, t, h, w): (1 - r/tf) of frame j and r/tf of frame
        j+1, of the ones that hold the pixel; raw (B, t, h, w): how well its two source
        pixels agree at this pixel alone, unblurred; pair: 1 where both frames hold them
        (elsewhere raw is not compared)."""
        in_a, in_b = (1 - r / tf) * inside(*forward), (r / tf) * inside(*back)
        total = in_a + in_b
        candidate = torch.lerp(shift_j(*forward), shift_next(*back), on_device(in_b / total.clamp_min(1e-6)))
        if not bool((total > 0).all()):
            candidate = torch.where(on_device(total) > 0, candidate, torch.lerp(frame_j, frame_next, r / tf))
        raw = (shift_j(*forward) - shift_next(*back)).abs().sum(dim=1)
        pair = on_device(inside(*forward) * inside(*back)).expand_as(raw)
        return window_cost(forward, back), raw, pair, candidate

    def keep(mask, new, old):
        """Per pixel (mask (B, t, h, w), or (B, t, 1, 1)), the tuple `new` where mask, else `old`."""
        return tuple(torch.where(mask.unsqueeze(1) if x.dim() == 5 else mask, x, o) for x, o in zip(new, old))

    for r in range(1, tf):
        steps = [((r * dy, r * dx), (-(tf - r) * dy, -(tf - r) * dx)) for dy, dx in motions]
        best, frame_cost = None, []     # the window's motion so far; each motion's frame-wide cost
        for step in steps:
            this = motion(r, *step)
            if global_motion:
                frame_cost.append(this[0].clamp_max(GLOBAL_COST_CAP).mean(dim=(-2, -1)))   # (B, t)
            if best is None:
                best = this
            else:                                  # clearly better: float ties keep the smaller
                best = keep(this[0] < best[0] * (1 - 1e-4) - 1e-6, this, best)
        chosen = best[3]
        if global_motion:
            # The frame's motion, per clip and frame: the least mean capped cost over the
            # frame (ties: the smaller motion); made again for the motions some frame chose
            # (every motion on the meta device, whose tensors have shapes but no values).
            frame_motion = torch.stack(frame_cost).argmin(dim=0)                 # (B, t)
            chosen_by_a_frame = range(len(steps)) if frame_motion.is_meta else frame_motion.unique().tolist()
            own = None
            for k in chosen_by_a_frame:
                this = motion(r, *steps[k])
                own = this if own is None else keep((frame_motion == k)[:, :, None, None], this, own)
            # Per pixel, the frame's motion where its two source pixels agree better
            # there than the window's do (the windows' costs where either lacks a source
            # pixel); ties keep the window's (fewer wrong pixels on the built-in data).
            (cost, raw, pair, candidate), (b_cost, b_raw, b_pair, _) = own, best
            both = (pair * b_pair) > 0
            follow = torch.where(both, raw, cost) < torch.where(both, b_raw, b_cost) - 1e-6
            chosen = torch.where(follow.unsqueeze(1), candidate, chosen)
        for j in range(frame_j.shape[2]):
            frames[j * tf + r] = chosen[:, :, j]
    return torch.stack(frames, dim=2)


class UpsampleGenerator(nn.Module):
    """G_l(c, z): condition (B, 3, t, h, w) with `context` frames each side -> output
    (B, 3, (t - 2*context) * tf, h * sf, w * sf).

    Temporal receptive field. Only the encoder mixes frames: a 1x3x3 stem (none),
    then `encoder_blocks` residual blocks of two 3x3x3 convolutions (2 frames each),
    then the temporal upsampling, a 1x3x3 convolution whose output channels are
    split into tf sub-frames (one, the aligned frame, when in-between frames are
    matched) (none); the decoder works frame by frame (none); the
    interpolated base reads frame j+1 (1). In-between frames made by matching
    (inbetween="matched", the default) read the aligned output frame j+1, itself
    made from condition frames j+1 +- 2*encoder_blocks. So output frame j*tf + r
    depends on condition frames j - R ... j + R (at most) with

        R = 2 * encoder_blocks + 1        matched in-between frames (the default)
        R = max(2 * encoder_blocks, 1)    learned in-between frames

    Padding only reaches frames within R of a window's edge, so when the
    context K >= R the output is exactly what running the whole video at once
    gives: the property windowed sampling relies on (tested in tests/).
    Noise: z enters every block through conditional batch norm (BigGAN); there is
    no per-pixel noise, so every window of one video uses the same z and agrees.
    The defaults of z_dim, ch, encoder_blocks, padding_mode, motion_radius,
    exact_condition, inbetween, global_motion and grid are the command line's (--z-dim,
    --g-ch, --encoder-blocks, --padding, --motion-radius, --exact-condition,
    --inbetween, --global-motion, --grid-features).
    """

    def __init__(self, time_factor: int, space_factor: int, z_dim: int = 64, ch: int = 16,
                 encoder_blocks: int = 1, num_classes: int = 0, padding_mode: str = "replicate",
                 motion_radius: int = 1, exact_condition: bool = True, inbetween: str = "matched",
                 global_motion: bool = True, grid: bool = False):
        super().__init__()
        if inbetween not in ("matched", "learned"):
            raise ValueError(f"inbetween must be 'matched' or 'learned', got {inbetween!r}")
        self.time_factor, self.space_factor = time_factor, space_factor
        self.motion_radius, self.exact_condition, self.inbetween = motion_radius, exact_condition, inbetween
        self.global_motion, self.grid = global_motion, grid
        self.z_dim, self.num_classes, self.encoder_blocks = z_dim, num_classes, encoder_blocks
        ups = int(round(torch.log2(torch.tensor(float(space_factor))).item()))
        if 2**ups != space_factor:
            raise ValueError(f"space_factor must be a power of 2, got {space_factor}")
        # Widths: enc_ch at the condition's resolution, halving at every 2x upsampling.
        enc_ch = ch * 2**ups
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        cond_dim = 2 * z_dim if num_classes else z_dim
        # padding_mode="replicate" (the default): a border pixel is padded with its own
        # value, so a crop's edge (which training sees everywhere, level 3's spatial
        # crops being half a frame wide) looks like content running on, not like a
        # black frame. With zero padding the generator could tell where the border
        # is, and it drew lines and boxes along it, at crop borders in training and
        # at the whole frame's edges when sampling. With replicate padding a
        # spatially uniform input gives a spatially uniform output: nothing in the
        # network marks the border (tests/test_quality_causes.py).
        pad = dict(padding_mode=padding_mode)
        self.stem = sn_conv3d(3, enc_ch, (1, 3, 3), padding=(0, 1, 1), **pad)
        self.encoder = nn.ModuleList(EncoderBlock3d(enc_ch, cond_dim, padding_mode)
                                     for _ in range(encoder_blocks))
        # Learned temporal upsampling: one conv gives tf sub-frames' features per frame.
        # Matched in-between frames are not learned (forward): then only the aligned
        # sub-frame is, and the decoder does half the work at tf = 2.
        self.subframes = 1 if inbetween == "matched" else time_factor
        self.to_subframes = sn_conv3d(enc_ch, enc_ch * self.subframes, (1, 3, 3), padding=(0, 1, 1), **pad)
        self.up_blocks = nn.ModuleList(
            UpBlock(ch * 2 ** (ups - i), ch * 2 ** (ups - i - 1), cond_dim, padding_mode) for i in range(ups))
        self.out_bn = nn.BatchNorm2d(ch)
        self.to_rgb = sn_conv2d(ch, 3, 3, padding=1, **pad)
        # The learned detail starts small, so a fresh generator is close to the
        # interpolated condition (a sensible upsampler) and learns what to add.
        self.detail_gain = nn.Parameter(torch.tensor(0.1))
        orthogonal_init(self)
        # The grid's amplitudes (grid_features): per pixel, 3 colours x 27 features. A
        # plain 1x1 convolution started at zero (spectral norm cannot normalise a zero
        # weight): a fresh generator draws no grid texture and learns where to.
        if grid:
            self.to_grid = nn.Conv2d(ch, 3 * GRID_FEATURES, 1)
            nn.init.zeros_(self.to_grid.weight)
            nn.init.zeros_(self.to_grid.bias)

    def temporal_receptive_field(self) -> int:
        """R: output frame j*tf + r depends on condition frames j-R .. j+R (see class doc)."""
        if self.inbetween == "matched" and self.time_factor > 1:
            return 2 * self.encoder_blocks + 1     # the aligned frame j+1, which reads j+1 +- 2*blocks
        return max(2 * self.encoder_blocks, 1)

    # z ~ N(0, I) or the truncated normal: the same as level 1's (it only needs z_dim).
    sample_latent = Level1Generator.sample_latent

    def forward(self, condition: torch.Tensor, z: torch.Tensor,
                labels: torch.Tensor | None = None, context: int = 0,
                first_frame: int = 0) -> torch.Tensor:
        b, _, t, h, w = condition.shape
        keep = t - 2 * context                                   # condition frames that get output
        if keep <= 0:
            raise ValueError(f"condition has {t} frames, too few for context {context} on each side")
        cond = torch.cat([z, self.embed(labels)], dim=1) if self.embed is not None else z
        # Encoder: the only part that mixes frames (the receptive field lives here).
        x = self.stem(condition)                                 # (B, C, t, h, w)
        for block in self.encoder:
            x = block(x, cond)
        tf, sub = self.time_factor, self.subframes
        matched = self.inbetween == "matched" and tf > 1
        # Matched in-between frames are made from the aligned frames on both sides, so
        # the frame after the last kept one is made too, where the condition has it
        # (and cut at the end); at a video's last frame there is none, and the last
        # in-between frames repeat it, as the base does.
        made = min(keep + 1, t - context) if matched else keep
        x = x[:, :, context:context + made]                      # (B, C, made, h, w): drop context
        x = self.to_subframes(F.relu(x))                         # (B, C*sub, made, h, w)
        # (B, C*sub, made, h, w) -> (B, C, sub, made, h, w) -> (B, C, made, sub, h, w) -> (B, C, made*sub, h, w)
        x = x.view(b, -1, sub, made, h, w).transpose(2, 3).flatten(2, 3)
        frames = made * sub                                      # sub = tf (learned) or 1 (matched)
        x = x.transpose(1, 2).flatten(0, 1)                      # (B*T, C, h, w): frame by frame
        frame_cond = cond.repeat_interleave(frames, dim=0)
        for block in self.up_blocks:
            x = block(x, frame_cond)                             # (B*T, C/2, 2h, 2w)
        x = F.relu(self.out_bn(x))
        detail = self.to_rgb(x)                                  # (B*T, 3, H, W)
        height, width = detail.shape[-2:]
        detail = detail.view(b, frames, 3, height, width)
        if self.grid:
            # + sum_k amplitude_k * feature_k: a texture finer than the condition's
            # pixels, placed on the grid (grid_features). first_frame: the condition
            # frame of this call's first kept frame, in the whole video.
            amplitudes = self.to_grid(x).view(b, frames, 3, GRID_FEATURES, height, width)
            features = grid_features(frames, height, width, first_frame, sub, x.device).to(x.dtype)
            detail = detail + (amplitudes * features[None, :, None]).sum(3)
        detail = detail.transpose(1, 2)                          # (B, 3, T, H, W)
        # Output = clamp(base + gain * detail, -1, 1): the base is the interpolated
        # condition, its in-between frames following the motion between condition
        # frames j and j+1 (motion_interpolate_condition; it needs frame j+1, so it
        # is cut after interpolation).
        # The detail is added in pixel space, so one unit of it moves a pixel by
        # `gain` whatever the pixel's colour: d output / d detail = gain. Adding it
        # under a tanh instead, tanh(atanh(base) + gain * detail), makes the step
        # gain * (1 - output^2): near the saturated colours of the data (|x| ~ 0.9-1)
        # a hundred times smaller, so the generator could not sharpen a bright
        # object's blurred edge nor move it to an in-between position, and it left
        # the interpolated cross-fade in place (tests/ check the step is the same
        # for every base colour).
        # Only the kept frames and the one after the last (the rest of the context is
        # for the encoder): the same base, without matching frames that are cut.
        kept = condition[:, :, context:context + keep + 1]
        if sub == 1:                                             # aligned frames only: bilinear c_j
            aligned = interpolate_condition(kept[:, :, :made], 1, self.space_factor) + self.detail_gain * detail
        else:
            base = motion_interpolate_condition(kept, tf, self.space_factor, self.motion_radius,
                                                global_motion=self.global_motion)[:, :, :frames]
            video = base + self.detail_gain * detail
            aligned = video[:, :, ::tf]                          # (B, 3, made, H, W): frames j*tf
        # Condition-aligned frame j*tf is condition frame j at a finer resolution: the
        # mean of each sf x sf block of it *is* the condition pixel under it (data.down
        # makes the condition that way). Learned freely, the frames came out with
        # those means off (about 0.04 on average at level 2), in colour as much as in
        # brightness: the colour fringes around objects. Here they are set exactly,
        # and the learned detail only decides how each block's colour spreads over
        # its pixels (tests/test_quality_causes.py).
        if self.exact_condition:
            aligned = self.give_back_condition(aligned, kept[:, :, :made])
        if matched:
            # In-between frames from the output's own aligned frames j*tf and (j+1)*tf,
            # by the same block matching as the base, now between full-resolution
            # frames (windows of 3x3 pixels, on frames blurred 2 wide): the objects in
            # a new frame are the sharp ones of the frames around it, moved to where
            # they are halfway. Made from the coarse condition, with learned detail on
            # top, the in-between frames were blurred where the aligned ones were not,
            # and the learned detail did not know where the base's edges were
            # (docs/quality.md, section 12). Frames j*tf come back unchanged.
            video = motion_interpolate_condition(aligned, tf, 1, self.motion_radius,
                                                 global_motion=self.global_motion)
        elif tf > 1:                                             # learned: put the aligned frames back
            video = torch.stack([aligned] + [video[:, :, r::tf] for r in range(1, tf)], 3).flatten(2, 3)
        else:
            video = aligned
        return video[:, :, :keep * tf].clamp(-1.0, 1.0)

    def give_back_condition(self, frames: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, t, H, W) with each sf x sf block's mean moved to the condition
        pixel under it: frames - up(pool(frames)) + up(condition), up repeating a pixel
        over its block. Keeps what varies inside a block; down(result) == condition."""
        sf = self.space_factor
        if sf == 1:
            return condition                                     # a 1x1 block is its condition pixel
        means = down(frames, 1, sf)                              # (B, 3, t, h/sf, w/sf)
        return frames + (condition - means).repeat_interleave(sf, dim=-2).repeat_interleave(sf, dim=-1)


def build_generator(config: dict, num_classes: int) -> UpsampleGenerator:
    """Rebuild the generator from a checkpoint's config (used by sample.py)."""
    spec = level_spec(config["preset"], config["level"])
    return UpsampleGenerator(spec.time_factor, spec.space_factor, config["z_dim"], config["g_ch"],
                             config["encoder_blocks"], num_classes if config["class_conditional"] else 0,
                             config.get("padding", "zeros"), config.get("motion_radius", 0),
                             config.get("exact_condition", False), config.get("inbetween", "learned"),
                             config.get("global_motion", False),   # False: written before the flag
                             config.get("grid_features", False))


# ----------------------------------------------------------------------------------
# Sampling with a trained level: the whole video in windows of the training shape.
# sample.py chains these over all levels; --cond-from (below) runs them for the
# trained levels under this one.
# ----------------------------------------------------------------------------------

def window_starts(frames: int, window: int) -> list[int]:
    """First condition frame of each window: 0, w, 2w, ..., and a last one clamped to
    frames - w when w does not divide the length (it overlaps its neighbour, whose
    frames are kept: the clamped window only adds the frames after it)."""
    window = min(window, frames)
    starts = list(range(0, frames - window + 1, window))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def run_window(generator: nn.Module, piece: torch.Tensor, z: torch.Tensor, labels, context: int,
               first_frame: int) -> torch.Tensor:
    """generator(piece, z, labels, context=context) for the window whose first kept
    condition frame is `first_frame` of the video; a generator with --grid-features
    is told it, to draw its grid texture in the video's phase (grid_features)."""
    if getattr(generator, "grid", False):
        return generator(piece, z, labels, context=context, first_frame=first_frame)
    return generator(piece, z, labels, context=context)


def upsample(generator: nn.Module, condition: torch.Tensor, z: torch.Tensor,
             labels: torch.Tensor | None = None, context: int = 0, window: int | None = None,
             on_window=None) -> torch.Tensor:
    """Run an upsampling level over a whole condition video.

    condition (B, 3, t, h, w) -> (B, 3, t*tf, h*sf, w*sf), on the condition's device
    (the host, in `generate`). window=None: one call on the whole padded video.
    window=w: calls on windows of w condition frames plus `context` frames each side;
    only the window is moved to the generator's device, so the memory there is the
    same for any t. With context >= the generator's temporal receptive field R both
    give the same video (see UpsampleGenerator: every window then sees all the
    condition frames its output depends on; tests/test_sample.py checks it).
    on_window() is called after every generator call (the progress bar).
    """
    device, host = z.device, condition.device
    tf, sf = generator.time_factor, generator.space_factor
    b, c, t, h, w = condition.shape
    padded = pad_condition(condition, context)                   # (B, 3, t + 2K, h, w)
    if window is None:
        out = generator(padded.to(device), z, labels, context=context).float().to(host)
        if on_window:
            on_window()
        return out                                               # (B, 3, t*tf, H, W)
    window = min(window, t)
    out = torch.empty(b, c, t * tf, h * sf, w * sf, device=host)  # the whole video
    done = 0                                                     # condition frames with output
    for j0 in window_starts(t, window):
        # Padded frames j0 .. j0 + w + 2K are condition frames j0 - K .. j0 + w + K:
        # the window and its context (edge frames replicated past the ends).
        # (contiguous: a time slice is a strided view, and CPU convolutions on strided
        # inputs take a path several times slower.)
        piece = padded[:, :, j0:j0 + window + 2 * context].to(device).contiguous()
        result = run_window(generator, piece, z, labels, context, j0).float().to(host)   # (B, 3, w*tf, H, W)
        # Only the frames after `done`: a clamped last window leaves its neighbour's
        # frames as they are (upsample_chunks, which streams, can do the same).
        out[:, :, done * tf:(j0 + window) * tf] = result[:, :, (done - j0) * tf:]
        done = j0 + window
        if on_window:
            on_window()
    return out


def freeze(generator: nn.Module) -> nn.Module:
    """Eval mode, no gradients, and spectral norm baked into the weights.

    eval(): batch norm uses its running statistics, so a video does not depend on
    the others in its batch, and spectral norm stops its power iteration. With the
    estimate fixed, W / sigma is the same at every call: compute it once
    (leave_parametrized=True keeps the normalised weight) instead of per forward.
    """
    generator.eval().requires_grad_(False)
    for module in generator.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return generator


def trained_spec(preset: str, state: dict) -> LevelSpec:
    """The preset's LevelSpec with the crop and context this level was trained with
    (an upsampling level's config may override them; None means the preset's)."""
    spec = level_spec(preset, state["level"])
    config = state["config"]
    crop = config.get("crop_frames") or spec.crop_frames
    context = spec.context if config.get("context") is None else config["context"]
    return dataclasses.replace(spec, crop_frames=crop, context=context)


def load_ema_generator(state: dict, path) -> nn.Module:
    """A checkpoint's EMA generator (the one every sample comes from), rebuilt from the
    config the checkpoint stores and frozen (see `freeze`): level 1's or an upsampling
    level's, as the checkpoint says. state: what training.load_checkpoint returns."""
    build = level1.build_generator if state["level"] == 1 else build_generator
    generator = build(state["config"], state["num_classes"])
    load_state(generator, state["models"]["ema_generator"], "EMA generator", path)
    return freeze(generator)


# ----------------------------------------------------------------------------------
# Partial views, and --cond-from's bank of previous-level samples.
# ----------------------------------------------------------------------------------

def crop_settings(cfg: UpsampleConfig):
    """The level's spec and its partial view (crop frames, context, crop size), checked."""
    if cfg.level < 2:
        raise UserError(
            f"--level {cfg.level}: upsample_level.py trains levels 2 and up; "
            "level 1 is trained by `python level1.py`.")
    if cfg.level > num_levels(cfg.preset):
        raise UserError(f"--level {cfg.level}: preset {cfg.preset!r} has only "
                        f"{num_levels(cfg.preset)} levels")
    spec = level_spec(cfg.preset, cfg.level)
    crop = spec.crop_frames if cfg.crop_frames is None else cfg.crop_frames
    context = spec.context if cfg.context is None else cfg.context
    condition_frames = spec.frames // spec.time_factor
    if not 0 < crop <= spec.frames or crop % spec.time_factor:
        raise UserError(f"--crop-frames {crop}: must be a multiple of the time factor "
                        f"{spec.time_factor} between {spec.time_factor} and level {cfg.level}'s "
                        f"{spec.frames} frames")
    if not 0 <= context <= condition_frames:
        raise UserError(f"--context {context}: must be between 0 and the condition's "
                        f"{condition_frames} frames")
    if cfg.cond_from and cfg.class_conditional:
        raise UserError("--cond-from with --class-conditional is not supported: the sampled "
                        "conditions have no real labels to pair with; drop one of the two")
    crop_size = spec.crop_size if cfg.crop_size is None else (cfg.crop_size or None)
    if crop_size is not None and (crop_size > spec.size or crop_size % spec.space_factor):
        raise UserError(f"--crop-size {crop_size}: must be a multiple of {spec.space_factor} "
                        f"no larger than {spec.size}")
    return spec, crop, context, crop_size


@torch.no_grad()
def previous_level_bank(cfg: UpsampleConfig, context: int, device) -> torch.Tensor:
    """--cond-from: a bank of level-(l-1) videos *generated* by the trained levels
    below, edge-padded by the context: (M, 3, T_{l-1} + 2K, h, w) on the host.

    Training on real conditions only leaves a train/test mismatch: at sampling time
    the condition is the previous level's output, with its own flaws. Conditioning
    part of the batch on real samples of that level lets this one learn to cope.
    The bank is sampled once (the previous levels are frozen), with the EMA
    generators, the way sample.py chains them: level 1 from noise, then each
    upsampling level over the whole video in the windows it was trained on
    (`upsample`). Its noise is drawn from one generator seeded with --seed + 1
    (sample.py gives each video its own stream instead; the bank needs no more).
    Levels 1 .. l-2 are read from level1/, level2/, ... next to the --cond-from folder.
    """
    below = Path(cfg.cond_from)
    paths = [below.parent / f"level{level}" / "ckpt.pt" for level in range(1, cfg.level - 1)]
    paths.append(below / "ckpt.pt")                    # level l-1: the --cond-from folder
    generators, specs = [], []
    for level, path in enumerate(paths, start=1):
        if not path.is_file():
            raise UserError(
                f"--cond-from {below}: level {level} is missing from the chain below level "
                f"{cfg.level}: {path} does not exist (levels 1 .. {cfg.level - 2} are read from "
                f"level1/, level2/, ... next to the --cond-from folder). Train it with "
                f"`{training_command(level)} --preset {cfg.preset} --out {path.parent}`.")
        state = load_checkpoint(path, preset=cfg.preset)
        if state["level"] != level:
            raise UserError(
                f"--cond-from {below}: {path} holds level {state['level']}, but level {level} is "
                f"expected there: level {level} is missing from the chain below level "
                f"{cfg.level}, which trains on samples of level {cfg.level - 1}. Pass the run "
                f"folder of level {cfg.level - 1} (e.g. {below.parent / f'level{cfg.level - 1}'}).")
        generators.append(load_ema_generator(state, path).to(device))
        specs.append(trained_spec(cfg.preset, state))
    noise = torch.Generator().manual_seed(cfg.seed + 1)
    videos = []
    for start in range(0, cfg.cond_bank, 8):            # 8 videos at a time, as sample.py
        n = min(8, cfg.cond_bank - start)
        # Lower levels trained with --class-conditional need a class: a random one.
        labels = (torch.randint(generators[0].num_classes, (n,), generator=noise).to(device)
                  if generators[0].num_classes else None)
        video = generators[0](generators[0].sample_latent(n, generator=noise), labels)
        video = video.float().cpu()                                   # (n, 3, T_1, S_1, S_1)
        for g, spec in zip(generators[1:], specs[1:]):
            video = upsample(g, video, g.sample_latent(n, generator=noise),
                             labels if g.num_classes else None, context=spec.context,
                             window=spec.crop_frames // spec.time_factor)  # (n, 3, T_l, S_l, S_l)
        videos.append(video)
    return pad_condition(torch.cat(videos), context)


def bank_crops(bank: torch.Tensor, count: int, frames: int, size: int, space_factor: int) -> torch.Tensor:
    """`count` random partial-view conditions from the bank, like data.level_example
    cuts them from real clips: `frames` = crop/tf + 2K padded frames starting at a
    random frame, and a random `size`-pixel square (the crop's condition) in space.
    Uses torch's global RNG, which the training loop re-seeds every step."""
    m, _, t, h, _ = bank.shape
    crops = []
    for _ in range(count):
        i = int(torch.randint(m, ()))
        j0 = int(torch.randint(t - frames + 1, ()))
        y, x = (int(torch.randint((h - size) // space_factor + 1, ())) * space_factor for _ in range(2))
        crops.append(bank[i, :, j0:j0 + frames, y:y + size, x:x + size])
    return torch.stack(crops)                                 # (count, 3, frames, size, size)


def condition_error(video: torch.Tensor, condition: torch.Tensor, spec) -> float:
    """How far the output strays from its condition: mean |down(G(c, z)) - c|.

    A level that follows its input (same objects in the same places) scores close
    to 0; one that ignores it scores like an unrelated video (about 0.3-0.5 here).
    """
    return float((down(video, spec.time_factor, spec.space_factor) - condition).abs().mean())


def detail(video: torch.Tensor) -> float:
    """Fine detail in a video: the mean absolute Laplacian of its frames,
    |4 x[i, j] - x[i-1, j] - x[i+1, j] - x[i, j-1] - x[i, j+1]|, averaged. Blurry
    (interpolated) videos score low, sharp edges and texture score high."""
    frames = video.transpose(1, 2).flatten(0, 2).unsqueeze(1)      # (B*T*C, 1, H, W)
    kernel = torch.tensor([[0., -1., 0.], [-1., 4., -1.], [0., -1., 0.]]).view(1, 1, 3, 3)
    return float(F.conv2d(frames, kernel.to(frames)).abs().mean())


def matching_condition(condition: torch.Tensor, context: int) -> torch.Tensor:
    """The condition frames that the output crop covers: the window minus its context.
    (B, 3, crop/tf + 2K, h, w) -> (B, 3, crop/tf, h, w)"""
    return condition[:, :, context:condition.shape[2] - context]


# ----------------------------------------------------------------------------------
# The losses: level 1's three functions (level1.py), with the matching discriminator.
# ----------------------------------------------------------------------------------

def matching_pair(condition: torch.Tensor, video: torch.Tensor, labels, context: int,
                  generated: int = 0):
    """What D_M scores for a batch of output crops: (c, x, labels), where c is the
    condition frames each crop covers (its window without the context).

    The real pair is matching_pair(condition, real) and the fake pair
    matching_pair(condition, G(condition, z)): both carry the SAME condition, so
    the only thing that tells them apart is whether the video agrees with it.
    generated: with --cond-from, the last `generated` examples of G's batch were
    conditioned on previous-level samples, not on `condition`; D_M judges only the
    first B - generated, whose condition is real (it must learn agreement, not how
    to spot a generated condition).
    condition (B, 3, crop/tf + 2K, h, w), video (B, 3, crop, H, W)
      -> (n, 3, crop/tf, h, w), (n, 3, crop, H, W), (n,) or None;  n = B - generated
    """
    n = video.shape[0] - generated
    return (matching_condition(condition[:n], context), video[:n],
            labels[:n] if labels is not None else None)


def discriminator_scores(discriminators: dict, condition, video, labels, context: int,
                         generated: int = 0) -> dict:
    """Each discriminator's scores of a batch of output crops: D_S(x) and D_T(x), (B,),
    as at level 1; and, when the level has one, D_M(c, x) on `matching_pair`, (n,)."""
    scores = {"spatial": discriminators["spatial"](video, labels),
              "temporal": discriminators["temporal"](video, labels)}
    if "matching" in discriminators:
        scores["matching"] = discriminators["matching"](
            *matching_pair(condition, video, labels, context, generated))
    return scores


def discriminator_loss(discriminators: dict, weights: dict, condition, real, fake, labels,
                       context: int, generated: int = 0):
    """The discriminators' hinge loss, weighted, and the numbers the log shows of it:

        L_D = sum_D w_D * ( E[relu(1 - D(real))] + E[relu(1 + D(fake))] ),  D in {D_S, D_T, D_M}

    with D_M's real and fake inputs the pairs (c, x) and (c, G(c', z)) of
    `matching_pair`. real, fake (B, 3, crop, H, W); fake computed without gradients.
    -> (L_D, {d_<name>_loss, d_<name>_real, d_<name>_fake: scalars}).
    """
    real_scores = discriminator_scores(discriminators, condition, real, labels, context, generated)
    fake_scores = discriminator_scores(discriminators, condition, fake, labels, context, generated)
    loss = sum(weights[name] * hinge_d_loss(real_scores[name], fake_scores[name]) for name in real_scores)
    return loss, discriminator_stats(real_scores, real_scores.values(), fake_scores.values())


def generator_loss(discriminators: dict, weights: dict, condition, fake, labels, context: int,
                   generated: int = 0) -> torch.Tensor:
    """The generator's hinge loss:

        L_G = -sum_D w_D * E[D(fake)],  D in {D_S, D_T, D_M},  D_M(fake) = D_M(c, G(c, z))

    The matching term rewards G only for outputs that D_M accepts as the
    high-resolution version of *their own* condition, so G cannot ignore its input
    and still fool D_M. fake = G(condition, z) with gradients; the discriminators
    are frozen and unwrapped (as at level 1: level1.generator_loss).
    """
    fake_scores = discriminator_scores(discriminators, condition, fake, labels, context, generated)
    return sum(weights[name] * hinge_g_loss(scores) for name, scores in fake_scores.items())


def step_flops(generator, discriminators: dict, condition, real, labels,
               context: int, d_steps: int, generated: int = 0) -> int:
    """FLOPs of one training step (training.count_flops): d_steps D updates and one G
    update, forward and backward, on a batch of partial views of these shapes; the
    scores' sum stands in for the hinge losses, and the models are copies (see
    level1.step_flops)."""
    generator, discriminators = copy.deepcopy(generator), copy.deepcopy(discriminators)
    z = torch.randn(real.shape[0], generator.z_dim, device=real.device)

    def scores(video):
        return discriminator_scores(discriminators, condition, video, labels, context, generated).values()

    def one_step():
        for _ in range(d_steps):                # D: scores of real and of G(c, z) (no grad for G)
            with torch.no_grad():
                fake = generator(condition, z, labels, context=context)
            sum(s.sum() for s in [*scores(real), *scores(fake)]).backward()
        sum(s.sum() for s in scores(generator(condition, z, labels, context=context))).backward()   # G

    return count_flops(one_step)


# ----------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------

def main(argv=None) -> None:
    cfg = parse_config(UpsampleConfig, argv, __doc__)
    spec, crop, context, crop_size = crop_settings(cfg)
    dist = setup_distributed(cfg.device)
    device = dist.device
    out = Path(cfg.out or f"runs/{cfg.preset}/level{cfg.level}")
    ckpt_path = out / "ckpt.pt"
    local_batch = per_rank_batch(cfg.batch_size, dist.world_size)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed, dist.rank)
    if dist.is_main:
        prepare_out_dir(out)
        if not cfg.resume and ckpt_path.exists():
            set_aside_previous_checkpoint(ckpt_path)

    # Data: partial views. target (B, 3, crop, H, W); condition (B, 3, crop/tf + 2K, h, w).
    base = make_dataset(cfg.data, cfg.data_root, cfg.preset, cfg.level, seed=cfg.seed)
    dataset = LevelDataset(base, cfg.preset, cfg.level, seed=cfg.seed, crop_frames=crop,
                           context=context, crop_size=crop_size)
    num_classes = base.num_classes if cfg.class_conditional else 0
    size = crop_size or spec.size

    torch.manual_seed(cfg.seed)                     # identical initial weights on every rank
    generator = UpsampleGenerator(spec.time_factor, spec.space_factor, cfg.z_dim, cfg.g_ch,
                                  cfg.encoder_blocks, num_classes, cfg.padding, cfg.motion_radius,
                                  cfg.exact_condition, cfg.inbetween, cfg.global_motion,
                                  cfg.grid_features).to(device)
    discriminators = {
        "spatial": SpatialDiscriminator(3, cfg.d_ch, size, cfg.k_frames, num_classes).to(device),
        "temporal": TemporalDiscriminator(3, cfg.d_ch, size, num_classes,
                                          pool_input=cfg.temporal_pool).to(device),
    }
    if cfg.matching:
        discriminators["matching"] = MatchingDiscriminator(3, cfg.d_ch, size, num_classes,
                                                           pool_input=cfg.matching_pool).to(device)
    weights = {"spatial": cfg.spatial_weight, "temporal": cfg.temporal_weight,
               "matching": cfg.matching_weight}
    ema_generator = copy.deepcopy(generator).eval().requires_grad_(False)
    d_params = [p for d in discriminators.values() for p in d.parameters()]
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.g_lr, betas=(cfg.beta1, cfg.beta2))
    d_opt = torch.optim.Adam(d_params, lr=cfg.d_lr, betas=(cfg.beta1, cfg.beta2))
    g_scaler, d_scaler = make_grad_scaler(device, amp_dtype), make_grad_scaler(device, amp_dtype)

    models = {"generator": generator, "ema_generator": ema_generator, **discriminators}
    optimizers = {"generator": g_opt, "discriminator": d_opt}
    step = 0
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, level=cfg.level, preset=cfg.preset)
        ckpt["config"].setdefault("temporal_pool", True)   # written before these flags existed
        ckpt["config"].setdefault("padding", "zeros")
        ckpt["config"].setdefault("motion_radius", 0)
        ckpt["config"].setdefault("exact_condition", False)
        ckpt["config"].setdefault("inbetween", "learned")
        ckpt["config"].setdefault("global_motion", False)
        ckpt["config"].setdefault("grid_features", False)
        check_architecture(ckpt["config"], cfg, ARCHITECTURE_FIELDS, ckpt_path)
        step = restore_checkpoint(ckpt, models, optimizers, ckpt_path)
        if dist.is_main:
            print(f"resumed from {ckpt_path} at step {step}")
    # --cond-from: the last `generated` of G's conditions in a batch are previous-level samples.
    generated = local_batch // 2 if cfg.cond_from else 0

    # A fixed batch of real training crops (far from the positions training uses),
    # for the EMA generator's batch-norm statistics: fixed, so a resumed run computes
    # exactly the statistics an uninterrupted one does.
    stats_batch = torch.utils.data.default_collate(
        [dataset[2**62 + i] for i in range(local_batch)])
    stats_condition = stats_batch["condition"].to(device)
    stats_labels = stats_batch["label"].to(device) if num_classes else None
    # MFU in the log line: the FLOPs of one step (counted once, on copies of the plain
    # models, with batches of the training shapes) and the device's peak FLOP/s.
    if dist.is_main:
        flops_per_step = step_flops(generator, discriminators, stats_condition,
                                    stats_batch["target"].to(device), stats_labels, context,
                                    cfg.d_steps, generated)
        peak = peak_flops(device, amp_dtype)

    if dist.world_size > 1:   # several GPUs: see level1.py and training.wrap_ddp
        generator = wrap_ddp(generator, device, sync_batch_norm=True)
        discriminators = {name: wrap_ddp(d, device) for name, d in discriminators.items()}
        models.update(generator=generator, **discriminators)
    if cfg.compile:
        generator = torch.compile(generator)
        discriminators = {name: torch.compile(d) for name, d in discriminators.items()}
    # The G update calls the discriminators unwrapped: see level1.generator_loss.
    plain_discriminators = {name: unwrap(d) for name, d in discriminators.items()}

    batches = make_loader(dataset, local_batch, start_batch=step * cfg.d_steps,
                          num_workers=cfg.num_workers, rank=dist.rank, world_size=dist.world_size)
    # Fixed examples for the sample grids: whole real clips, so the samples show the
    # level applied to a full condition video (not only a crop), next to it.
    sample_gen = torch.Generator().manual_seed(cfg.seed)
    sample_real = torch.stack([base[i][0] for i in range(cfg.num_samples)])    # (N, 3, T, H, W)
    sample_labels = torch.tensor([base[i][1] for i in range(cfg.num_samples)]).to(device) if num_classes else None
    sample_condition = down(sample_real, spec.time_factor, spec.space_factor)   # (N, 3, T/tf, h, w)
    sample_z = unwrap(generator).sample_latent(cfg.num_samples, generator=sample_gen)
    evaluator = None
    if cfg.eval_every and dist.is_main:   # the two-sample test (+ FVD with --i3d)
        evaluator = TrainingEvaluator(base, cfg.eval_videos, device, cfg.i3d, seed=cfg.seed)
    bank = previous_level_bank(cfg, context, device) if cfg.cond_from else None

    def generator_conditions(condition):
        """G's conditions: the real ones, or with --cond-from the last `generated` of
        them replaced by crops of previous-level samples of the same shape."""
        if not generated:
            return condition
        _, _, frames, size, _ = condition.shape
        fake_c = bank_crops(bank, generated, frames, size, spec.space_factor).to(device)
        return torch.cat([condition[:local_batch - generated], fake_c])

    def refresh_ema_statistics():
        # Batch-norm statistics measured with the EMA weights themselves (see
        # training.standing_statistics): the fixed crops, with fresh noise each batch.
        standing_statistics(ema_generator, lambda g: g(
            stats_condition, torch.randn(local_batch, cfg.z_dim, device=device), stats_labels,
            context=context))

    def save(step):
        # ckpt.pt: everything needed to resume (training.checkpoint_state), written atomically.
        save_checkpoint(ckpt_path, checkpoint_state(cfg, cfg.level, step, num_classes, models, optimizers))

    def write_sample_grid(step):
        # Whole videos: G over the full condition, padded with the context it expects.
        with torch.no_grad():
            padded = pad_condition(sample_condition, context).to(device)
            videos = ema_generator(padded, sample_z, sample_labels, context=context).float().cpu()
        # Condition upsampled with nearest neighbour (what the level was given) | output.
        nearest = sample_condition.repeat_interleave(spec.time_factor, 2)
        nearest = nearest.repeat_interleave(spec.space_factor, 3).repeat_interleave(spec.space_factor, 4)
        pairs = torch.cat([nearest, videos], dim=4)            # side by side along the width
        paths = write_samples(out, step, video_grid(pairs, nrow=1), fps=4 * spec.time_factor)
        # Two numbers a reader can check the samples against (samples/step_XXXXXX.json):
        # does the output follow its condition, and how much fine detail does it have?
        report = {"step": step, "condition_error": condition_error(videos, sample_condition, spec),
                  "detail": {"output": detail(videos), "real": detail(sample_real),
                             "nearest_condition": detail(nearest)}}
        paths[0].with_suffix(".json").write_text(json.dumps(report, indent=1))

    # Rank 0 writes: the progress bar, log.jsonl (and TensorBoard), samples, checkpoints.
    progress = tqdm(total=cfg.steps, initial=step, disable=not dist.is_main,
                    desc=f"level {cfg.level}", dynamic_ncols=True)
    tensorboard = tensorboard_writer(cfg, out, dist)        # None without --tensorboard
    crops_per_step = cfg.batch_size * (cfg.d_steps + 1)     # d_steps D batches + one G batch
    logged_step, logged_time = step, time.time()
    with StopRequest() as stop:     # Ctrl-C / SIGTERM: finish the step, save, exit with 130
        while step < cfg.steps:
            torch.manual_seed(step_seed(cfg.seed, dist.rank, step))   # see training.step_seed
            # ---- Discriminators: d_steps updates on fresh partial views. --------------
            # L_D = sum_D w_D * ( E[relu(1 - D(real))] + E[relu(1 + D(fake))] ), D in {S, T, M}
            for _ in range(cfg.d_steps):
                batch = next(batches)
                real = batch["target"].to(device, non_blocking=True)         # (B, 3, crop, H, W)
                condition = batch["condition"].to(device, non_blocking=True)  # (B, 3, crop/tf+2K, h, w)
                labels = batch["label"].to(device) if num_classes else None
                z = torch.randn(local_batch, cfg.z_dim, device=device)
                g_condition = generator_conditions(condition)
                with autocast(device, amp_dtype):
                    with torch.no_grad():
                        fake = generator(g_condition, z, labels, context=context)
                    loss_d, d_stats = discriminator_loss(discriminators, weights, condition, real, fake,
                                                         labels, context, generated)
                d_opt.zero_grad(set_to_none=True)
                d_scaler.scale(loss_d).backward()
                d_scaler.step(d_opt)
                d_scaler.update()

            # ---- Generator: L_G = -sum_D w_D * E[D(fake)], D_M on (c, G(c, z)). --------
            for p in d_params:
                p.requires_grad_(False)
            # G is conditioned on the last real condition batch, with fresh noise.
            z = torch.randn(local_batch, cfg.z_dim, device=device)
            with autocast(device, amp_dtype):
                fake = generator(g_condition, z, labels, context=context)
                loss_g = generator_loss(plain_discriminators, weights, condition, fake, labels,
                                        context, generated)
            g_opt.zero_grad(set_to_none=True)
            g_scaler.scale(loss_g).backward()
            g_scaler.step(g_opt)
            g_scaler.update()
            for p in d_params:
                p.requires_grad_(True)
            check_finite(step, ckpt_path, loss_d=loss_d, loss_g=loss_g)

            # ---- EMA of G: copy during warm-up, then average. -------------------------
            update_ema(ema_generator, unwrap(generator), cfg.ema_decay if step >= cfg.ema_start else 0.0)
            step += 1                   # from here on, `step` counts completed steps
            last = step == cfg.steps

            # ---- Log, evaluate, samples, checkpoint: rank 0 only. ---------------------
            if dist.is_main:
                progress.update(1)
                evaluate_now = evaluator is not None and step % cfg.eval_every == 0
                samples_now = bool(cfg.sample_every and step % cfg.sample_every == 0) or last
                save_now = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or last
                if evaluate_now or samples_now or save_now:
                    # One refresh of the EMA generator's batch-norm statistics serves all
                    # three: the model scored, shown and saved at this step is the same.
                    refresh_ema_statistics()
                if step % cfg.log_every == 0 or last or evaluate_now:
                    seconds = max(time.time() - logged_time, 1e-9)
                    steps_done, logged_step, logged_time = step - logged_step, step, time.time()
                    record = {"step": step, "loss_d": loss_d.item(), "loss_g": loss_g.item(),
                              "crops_per_s": steps_done * crops_per_step / seconds,
                              # MFU: FLOPs done since the last line / seconds / peak FLOP/s
                              "mfu": steps_done * flops_per_step / seconds / peak,
                              **{name: value.item() for name, value in d_stats.items()}}
                    if evaluate_now:
                        # Score the EMA generator (statistics just refreshed); if it is the
                        # best so far, `save` keeps exactly that model as ckpt_best.pt.
                        record.update(evaluator.evaluate_generator(ema_generator, out, step, save))
                    log_line(out, record, progress, tensorboard, unit="crops")
                if samples_now:
                    write_sample_grid(step)
                if save_now:
                    save(step)

            # ---- Ctrl-C: every rank stops after this same step; rank 0 saves it. ------
            if stop.should_stop(device):
                if dist.is_main:
                    if not save_now:     # else this step's checkpoint is already written
                        refresh_ema_statistics()
                        save(step)       # `step` steps are complete: it resumes exactly
                    progress.close()
                    print(f"interrupted: saved {ckpt_path} at step {step}; "
                          "run the same command to resume")
                cleanup_distributed()
                raise SystemExit(130)

    progress.close()
    if tensorboard is not None:
        tensorboard.close()
    if dist.is_main:
        print(f"done: {ckpt_path} (step {step}), samples in {out / 'samples'}")
        release_out_dir(out)
    cleanup_distributed()


if __name__ == "__main__":
    run_main(main)
