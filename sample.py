"""Sampling from a trained HVG hierarchy: chain the levels into full-resolution videos.

Each level of HVG is trained on its own (`level1.py`, `upsample_level.py`). This
file puts them back together. Level 1 generates a short, coarse outline of the
whole video from noise; every later level upsamples the previous level's video in
time and space:

    z_1 ~ N(0, I) -> level 1 (RNN unrolled T_1 frames)   (N, 3, T_1, S_1, S_1)
    level 2 (condition = level 1's video, noise z_2)       (N, 3, T_1*tf_2, S_1*sf_2, ...)
    level 3 (condition = level 2's video, noise z_3)       (N, 3, T_1*tf_2*tf_3, ...)

The `tiny` preset goes 8x16x16 -> 16x32x32 -> 32x64x64; Kinetics-600 ends at
48 frames of 256x256.

Longer videos. Level 1 is a recurrent network, so it can be unrolled for more
frames than it was trained on; `--frames` asks for the FINAL length, and level 1
is unrolled to ceil(frames / (tf_2 * tf_3 * ...)) frames (the result is trimmed).

Windowed sampling. An upsampling level was trained on partial views: a crop of
`crop_frames` output frames, seeing the matching `crop_frames / tf` condition
frames plus `context` condition frames on each side. At sampling time it runs over
the video in the same kind of window, one after another:

    padded = pad_condition(c, K)                       (N, 3, t + 2K, h, w)
    for j0 = 0, w, 2w, ...   (w = crop_frames / tf; the last window is clamped to t - w)
        out[:, :, j0*tf : (j0+w)*tf] = G(padded[:, :, j0 : j0 + w + 2K], z, context=K)

so the memory a level needs does not grow with the video's length (the videos
themselves are kept in host memory; only one window at a time is on the device).
If G's output frame depends only on condition frames within R of its own (R =
G.temporal_receptive_field()), then with K >= R every window sees everything its
output depends on, and the windowed result EQUALS running G on the whole padded
video at once (`--whole`), up to float rounding. tests/test_sample.py checks both.

Commands:

    python sample.py                                  # runs/tiny/level{1,2,3}/ckpt.pt -> samples/
    python sample.py --num 16 --frames 128            # 4x the tiny preset's 32 frames
    python sample.py --runs runs/kinetics600 --class 5 --truncation 1.0 --device cuda
    python sample.py --ckpt a/ckpt.pt b/ckpt.pt c/ckpt.pt --out my_samples
    python sample.py --levels 2                       # stop after level 2
    python sample.py --whole                          # each level over the whole video at once

It writes into --out (default samples/): video_000.mp4, video_001.mp4, ... (one
per video), grid.mp4 and grid.gif (all videos tiled), and levels.png (the first
video at every level, coarse to fine, one row per level), and prints the paths.

From Python (metrics.py, bench.py):

    chain = load_chain(runs="runs/tiny", device="cuda")
    videos = generate(chain, num=64, seed=0)          # (64, 3, 32, 64, 64) in [-1, 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from tqdm import tqdm

import level1
import upsample_level
from data import (PRESETS, LevelSpec, UserError, contact_sheet, level_spec, num_levels,
                  pad_condition, video_grid, write_image, write_video)
import flags
from training import (build_parser, hold_out_dir, load_checkpoint, load_state, option,
                      release_out_dir, resolve_device, run_main)


# ----------------------------------------------------------------------------------
# Configuration (the command line is generated from this dataclass).
# ----------------------------------------------------------------------------------

@dataclass
class SampleConfig:
    # Which checkpoints.
    runs: str | None = option(None, "folder holding level1/ckpt.pt, level2/ckpt.pt, ... "
                                    "(default: runs/<preset>)")
    ckpt: list[str] | None = option(None, "explicit checkpoint files, level 1 first "
                                          "(instead of --runs)", nargs="+")
    preset: str | None = option(None, "shape preset (default: the checkpoints' own; "
                                      "tiny when there are none)")
    levels: int | None = option(None, "stop after this level (default: all of the preset's levels)",
                                "[1, inf)")
    # What to sample.
    num: int = option(16, "number of videos", "[1, inf)")
    seed: int = option(0, "seed: video i's noise depends only on (seed, i)", "[0, 2**32)")
    frames: int | None = option(None, "final number of frames (default: the finest level's "
                                      "training length; more unrolls level 1 further)", "[1, inf)")
    truncation: float | None = option(None, "truncation trick: resample latent entries with "
                                            "|z| > this (e.g. 1.0; default: off)", "(0, inf)")
    label: int | None = option(None, "class of every video, for class-conditional models "
                                     "(also --class; default: a random class per video)", "[0, inf)")
    # How.
    batch_size: int = option(8, "videos generated at once", "[1, inf)")
    device: str = option("auto", "auto, cpu or cuda")
    whole: bool = option(False, "run each upsampling level over the whole video at once "
                                "instead of in windows (memory grows with the length)")
    # Output.
    out: str = option("samples", "output folder")
    fps: int | None = option(None, "frames per second of the written videos "
                                   "(default: 4 x the total time factor, level 1 at 4 fps)", "[1, inf)")
    sheet_frames: int = option(16, "columns of the levels.png contact sheet", "[1, inf)")
    progress: bool = option(True, "show a progress bar")


def build_sample_parser() -> flags.ArgumentParser:
    """training.build_parser plus a `--class` alias: `class` is a Python keyword, so
    the dataclass field is called `label`. Its range is --label's."""
    parser = build_parser(SampleConfig, __doc__)
    interval = next(f for f in dataclasses.fields(SampleConfig) if f.name == "label").metadata["range"]
    parser.add_argument("--class", dest="label", default=argparse.SUPPRESS,
                        type=flags.ranged("--class", int, interval, "class of every video"),
                        help=flags.ranged_help("same as --label", interval))
    return parser


