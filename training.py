"""The machinery both training scripts share: config <-> command line, devices,
torchrun/DDP, mixed precision, EMA, atomic checkpoints, logs and sample files.

HVG trains every level with the same kind of loop (see `level1.py` and
`upsample_level.py`, where the loop itself is written out in full). Everything
around the loop that would otherwise be copied between the two scripts lives
here, in the order a training script uses it:

    cfg = parse_config(Level1Config)               # dataclass -> argparse -> dataclass, ranges
                                                   # and combinations checked (flags.py, .check())
    dist = setup_distributed(cfg.device)           # torchrun env vars -> rank, device
    prepare_out_dir(out)                           # the run folder, held by this run (flock)
    ckpt = load_checkpoint(path, level=1, ...)     # weights_only=True, checked
    flops = count_flops(lambda: ...)               # FLOPs of one step, for MFU in the log
    with StopRequest() as stop:                    # Ctrl-C: stop at the next step boundary
        ...loop...
        update_ema(ema_g, g, decay)                # exponential moving average of G
        log_line(out, {...}, progress)             # log.jsonl (+ TensorBoard), progress bar
        write_samples(out, step, videos)           # samples/step_000100.mp4 and .gif
        save_checkpoint(path, state)               # atomic: tmp file + fsync + rename

Nothing here knows about a particular level; the level scripts own their models and
their loop: what happens between two steps is written out there, not here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import math
import os
import random
import signal
import sys
import time
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.flop_counter import FlopCounterMode

import flags
from data import UserError, level_spec, write_video

CHECKPOINT_FORMAT = "hvg-checkpoint-v1"


# ----------------------------------------------------------------------------------
# Configuration: one dataclass per level, the command line is generated from it.
# ----------------------------------------------------------------------------------

def option(default, help: str, range: str | None = None, zero_means: str | None = None, **kwargs):
    """A dataclass field with its --help text and, for a number, its valid range.

    range: an interval such as "[1, inf)" or "[0, 1)" (see flags.py); every int or
    float option must have one, so a value outside it stops the script at parse
    time with one `error:` line, before any data or model is built.
    zero_means: what 0 does, where 0 is allowed and means something particular
    (`--sample-every 0`: only at the end); --help shows it.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "range": range, "zero_means": zero_means, **kwargs})


def _arg_type(annotation):
    """The Python type argparse should convert to, from a (string) annotation."""
    # `from __future__ import annotations` makes annotations strings: "int | None".
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    for part in name.replace(" ", "").split("|"):
        if part in ("int", "float", "str", "bool"):
            return {"int": int, "float": float, "str": str, "bool": bool}[part]
    return str


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default, and the script's docstring as it is written."""


def build_parser(config_class, description: str) -> flags.ArgumentParser:
    """argparse parser with one `--flag` per dataclass field (underscores -> dashes).

    Booleans become `--flag / --no-flag`; a field's `metadata["choices"]` becomes
    argparse choices; an int or float field's `metadata["range"]` becomes a type
    that refuses values outside it (and nan, inf). The dataclass is the single
    source of truth for defaults and ranges. Errors are one line (flags.ArgumentParser).
    """
    parser = flags.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        kind = _arg_type(f.type)
        help = f.metadata.get("help", " ")
        kwargs = dict(default=f.default, help=help)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.metadata.get("nargs"):
            parser.add_argument(flag, nargs=f.metadata["nargs"], type=str, **kwargs)
        elif kind in (int, float):
            interval = f.metadata.get("range")
            if interval is None:   # a mistake in the code, not the user's: say where
                raise TypeError(f"{config_class.__name__}.{f.name}: a numeric option needs "
                                "range=... (an interval such as '[1, inf)'; see flags.py)")
            kwargs["help"] = flags.ranged_help(help, interval, f.metadata.get("zero_means"))
            parser.add_argument(flag, type=flags.ranged(flag, kind, interval, help), **kwargs)
        else:
            parser.add_argument(flag, type=kind, **kwargs)
    return parser


