"""Does the hierarchy help? HVG's quality claims, tested on the built-in data.

HVG's paper makes four claims about quality (bench.py measures its memory claim):

  1. at the same compute, a hierarchy generates better long, high-resolution video
     than one GAN that generates it directly (DVD-GAN);
  2. the matching discriminator D_M keeps each upsampling level grounded to its
     input: without it the output drifts from its condition;
  3. more temporal context buys coherence, at a cost in memory and time;
  4. partial views (training crops) cost little quality.

This script trains one model per *variant* on the synthetic data (`tiny` preset,
32 frames of 64x64 in the end), each for the same CPU time, and scores them all
the same way:

  hierarchy    the default three levels (level1.py, upsample_level.py --level 2, 3)
  single       one DVD-GAN-style GAN: level 1's generator with D_S and D_T, but
               generating the finest shape (32x64x64) directly (preset tiny_single)
  no_matching  the upsampling levels without D_M (--no-matching)
  context_0    the upsampling levels' temporal context, --context 0, 1, 4 (default 2)
  context_1
  context_4
  whole_video  the upsampling levels trained on whole videos, not partial views
               (--crop-frames = the level's frames, --crop-size 0)

    python experiments/ablations.py                      # all variants, 14 min each
    python experiments/ablations.py --quick              # 2 min each, a smaller judge
    python experiments/ablations.py --variants hierarchy,single --minutes 10 --json abl.json

It writes runs/ablations/<variant>/level<l>/ (each a normal run folder: ckpt.pt,
log.jsonl, samples/), the table as markdown to stdout and to <out>/ablations.md,
<out>/side_by_side.gif (real clips, then three samples of each variant, playing),
and with --json a list of rows, one per variant:

    {"name", "what", "c2st", "c2st_std", "motion_ratio",          # 1x: the training length
     "c2st_4x", "c2st_4x_std", "motion_ratio_4x", "motion_by_quarter_4x",
     "last_over_first_4x",                                         # 4x the training length
     "condition_error": [level 2, level 3] ([] for single),
     "peak_memory_bytes", "peak_memory_by_level", "seconds_per_step" (one per level),
     "steps" (one per level), "train_seconds", "budget_seconds", "levels" (run folders)}

How each variant gets the same compute (--minutes of training time, B = 60 * minutes s):

  * Timing first. Every level of every variant trains --timing-steps steps (3) in a
    scratch folder (<out>/timing/), in this process, with the same flags as the
    real run; its seconds per step t are read from log.jsonl (every step logged;
    the first step, which warms caches up, is left out).
  * `single` trains B / t steps.
  * `hierarchy` splits B across its levels in the proportions the defaults do:
    level l trains s * default_steps_l steps with one scale s for all levels,
    s = B / sum_l(default_steps_l * t_l) (the scripts' --steps defaults, read from
    their configs, today 1200, 600, 600: each level gets the same share of the
    steps as in the default run).
  * The other variants change only the upsampling levels, so they share the
    hierarchy's level 1 (trained once, into <out>/hierarchy/level1; its time counts
    in every variant's budget) and split what is left, B - steps_1 * t_1, over
    levels 2 and 3 the same way. A slower variant (whole_video, context_4) thus
    gets fewer steps: that is the cost the claims are about.
  * The time counted is the training steps' own (steps x seconds per step), not the
    start-up, the last sample grid or the checkpoint, which every variant pays
    alike. `train_seconds` in the table is measured in the real runs, so it shows
    how close the timing run's estimate came to B (on a busy machine, not very).

How memory is measured: every real training run is a fresh process
(`ablations.py --worker`, which calls the level script's main(argv) as a user's
command would); bench.PeakMemory measures it around main(): on a GPU the peak
allocated CUDA memory, on a CPU the peak resident memory (VmHWM) beyond what the
process held before main() (Python and torch). That counts the data, the weights,
the optimiser state and the activations. A variant's peak is the largest of its
levels' (levels train one after another). Unlike bench.py's per-step numbers, this
is a whole run's peak, and malloc may keep freed memory, so on a CPU it reads a
little high; compare variants with each other, not with bench.py.

How quality is scored (metrics.py and evaluate.py, docs/metrics.md), with --clips
real clips and --clips generated videos, --seeds judges:

  * 1x: `sample.generate` of the finest videos against real clips of the finest
    shape (clips training never drew, metrics.real_clips): the two-sample accuracy
    (0.5: the judge cannot tell) and the motion ratio (1: real motion);
  * 4x: videos sampled 4x longer than training (level 1's RNN unrolled further);
    the judge sees their last 32 frames against the same real clips (synthetic
    video is stationary: any 32 frames of a real video look like a real clip), and
    the motion per quarter shows whether the video freezes or flickers past the
    training length (last / first quarter near 1: it keeps moving);
  * condition error of each upsampling level alone, on real conditions c = down(x):
    mean |down(G_l(c, z)) - c|, 0 when the output keeps exactly to its input.

What it costs on a CPU. `single` is by far the most expensive variant per step:
its generator and discriminators work at 32x64x64 throughout. Measured once with
--quick on 2 CPU cores shared with other jobs (one thread): level 1 took 0.5 s a
step, levels 2 and 3 0.4 s, `single` 52 s, with a peak RSS of 5.5 GB. In the full run
recorded in docs/ablations.md (14 minutes, one thread, 2 h 2 min in all; made when the
defaults were 900 / 700 / 700 steps) `single` trained 11 steps against the
hierarchy's 427 / 379 / 379, which is the equal-compute comparison the claim is about; with --quick (2 min)
it trains 2, and its timing run alone takes minutes: --quick is a smoke test of
the pipeline, not a result.

One run is one seed of each variant at a small scale: differences of a few
hundredths in the two-sample accuracy are within the noise (see the spread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # `python experiments/ablations.py` from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import bench  # noqa: E402   (its PeakMemory: one way of measuring memory in the project)
import data  # noqa: E402
import evaluate  # noqa: E402
import flags  # noqa: E402
import level1  # noqa: E402
import metrics  # noqa: E402
import sample  # noqa: E402
import upsample_level  # noqa: E402
from flags import UserError  # noqa: E402
from training import resolve_device, run_main  # noqa: E402
from videos import side_by_side, write_video  # noqa: E402

PRESET = "tiny"                 # the built-in data's hierarchy: 8x16x16 -> 16x32x32 -> 32x64x64
SINGLE_PRESET = "tiny_single"   # its finest shape as one level (data.PRESETS)
LONG_FACTOR = 4                 # "4x the horizon"
SHOWN = 3                       # clips per variant in <out>/side_by_side.gif
SCRIPTS = {"level1": level1, "upsample_level": upsample_level}


# ----------------------------------------------------------------------------------
# The variants: which levels each trains, with which flags.
# ----------------------------------------------------------------------------------

@dataclass
class Variant:
    name: str
    what: str
    single: bool = False                      # one GAN at the finest shape
    upsample_flags: callable = None           # level (2, 3) -> extra upsample_level.py flags

    def level_flags(self, level: int) -> list[str]:
        return self.upsample_flags(level) if self.upsample_flags and level > 1 else []


def _whole_video(level: int) -> list[str]:
    # The crop is the whole clip: as many output frames as the level has, whole frames.
    return ["--crop-frames", str(data.level_spec(PRESET, level).frames), "--crop-size", "0"]


VARIANTS = {v.name: v for v in [
    Variant("hierarchy", "the default three levels"),
    Variant("single", "one GAN generating 32x64x64 directly (level-1 G, D_S + D_T)", single=True),
    Variant("no_matching", "upsampling levels without D_M", upsample_flags=lambda l: ["--no-matching"]),
    Variant("context_0", "temporal context 0", upsample_flags=lambda l: ["--context", "0"]),
    Variant("context_1", "temporal context 1", upsample_flags=lambda l: ["--context", "1"]),
    Variant("context_4", "temporal context 4", upsample_flags=lambda l: ["--context", "4"]),
    Variant("whole_video", "upsampling levels on whole videos, no partial views",
            upsample_flags=_whole_video),
]}


@dataclass
class LevelRun:
    """One training run: which script, which level, its folder and flags."""
    level: int
    script: str                       # "level1" or "upsample_level"
    out: Path
    flags: list[str]                  # everything but --out and --steps
    default_steps: int                # the script's default --steps (for the split)
    seconds_per_step: float = 0.0     # from the timing run, then from the real run
    steps: int = 0
    peak_memory_bytes: int = 0

    def argv(self, out: Path, steps: int) -> list[str]:
        return [*self.flags, "--out", str(out), "--steps", str(steps)]


def default_steps(config_class) -> int:
    return next(f.default for f in dataclasses.fields(config_class) if f.name == "steps")


def level_runs(variant: Variant, args) -> list[LevelRun]:
    """The training runs of a variant, level 1 first."""
    common = ["--data", "synthetic", "--seed", str(args.seed), "--device", args.device,
              # Log every step (the timing reads it); samples and a checkpoint only at the end.
              "--log-every", "1", "--sample-every", "0", "--ckpt-every", "0", "--no-resume",
              *shlex.split(args.train_flags)]
    root = Path(args.out)
    if variant.single:
        return [LevelRun(1, "level1", root / variant.name / "level1", ["--preset", SINGLE_PRESET, *common],
                         default_steps(level1.Level1Config))]
    runs = [LevelRun(1, "level1", root / "hierarchy" / "level1", ["--preset", PRESET, *common],
                     default_steps(level1.Level1Config))]   # shared by every hierarchy variant
    for level in range(2, data.num_levels(PRESET) + 1):
        runs.append(LevelRun(level, "upsample_level", root / variant.name / f"level{level}",
                             ["--preset", PRESET, "--level", str(level), *common,
                              *variant.level_flags(level)],
                             default_steps(upsample_level.UpsampleConfig)))
    return runs


# ----------------------------------------------------------------------------------
# Equal time: seconds per step from a short run, then steps from the budget.
# ----------------------------------------------------------------------------------

def seconds_per_step(run: LevelRun, out: Path, skip_lines: int = 0) -> float:
    """Median seconds per training step, read from the run's log.jsonl.

    Each line (one per step: --log-every 1) has `<unit>_per_s` = examples / elapsed,
    and a step uses batch_size * (d_steps + 1) examples (d_steps D batches, one G
    batch), so seconds = batch_size * (d_steps + 1) / rate. The first step warms
    caches up and is left out when there are others.
    """
    config_class = level1.Level1Config if run.script == "level1" else upsample_level.UpsampleConfig
    cfg = run_config(config_class, run.argv(out, 1))
    per_step = cfg.batch_size * (cfg.d_steps + 1)
    lines = (out / "log.jsonl").read_text().splitlines()[skip_lines:]
    unit = "clips_per_s" if run.script == "level1" else "crops_per_s"   # the level scripts' log keys
    rates = [json.loads(line)[unit] for line in lines]
    rates = rates[1:] if len(rates) > 1 else rates
    return statistics.median(per_step / rate for rate in rates)


def run_config(config_class, argv):
    from training import parse_config
    return parse_config(config_class, argv)


def time_level(run: LevelRun, args) -> float:
    """Train --timing-steps steps in a scratch folder (in this process) and return
    the seconds per step."""
    scratch = Path(args.out) / "timing" / run.out.relative_to(Path(args.out))
    shutil.rmtree(scratch, ignore_errors=True)
    run_main(SCRIPTS[run.script].main, run.argv(scratch, args.timing_steps))
    return seconds_per_step(run, scratch)


def split_budget(runs: list[LevelRun], budget: float) -> None:
    """Set each run's steps so that sum(steps * seconds_per_step) is `budget`, in the
    proportions of the scripts' default steps (see the docstring):
        s = budget / sum_l(default_steps_l * t_l),   steps_l = max(1, round(s * default_steps_l))
    """
    scale = budget / sum(r.default_steps * r.seconds_per_step for r in runs)
    for r in runs:
        r.steps = max(1, round(scale * r.default_steps))


# ----------------------------------------------------------------------------------
# Training: one fresh process per run, so its time and memory are its own.
# ----------------------------------------------------------------------------------

def train_worker(script: str, argv: list[str], device: str) -> dict:
    """Runs in a fresh process (`ablations.py --worker`): the level script's main(argv),
    as `python level1.py ARGV` would, inside bench.PeakMemory."""
    start = time.time()
    with bench.PeakMemory(resolve_device(device)) as peak:
        run_main(SCRIPTS[script].main, argv)
    return {"peak_memory_bytes": peak.bytes, "wall_seconds": time.time() - start}


def train(run: LevelRun, args) -> None:
    """Train one level for run.steps steps; record its real seconds per step and peak memory."""
    log = run.out / "log.jsonl"
    skip = len(log.read_text().splitlines()) if log.exists() else 0   # an earlier run's lines
    task = {"script": run.script, "argv": run.argv(run.out, run.steps), "device": args.device}
    print(f"train {run.out} for {run.steps} steps", flush=True)
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)],
                            capture_output=True, text=True, cwd=os.getcwd(), check=False)
    if result.returncode == 2:         # a UserError in the level script: pass its message on
        raise UserError(result.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if result.returncode != 0:
        raise RuntimeError(f"training {run.out} failed:\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    run.peak_memory_bytes = answer["peak_memory_bytes"]
    run.seconds_per_step = seconds_per_step(run, run.out, skip)


# ----------------------------------------------------------------------------------
# Scoring: the finest videos at 1x and 4x the horizon, and each level's condition error.
# ----------------------------------------------------------------------------------

def long_samples(chain, clips: int, seed: int, batch: int = 32):
    """Sample `clips` videos LONG_FACTOR x longer than training, in parts of `batch`
    (a 4x sample of 256 clips would be 1.6 GB at once): -> (their last chain.frames
    frames (clips, 3, T, H, W), motion energy per quarter averaged over the clips)."""
    tails, quarters = [], []
    for part, start in enumerate(range(0, clips, batch)):
        n = min(batch, clips - start)
        # Video i of a call depends on (seed, i): each part gets its own seed.
        long = sample.generate(chain, n, seed=seed * 10007 + part, frames=LONG_FACTOR * chain.frames)
        tails.append(long[:, :, -chain.frames:])
        quarters.append([q * n for q in metrics.motion_by_segment(long, 4)])
    return torch.cat(tails), [sum(q) / clips for q in zip(*quarters)]


def real_clips_by_level(args) -> dict:
    """The real clips every variant is scored against, made once: level -> (clips,
    labels) of `PRESET`'s upsampling levels (clips training never drew). The finest
    level's are also the 1x and 4x comparison (tiny's level 3 == tiny_single's level 1,
    same pixels)."""
    return {level: metrics.real_clips("synthetic", None, PRESET, level, args.clips, args.seed)
            for level in range(2, data.num_levels(PRESET) + 1)}


def score(variant: Variant, runs: list[LevelRun], args, reals: dict) -> tuple[dict, torch.Tensor]:
    """-> (the variant's row, its first SHOWN generated videos for the GIF)."""
    chain = sample.load_chain(ckpts=[r.out / "ckpt.pt" for r in runs], device=args.device)
    protocol = metrics.C2STProtocol(num_videos=args.clips, seeds=args.seeds)
    real, _ = reals[data.num_levels(PRESET)]

    # 1x: the training length.
    fake = sample.generate(chain, args.clips, seed=args.seed)
    one = metrics.quality(real, fake, protocol)
    # 4x: the last 32 frames of 128-frame videos against the same real clips.
    tails, quarters = long_samples(chain, args.clips, args.seed)
    four = metrics.quality(real, tails, protocol)

    # Each upsampling level alone, on real conditions c = down(x): mean |down(G(c, z)) - c|.
    condition_errors = []
    for index, spec in enumerate(chain.specs[1:], start=1):
        level_real, labels = reals[spec.level]
        condition = data.down(level_real, spec.time_factor, spec.space_factor)
        alone = evaluate.upsample_real(chain, index, condition, labels, args.seed)
        condition_errors.append(upsample_level.condition_error(alone, condition, spec))

    row = {
        "name": variant.name, "what": variant.what,
        "c2st": one["c2st"], "c2st_std": one["c2st_std"], "motion_ratio": one["motion_ratio"],
        "c2st_4x": four["c2st"], "c2st_4x_std": four["c2st_std"], "motion_ratio_4x": four["motion_ratio"],
        "motion_by_quarter_4x": quarters, "last_over_first_4x": quarters[-1] / max(quarters[0], 1e-12),
        "condition_error": condition_errors,
        "peak_memory_bytes": max(r.peak_memory_bytes for r in runs),
        "peak_memory_by_level": [r.peak_memory_bytes for r in runs],
        "seconds_per_step": [r.seconds_per_step for r in runs],
        "steps": [r.steps for r in runs],
        "train_seconds": sum(r.steps * r.seconds_per_step for r in runs),
        "budget_seconds": 60 * args.minutes,
        "levels": [str(r.out) for r in runs],
    }
    return row, fake[:SHOWN].cpu()


# ----------------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------------

def format_table(rows: list[dict], args) -> str:
    def numbers(values, digits):
        return " / ".join(f"{v:.{digits}f}" for v in values) or "-"

    lines = [
        "| variant | C2ST 1x | motion 1x | C2ST 4x | motion 4x | 4x last/first quarter "
        "| condition error (L2 / L3) | peak memory MiB | s/step per level | steps per level | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['c2st']:.3f} +- {r['c2st_std']:.3f} | {r['motion_ratio']:.2f} "
            f"| {r['c2st_4x']:.3f} +- {r['c2st_4x_std']:.3f} | {r['motion_ratio_4x']:.2f} "
            f"| {r['last_over_first_4x']:.2f} | {numbers(r['condition_error'], 3)} "
            f"| {r['peak_memory_bytes'] / 2**20:.0f} | {numbers(r['seconds_per_step'], 2)} "
            f"| {' / '.join(map(str, r['steps']))} | {r['train_seconds']:.0f} |")
    lines.append("")
    lines.append(f"Budget {args.minutes:g} min of training steps per variant; two-sample test: "
                 f"metrics.TwoSampleJudge, {args.clips} real and {args.clips} generated clips of "
                 f"32x64x64 (4x: the last 32 frames of 128), {args.seeds} seed(s), mean +- std; "
                 f"seed {args.seed}; extra level flags: {args.train_flags or 'none'}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------

def build_parser() -> flags.ArgumentParser:
    parser = flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ranged, ranged_help = flags.ranged, flags.ranged_help
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated variants to run (default: all): {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=ranged("--minutes", float, "(0, inf)", "training time per variant"),
                        help=ranged_help("minutes of training steps per variant (default 14: "
                                         "the default run's training steps take 13.75 min on 2 "
                                         "idle CPU cores; --quick: 2)", "(0, inf)"))
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run: --minutes 2 --clips 64 --seeds 1 unless given")
    parser.add_argument("--clips", type=ranged("--clips", int, "[4, inf)", "clips for the two-sample test"),
                        help=ranged_help("real and generated clips each for the two-sample test "
                                         "(default 256; --quick: 64)", "[4, inf)"))
    parser.add_argument("--seeds", type=ranged("--seeds", int, "[1, inf)", "two-sample test seeds"),
                        help=ranged_help("two-sample test seeds, averaged (default 3; --quick: 1)", "[1, inf)"))
    parser.add_argument("--timing-steps", type=ranged("--timing-steps", int, "[2, inf)", "timing steps"),
                        default=3, help=ranged_help("steps of each level's timing run", "[2, inf)"))
    parser.add_argument("--seed", type=ranged("--seed", int, "[0, 2**32)", "seed"), default=0,
                        help=ranged_help("training seed of every level and seed of the scoring", "[0, 2**32)"))
    parser.add_argument("--train-flags", default="",
                        help="extra flags for every level script, e.g. \"--g-ch 8 --d-ch 8\" "
                             "(the same for every variant)")
    parser.add_argument("--out", default="runs/ablations", help="folder of the variants' runs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--worker", help=argparse.SUPPRESS)   # internal: one training run
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line (no work yet)."""
    args = build_parser().parse_args(argv)
    for name, full, quick in (("minutes", 14.0, 2.0), ("clips", 256, 64), ("seeds", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.variant_names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_names if v not in VARIANTS]
    if unknown or not args.variant_names:
        raise UserError(f"--variants {args.variants}: unknown {', '.join(unknown) or 'empty list'}; "
                        f"valid: {', '.join(VARIANTS)}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(train_worker(**json.loads(args.worker))))
        return []
    if args.json:   # fail now, not after hours of training, if the file cannot be written
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).touch()
        except OSError as error:
            raise UserError(f"cannot write --json {args.json} ({error.strerror or error})") from error
    budget = 60 * args.minutes
    variants = [VARIANTS[name] for name in args.variant_names]
    plans = {v.name: level_runs(v, args) for v in variants}

    # 1. Timing: seconds per step of every distinct level run (level 1 is shared).
    timed = {}
    for runs in plans.values():
        for run in runs:
            if run.out not in timed:
                timed[run.out] = time_level(run, args)
            run.seconds_per_step = timed[run.out]

    # 2. Steps: the same budget for every variant (see the docstring). The hierarchy's
    # split decides the shared level 1's steps (its levels 2, 3 are timed for that even
    # when the hierarchy itself is not among --variants).
    shared_level1 = None
    if any(not v.single for v in variants):
        hierarchy = level_runs(VARIANTS["hierarchy"], args)
        for run in hierarchy:
            run.seconds_per_step = timed[run.out] if run.out in timed else time_level(run, args)
        split_budget(hierarchy, budget)
        shared_level1 = hierarchy[0]
    for runs in plans.values():
        if shared_level1 is not None and runs[0].out == shared_level1.out:
            runs[0] = shared_level1            # one object: trained once, counted in each budget
            split_budget(runs[1:], budget - shared_level1.steps * shared_level1.seconds_per_step)
        else:
            split_budget(runs, budget)

    # 3. Training, each run in its own process; the shared level 1 once.
    trained = set()
    for runs in plans.values():
        for run in runs:
            if run.out not in trained:
                train(run, args)
                trained.add(run.out)

    # 4. Scoring and the table.
    reals = real_clips_by_level(args)
    rows, shown = [], []
    for variant in variants:
        print(f"score {variant.name}", flush=True)
        row, videos = score(variant, plans[variant.name], args, reals)
        rows.append(row)
        shown.append(videos)
    table = format_table(rows, args)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # What the numbers mean, to the eye: one column of real clips, then one column per
    # variant in --variants order (hierarchy next to single by default), the same
    # SHOWN clips of the 1x scoring (the first ones, so row i is seed-for-seed the same
    # sampling call in every column).
    real_finest = reals[data.num_levels(PRESET)][0]
    write_video(Path(args.out) / "side_by_side.gif", side_by_side([real_finest, *shown], SHOWN), fps=8)
    (Path(args.out) / "ablations.md").write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    run_main(main)