def parse_args(argv=None) -> SampleConfig:
    """Command line -> SampleConfig, every value checked against its range."""
    return SampleConfig(**vars(build_sample_parser().parse_args(argv)))


# ----------------------------------------------------------------------------------
# The chain of trained levels.
# ----------------------------------------------------------------------------------

@dataclass
class Chain:
    """The EMA generators of levels 1..L (eval mode, no gradients) and their shapes.

    specs[l-1] is level l's LevelSpec with `crop_frames` and `context` as the level
    was trained (its checkpoint's config), which is what windowed sampling uses.
    """
    preset: str
    specs: list[LevelSpec]
    generators: list[nn.Module]
    paths: list[Path]
    steps: list[int]
    num_classes: int                  # 0: not class-conditional
    device: torch.device

    @property
    def levels(self) -> int:
        return len(self.generators)

    @property
    def time_factor(self) -> int:
        """Final frames per level-1 frame: tf_2 * tf_3 * ... (1 for level 1 alone)."""
        return math.prod(spec.time_factor for spec in self.specs[1:])

    @property
    def frames(self) -> int:
        """The final level's training length: the default --frames."""
        return self.specs[-1].frames

    @property
    def size(self) -> int:
        return self.specs[-1].size


def train_command(preset: str, level: int, runs: Path | None = None) -> str:
    """The command that trains `level` into `runs/level<level>` (the default folder)."""
    script = "python level1.py" if level == 1 else f"python upsample_level.py --level {level}"
    command = f"{script} --preset {preset}"
    if runs is not None and Path(runs) != Path(f"runs/{preset}"):
        command += f" --out {Path(runs) / f'level{level}'}"
    return command


def _check_levels(preset: str, levels: int | None) -> int:
    """--levels, defaulting to all of the preset's levels."""
    if levels is None:
        return num_levels(preset)
    if not 1 <= levels <= num_levels(preset):
        raise UserError(f"--levels {levels}: preset {preset!r} has levels 1..{num_levels(preset)}")
    return levels


