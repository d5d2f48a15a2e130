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
the video in the same kind of window, one after another (`upsample`, which lives in
upsample_level.py with the level it runs):

    padded = pad_condition(c, K)                       (N, 3, t + 2K, h, w)
    for j0 = 0, w, 2w, ...   (w = crop_frames / tf; the last window is clamped to t - w)
        out[:, :, j0*tf : (j0+w)*tf] = G(padded[:, :, j0 : j0 + w + 2K], z, context=K)

so the memory a level needs does not grow with the video's length (the videos
themselves are kept in host memory; only one window at a time is on the device).
If G's output frame depends only on condition frames within R of its own (R =
G.temporal_receptive_field()), then with K >= R every window sees everything its
output depends on, and the windowed result EQUALS running G on the whole padded
video at once (`--whole`), up to float rounding. tests/test_sample.py checks both.

Streaming (--stream). The windows make each upsampling level's memory constant,
but the videos themselves, and level 1's unroll, still grow with the length. Both
are causal enough to stream: level 1's ConvGRU only looks back, so it can run
chunk by chunk carrying its hidden states (`level1_chunks`); an upsampling level
can run a window as soon as the condition frames of its right context exist
(`upsample_chunks`). Chained as Python generators, the last level pulls windows
from the one below, which pulls frames from level 1, and finished frames go to
the mp4 files at once (`write_stream`): memory is the same for any --frames
(bench.py measures it at 1x, 4x and 16x), and the videos equal the non-streamed
ones, same seed, to float rounding (tests/test_stream.py).

Your own video (--input). The upsampling levels are a video super-resolution and
frame-interpolation model: `--input clip.mp4 --from-level L` brings the clip to
level L's frame size (centre square, area resize, every frame kept) and runs
levels L+1..N over it, streamed the same way (`upsample_file`).

Commands:

    python sample.py                                  # runs/tiny/level{1,2,3}/ckpt.pt -> samples/
    python sample.py --num 16 --frames 128            # 4x the tiny preset's 32 frames
    python sample.py --num 4 --frames 3200 --stream   # 100x, written as it is generated
    python sample.py --input clip.mp4                 # upsample a video: x4 frames, x4 pixels on tiny
    python sample.py --input clip.mp4 --from-level 2  # only level 3: x2 and x2
    python sample.py --runs runs/kinetics600 --class 5 --truncation 1.0 --device cuda
    python sample.py --ckpt a/ckpt.pt b/ckpt.pt c/ckpt.pt --out my_samples
    python sample.py --levels 2                       # stop after level 2
    python sample.py --whole                          # each level over the whole video at once

It writes into --out (default samples/): video_000.mp4, video_001.mp4, ... (one
per video), grid.mp4 and grid.gif (all videos tiled; no GIF with --stream), and
levels.png (the first video at every level, coarse to fine, one row per level),
and prints the paths. --input writes input.mp4, upsampled.mp4 and compare.png.

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
import torch.nn.functional as F
from tqdm import tqdm

import level1
from data import (PRESETS, LevelSpec, UserError, contact_sheet, level_spec, num_levels,
                  probe_video, to_uint8, video_grid, write_image, write_video)
from data import _player_friendly   # the size data.write_video gives small videos
import flags
from training import (build_parser, hold_out_dir, load_checkpoint, option,
                      release_out_dir, resolve_device, run_main)
# Running one upsampling level over a whole video in windows, and loading a trained
# level's frozen EMA generator, belong to the level itself (upsample_level.py uses
# them for --cond-from); sample.py chains them. (sample.upsample, sample.freeze and
# sample.window_starts are these same functions: bench.py and the tests use them.)
from upsample_level import (freeze, load_ema_generator, run_window, trained_spec, upsample,  # noqa: F401
                            window_starts)


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
    stream: bool = option(False, "write the videos while they are generated: memory does not "
                                 "grow with --frames (no grid.gif; see write_stream)")
    # Upsampling a video file instead of sampling.
    input: str | None = option(None, "upsample this video file with levels L+1..N (L: --from-level) "
                                     "instead of sampling; writes input.mp4, upsampled.mp4, compare.png")
    from_level: int = option(1, "with --input: the input is brought to level L's frame size "
                                "(centre square, area resize) and treated as a level-L video", "[1, inf)")
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
        """Final frames per level-1 frame: tf_2 * tf_3 * ... (1 for level 1 alone; for a
        chain of upsampling levels only, final frames per input frame)."""
        return math.prod(spec.time_factor for spec in self.specs)   # level 1's is 1

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