def parse_config(config_class, argv=None, description: str = ""):
    """Command line -> config dataclass instance, checked.

    Each value was checked against its range while parsing; then the config's
    `check()` (where it has one) refuses combinations that cannot work (a crop the
    discriminators cannot take, more frames for D_S than a clip has) with a
    UserError. All of this happens before any data or model is built.
    """
    args = build_parser(config_class, description).parse_args(argv)
    cfg = config_class(**vars(args))
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


@dataclass
class TrainConfig:
    """The flags every level's training script has. Each level's config subclasses
    it (level1.Level1Config, upsample_level.UpsampleConfig), adds its own flags and
    sets the defaults its level needs; the command line lists them all (--help).
    The defaults are sized for a short CPU run of the tiny preset: widths 16,
    learning rates 5e-4, beta1 0.5 learn visibly in minutes; DVD-GAN's long-run
    settings (G 1e-4, D 5e-4, beta1 0, EMA 0.9999 after 20k steps) are in the README.
    """
    # Data.
    data: str = option("synthetic", "dataset: synthetic, kinetics600, bdd100k, ucf101, folder or cache")
    data_root: str | None = option(None, "folder of the dataset's videos (or of a `data.py prepare` cache)")
    preset: str = option("tiny", "shape table of the hierarchy (see data.PRESETS)")
    num_workers: int = option(0, "DataLoader worker processes", "[0, inf)",
                              zero_means="load in the training process")
    # Run.
    out: str | None = option(None, "run folder (default: runs/<preset>/level<N>)")
    steps: int = option(800, "generator steps to train for (the run stops at this step)", "[1, inf)")
    batch_size: int = option(16, "global batch size (split across torchrun processes)", "[1, inf)")
    device: str = option("auto", "auto, cpu or cuda")
    # numpy's seeds are below 2**32; torch's and Python's take those too.
    seed: int = option(0, "seed of data order, initialisation and noise", "[0, 2**32)")
    log_every: int = option(20, "steps between log.jsonl lines", "[1, inf)")
    sample_every: int = option(300, "steps between sample videos", "[0, inf)",
                               zero_means="only at the end")
    ckpt_every: int = option(300, "steps between checkpoints (always one at the end)", "[0, inf)",
                             zero_means="only at the end")
    resume: bool = option(True, "resume from <out>/ckpt.pt when it exists")
    amp: str = option("auto", "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16, off",
                      choices=["auto", "bf16", "fp16", "off"])
    compile: bool = option(False, "torch.compile the generator and discriminators")
    tensorboard: bool = option(False, "also log every log.jsonl row as TensorBoard scalars in "
                                      "<out>/tensorboard (needs the tensorboard package)")
    num_samples: int = option(16, "videos in each sample grid", "[1, inf)")
    eval_every: int = option(0, "steps between quality evaluations of the EMA generator: the "
                                "two-sample accuracy (no download needed), plus FVD with --i3d",
                             "[0, inf)", zero_means="no evaluation")
    i3d: str | None = option(None, "I3D weights for FVD during training (see metrics.py; default $HVG_I3D)")
    # The two-sample test trains on half of each set: at least 4 clips.
    eval_videos: int = option(128, "real and generated clips per evaluation", "[4, inf)")
    # Model.
    class_conditional: bool = option(False, "condition G and D on the dataset's class labels")
    z_dim: int = option(120, "latent size (DVD-GAN: 120)", "[1, inf)")
    g_ch: int = option(16, "generator base width (channels at the output resolution)", "[1, inf)")
    d_ch: int = option(16, "discriminator base width", "[1, inf)")
    k_frames: int = option(8, "frames the spatial discriminator scores per clip (DVD-GAN: 8)", "[1, inf)")
    temporal_pool: bool = option(True, "D_T sees the clip 2x average-pooled in space, as DVD-GAN's "
                                       "(cheaper; --no-temporal-pool: full resolution, where a "
                                       "one-pixel move and a cross-fade differ)")
    # Optimisation.
    g_lr: float = option(5e-4, "generator Adam learning rate (DVD-GAN: 1e-4)", "(0, inf)")
    d_lr: float = option(5e-4, "discriminator Adam learning rate (DVD-GAN: 5e-4)", "(0, inf)")
    # Adam needs 0 <= beta < 1: beta = 1 would never forget the first gradient.
    beta1: float = option(0.5, "Adam beta1 (BigGAN, DVD-GAN: 0)", "[0, 1)",
                          zero_means="no momentum")
    beta2: float = option(0.999, "Adam beta2", "[0, 1)", zero_means="no second-moment averaging")
    d_steps: int = option(2, "discriminator steps per generator step (DVD-GAN: 2)", "[1, inf)")
    # decay 1 would freeze the EMA at its first copy of G.
    ema_decay: float = option(0.995, "EMA decay of G's weights (DVD-GAN: 0.9999 on long runs)", "[0, 1)",
                              zero_means="no averaging, the EMA generator is G")
    ema_start: int = option(100, "steps before the EMA starts averaging (it copies G until then)",
                            "[0, inf)", zero_means="average from the first step")
    spatial_weight: float = option(1.0, "weight of the spatial discriminator's loss", "[0, inf)",
                                   zero_means="D_S has no effect (ablation)")
    temporal_weight: float = option(1.0, "weight of the temporal discriminator's loss", "[0, inf)",
                                    zero_means="D_T has no effect (ablation)")

    def check(self) -> None:
        """Combinations of flags that cannot work, refused before anything is built.

        (Each value on its own was already checked against its range by the parser.)
        The level configs add their own checks and call this one.
        """
        level_spec(self.preset, 1)           # an unknown --preset: UserError listing the presets
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: `pip install tensorboard` "
                                "(log.jsonl and `python report.py RUN` need nothing)") from None
        if self.eval_every and (self.i3d or os.environ.get("HVG_I3D")):
            # Without I3D weights the evaluation is the download-free two-sample test
            # (metrics.TrainingEvaluator); with them it adds FVD, and a path that is not
            # a file would only fail once the data and models are built.
            i3d = self.i3d or os.environ.get("HVG_I3D")
            source = "--i3d" if self.i3d else "$HVG_I3D"
            if not Path(i3d).expanduser().is_file():
                raise UserError(
                    f"--eval-every {self.eval_every}: {source} points to {i3d!r}, which is not a "
                    "file; pass the I3D weights file (see metrics.py), or leave it out to "
                    "evaluate with the download-free two-sample test only")