def _load_states(runs, ckpts, preset, levels):
    """Find and load the checkpoints: -> (preset, levels, [(path, state), ...]).

    Checks that they form a chain: levels 1, 2, ..., L in order, all of one preset.
    """
    if runs is not None and ckpts is not None:
        raise UserError("pass either --runs (a folder with level1/, level2/, ...) or --ckpt "
                        "(the files themselves), not both")
    if preset is not None:
        level_spec(preset, 1)                          # UserError on an unknown preset
    loaded = {}

    def load(path):                                    # each file is read once
        if path not in loaded:
            loaded[path] = load_checkpoint(path)
        return loaded[path]

    if ckpts is None:
        # --runs: level l lives in runs/level<l>/ckpt.pt, where the level scripts write.
        folder = Path(runs if runs is not None else f"runs/{preset or 'tiny'}")
        first = folder / "level1" / "ckpt.pt"
        if preset is None:
            # The level-1 checkpoint says which preset; the folder's name is the next best guess.
            preset = (load(first)["preset"] if first.is_file()
                      else folder.name if folder.name in PRESETS else "tiny")
        levels = _check_levels(preset, levels)
        paths = [folder / f"level{level}" / "ckpt.pt" for level in range(1, levels + 1)]
        for level, path in enumerate(paths, start=1):
            if not path.is_file():
                found = [p.parent.name for p in paths if p.is_file()]
                raise UserError(
                    f"no level-{level} checkpoint: {path} does not exist "
                    f"(found: {', '.join(found) or 'none'} in {folder}). Train level {level} with "
                    f"`{train_command(preset, level, folder)}`"
                    + (f", or pass --levels {level - 1} to stop at level {level - 1}" if level > 1 else "")
                    + ", or point --runs / --ckpt at your checkpoints.")
        states = [(path, load(path)) for path in paths]
    else:
        paths = [Path(p) for p in ckpts]
        if not paths:
            raise UserError("--ckpt needs at least one checkpoint file (level 1 first)")
        states = [(path, load(path)) for path in paths]
        preset = preset or states[0][1]["preset"]
        levels = _check_levels(preset, levels)

    for path, state in states:
        if state["preset"] != preset:
            raise UserError(
                f"checkpoint {path} was trained with --preset {state['preset']}, but this chain is "
                f"--preset {preset} (checkpoints: "
                + ", ".join(f"{p} ({s['preset']})" for p, s in states)
                + "). All levels must come from one preset: retrain the odd one out with "
                f"`{train_command(preset, state['level'])}`, or choose the other preset.")
    given = [state["level"] for _, state in states]
    for position, (path, state) in enumerate(states, start=1):
        if state["level"] == position:
            continue
        if position in given:
            raise UserError(
                f"checkpoints out of order: position {position} holds {path}, a level-"
                f"{state['level']} checkpoint, where level {position} is expected (levels given: "
                f"{given}). Pass them level 1 first: level 1, level 2, ...")
        raise UserError(
            f"level {position} is missing from the chain: position {position} holds {path}, a "
            f"level-{state['level']} checkpoint (levels given: {given}). Train level {position} "
            f"with `{train_command(preset, position)}` and pass its checkpoint there.")
    if len(states) < levels:
        missing = len(states) + 1
        raise UserError(
            f"level {missing} is missing from the chain: got {len(states)} checkpoint(s) for "
            f"preset {preset!r}'s {levels} levels. Train it with `{train_command(preset, missing)}` "
            f"and add its checkpoint, or pass --levels {len(states)} to stop at level {len(states)}.")
    if len(states) > levels:
        raise UserError(f"got {len(states)} checkpoints but the chain has {levels} levels "
                        f"(preset {preset!r}, --levels {levels}); drop the extra ones")
    return preset, levels, states


