"""How good is each level of a trained hierarchy: the per-level table and the calibration table.

What this file is in HVG
------------------------
A hierarchy can lose quality at every level, and the chain's end result mixes
them all. This script loads a trained chain (sample.load_chain: the run folders
of level1.py and upsample_level.py) and scores every level on its own and in
the chain, with the download-free two-sample test and motion statistics of
metrics.py (see docs/metrics.md for what the numbers mean):

    level 1           its samples vs real clips at level 1's shape;
    level l alone     fed *real* conditions c = down(x) of real level-l clips x,
                      its output G_l(c, z) vs those same clips x: the level on its
                      own, free of the errors of the levels below, with its
                      condition error mean |down(G_l(c, z)) - c| beside it;
    level l in chain  its output when the chain runs from noise vs real level-l
                      clips. The gap between "alone" and "in chain" is the
                      train/test mismatch of feeding a level generated conditions.

The last level in the chain is the whole model's end result; with I3D weights
(--i3d or $HVG_I3D) its FVD, FID and IS are added. A long sample (4x the
training horizon) shows whether motion dies out past it.

The calibration table says what a number means: the same test between real
clips and real clips of another seed that were frozen, reversed or shuffled in
time, blurred or made noisy, at every level of a preset (and, with --runs, the
chain's samples beside them).

Shapes
------
    real clips        (N, 3, T_l, H_l, W_l) in [-1, 1], held out from training
                      (metrics.real_clips)
    the chain's output at level l: the same shape; every comparison is at the
                      level's own shape

Run
---
    python evaluate.py --real synthetic --runs runs/tiny                        # the per-level table
    python evaluate.py --real synthetic --runs runs/tiny --strips strips/      # + level<l>.png strips
    python evaluate.py --real synthetic --calibrate                            # the calibration table
    python evaluate.py --real synthetic --calibrate --runs runs/tiny           # + the chain's samples
    python evaluate.py --real kinetics600 --real-root /data/k600 --runs runs/kinetics600 \\
        --i3d ~/.cache/hvg/i3d_pretrained_400.pt --device cuda                # + FVD of the samples

The results go to --out (evaluation.json) as well as the screen (markdown
tables); the --c2st-* flags set the two-sample protocol, as in metrics.py.

Where it sits: above the level scripts and sample.py (it imports them);
metrics.py stays below the levels, which use it during training.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

import flags
import sample
from data import PRESETS, down, num_levels
from flags import UserError
from metrics import (C2STProtocol, I3D_ENV, add_common_arguments, add_protocol_arguments,
                     add_real_arguments, fvd_scores, motion_by_segment, protocols, quality,
                     real_clips, take_frames, write_json)
from training import resolve_device
from upsample_level import condition_error
from videos import contact_sheet, side_by_side, write_image, write_video


# ----------------------------------------------------------------------------------
# The per-level table: every level alone (on real conditions) and in the chain.
# ----------------------------------------------------------------------------------

def upsample_real(chain, index: int, condition: torch.Tensor, labels: torch.Tensor,
                  seed: int = 0, batch_size: int = 16) -> torch.Tensor:
    """Level chain.specs[index] alone on real conditions (N, 3, t, h, w), in windows
    exactly as sample.py runs it; noise z of clip i from sample.video_rng(seed, i, level)."""
    spec, generator = chain.specs[index], chain.generators[index]
    outputs = []
    for start in range(0, len(condition), batch_size):
        part = condition[start:start + batch_size]
        z = torch.cat([generator.sample_latent(1, generator=sample.video_rng(seed, start + i, spec.level))
                       for i in range(len(part))])
        y = labels[start:start + len(part)].to(z.device) if generator.num_classes else None
        outputs.append(sample.upsample(generator, part, z, y, context=spec.context,
                                       window=spec.crop_frames // spec.time_factor))
    return torch.cat(outputs)


def level_table(chain, data_name="synthetic", data_root=None, num: int = 256, seed: int = 0,
                protocol: C2STProtocol | None = None, long_factor: int = 4,
                log=print, strips=None) -> dict:
    """Score every level of `chain` (sample.load_chain) alone and in the chain.

    -> {"levels": [{"level", "shape", "chain": {c2st, c2st_std, motion_ratio, ...,
    condition_error}, "real_condition": {...} (levels >= 2)}, ...],
    "long": {"factor", "frames", "motion_by_quarter", "last_over_first"},
    "protocol": ..., "num": ..., "seed": ...}. With `strips` (a folder), also writes
    level<l>.png per level: for 3 clips, rows of real frames, the level's output on
    their real conditions and (another video) its output in the chain: look at them
    beside the numbers.
    """
    protocol = protocol or C2STProtocol(num_videos=num)
    _, chain_videos = sample.generate(chain, num, seed=seed, return_levels=True)
    rows = []
    for index, (spec, in_chain) in enumerate(zip(chain.specs, chain_videos)):
        real, labels = real_clips(data_name, data_root, chain.preset, spec.level, num, seed)
        row = {"level": spec.level, "shape": [spec.frames, spec.size, spec.size]}
        row["chain"] = quality(real, in_chain, protocol)
        if index > 0:
            # In the chain, the condition is the level below's output in the chain.
            row["chain"]["condition_error"] = condition_error(in_chain, chain_videos[index - 1], spec)
            condition = down(real, spec.time_factor, spec.space_factor)       # exactly these clips, down
            alone = upsample_real(chain, index, condition, labels, seed)
            row["real_condition"] = quality(real, alone, protocol)
            row["real_condition"]["condition_error"] = condition_error(alone, condition, spec)
        rows.append(row)
        log(format_level_row(row))
        if strips is not None:
            write_level_strip(Path(strips) / f"level{spec.level}.png", real, alone if index > 0 else None,
                              in_chain)
    # A long sample: freezing past the training horizon shows in the last quarter.
    long = sample.generate(chain, min(num, 64), seed=seed, frames=long_factor * chain.frames)
    quarters = motion_by_segment(long, 4)
    result = {"levels": rows, "protocol": protocol.key(), "num": num, "seed": seed,
              "long": {"factor": long_factor, "frames": long.shape[2], "motion_by_quarter": quarters,
                       "last_over_first": quarters[-1] / max(quarters[0], 1e-12)}}
    log(f"{long_factor}x horizon ({long.shape[2]} frames): motion per quarter "
        + " ".join(f"{q:.4f}" for q in quarters)
        + f"; last / first = {result['long']['last_over_first']:.2f}")
    return result


def write_level_strip(path, real, alone, in_chain, clips: int = 3, frames: int = 8) -> None:
    """A PNG of `frames` frames per row: for each of `clips` clips, the real clip, the
    level's output on its real condition (when there is one), and a chain sample.
    Beside it a GIF of the same clips playing, every frame, side by side: one row per
    clip, columns real | on real condition | in the chain (motion is what a strip
    cannot show: a cross-fade and a move look alike in single frames)."""
    columns = [real, alone, in_chain] if alone is not None else [real, in_chain]
    rows = [column[i, :, :frames] for i in range(clips) for column in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, contact_sheet(rows, size=max(64, real.shape[-1])))
    write_video(path.with_suffix(".gif"), side_by_side(columns, clips), fps=8)


LEVEL_TABLE_HEADER = ("| level | shape | two-sample acc., real condition | two-sample acc., in chain "
                      "| motion ratio, real condition | motion ratio, in chain "
                      "| condition error, real condition | condition error, in chain |\n"
                      "| --- | --- | --- | --- | --- | --- | --- | --- |")


def format_level_row(row: dict) -> str:
    """One markdown row of the per-level table (mean +- std over the judge's seeds)."""
    def acc(scores):
        return f"{scores['c2st']:.3f} ± {scores['c2st_std']:.3f}" if scores else "–"

    def num(scores, key, digits=2):
        return f"{scores[key]:.{digits}f}" if scores and key in scores else "–"
    alone, chained = row.get("real_condition"), row["chain"]
    return (f"| {row['level']} | {'x'.join(map(str, row['shape']))} | {acc(alone)} | {acc(chained)} "
            f"| {num(alone, 'motion_ratio')} | {num(chained, 'motion_ratio')} "
            f"| {num(alone, 'condition_error', 3)} | {num(chained, 'condition_error', 3)} |")


# ----------------------------------------------------------------------------------
# The calibration table: what a two-sample accuracy means.
# ----------------------------------------------------------------------------------

# What the calibration table compares real clips with: transformations whose effect
# on a video everybody can picture, so a reader knows what a number means.
def _shuffle_time(videos: torch.Tensor) -> torch.Tensor:
    order = torch.randperm(videos.shape[2], generator=torch.Generator().manual_seed(0))
    return videos[:, :, order]


def _blur(videos: torch.Tensor) -> torch.Tensor:
    """3x3 box blur of every frame (edges replicated)."""
    n, c, t, h, w = videos.shape
    frames = F.pad(videos.transpose(1, 2).reshape(n * t, c, h, w), (1, 1, 1, 1), mode="replicate")
    return F.avg_pool2d(frames, 3, stride=1).view(n, t, c, h, w).transpose(1, 2)


CALIBRATIONS = {   # name: what is done to real clips of another seed
    "real, another seed": lambda other: other,
    "frozen (first frame held)": lambda other: other[:, :, :1].expand_as(other).clone(),
    "time-reversed": lambda other: other.flip(2),
    "shuffled in time": _shuffle_time,
    "blurred (3x3 box)": _blur,
    "noise added (std 0.1)": lambda other: (other + 0.1 * torch.randn(
        other.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1),
}


def calibration_table(preset: str, data_name="synthetic", data_root=None, num: int = 256,
                      seed: int = 0, protocol: C2STProtocol | None = None, chain=None,
                      log=print) -> dict:
    """The two-sample accuracy and motion ratio of real clips against transformed real
    clips of another seed, at every level (and against `chain`'s samples when given).
    -> {name: {level: {"c2st", "c2st_std", "motion_ratio", ...}}}."""
    protocol = protocol or C2STProtocol(num_videos=num)
    table = {name: {} for name in CALIBRATIONS}
    chain_videos = None
    if chain is not None:
        _, chain_videos = sample.generate(chain, num, seed=seed, return_levels=True)
        table["samples of the trained chain"] = {}
    for level in range(1, num_levels(preset) + 1):
        real, _ = real_clips(data_name, data_root, preset, level, num, seed)
        other, _ = real_clips(data_name, data_root, preset, level, num, seed + 1)
        for name, transform in CALIBRATIONS.items():
            table[name][level] = quality(real, transform(other), protocol)
            log(f"level {level}, {name}: c2st {table[name][level]['c2st']:.3f}")
        if chain_videos is not None and level <= len(chain_videos):
            table["samples of the trained chain"][level] = quality(real, chain_videos[level - 1], protocol)
    return table


def format_calibration(table: dict) -> str:
    levels = sorted({level for row in table.values() for level in row})
    lines = ["| real clips vs | " + " | ".join(f"level {l}: acc. (motion ratio)" for l in levels) + " |",
             "| --- |" + " --- |" * len(levels)]
    for name, row in table.items():
        cells = [f"{row[l]['c2st']:.3f} ± {row[l]['c2st_std']:.3f} ({row[l]['motion_ratio']:.2f})"
                 if l in row else "–" for l in levels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

# ----------------------------------------------------------------------------------
# FVD of the chain's end result (with I3D weights).
# ----------------------------------------------------------------------------------

def chain_batches(chain, num: int, frames: int, seed: int, batch_size: int, what: str):
    """The chain's samples for FVD as (batches, spec), drawn a batch at a time.

    sample.generate keeps a call's videos in host memory, so draw them a batch at a
    time. Chunk c uses its own seed, seed * 1000003 + c: the set is reproducible,
    chunks never repeat each other, and no two --seed values share a chunk (fewer
    than 1000003 chunks). Each sample is cut to the protocol's first `frames` frames.
    """
    def batches():
        for chunk, start in enumerate(range(0, num, batch_size)):
            count = min(batch_size, num - start)
            videos = sample.generate(chain, count, seed * 1000003 + chunk, batch_size=count)
            yield take_frames(videos, frames, f"videos sampled from {what}")

    spec = {"kind": "samples", "checkpoints": [str(Path(p).resolve()) for p in chain.paths],
            "steps": list(chain.steps), "preset": chain.preset, "levels": len(chain.specs),
            "seed": seed}
    return batches(), spec


# ----------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="How good is each level of a trained hierarchy: every level alone (on real "
                    "conditions) and in the chain, with the download-free two-sample test and "
                    "motion statistics (FVD, FID and IS of the end result too with I3D weights); "
                    "or the calibration table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_real_arguments(parser, chain=True)
    chain = parser.add_argument_group("the trained hierarchy").add_mutually_exclusive_group()
    chain.add_argument("--runs", default=None,
                       help="its run folder (level1/ckpt.pt, level2/ckpt.pt, ...), as sample.py takes it")
    chain.add_argument("--ckpt", nargs="+", default=None,
                       help="its checkpoint files, level 1 first")
    what = parser.add_argument_group("what to measure")
    what.add_argument("--strips", default=None,
                      help="write level<l>.png into this folder: real clips beside the level's "
                           "output on their conditions and in the chain")
    what.add_argument("--calibrate", action="store_true",
                      help="the calibration table instead: real clips vs real clips of another seed, "
                           "frozen, time-reversed, shuffled, blurred, noisy (and the chain's "
                           "samples with --runs/--ckpt), at every level of --preset")
    add_protocol_arguments(parser)
    add_common_arguments(parser, out="evaluation.json")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    protocol, c2st_protocol = protocols(args)
    has_chain = args.runs is not None or args.ckpt is not None
    if not (has_chain or args.calibrate):
        raise UserError("nothing to evaluate: give the trained hierarchy's run folder with --runs "
                        "(e.g. --runs runs/tiny) or its checkpoints with --ckpt, or --calibrate for "
                        "the calibration table (to score a folder of videos: metrics.py --fake)")
    if Path(args.real).is_dir():
        raise UserError(f"evaluate.py needs real clips at every level's shape: give a data.py "
                        f"dataset (--real synthetic, kinetics600, ...), not the folder {args.real} "
                        f"(metrics.py --real FOLDER --fake FOLDER compares two folders)")
    if args.preset is not None and args.preset not in PRESETS:
        raise UserError(f"--preset {args.preset}: unknown preset; valid: {', '.join(PRESETS)}")
    device = resolve_device(args.device)
    chain = None
    if has_chain:
        # --level L: the chain's levels 1..L only (levels above may be untrained yet).
        chain = sample.load_chain(runs=args.runs, ckpts=args.ckpt, preset=args.preset, device=device,
                                  levels=args.level)

    if args.calibrate:
        preset = args.preset or (chain.preset if chain else "tiny")
        table = calibration_table(preset, args.real, args.real_root, c2st_protocol.num_videos,
                                  args.seed, c2st_protocol, chain)
        print(format_calibration(table))
        result = {"calibration": {name: {str(level): scores for level, scores in row.items()}
                                  for name, row in table.items()},
                  "preset": preset, "c2st_protocol": c2st_protocol.key()}
    else:
        print(f"per-level evaluation of {chain.paths[0].parent.parent} ({chain.preset}): "
              f"{c2st_protocol.num_videos} real and generated clips per comparison, "
              f"{c2st_protocol.seeds} judge seeds")
        print(LEVEL_TABLE_HEADER)
        result = level_table(chain, args.real, args.real_root, c2st_protocol.num_videos, args.seed,
                             c2st_protocol, strips=args.strips)
        result["c2st_protocol"] = result.pop("protocol")
        if args.i3d or os.environ.get(I3D_ENV):
            fake = chain_batches(chain, protocol.num_videos, protocol.frames, args.seed,
                                 args.batch_size, args.runs or args.ckpt)
            result.update(fvd_scores(args, protocol, device, fake))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    flags.run_main(main)