def config_to_dict(cfg) -> dict:
    """Plain dict of primitives: what a checkpoint stores (weights_only-safe)."""
    return dataclasses.asdict(cfg)


# run_main (a UserError ends with one `error:` line and exit code 2) is flags.py's:
# one mechanism for every script; the level scripts import it from here.
run_main = flags.run_main


# ----------------------------------------------------------------------------------
# Devices, torchrun and seeds.
# ----------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {name} was asked for, but PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
            "Use --device cpu (or auto), or install a CUDA build of PyTorch.")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


@dataclass
class Distributed:
    """Where this process sits in a torchrun job (world_size 1 without torchrun)."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        # Only rank 0 writes files and prints: logs, samples and checkpoints.
        return self.rank == 0


def setup_distributed(device_name: str) -> Distributed:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) and join the group.

    `torchrun --nproc_per_node=N script.py ...` starts N copies of the script with
    these variables set; a plain `python script.py` has none and runs alone.
    Backend: NCCL between GPUs, gloo on CPU (used by the tests).
    """
    if "RANK" not in os.environ:          # not started by torchrun: a single process
        return Distributed(0, 0, 1, resolve_device(device_name))
    # Under torchrun the group is joined even with one process, so a one-GPU torchrun
    # job runs the same NCCL code (the stop flag's all_reduce) as an eight-GPU one.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world_size, device)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM ends the run at the next step boundary, not mid-step.

    A KeyboardInterrupt raised in the middle of a step could land after the
    optimiser has already changed the weights; a checkpoint saved then would be
    labelled with the previous step and would not resume exactly. Instead the
    first signal only sets `requested`; the loop checks it after each complete
    step, saves and exits. A second Ctrl-C stops at once (nothing is saved).
    With torchrun every rank gets the signal, and `should_stop` makes the ranks
    agree, so they all stop after the same step.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:      # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def should_stop(self, device: torch.device) -> bool:
        if not torch_dist.is_initialized():
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return bool(flag.item())

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def wrap_ddp(module: torch.nn.Module, device: torch.device,
             sync_batch_norm: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `module`: gradients averaged across ranks.

    sync_batch_norm: batch statistics over the global batch (the generators). It
    needs GPUs; on CPU (gloo, the tests) each rank normalises its own slice.
    """
    if sync_batch_norm and device.type == "cuda":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device] if device.type == "cuda" else None)


def cleanup_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """The global batch size is what the user asks for; each GPU gets a slice."""
    if batch_size % world_size:
        raise UserError(
            f"--batch-size {batch_size} is not divisible by the {world_size} processes "
            f"of this torchrun job; use a multiple of {world_size} "
            f"(e.g. {max(world_size, batch_size // world_size * world_size)}).")
    return batch_size // world_size


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch; each rank gets its own noise stream."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + 1000003 * rank)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one training step on one rank.

    Re-seeding torch at every step makes all of a step's randomness (latents, the
    frames the spatial discriminator picks, crops drawn on the GPU) a function of
    (seed, rank, step). A resumed run therefore continues exactly as an
    uninterrupted one, with no random-generator state to save, on any number of
    ranks; each rank still draws its own noise.
    """
    # SeedSequence mixes the three numbers so nearby (rank, step) pairs never collide.
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------------
# Mixed precision.
# ----------------------------------------------------------------------------------

def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto' -> bf16 on CUDA, off on CPU; returns the autocast dtype or None."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return None
    if amp == "fp16" and device.type == "cpu":
        # CPU autocast supports float16 in recent PyTorch; it is slow but correct.
        return torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for the given dtype, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """fp16 needs loss scaling (its exponent range is small); bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))


# ----------------------------------------------------------------------------------
# EMA of the generator.
# ----------------------------------------------------------------------------------

@torch.no_grad()
def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta.

    Samples come from the EMA weights: averaging over the last ~1/(1-decay) steps
    smooths out the oscillation of GAN training (BigGAN, DVD-GAN). Buffers (batch
    norm running statistics, spectral-norm vectors) are copied, not averaged.
    decay=0 copies the weights: that is the warm-up before `ema_start`.
    """
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - decay)
    for ema_b, b in zip(ema_model.buffers(), model.buffers()):
        ema_b.copy_(b)