def _trained_spec(preset: str, state: dict) -> LevelSpec:
    """The preset's LevelSpec with the crop and context this level was trained with
    (an upsampling level's config may override them; None means the preset's)."""
    spec = level_spec(preset, state["level"])
    config = state["config"]
    crop = config.get("crop_frames") or spec.crop_frames
    context = spec.context if config.get("context") is None else config["context"]
    return dataclasses.replace(spec, crop_frames=crop, context=context)


def _check_links(preset: str, specs: list[LevelSpec], generators: list[nn.Module], paths) -> None:
    """Each level's input must be the previous level's output: the same number of
    frames over the same time span (frame rate) and the same size."""
    first, g1 = specs[0], generators[0]
    if (g1.frames, g1.size) != (first.frames, first.size):
        raise UserError(f"level 1 ({paths[0]}) generates {g1.frames}x{g1.size}x{g1.size}, but "
                        f"preset {preset!r} says {first.frames}x{first.size}x{first.size}")
    for coarse, fine, g, path in zip(specs, specs[1:], generators[1:], paths[1:]):
        if (g.time_factor, g.space_factor) != (fine.time_factor, fine.space_factor):
            raise UserError(
                f"level {fine.level} ({path}) upsamples by {g.time_factor}x in time and "
                f"{g.space_factor}x in space, but preset {preset!r} says {fine.time_factor}x and "
                f"{fine.space_factor}x; it was trained with another version of the preset: retrain it")
        # Level l turns T_{l-1} frames into T_{l-1} * tf frames over the same time span:
        # that is what makes its frame rate tf times level l-1's.
        if coarse.frames * fine.time_factor != fine.frames or coarse.size * fine.space_factor != fine.size:
            raise UserError(
                f"level {fine.level} does not fit level {coarse.level} in preset {preset!r}: it "
                f"expects an input of {fine.frames // fine.time_factor} frames at "
                f"{fine.size // fine.space_factor}x{fine.size // fine.space_factor} (its "
                f"{fine.frames}x{fine.size} output / time factor {fine.time_factor}, space "
                f"factor {fine.space_factor}), but level {coarse.level} makes {coarse.frames} "
                f"frames at {coarse.size}x{coarse.size}. Fix the preset in data.PRESETS.")
        if fine.crop_frames % fine.time_factor:
            raise UserError(f"level {fine.level} ({path}) was trained on crops of "
                            f"{fine.crop_frames} frames, not a multiple of its time factor "
                            f"{fine.time_factor}")


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