def _check_first(preset: str, levels: int, first: int) -> None:
    """--from-level L (first = L + 1) must leave at least one level to run."""
    if first > levels:
        raise UserError(f"--from-level {first - 1}: the chain ends at level {levels} (preset "
                        f"{preset!r}{', --levels ' + str(levels) if levels < num_levels(preset) else ''}), "
                        f"so there is no level above {first - 1} to upsample the input with; "
                        f"use --from-level 1 .. {levels - 1}")


def _load_states(runs, ckpts, preset, levels, first=1):
    """Find and load the checkpoints: -> (preset, levels, [(path, state), ...]).

    Checks that they form a chain: levels first, first + 1, ..., L in order (first
    is 1 except for `--input`, which starts above the input's level), all of one preset.
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
        lowest = folder / f"level{first}" / "ckpt.pt"
        if preset is None:
            # The lowest checkpoint says which preset; the folder's name is the next best guess.
            preset = (load(lowest)["preset"] if lowest.is_file()
                      else folder.name if folder.name in PRESETS else "tiny")
        levels = _check_levels(preset, levels)
        _check_first(preset, levels, first)
        paths = [folder / f"level{level}" / "ckpt.pt" for level in range(first, levels + 1)]
        for level, path in enumerate(paths, start=first):
            if not path.is_file():
                found = [p.parent.name for p in paths if p.is_file()]
                raise UserError(
                    f"no level-{level} checkpoint: {path} does not exist "
                    f"(found: {', '.join(found) or 'none'} in {folder}). Train level {level} with "
                    f"`{train_command(preset, level, folder)}`"
                    + (f", or pass --levels {level - 1} to stop at level {level - 1}" if level > first else "")
                    + ", or point --runs / --ckpt at your checkpoints.")
        states = [(path, load(path)) for path in paths]
    else:
        paths = [Path(p) for p in ckpts]
        if not paths:
            raise UserError("--ckpt needs at least one checkpoint file (level 1 first)")
        states = [(path, load(path)) for path in paths]
        preset = preset or states[0][1]["preset"]
        levels = _check_levels(preset, levels)
        _check_first(preset, levels, first)
        if first > 1 and states[0][1]["level"] < first:
            # --input --from-level L: the input already is a level-L video.
            raise UserError(
                f"--from-level {first - 1} reads the input as a level-{first - 1} video, so the "
                f"checkpoints must start at level {first}, but the first one, {paths[0]}, is "
                f"level {states[0][1]['level']}. Pass levels {first}..{levels} only, or a lower "
                f"--from-level.")

    for path, state in states:
        if state["preset"] != preset:
            raise UserError(
                f"checkpoint {path} was trained with --preset {state['preset']}, but this chain is "
                f"--preset {preset} (checkpoints: "
                + ", ".join(f"{p} ({s['preset']})" for p, s in states)
                + "). All levels must come from one preset: retrain the odd one out with "
                f"`{train_command(preset, state['level'])}`, or choose the other preset.")
    given = [state["level"] for _, state in states]
    for position, (path, state) in enumerate(states, start=first):
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
    if len(states) < levels - first + 1:
        missing = first + len(states)
        raise UserError(
            f"level {missing} is missing from the chain: got {len(states)} checkpoint(s) for "
            f"preset {preset!r}'s levels {first}..{levels}. Train it with "
            f"`{train_command(preset, missing)}` and add its checkpoint, or stop the chain at "
            f"level {missing - 1} (sample.py --levels {missing - 1}, evaluate.py --level {missing - 1}).")
    if len(states) > levels - first + 1:
        raise UserError(f"got {len(states)} checkpoints but the chain has {levels - first + 1} "
                        f"levels ({first}..{levels} of preset {preset!r}, --levels {levels}); "
                        "drop the extra ones")
    return preset, levels, states


def _check_links(preset: str, specs: list[LevelSpec], generators: list[nn.Module], paths) -> None:
    """Each level's input must be the previous level's output: the same number of
    frames over the same time span (frame rate) and the same size."""
    first, g1 = specs[0], generators[0]
    if first.level == 1 and (g1.frames, g1.size) != (first.frames, first.size):
        raise UserError(f"level 1 ({paths[0]}) generates {g1.frames}x{g1.size}x{g1.size}, but "
                        f"preset {preset!r} says {first.frames}x{first.size}x{first.size}")
    for spec, g, path in zip(specs, generators, paths):
        if spec.level > 1 and (g.time_factor, g.space_factor) != (spec.time_factor, spec.space_factor):
            raise UserError(
                f"level {spec.level} ({path}) upsamples by {g.time_factor}x in time and "
                f"{g.space_factor}x in space, but preset {preset!r} says {spec.time_factor}x and "
                f"{spec.space_factor}x; it was trained with another version of the preset: retrain it")
        if spec.level > 1 and spec.crop_frames % spec.time_factor:
            raise UserError(f"level {spec.level} ({path}) was trained on crops of "
                            f"{spec.crop_frames} frames, not a multiple of its time factor "
                            f"{spec.time_factor}")
    for coarse, fine in zip(specs, specs[1:]):
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


def load_chain(runs=None, ckpts=None, preset: str | None = None, device="cpu",
               levels: int | None = None, first: int = 1) -> Chain:
    """Load the EMA generators of levels 1..L and check they fit together.

    runs: folder holding level1/ckpt.pt, level2/ckpt.pt, ... (default runs/<preset>);
    ckpts: explicit checkpoint files, level 1 first (instead of runs);
    preset: None takes the checkpoints' preset (they must agree);
    levels: stop after this level (default: all the preset's levels);
    first: the lowest level (`--input --from-level L` loads only the upsampling
    levels L+1..N: first = L + 1).
    Raises UserError, naming the file and what to do, for a broken chain.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    preset, levels, states = _load_states(runs, ckpts, preset, levels, first)
    specs, generators, num_classes = [], [], 0
    for path, state in states:
        level = state["level"]
        generator = load_ema_generator(state, path)           # frozen: see upsample_level.freeze
        generators.append(generator.to(device))
        specs.append(trained_spec(preset, state))
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
# Streaming: the same chain, chunk by chunk, at a memory that does not grow with length.
# ----------------------------------------------------------------------------------

def level1_chunks(generator: level1.Level1Generator, z: torch.Tensor, labels: torch.Tensor | None,
                  frames: int, chunk: int, host=torch.device("cpu")):
    """Level 1 unrolled for `frames` frames, `chunk` frames at a time: yields
    (B, 3, c, S, S) pieces on `host`, c <= chunk, which concatenate to g1(z, frames=frames).

    This is Level1Generator.forward with one change: each ConvGRU starts a chunk from
    the hidden state h its previous chunk ended in (its `state`), not h_0 = 0 (and the clock
    in its input reads the chunk's own frame indices). Nothing else in level 1 crosses
    frames: the up-blocks and the output convolution work frame by frame, and
    conditional batch norm in eval mode normalises with its running statistics (a
    per-frame affine map), so a chunk needs only the GRU states (one (B, C, H, W)
    tensor per group) to continue exactly where the last one stopped.
    """
    batch = z.shape[0]
    cond = torch.cat([z, generator.embed(labels)], dim=1) if generator.embed is not None else z
    states = [None] * len(generator.rnns)                  # h of each ConvGRU, carried over
    for start in range(0, frames, chunk):
        n = min(chunk, frames - start)
        x = generator.frame_inputs(z, n, start)                             # (B, n, C, 4, 4)
        for group, (rnn, block) in enumerate(zip(generator.rnns, generator.blocks)):
            x = rnn(x, states[group])                                        # (B, n, C, H, W)
            states[group] = x[:, -1]                 # a GRU's last output is its last state
            x = block(x.flatten(0, 1), cond.repeat_interleave(n, dim=0))    # (B*n, C', 2H, 2W)
            x = x.unflatten(0, (batch, n))
        x = x.flatten(0, 1)                                                  # (B*n, C, S, S)
        x = torch.tanh(generator.to_rgb(F.relu(generator.out_bn(x))))       # (B*n, 3, S, S)
        yield x.unflatten(0, (batch, n)).transpose(1, 2).float().to(host)    # (B, 3, n, S, S)


def upsample_chunks(generator: nn.Module, chunks, z: torch.Tensor, labels: torch.Tensor | None = None,
                    context: int = 0, window: int = 1, on_window=None):
    """`upsample(..., window=w)` for a condition that arrives in pieces: reads
    (B, 3, c, h, w) chunks of any sizes from the iterator `chunks` and yields the
    output (B, 3, c', h*sf, w*sf) in order, as soon as each window's frames are known.

    The windows are upsample's: condition frames j0 .. j0 + w - 1 for j0 = 0, w, 2w,
    ..., each with K = `context` frames each side of the edge-padded condition
    P[i] = c[clamp(i - K, 0, t - 1)], and a last window clamped to t - w. A window
    can run once the condition frame j0 + w + K - 1 has arrived (its right context);
    the video's length t is only needed at the end, where the last frame is
    replicated K times and the clamped window, if any, runs. So the result is
    exactly upsample's, and this keeps only P[j0 - w .. ] (the clamped window may
    reach back w frames): at most 2w + 2K + one chunk of condition frames.
    """
    tf = generator.time_factor
    device = z.device
    kept, first = None, 0      # kept: padded condition frames P[first : first + n], on the host
    start = 0                  # the first condition frame whose output is not out yet

    def run(j0, w):
        """Output frames j0*tf .. (j0 + w)*tf of the window at j0 (w condition frames)."""
        # P[j0 : j0 + w + 2K] are condition frames j0 - K .. j0 + w + K - 1 (contiguous: see upsample).
        piece = kept[:, :, j0 - first:j0 - first + w + 2 * context].to(device).contiguous()
        out = run_window(generator, piece, z, labels, context, j0).float().to(kept.device)
        if on_window:
            on_window()
        return out                                                  # (B, 3, w*tf, H, W)

    for chunk in chunks:
        if kept is None:       # the first frame, replicated K times on the left
            kept = torch.cat([chunk[:, :, :1].expand(-1, -1, context, -1, -1), chunk], dim=2)
        else:
            kept = torch.cat([kept, chunk], dim=2)
        arrived = first + kept.shape[2] - context                  # condition frames so far
        while start + window + context <= arrived:
            yield run(start, window)
            start += window
            drop = max(0, start - window - first)                  # P before start - w: never read again
            kept, first = kept[:, :, drop:], first + drop
    if kept is None:
        return                 # an empty condition: nothing to upsample
    # The end: t is known. Replicate the last frame K times on the right and run the
    # windows that are left, as window_starts(t, min(w, t)) places them.
    t = first + kept.shape[2] - context
    kept = torch.cat([kept, kept[:, :, -1:].expand(-1, -1, context, -1, -1)], dim=2)
    w = min(window, t)
    for j0 in window_starts(t, w):
        if j0 + w > start:
            out = run(j0, w)
            yield out[:, :, (start - j0) * tf:]                     # only frames not yet out
            start = j0 + w


def trimmed(chunks, frames: int):
    """The first `frames` frames of a stream of (B, 3, c, H, W) chunks (stops reading there)."""
    left = frames
    for chunk in chunks:
        yield chunk[:, :, :left]
        left -= chunk.shape[2]
        if left <= 0:
            return             # the levels below are not asked for more


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


def _check_sampling(num: int, batch_size: int, seed: int, truncation: float | None) -> None:
    if num < 1 or batch_size < 1:
        raise UserError(f"--num {num} and --batch-size {batch_size} must be at least 1")
    if seed < 0:
        raise UserError(f"--seed {seed}: use a non-negative seed")
    if truncation is not None and truncation <= 0:
        raise UserError(f"--truncation {truncation}: use a positive threshold (e.g. 1.0), or leave it off")


def batch_noise(chain: Chain, indices, seed: int, truncation: float | None, label: int | None):
    """(labels or None, [z_1, z_2, ...]) of the videos `indices`: z_l (B, z_dim_l) on
    the device, each video's from its own random stream (see video_rng)."""
    labels = _labels(chain, indices, seed, label)
    zs = [torch.cat([g.sample_latent(1, truncation, generator=video_rng(seed, i, level))
                     for i in indices])
          for level, g in enumerate(chain.generators, start=1)]
    return labels, zs


def stream_batch(chain: Chain, indices, seed: int = 0, frames: int | None = None,
                 truncation: float | None = None, label: int | None = None,
                 on_level=None, on_window=None):
    """The videos `indices` of one batch, streamed through the chain: yields the final
    level's frames as (B, 3, c, S, S) chunks on the host, `frames` frames in all.

    Level 1 runs `level1_chunks` (chunks of one level-2 window), each upsampling level
    `upsample_chunks` over the chunks of the level below, and the generators pull
    from each other: the final level asks for a window, which asks level 2 for its
    condition frames, ... So only a few windows per level are alive at once, however
    long the video. on_level(level, chunk) sees every level's chunks (the frames that
    level contributes to the final `frames`, like generate's return_levels);
    on_window() is called after every generator call. Consume it in inference mode
    (generate and write_stream do).
    """
    unroll, kept = level_frames(chain, frames)
    labels, zs = batch_noise(chain, indices, seed, truncation, label)
    host = chain.device if chain.device.type == "meta" else torch.device("cpu")

    def watched(chunks, level, keep):
        seen = 0
        for chunk in chunks:
            if on_level and seen < keep:
                on_level(level, chunk[:, :, :keep - seen])
            seen += chunk.shape[2]
            yield chunk

    g1 = chain.generators[0]
    chunk = chain.specs[1].crop_frames // chain.specs[1].time_factor if chain.levels > 1 else unroll
    stream = level1_chunks(g1, zs[0], labels if g1.num_classes else None, unroll, chunk, host)
    stream = watched(stream, 1, kept[0])
    for spec, g, z, keep in zip(chain.specs[1:], chain.generators[1:], zs[1:], kept[1:]):
        stream = upsample_chunks(g, stream, z, labels if g.num_classes else None, context=spec.context,
                                 window=spec.crop_frames // spec.time_factor, on_window=on_window)
        stream = watched(stream, spec.level, keep)
    return trimmed(stream, kept[-1])


@torch.inference_mode()
def generate(chain: Chain, num: int, seed: int = 0, frames: int | None = None,
             batch_size: int = 8, truncation: float | None = None, label: int | None = None,
             windowed: bool = True, return_levels: bool = False, progress: bool = False,
             stream: bool = False):
    """Sample `num` videos through the whole chain.

    -> (num, 3, frames, S, S) float32 in [-1, 1] on the host (S: the last level's
    size; frames: default the last level's training length). With return_levels,
    also [level-1 videos, level-2 videos, ...], each (num, 3, T_l, S_l, S_l), T_l the
    frames that level contributes to the final `frames`.
    Video i depends only on (seed, i): not on batch_size, nor on windowed or stream
    (when every level's context covers its receptive field).
    stream=True runs `stream_batch` and concatenates its chunks: the same videos, to
    float rounding (tests/test_sample.py); write_stream is what keeps memory flat.
    """
    _check_sampling(num, batch_size, seed, truncation)
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
        bar.set_description(f"batch {batch_number}/{len(batches)}")
        if stream:
            pieces = [[] for _ in chain.generators]
            chunks = stream_batch(chain, indices, seed, frames, truncation, label,
                                  on_level=lambda level, chunk: pieces[level - chain.specs[0].level].append(chunk),
                                  on_window=bar.update)
            for _ in chunks:            # the final level's chunks are also on_level's
                pass
            bar.update()
            for out, collected in zip(pieces, per_level):
                if return_levels or collected is per_level[-1]:
                    collected.append(torch.cat(out, dim=2))
            continue
        labels, zs = batch_noise(chain, indices, seed, truncation, label)
        g1 = chain.generators[0]
        # Level 1: the RNN unrolled for `unroll` frames, the whole video at once.
        video = g1(zs[0], labels if g1.num_classes else None, frames=unroll).float().to(host)
        bar.update()
        outputs = [video]                                        # (B, 3, T_1, S_1, S_1)
        for spec, g, z in zip(chain.specs[1:], chain.generators[1:], zs[1:]):
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


class Mp4Stream:
    """An .mp4 written chunk by chunk, with data.write_video's settings (H.264, yuv420p,
    small videos upscaled for players): the frames go to ffmpeg and are not kept."""

    def __init__(self, path, fps: int):
        self.path, self.fps, self.writer = Path(path), fps, None

    def append(self, video: torch.Tensor) -> None:
        """video: (3, t, H, W) in [-1, 1]."""
        import imageio.v2 as imageio

        if self.writer is None:            # opened at the first frame: an error writes nothing
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = imageio.get_writer(self.path, format="FFMPEG", mode="I", fps=self.fps,
                                             codec="libx264", pixelformat="yuv420p",
                                             macro_block_size=16, ffmpeg_log_level="error")
        for frame in _player_friendly(to_uint8(video)):
            self.writer.append_data(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class SheetFrames:
    """Collects, from streamed chunks, the frames of ONE video that the levels contact
    sheet shows (see level_rows): final frame i_k = k * stride and level l's frame
    i_k // F_l at the same time. on_level(level, chunk) is stream_batch's callback."""

    def __init__(self, chain: Chain, total: int, columns: int):
        self.shown = list(range(0, total, math.ceil(total / columns)))
        self.per_frame, after = {}, chain.time_factor
        for spec in chain.specs:
            after //= spec.time_factor
            self.per_frame[spec.level] = after     # F_l: final frames per level-l frame
        self.seen = {spec.level: 0 for spec in chain.specs}
        self.picked = {spec.level: {} for spec in chain.specs}

    def on_level(self, level: int, chunk: torch.Tensor) -> None:
        wanted = {i // self.per_frame[level] for i in self.shown}
        for k in range(chunk.shape[2]):
            if self.seen[level] + k in wanted:
                self.picked[level][self.seen[level] + k] = chunk[0, :, k].clone()   # (3, S_l, S_l)
        self.seen[level] += chunk.shape[2]

    def rows(self) -> list[torch.Tensor]:
        return [torch.stack([picked[i // self.per_frame[level]] for i in self.shown], dim=1)
                for level, picked in self.picked.items()]            # [(3, columns, S_l, S_l)]


@torch.inference_mode()
def write_stream(out, chain: Chain, num: int, seed: int = 0, frames: int | None = None,
                 batch_size: int = 8, truncation: float | None = None, label: int | None = None,
                 fps: int | None = None, sheet_frames: int = 16, progress: bool = False) -> list[Path]:
    """`sample.py --stream`: video_XXX.mp4 per video, grid.mp4 and levels.png, written
    while the videos are generated, so memory does not depend on `frames`.

    Every batch is a stream_batch; the batches advance together (zip), one chunk of
    final frames each, so the grid of all videos can be written chunk by chunk too.
    What is alive at once: per batch, each level's few windows and GRU states; per
    video, an ffmpeg process. No GIF: a GIF writer holds every frame until it closes.
    The videos equal generate's (same seed) to float rounding.
    """
    _check_sampling(num, batch_size, seed, truncation)
    check_label(chain, label)
    out = Path(out)
    fps = fps or 4 * chain.time_factor
    _, kept = level_frames(chain, frames)
    sheet = SheetFrames(chain, kept[-1], sheet_frames)
    bar = tqdm(total=kept[-1], disable=not progress, unit="frame", desc="streaming", dynamic_ncols=True)
    streams = [stream_batch(chain, range(start, min(num, start + batch_size)), seed, frames, truncation,
                            label, on_level=sheet.on_level if start == 0 else None)
               for start in range(0, num, batch_size)]
    writers = [Mp4Stream(out / f"video_{i:03d}.mp4", fps) for i in range(num)]
    grid = Mp4Stream(out / "grid.mp4", fps)
    current = grid.path
    try:
        for pieces in zip(*streams):
            videos = torch.cat(pieces)                     # (num, 3, c, S, S): the next c frames
            for writer, video in zip(writers, videos):
                current = writer.path
                writer.append(video)
            current = grid.path
            grid.append(video_grid(videos))
            bar.update(videos.shape[2])
        for writer in writers + [grid]:
            current = writer.path
            writer.close()
        current = out / "levels.png"
        write_image(current, contact_sheet(sheet.rows(), size=chain.size))
    except OSError as error:
        raise UserError(f"cannot write {current} ({error.strerror or error}); choose an "
                        "--out folder you can write to") from error
    finally:
        bar.close()
        for writer in writers + [grid]:
            writer.close()
    return [writer.path for writer in writers] + [grid.path, current]


# ----------------------------------------------------------------------------------
# Upsampling your own video: the upsampling levels on a file, in windows.
# ----------------------------------------------------------------------------------

def _decoded_frames(path: Path):
    """uint8 (H, W, 3) frames of a video file, one at a time (ffmpeg; GIFs through Pillow)."""
    if path.suffix.lower() == ".gif":
        import imageio.v3 as iio

        for frame in iio.imiter(path, plugin="pillow"):
            yield np.asarray(frame)[:, :, :3]
        return
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        width, height = next(frames)["size"]
        for raw in frames:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    finally:
        frames.close()


def to_level_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 frames (t, H, W, 3) -> (1, 3, t, size, size) in [-1, 1]: the centre square
    of side min(H, W), resized to size x size by area averaging (each output pixel
    the mean of the input pixels it covers, as data.down pools a level to the one
    below). Frames are kept as they are: no frame-rate change."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()   # (t, 3, H, W)
    h, w = video.shape[-2:]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    video = F.interpolate(video[:, :, y:y + side, x:x + side], size=(size, size), mode="area")
    video = video / 127.5 - 1.0                                                # [0, 255] -> [-1, 1]
    return video.transpose(0, 1).unsqueeze(0)                                  # (1, 3, t, size, size)


def input_chunks(path, size: int, min_frames: int, chunk: int = 16):
    """A video file as (1, 3, c, size, size) chunks in [-1, 1] (see to_level_frames),
    decoded as they are needed. UserError for a missing or undecodable file, and for
    one with fewer than `min_frames` frames (raised once the file ends, before the
    upsampling levels have run a window)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    count, pending = 0, []
    try:
        for frame in _decoded_frames(path):
            pending.append(frame)
            if len(pending) == chunk:
                count += chunk
                yield to_level_frames(np.stack(pending), size)
                pending = []
    except (OSError, RuntimeError, ValueError, StopIteration) as error:
        # ffmpeg's message ends with the reason ("Invalid data found when processing input").
        reason = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        raise UserError(f"--input {path} could not be decoded ({reason[-1].strip()}); "
                        "give a video file ffmpeg can read (.mp4, .avi, .mov, .webm, .gif)") from error
    count += len(pending)
    if count < min_frames:
        raise UserError(f"--input {path} has {count} frame(s); the first upsampling level needs at "
                        f"least {min_frames} (one window of its training crop). Give a longer clip.")
    if pending:
        yield to_level_frames(np.stack(pending), size)


@torch.inference_mode()
def upsample_file(chain: Chain, path, out, seed: int = 0, label: int | None = None,
                  fps: int | None = None, sheet_frames: int = 16, progress: bool = False) -> list[Path]:
    """`sample.py --input clip.mp4 --from-level L`: run the upsampling levels L+1..N of
    `chain` (load_chain(first=L+1)) over a video file, streamed and in windows, so
    any length works. Writes into `out`: input.mp4 (the clip at level L's frame
    size: what the levels see), upsampled.mp4 (x tf frames and x sf pixels per
    level) and compare.png (the input above the output, the first `sheet_frames`
    output frames, each input frame repeated over the output frames it spans).
    The output runs at tf_{L+1} * ... times the input's frame rate (--fps overrides),
    so both last as long.
    """
    check_label(chain, label)
    first = chain.specs[0]
    if first.level < 2:
        raise UserError("--input needs a chain of upsampling levels (load_chain(first=L+1))")
    out = Path(out)
    size = first.size // first.space_factor                       # level L's frame size
    in_fps = probe_video(Path(path))[1] or 8
    fps = fps or max(1, round(in_fps * chain.time_factor))
    labels, zs = batch_noise(chain, [0], seed, None, label)
    source = input_chunks(path, size, min_frames=first.crop_frames // first.time_factor)
    input_video = Mp4Stream(out / "input.mp4", max(1, round(in_fps)))
    sheet = {"input": [], "output": []}

    def read(chunks):          # the input as it is read: to input.mp4 and the sheet
        for chunk in chunks:
            input_video.append(chunk[0])
            if sum(c.shape[2] for c in sheet["input"]) * chain.time_factor < sheet_frames:
                sheet["input"].append(chunk[0])
            yield chunk

    stream = read(source)
    for spec, g, z in zip(chain.specs, chain.generators, zs):
        stream = upsample_chunks(g, stream, z, labels if g.num_classes else None, context=spec.context,
                                 window=spec.crop_frames // spec.time_factor)
    output = Mp4Stream(out / "upsampled.mp4", fps)
    bar = tqdm(disable=not progress, unit="frame", desc="upsampling", dynamic_ncols=True)
    try:
        for chunk in stream:                                       # (1, 3, c, H, W)
            output.append(chunk[0])
            if sum(c.shape[1] for c in sheet["output"]) < sheet_frames:
                sheet["output"].append(chunk[0])
            bar.update(chunk.shape[2])
        output.close()
        input_video.close()
        shown = torch.cat(sheet["output"], dim=1)[:, :sheet_frames]                  # (3, n, H, W)
        inputs = torch.cat(sheet["input"], dim=1)
        inputs = inputs[:, [i // chain.time_factor for i in range(shown.shape[1])]]  # same times
        write_image(out / "compare.png", contact_sheet([inputs, shown], size=chain.size))
    except OSError as error:
        raise UserError(f"cannot write into {out} ({error.strerror or error}); choose an "
                        "--out folder you can write to") from error
    finally:
        bar.close()
        output.close()
        input_video.close()
    return [input_video.path, output.path, out / "compare.png"]


def main_input(cfg: SampleConfig) -> None:
    """sample.py --input clip.mp4 [--from-level L]: see upsample_file."""
    if cfg.whole or cfg.stream or cfg.frames is not None or cfg.num != 16 or cfg.truncation is not None:
        raise UserError("--input upsamples one file, streamed and in windows: --whole, --stream, "
                        "--frames, --num and --truncation do not apply to it")
    if cfg.from_level < 1:
        raise UserError(f"--from-level {cfg.from_level}: levels count from 1")
    if not Path(cfg.input).is_file():
        raise UserError(f"--input {cfg.input}: no such file")
    chain = load_chain(cfg.runs, cfg.ckpt, cfg.preset, cfg.device, cfg.levels, first=cfg.from_level + 1)
    first, last = chain.specs[0], chain.specs[-1]
    print(f"preset {chain.preset}: {cfg.input} -> level {cfg.from_level} frames of "
          f"{first.size // first.space_factor}x{first.size // first.space_factor} -> levels "
          f"{first.level}..{last.level} -> x{chain.time_factor} frames at {last.size}x{last.size}")
    for path in upsample_file(chain, cfg.input, cfg.out, cfg.seed, cfg.label, cfg.fps,
                              cfg.sheet_frames, cfg.progress):
        print(path)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    if cfg.input is not None:
        return main_input(cfg)
    if cfg.stream and cfg.whole:
        raise UserError("--stream runs every level in windows; it cannot be combined with --whole")
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
    if cfg.stream:
        for path in write_stream(cfg.out, chain, cfg.num, cfg.seed, cfg.frames, cfg.batch_size,
                                 cfg.truncation, cfg.label, cfg.fps, cfg.sheet_frames, cfg.progress):
            print(path)
        return
    videos, level_videos = generate(chain, cfg.num, cfg.seed, cfg.frames, cfg.batch_size,
                                    cfg.truncation, cfg.label, windowed=not cfg.whole,
                                    return_levels=True, progress=cfg.progress)
    for path in write_outputs(out, chain, videos, level_videos, cfg.fps, cfg.sheet_frames):
        print(path)
    release_out_dir(out)


if __name__ == "__main__":
    run_main(main)