@torch.no_grad()
def standing_statistics(model: torch.nn.Module, forward, batches: int = 8) -> None:
    """Re-estimate the batch-norm statistics of `model` for its own weights.

    The EMA generator's weights are an average, but the running means and variances
    it copied were measured on the *training* generator's activations: in eval
    mode that mismatch washes out the samples. BigGAN's fix, "standing statistics":
    reset them, run a few batches in train mode with a cumulative average
    (momentum=None), and go back to eval mode. `forward(model)` runs one batch.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(batches):
        forward(model)
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    model = getattr(model, "module", model)     # DistributedDataParallel
    return getattr(model, "_orig_mod", model)   # torch.compile


# ----------------------------------------------------------------------------------
# Model FLOPs utilisation (MFU): the log line's measure of how well the step uses the chip.
# ----------------------------------------------------------------------------------
#
#   MFU = (FLOPs of one training step x steps per second) / peak FLOP/s of the device
#
# The FLOPs of a step are counted once, at start-up, by torch.utils.flop_counter
# (every matmul and convolution, forward and backward; elementwise work is not
# counted, as in the MFU of nanoGPT and PaLM). The peak is *measured*, not read from a
# datasheet: the FLOP/s of a large square matmul in the step's precision, the
# friendliest workload the device has (bench.py measures it longer and prints both).

def count_flops(run) -> int:
    """FLOPs of the matmuls and convolutions that run() performs (forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for the GPU to finish its queued work (timings); nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 0.3,
                rounds: int = 5) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul: 2 n^3 FLOPs, the best of `rounds` rounds
    of at least `seconds` each (and at least 2 matmuls). The reference for MFU.

    A GPU runs the matmuls asynchronously: `a @ b` returns as soon as it is queued,
    in microseconds. So the clock is read after waiting for each one (synchronize);
    a loop that only looked at the clock would queue thousands of matmuls in
    `seconds` and then wait for all of them: on one H200 in float32, with ten runs
    sharing it, the start-up measurement ran for over 7 minutes (docs/multi_gpu.md).
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b                                              # warm-up (cuBLAS / oneDNN set-up)
    best = math.inf
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        repeats = 0
        while time.perf_counter() - start < seconds or repeats < 2:
            a @ b
            synchronize(device)                        # wait for it: one matmul in flight at a time
            repeats += 1
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float:
    """A cheap start-up estimate of the device's peak FLOP/s in the training precision
    (dtype: the autocast dtype, None for float32): matmul_peak with 3 short rounds,
    about 0.1 s (n = 8192 on a GPU, 512 on a CPU, where a shared machine makes it
    noisy). Measured once per process."""
    n = 8192 if device.type == "cuda" else 512
    return matmul_peak(device, dtype or torch.float32, n, seconds=0.02, rounds=3)