def load_chain(runs=None, ckpts=None, preset: str | None = None, device="cpu",
               levels: int | None = None) -> Chain:
    """Load the EMA generators of levels 1..L and check they fit together.

    runs: folder holding level1/ckpt.pt, level2/ckpt.pt, ... (default runs/<preset>);
    ckpts: explicit checkpoint files, level 1 first (instead of runs);
    preset: None takes the checkpoints' preset (they must agree);
    levels: stop after this level (default: all the preset's levels).
    Raises UserError, naming the file and what to do, for a broken chain.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    preset, levels, states = _load_states(runs, ckpts, preset, levels)
    specs, generators, num_classes = [], [], 0
    for path, state in states:
        level = state["level"]
        build = level1.build_generator if level == 1 else upsample_level.build_generator
        generator = build(state["config"], state["num_classes"])
        load_state(generator, state["models"]["ema_generator"], "EMA generator", path)
        generators.append(freeze(generator).to(device))
        specs.append(_trained_spec(preset, state))
        classes = generator.num_classes
        if classes and num_classes and classes != num_classes:
            raise UserError(f"level {level} ({path}) has {classes} classes but an earlier level "
                            f"has {num_classes}: the levels were trained on different datasets")
        num_classes = num_classes or classes
    paths = [path for path, _ in states]
    _check_links(preset, specs, generators, paths)
    return Chain(preset, specs, generators, paths, [s["step"] for _, s in states],
                 num_classes, device)


# ----------------------------------------------------------------------------------
# Running one upsampling level: windowed or whole.
# ----------------------------------------------------------------------------------

def window_starts(frames: int, window: int) -> list[int]:
    """First condition frame of each window: 0, w, 2w, ..., and a last one clamped to
    frames - w when w does not divide the length (it overlaps its neighbour; the
    overlap is simply written twice)."""
    window = min(window, frames)
    starts = list(range(0, frames - window + 1, window))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def upsample(generator: nn.Module, condition: torch.Tensor, z: torch.Tensor,
             labels: torch.Tensor | None = None, context: int = 0, window: int | None = None,
             on_window=None) -> torch.Tensor:
    """Run an upsampling level over a whole condition video.

    condition (B, 3, t, h, w) -> (B, 3, t*tf, h*sf, w*sf), on the condition's device
    (the host, in `generate`). window=None: one call on the whole padded video.
    window=w: calls on windows of w condition frames plus `context` frames each side;
    only the window is moved to the generator's device, so the memory there is the
    same for any t. With context >= the generator's temporal receptive field both
    give the same video (see the module docstring).
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
    for j0 in window_starts(t, window):
        # Padded frames j0 .. j0 + w + 2K are condition frames j0 - K .. j0 + w + K:
        # the window and its context (edge frames replicated past the ends).
        # (contiguous: a time slice is a strided view, and CPU convolutions on strided
        # inputs take a path several times slower.)
        piece = padded[:, :, j0:j0 + window + 2 * context].to(device).contiguous()
        out[:, :, j0 * tf:(j0 + window) * tf] = generator(piece, z, labels, context=context).float().to(host)
        if on_window:
            on_window()
    return out


# ----------------------------------------------------------------------------------
# Generating videos.
# ----------------------------------------------------------------------------------