# ----------------------------------------------------------------------------------
# Checkpoints: atomic writes, safe loads, clear errors.
# ----------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically.

    torch.save into `path.tmp-<pid>` in the same folder, flush and fsync it, then
    os.replace it over `path`. A rename within one file system is atomic, so a
    process killed at any moment, or a disk that fills up mid-write, leaves either
    the old complete checkpoint or the new complete one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        # A half-written tmp file on a full disk only takes the space resuming needs.
        with contextlib.suppress(OSError):
            tmp.unlink()
        # torch.save reports a failed write (a full disk) as a RuntimeError raised
        # while handling the OSError; any other RuntimeError is a bug: let it raise.
        cause = error if isinstance(error, OSError) else error.__context__
        if not isinstance(cause, OSError):
            raise
        previous = "the previous checkpoint is intact" if path.exists() else "no checkpoint existed yet"
        raise UserError(
            f"could not write checkpoint {path}: {cause.strerror or cause}; {previous}. "
            "Free disk space (or choose another --out) and resume.") from error
    # Leftovers of earlier processes killed mid-write are garbage: remove them.
    for stale in path.parent.glob(f"{path.name}.tmp-*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def load_checkpoint(path: str | Path, level: int | None = None,
                    preset: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`, refusing anything else.

    `weights_only=True` means torch.load only rebuilds tensors and plain
    containers; a file that contains pickled code (a stranger's "checkpoint") is
    refused instead of executed. Then the level and preset are checked, so a
    level-2 checkpoint handed to level 3 stops with a message, not a shape error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    start_over = ("Delete it (or use --no-resume / another --out) to start over, or restore "
                  "a good copy.")
    # torch.save writes a zip archive. Anything else is a damaged file or another format;
    # it is not handed to the unpickler at all.
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"checkpoint {path} is corrupt or truncated: it is not the zip archive that "
            f"torch.save writes ({path.stat().st_size} bytes). {start_over}")
    # torch.load does not check the zip's CRC-32 checksums, so a file damaged in the
    # middle (a bad copy, a flipped bit) would load with wrong weights. Check them.
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        damaged = f"the archive ({error})"
    if damaged is not None:
        raise UserError(f"checkpoint {path} is corrupt: {damaged} fails its checksum. {start_over}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - every failure here means "bad file"
        text = str(error)
        # The weights-only unpickler names the function or class it refused to import
        # ("Unsupported global: GLOBAL posix.system"): that is pickled code, not damage.
        if "GLOBAL" in text or "Unsupported global" in text:
            raise UserError(
                f"checkpoint {path} contains pickled Python objects, not just tensors; "
                "it was refused because loading it could run arbitrary code. Only load "
                "checkpoints written by hvg (or re-save the weights as a plain state dict).") from error
        detail = text.strip().splitlines()[-1][:200] if text.strip() else "no details"
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {detail}). "
            f"{start_over}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an hvg checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if level is not None and state["level"] != level:
        raise UserError(
            f"checkpoint {path} is of level {state['level']}, but level {level} was asked "
            f"for; it belongs to `{training_command(state['level'])}`. For level {level}, pass "
            f"a level-{level} checkpoint, or use another --out.")
    if preset is not None and state["preset"] != preset:
        raise UserError(
            f"checkpoint {path} was trained with --preset {state['preset']}, but "
            f"--preset {preset} was asked for. Use --preset {state['preset']} or "
            "another --out.")
    return state


def training_command(level: int) -> str:
    """The script that trains `level`: what a user should run with its checkpoint."""
    return "python level1.py" if level == 1 else f"python upsample_level.py --level {level}"


def checkpoint_state(cfg, level: int, step: int, num_classes: int,
                     models: dict, optimizers: dict) -> dict:
    """What a checkpoint holds: everything needed to resume, and to rebuild the models.

    models: {"generator": G, "ema_generator": G_ema, "spatial": D_S, ...};
    optimizers: {"generator": Adam, "discriminator": Adam}. Only tensors, numbers,
    strings and containers, so `torch.load(weights_only=True)` can read it back.
    No random-generator state is needed: see `step_seed`.
    """
    return {
        "format": CHECKPOINT_FORMAT, "level": level, "preset": cfg.preset, "step": step,
        "config": config_to_dict(cfg), "num_classes": num_classes,
        "models": {name: unwrap(m).state_dict() for name, m in models.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
    }


def restore_checkpoint(ckpt: dict, models: dict, optimizers: dict, path) -> int:
    """Load models and optimisers from `ckpt` (see `checkpoint_state`); returns the step."""
    for name, module in models.items():
        load_state(unwrap(module), ckpt["models"][name], name.replace("_", " "), path)
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
    return ckpt["step"]


def check_architecture(ckpt_config: dict, cfg, fields: typing.Iterable[str], path) -> None:
    """Resuming with flags that change the model's shape is an error, not a crash."""
    changed = [f"--{name.replace('_', '-')} was {ckpt_config.get(name)!r}, now {getattr(cfg, name)!r}"
               for name in fields if ckpt_config.get(name) != getattr(cfg, name)]
    if changed:
        raise UserError(
            f"cannot resume from {path}: the architecture changed ({'; '.join(changed)}). "
            "Use the old values, or --no-resume / another --out to start a new run.")


def load_state(module: torch.nn.Module, state: dict, what: str, path) -> None:
    """load_state_dict with a UserError when the shapes do not match."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(
            f"the {what} in {path} does not fit the model built from the current flags "
            f"({str(error).splitlines()[0][:200]}). Use the flags it was trained with, "
            "or --no-resume / another --out.") from error


def check_finite(step: int, ckpt_path: Path, **losses: torch.Tensor) -> None:
    """Stop the run on a NaN or inf loss: training from there only gets worse."""
    for name, value in losses.items():
        if not math.isfinite(float(value.detach())):
            kept = (f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists()
                    else "no checkpoint was written yet")
            raise UserError(
                f"{name} became {float(value.detach())} at step {step}; the run was stopped and "
                f"{kept}. Resume from it with a lower learning rate, or --amp off if "
                "mixed precision was on.")


# ----------------------------------------------------------------------------------
# Output folder, logs and samples.
# ----------------------------------------------------------------------------------

def prepare_out_dir(out: str | Path) -> Path:
    """Create the run folder, hold it (see `hold_out_dir`) and check that it is
    writable, before training starts. Only rank 0 calls it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        hold_out_dir(out)          # before anything in the folder is touched
        (out / "samples").mkdir(exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write to --out {out} ({error.strerror or error}); choose a "
            "folder you can write to.") from error
    return out


# Folders this process holds: resolved path -> the open file descriptor of its lock.
_HELD_FOLDERS: dict[Path, int] = {}


def hold_out_dir(out: Path) -> None:
    """Hold `out` for as long as this process runs: a second run into it stops at once.

    Two runs into one folder (a command started twice, a scheduler's retry) would
    both train to the end, logging every step twice and overwriting each other's
    checkpoints. So a run takes an exclusive OS lock (flock) on `out/.lock` and
    writes its pid there. The kernel drops the lock when the process ends however
    it ends (SIGKILL, a crash, a reboot), so a killed run never leaves a stale lock
    behind: the next run simply takes it and resumes. (flock on NFS is only as good
    as the NFS server's lock support.)

    DataLoader workers (--num-workers) inherit the open lock and exit soon after
    their parent does. Only rank 0 of a torchrun job holds the folder.

    Within one process holding twice is a no-op: tests run several mains in a row.
    """
    key = out.resolve()
    if key in _HELD_FOLDERS:
        return
    # O_CREAT leaves an existing file alone: a refused run changes nothing in `out`.
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # NB: fail now, do not wait
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(
            f"{out} is in use by another run (pid {holder}); wait for it to finish or "
            "choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    # The descriptor stays open (an int, never garbage-collected): closing it
    # would release the lock.
    _HELD_FOLDERS[key] = fd


def release_out_dir(out: str | Path) -> None:
    """Let go of a folder held by `hold_out_dir` (the end of a run or a sampling)."""
    fd = _HELD_FOLDERS.pop(Path(out).resolve(), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_jsonl(path: str | Path, record: dict) -> None:
    """One JSON object per line: easy to tail, grep, and load with pandas.

    A full disk mid-line would leave half a line that no JSON reader accepts: the
    file is cut back to its previous length, and the run stops with a UserError,
    like a failed checkpoint write (see `save_checkpoint`).
    """
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")
    except OSError as error:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise UserError(
            f"could not write {path}: {error.strerror or error}; the run stopped at step "
            f"{record.get('step')} and its last checkpoint is intact. Free disk space (or "
            "choose another --out) and resume.") from None


def tensorboard_writer(cfg, out: Path, dist: Distributed):
    """--tensorboard: a SummaryWriter into <out>/tensorboard on rank 0, else None.
    (The package is optional: TrainConfig.check already refused the flag without it.)"""
    if not (cfg.tensorboard and dist.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(out / "tensorboard")


def log_line(out: Path, record: dict, progress, tensorboard=None, unit: str = "clips") -> None:
    """Write one log row (rank 0): a line of <out>/log.jsonl, the same numbers as
    TensorBoard scalars (with --tensorboard), and the losses, <unit>/s and MFU in
    the progress bar."""
    append_jsonl(out / "log.jsonl", record)
    if tensorboard is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                tensorboard.add_scalar(key, value, record["step"])
    progress.set_postfix(loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}",
                         **{f"{unit}_s": f"{record[f'{unit}_per_s']:.1f}"},
                         mfu=f"{100 * record['mfu']:.1f}%")


def unused_path(path: Path) -> Path:
    """`path`, or `path` with -1, -2, ... before the suffix if it already exists.

    Sample files are numbered by step; a second run in the same folder (after
    --no-resume) must not silently overwrite the first run's samples.
    """
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def set_aside_previous_checkpoint(ckpt_path: Path) -> Path:
    """--no-resume in a folder that already holds a checkpoint: rename the old one to
    ckpt-previous.pt (or ckpt-previous-1.pt, ...) rather than overwrite it at the
    new run's first save. Nothing trained is ever lost silently."""
    kept = unused_path(ckpt_path.with_name(f"{ckpt_path.stem}-previous{ckpt_path.suffix}"))
    os.replace(ckpt_path, kept)
    print(f"--no-resume: kept the previous run's checkpoint as {kept}")
    return kept


def write_samples(out: Path, step: int, grid: torch.Tensor, fps: int = 8) -> list[Path]:
    """Write a sample grid (C, T, H, W) as samples/step_XXXXXX.mp4 and .gif.

    If the disk is full, the step's unfinished files are removed and the run stops
    with a UserError, like a failed checkpoint write (see `save_checkpoint`).
    """
    paths = []
    try:
        for suffix in (".mp4", ".gif"):
            paths.append(unused_path(out / "samples" / f"step_{step:06d}{suffix}"))
            write_video(paths[-1], grid, fps=fps)
    except OSError as error:
        for path in paths:     # a cut-off video is no sample: do not leave it behind
            with contextlib.suppress(OSError):
                path.unlink()
        raise UserError(
            f"could not write sample video {paths[-1]}: {error.strerror or error}; the run "
            f"stopped at step {step} and its last checkpoint is intact. Free disk space "
            "(or choose another --out) and resume.") from None
    return paths