def video_rng(seed: int, video: int, stream: int) -> torch.Generator:
    """The random stream of one video: stream 0 draws its class, stream l its level-l noise.

    Seeding by (seed, video index, stream) instead of drawing a batch at a time
    makes video i the same whatever the batch size, and lets metrics.py draw the
    videos of one seed in any number of chunks.
    """
    mixed = np.random.SeedSequence([seed, video, stream]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator().manual_seed(int(mixed))


def level_frames(chain: Chain, frames: int | None = None) -> tuple[int, list[int]]:
    """(level-1 unroll length, frames kept at each level) for a final length `frames`.

    Level 1 is unrolled to T_1 = ceil(frames / F), F = tf_2 * tf_3 * ...; level l then
    makes T_1 * tf_2 * ... * tf_l frames, of which it keeps ceil(frames / F_l), F_l =
    the time factors of the levels after l, so the last level keeps exactly `frames`.
    """
    frames = chain.frames if frames is None else frames
    if frames < 1:
        raise UserError(f"--frames {frames}: ask for at least 1 frame")
    unroll = math.ceil(frames / chain.time_factor)
    kept, after = [], chain.time_factor
    for spec in chain.specs:
        after //= spec.time_factor                     # level 1's time factor is 1
        kept.append(math.ceil(frames / after))
    return unroll, kept


def check_label(chain: Chain, label: int | None) -> None:
    """--class needs a class-conditional chain and a class it knows."""
    if label is None:
        return
    if not chain.num_classes:
        raise UserError(f"--class {label} was given, but the checkpoints are not "
                        "class-conditional (they were trained without --class-conditional)")
    if not 0 <= label < chain.num_classes:
        raise UserError(f"--class {label} is out of range: the model has classes "
                        f"0..{chain.num_classes - 1}")


def _labels(chain: Chain, indices, seed: int, label: int | None):
    """The class of each video (a tensor on the chain's device), or None."""
    if not chain.num_classes:
        return None
    if label is not None:
        return torch.full((len(indices),), label, dtype=torch.long, device=chain.device)
    # No --class: each video draws its own, from its own stream (see video_rng).
    drawn = [int(torch.randint(chain.num_classes, (1,), generator=video_rng(seed, i, 0))) for i in indices]
    return torch.tensor(drawn, dtype=torch.long, device=chain.device)


@torch.inference_mode()
def generate(chain: Chain, num: int, seed: int = 0, frames: int | None = None,
             batch_size: int = 8, truncation: float | None = None, label: int | None = None,
             windowed: bool = True, return_levels: bool = False, progress: bool = False):
    """Sample `num` videos through the whole chain.

    -> (num, 3, frames, S, S) float32 in [-1, 1] on the host (S: the last level's
    size; frames: default the last level's training length). With return_levels,
    also [level-1 videos, level-2 videos, ...], each (num, 3, T_l, S_l, S_l), T_l the
    frames that level contributes to the final `frames`.
    Video i depends only on (seed, i): not on batch_size, nor on windowed (when
    every level's context covers its receptive field).
    """
    if num < 1 or batch_size < 1:
        raise UserError(f"--num {num} and --batch-size {batch_size} must be at least 1")
    if seed < 0:
        raise UserError(f"--seed {seed}: use a non-negative seed")
    if truncation is not None and truncation <= 0:
        raise UserError(f"--truncation {truncation}: use a positive threshold (e.g. 1.0), or leave it off")
    check_label(chain, label)
    unroll, kept = level_frames(chain, frames)

    # Work per batch: level 1, then each upsampling level's windows (or 1 whole call).
    windows = [1]
    produced = unroll
    for spec in chain.specs[1:]:
        windows.append(len(window_starts(produced, spec.crop_frames // spec.time_factor)) if windowed else 1)
        produced *= spec.time_factor
    batches = range(0, num, batch_size)
    bar = tqdm(total=len(batches) * sum(windows), disable=not progress, unit="call",
               desc="sampling", dynamic_ncols=True)

    # Videos are kept in host memory, one window at a time goes to the device. A chain
    # on the "meta" device computes shapes only (no numbers): a free dry run.
    host = chain.device if chain.device.type == "meta" else torch.device("cpu")
    per_level = [[] for _ in chain.generators]
    for batch_number, start in enumerate(batches, start=1):
        indices = range(start, min(num, start + batch_size))
        labels = _labels(chain, indices, seed, label)
        # z_l for every video and level from its own stream: (B, z_dim_l) on the device.
        zs = [torch.cat([g.sample_latent(1, truncation, generator=video_rng(seed, i, level))
                         for i in indices])
              for level, g in enumerate(chain.generators, start=1)]

        bar.set_description(f"batch {batch_number}/{len(batches)} level 1")
        g1 = chain.generators[0]
        # Level 1: the RNN unrolled for `unroll` frames, the whole video at once.
        video = g1(zs[0], labels if g1.num_classes else None, frames=unroll).float().to(host)
        bar.update()
        outputs = [video]                                        # (B, 3, T_1, S_1, S_1)
        for spec, g, z in zip(chain.specs[1:], chain.generators[1:], zs[1:]):
            bar.set_description(f"batch {batch_number}/{len(batches)} level {spec.level}")
            video = upsample(g, video, z, labels if g.num_classes else None, context=spec.context,
                             window=spec.crop_frames // spec.time_factor if windowed else None,
                             on_window=bar.update)               # (B, 3, T_l, S_l, S_l)
            outputs.append(video)
        for keep, out, collected in zip(kept, outputs, per_level):
            if return_levels or collected is per_level[-1]:      # keep only what is returned
                collected.append(out[:, :, :keep])
    bar.close()

    if not return_levels:
        return torch.cat(per_level[-1])
    levels = [torch.cat(collected) for collected in per_level]
    return levels[-1], levels


# ----------------------------------------------------------------------------------
# Files: one video each, a grid, a contact sheet of the levels.
# ----------------------------------------------------------------------------------

def level_rows(chain: Chain, level_videos: list[torch.Tensor], columns: int = 16) -> list[torch.Tensor]:
    """Rows of the levels contact sheet for ONE video, coarse to fine, lined up in time.

    level_videos: [(3, T_l, S_l, S_l) for l = 1..L]. Column k shows final frame
    i_k = k * stride (stride = ceil(T / columns)); level l's row shows its frame at
    the same time, i_k // F_l (F_l = final frames per level-l frame), so a coarse
    level's frame repeats across the columns it spans.
    """
    total = level_videos[-1].shape[1]
    shown = list(range(0, total, math.ceil(total / columns)))
    rows, per_frame = [], chain.time_factor
    for spec, video in zip(chain.specs, level_videos):
        per_frame //= spec.time_factor                 # level 1's time factor is 1
        rows.append(video[:, [i // per_frame for i in shown]])  # (3, columns, S_l, S_l)
    return rows


def write_outputs(out, chain: Chain, videos: torch.Tensor, level_videos: list[torch.Tensor],
                  fps: int | None = None, sheet_frames: int = 16) -> list[Path]:
    """Write video_XXX.mp4 per video, grid.mp4/.gif and levels.png into `out`."""
    out = Path(out)
    fps = fps or 4 * chain.time_factor
    paths = []
    try:
        for i, video in enumerate(videos):
            paths.append(out / f"video_{i:03d}.mp4")
            write_video(paths[-1], video, fps=fps)
        grid = video_grid(videos)                                # (3, T, H', W')
        for name in ("grid.mp4", "grid.gif"):
            paths.append(out / name)
            write_video(paths[-1], grid, fps=fps)
        # All levels shown at the final size (contact_sheet resizes to the tallest row).
        rows = level_rows(chain, [level[0] for level in level_videos], sheet_frames)
        paths.append(out / "levels.png")
        write_image(paths[-1], contact_sheet(rows, size=chain.size))
    except OSError as error:
        advice = ("free disk space or choose another --out" if error.errno == errno.ENOSPC
                  else "choose an --out folder you can write to")
        raise UserError(f"cannot write {paths[-1]} ({error.strerror or error}); {advice}") from None
    return paths


def main(argv=None) -> None:
    cfg = parse_args(argv)
    chain = load_chain(cfg.runs, cfg.ckpt, cfg.preset, cfg.device, cfg.levels)
    unroll, kept = level_frames(chain, cfg.frames)
    check_label(chain, cfg.label)
    # Hold --out while sampling (training.hold_out_dir): a second sampling into the
    # same folder stops here, before generating anything, instead of mixing its
    # videos with this one's.
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        hold_out_dir(out)
    except OSError as error:
        raise UserError(f"cannot write to --out {out} ({error.strerror or error}); choose a "
                        "folder you can write to") from error
    print(f"preset {chain.preset}: levels 1..{chain.levels} on {chain.device}, "
          f"level 1 unrolled to {unroll} frames (trained on {chain.specs[0].frames}), "
          f"final {kept[-1]}x{chain.size}x{chain.size}")
    for spec, g, path, step in zip(chain.specs, chain.generators, chain.paths, chain.steps):
        line = f"  level {spec.level}: {path} (step {step})"
        if spec.level > 1:
            reach = g.temporal_receptive_field()
            line += (f", windows of {spec.crop_frames // spec.time_factor} condition frames + "
                     f"{spec.context} context each side, receptive field {reach}: "
                     + ("windowed == whole" if spec.context >= reach else
                        "context < receptive field, windows differ from --whole near their edges"))
        print(line)
    videos, level_videos = generate(chain, cfg.num, cfg.seed, cfg.frames, cfg.batch_size,
                                    cfg.truncation, cfg.label, windowed=not cfg.whole,
                                    return_levels=True, progress=cfg.progress)
    for path in write_outputs(out, chain, videos, level_videos, cfg.fps, cfg.sheet_frames):
        print(path)
    release_out_dir(out)


if __name__ == "__main__":
    run_main(main)
