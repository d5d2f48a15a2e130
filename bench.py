"""bench.py: the numbers behind HVG's scaling claim, measured on this machine.

HVG trains every upsampling level on partial views (a short crop of the video
plus a little temporal context), so the cost of training a level should not grow
with the length of the videos it will generate; a single GAN that generates the
whole full-resolution video has to hold all of it at once (the paper's Fig. 5).
This script measures that, and how fast the levels train and the chain samples:

  1. memory      peak memory of ONE training step (a D update and a G update:
                 forward and backward of G and of every D) against the output
                 length (16, 32, 64, 128 frames at a fixed resolution) for
                   level1    the level-1 GAN generating that many frames,
                   upsample  an upsampling level (tf = sf = 2) whose videos have
                             that many frames, trained on 8-frame partial views,
                   baseline  a non-hierarchical GAN: level 1's generator and D_S,
                             D_T, but generating the full-resolution video directly;
                 and each one's growth: memory at the longest / at the shortest.
  2. throughput  clips/s and model FLOPs utilisation (MFU) of each level's
                 training iteration (the level scripts' default models, tiny
                 preset), against a matmul peak measured in the same run.
  3. sampling    frames/s and peak memory of sample.py's pipeline at 1x, 4x and
                 16x the training horizon, whole-video and streamed (--stream),
                 and each one's growth against 1x.

    python bench.py --json results.json      # full run (about 7 minutes on 2 CPU cores)
    python bench.py --quick                  # smaller frames (about 3 minutes)
    python bench.py --only memory            # one part: memory, throughput or sampling
    python bench.py --only throughput --compile    # the level scripts' --compile path
    python bench.py --only throughput --sn-cache   # spectral norm computed once per update
    python bench.py --only throughput --threads 2  # (default 1: see the README)
    python bench.py --device cuda --json results_gpu.json

Output: a table per part on stdout and, with --json, one file:
    {"memory": {"level1": {"16": bytes, "32": ...}, "upsample": {...}, "baseline": {...},
                "growth": {...}, "settings": {...}},
     "throughput": {...}, "sampling": {...}, "machine": {...}}

How memory is measured ("the step's own peak": weights, optimiser state, the input
batch and the Python interpreter are not counted, so the growth ratios are those
of the step itself):
  * CUDA: torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(),
    minus torch.cuda.memory_allocated() just before the step.
  * CPU: every measurement runs in a fresh process (`bench.py --worker ...`), which
    first runs one untimed step (so optimiser state and oneDNN's caches exist), then
    resets the kernel's peak-RSS counter (writing 5 to /proc/self/clear_refs sets
    VmHWM to the current RSS), reads VmRSS, runs the step and reads VmHWM:
    peak = VmHWM - VmRSS_before. glibc's malloc would keep freed memory and hand it
    back to the next step without the RSS moving, so the workers run with
    MALLOC_MMAP_THRESHOLD_=65536: every tensor larger than 64 KiB gets its own
    mapping, returned to the system when it is freed, and RSS follows the memory in
    use. (Where clear_refs is not writable, a thread samples VmRSS every 0.2 ms.)
    The workers use one thread (OMP_NUM_THREADS=1), which changes speed, not memory.
    Timings run in other processes, without that malloc setting (it slows
    allocation down, ~2x for a training step).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

import data
import flags
import level1
import sample
import upsample_level
from data import level_spec
from discriminators import (
    MatchingDiscriminator,
    SpatialDiscriminator,
    TemporalDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
)
from flags import UserError
from training import (autocast, count_flops, matmul_peak, resolve_amp, resolve_device, run_main,
                      synchronize)

ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------
# Measuring the peak memory of one piece of work.
# ----------------------------------------------------------------------------------

def _proc_status_bytes(field: str) -> int:
    """A memory line of /proc/self/status ("VmRSS:   1234 kB") in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS counter (VmHWM) to the current RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as peak: work()` -> peak.bytes: the most memory the
    work held at once, beyond what was held when it started (see the file's docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes = 0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        self.sampler = None
        if not _reset_peak_rss():
            # No clear_refs (some containers): watch RSS from a thread. Torch releases the
            # GIL inside its kernels, so the thread keeps running during the work.
            self.sampled, self.stop = 0, threading.Event()

            def watch():
                while not self.stop.is_set():
                    self.sampled = max(self.sampled, _proc_status_bytes("VmRSS"))
                    time.sleep(0.0002)

            self.sampler = threading.Thread(target=watch, daemon=True)
            self.sampler.start()
        self.before = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.before
        elif self.sampler is not None:
            self.stop.set()
            self.sampler.join()
            self.bytes = max(self.sampled, _proc_status_bytes("VmRSS")) - self.before
        else:
            self.bytes = _proc_status_bytes("VmHWM") - self.before
        return False


# ----------------------------------------------------------------------------------
# One GAN training step, as the level scripts take it.
# ----------------------------------------------------------------------------------

@dataclass
class GAN:
    """What a training step needs: the models, a real batch and how to call them.

    make_fake(z) -> fake video; scores(video, frozen) -> {discriminator name: (B,)
    scores}, frozen=True in the G update. For an upsampling level both close over
    the batch's condition (partial view).
    """
    generator: nn.Module
    discriminators: dict
    real: torch.Tensor                                   # (B, 3, T, H, W)
    make_fake: Callable[[torch.Tensor], torch.Tensor]
    scores: Callable[[torch.Tensor], dict]
    z_dim: int
    d_steps: int = 2
    amp_dtype: torch.dtype | None = None
    sn_cache: bool = False        # see train_step

    def __post_init__(self):
        self.d_params = [p for d in self.discriminators.values() for p in d.parameters()]
        # The level scripts' optimisers (Adam, BigGAN betas); the rates do not matter here.
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=1e-4, betas=(0.0, 0.999))
        self.d_opt = torch.optim.Adam(self.d_params, lr=1e-4, betas=(0.0, 0.999))

    @property
    def batch(self) -> int:
        return self.real.shape[0]


def train_step(gan: GAN, d_steps: int | None = None) -> None:
    """d_steps discriminator updates and one generator update: the body of the
    level scripts' loop (without logging, EMA and checkpoints).

        L_D = sum_D E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]     (D updates)
        L_G = -sum_D E[D(G(z))]                                   (G update, D frozen)

    The levels weight each discriminator's term (--spatial-weight, --temporal-weight,
    --matching-weight; 1 by default); a weight changes no cost, so the bench leaves
    them out.

    gan.sn_cache (bench.py --sn-cache): each update's forward and backward run inside
    torch.nn.utils.parametrize.cached(), so every spectrally normalised weight
    W / sigma(W) is computed once per update instead of at every use: level 1's
    ConvGRU uses its two convolutions once per frame, and D scores real and fake
    clips with the same weights. The level scripts do not do this (yet): the flag
    measures what that change would gain.
    """
    device = gan.real.device
    cache = parametrize.cached if gan.sn_cache else contextlib.nullcontext
    for _ in range(gan.d_steps if d_steps is None else d_steps):
        z = torch.randn(gan.batch, gan.z_dim, device=device)
        with cache():
            with autocast(device, gan.amp_dtype):
                with torch.no_grad():
                    fake = gan.make_fake(z)
                real_scores, fake_scores = gan.scores(gan.real), gan.scores(fake)
                loss_d = sum(hinge_d_loss(real_scores[n], fake_scores[n]) for n in real_scores)
            gan.d_opt.zero_grad(set_to_none=True)
            loss_d.backward()
        gan.d_opt.step()
    for p in gan.d_params:
        p.requires_grad_(False)
    z = torch.randn(gan.batch, gan.z_dim, device=device)
    with cache():
        with autocast(device, gan.amp_dtype):
            fake_scores = gan.scores(gan.make_fake(z), frozen=True)
            loss_g = sum(hinge_g_loss(s) for s in fake_scores.values())
        gan.g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
    gan.g_opt.step()
    for p in gan.d_params:
        p.requires_grad_(True)


def compiled(module: nn.Module, compile: bool):
    """torch.compile(module) when asked (--compile), else the module itself."""
    return torch.compile(module) if compile else module


def level1_gan(frames: int, size: int, batch: int, g_ch: int, d_ch: int, z_dim: int,
               k_frames: int, device, d_steps: int = 2, amp_dtype=None, compile=False, *,
               temporal_pool: bool) -> GAN:
    """Level 1 (or, at full resolution and length, the non-hierarchical baseline):
    G(z) -> (B, 3, frames, size, size), judged by D_S and D_T, as level1.main builds them
    (temporal_pool: D_T on the clip pooled 2x, DVD-GAN's; level1.py's --temporal-pool).
    compile: as level1.py --compile: G and each D compiled, but the G update calls
    the plain discriminators (the script's training.unwrap strips the compiled wrapper)."""
    torch.manual_seed(0)
    generator = level1.Level1Generator(frames, size, z_dim, g_ch).to(device)
    discriminators = {"spatial": SpatialDiscriminator(3, d_ch, size, k_frames).to(device),
                      "temporal": TemporalDiscriminator(3, d_ch, size, pool_input=temporal_pool).to(device)}
    real = torch.rand(batch, 3, frames, size, size, device=device) * 2 - 1
    run = {name: compiled(d, compile) for name, d in discriminators.items()}

    def scores(video, frozen=False):
        return {name: (discriminators if frozen else run)[name](video) for name in discriminators}

    return GAN(generator, discriminators, real, compiled(generator, compile), scores, z_dim,
               d_steps, amp_dtype)


def upsample_gan(cfg: upsample_level.UpsampleConfig, device, amp_dtype=None, compile=False) -> GAN:
    """An upsampling level as upsample_level.main builds it, with one batch of partial
    views cut by data.level_example from random full-length videos of the level.

    Only the crop reaches the models: target (B, 3, crop, H, W) and condition
    (B, 3, crop/tf + 2K, h, w), however long the level's videos are.
    """
    spec, crop, context, crop_size = upsample_level.crop_settings(cfg)
    size = crop_size or spec.size
    torch.manual_seed(0)
    generator = upsample_level.UpsampleGenerator(spec.time_factor, spec.space_factor, cfg.z_dim,
                                                 cfg.g_ch, cfg.encoder_blocks).to(device)
    discriminators = {"spatial": SpatialDiscriminator(3, cfg.d_ch, size, cfg.k_frames).to(device),
                      "temporal": TemporalDiscriminator(3, cfg.d_ch, size,
                                                        pool_input=cfg.temporal_pool).to(device)}
    if cfg.matching:
        discriminators["matching"] = MatchingDiscriminator(
            3, cfg.d_ch, size, pool_input=cfg.matching_pool).to(device)
    examples = []
    for i in range(cfg.batch_size):
        # A random "real" video of the level's FULL length (3, T_l, H_l, W_l), as a
        # dataset item would be; the partial view is cut from it, then it is dropped.
        video = torch.rand(3, spec.frames, spec.size, spec.size) * 2 - 1
        example = data.level_example(video, cfg.preset, cfg.level, crop, context, crop_size,
                                     rng=np.random.default_rng(i))
        examples.append({k: example[k].clone() for k in ("target", "condition")})
    real = torch.stack([e["target"] for e in examples]).to(device)          # (B, 3, crop, H, W)
    condition = torch.stack([e["condition"] for e in examples]).to(device)  # (B, 3, crop/tf+2K, h, w)
    del examples, video

    run_generator = compiled(generator, compile)
    run = {name: compiled(d, compile) for name, d in discriminators.items()}

    def make_fake(z):
        return run_generator(condition, z, context=context)

    def scores(video, frozen=False):
        ds = discriminators if frozen else run            # see level1_gan
        result = {"spatial": ds["spatial"](video), "temporal": ds["temporal"](video)}
        if "matching" in ds:
            result["matching"] = ds["matching"](upsample_level.matching_condition(condition, context), video)
        return result

    return GAN(generator, discriminators, real, make_fake, scores, cfg.z_dim, cfg.d_steps, amp_dtype)


# ----------------------------------------------------------------------------------
# 1. Memory against the output length (the paper's Fig. 5).
# ----------------------------------------------------------------------------------

@dataclass
class MemorySettings:
    lengths: tuple = (16, 32, 64, 128)   # output frames
    low_size: int = 32                   # level 1's resolution
    high_size: int = 64                  # the upsampling level's (and the baseline's) resolution
    batch: int = 2
    ch: int = 16                         # g_ch = d_ch of every model
    z_dim: int = 64
    k_frames: int = 8                    # frames D_S scores per clip
    crop_frames: int = 8                 # the upsampling level's partial view ...
    context: int = 2                     # ... and its context, in condition frames each side


QUICK_MEMORY = MemorySettings(low_size=16, high_size=32)   # same lengths, smaller frames
KINDS = ("level1", "upsample", "baseline")


def memory_gan(kind: str, frames: int, s: MemorySettings, device) -> GAN:
    """The model whose training step is measured, for an output of `frames` frames."""
    # Level 1 and the baseline keep DVD-GAN's pooled D_T here (level1.py's default is
    # full resolution): the figure is about how memory grows with length, not its level.
    if kind == "level1":       # the outline: all frames, low resolution
        return level1_gan(frames, s.low_size, s.batch, s.ch, s.ch, s.z_dim, s.k_frames, device, d_steps=1,
                          temporal_pool=True)
    if kind == "baseline":     # one GAN for the whole video: all frames, full resolution
        return level1_gan(frames, s.high_size, s.batch, s.ch, s.ch, s.z_dim, s.k_frames, device, d_steps=1,
                          temporal_pool=True)
    # The upsampling level of a two-level hierarchy whose final videos have `frames`
    # frames at high_size: (frames/2 x low_size) -> (frames x high_size), tf = sf = 2.
    preset = f"bench-{frames}"
    data.PRESETS[preset] = data._pyramid([(frames // 2, s.low_size), (frames, s.high_size)],
                                         crop_frames=s.crop_frames, context=s.context)
    cfg = upsample_level.UpsampleConfig(level=2, preset=preset, batch_size=s.batch, g_ch=s.ch,
                                        d_ch=s.ch, z_dim=s.z_dim, k_frames=s.k_frames, d_steps=1)
    return upsample_gan(cfg, device)


def memory_worker(kind: str, frames: int, settings: dict, device: str) -> dict:
    """Runs in a fresh process: the peak memory of one training step (see the docstring)."""
    device = resolve_device(device)
    gan = memory_gan(kind, frames, MemorySettings(**settings), device)
    train_step(gan)                       # first step: Adam's state, kernel caches
    synchronize(device)
    peaks = []
    for _ in range(3):                    # the median of three steps: RSS moves by a few
        with PeakMemory(device) as peak:  # hundred KiB from step to step on the CPU
            train_step(gan)
        peaks.append(peak.bytes)
    return {"bytes": statistics.median(peaks)}


def run_worker(task: dict, threads: int = 1, memory: bool = False, timeout: int = 1800) -> dict:
    """Run `bench.py --worker TASK` in a fresh process; returns its JSON answer.

    memory=True: the process measures memory, so malloc returns every freed tensor
    to the system (see the docstring). That makes allocation slower (every large
    tensor is a fresh mapping whose pages are zeroed when first touched: a training
    step takes ~2x longer), so timings run in processes without it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"   # every tensor > 64 KiB gets its own mapping
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--worker", json.dumps(task)],
                            env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            check=False)
    if result.returncode == 2:        # a UserError in the worker: pass its message on
        raise UserError(result.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if result.returncode != 0:
        raise RuntimeError(f"bench worker {task} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_memory(settings: MemorySettings, device: torch.device) -> dict:
    results = {kind: {} for kind in KINDS}
    for kind in KINDS:
        for frames in settings.lengths:
            task = {"task": "memory", "kind": kind, "frames": frames,
                    "settings": asdict(settings), "device": str(device)}
            results[kind][str(frames)] = run_worker(task, memory=True)["bytes"]
            print(f"  memory {kind:9s} {frames:4d} frames: {mib(results[kind][str(frames)]):9.1f} MiB",
                  flush=True)
    first, last = str(settings.lengths[0]), str(settings.lengths[-1])
    results["growth"] = {kind: results[kind][last] / results[kind][first] for kind in KINDS}
    results["settings"] = asdict(settings)
    results["method"] = ("cuda: max_memory_allocated - memory_allocated before the step"
                         if device.type == "cuda" else
                         "cpu: fresh process per point, VmHWM (reset via /proc/self/clear_refs) "
                         "- VmRSS before the step, MALLOC_MMAP_THRESHOLD_=65536, one thread")
    return results


# ----------------------------------------------------------------------------------
# 2. Training throughput and model FLOPs utilisation.
# ----------------------------------------------------------------------------------

def step_flops(gan: GAN) -> int:
    """FLOPs of one training iteration (forward and backward of every matmul and
    convolution), counted by torch.utils.flop_counter while it runs (training.count_flops,
    which the level scripts use for the MFU in their log line)."""
    return count_flops(lambda: train_step(gan))


def time_steps(gan: GAN, iterations: int) -> list[float]:
    """Seconds of each of `iterations` training iterations (after one untimed warm-up)."""
    train_step(gan)
    times = []
    for _ in range(iterations):
        synchronize(gan.real.device)
        start = time.perf_counter()
        train_step(gan)
        synchronize(gan.real.device)
        times.append(time.perf_counter() - start)
    return times


def training_gans(preset: str, device, amp_dtype, compile=False):
    """{level: GAN} with the level scripts' default models and batch sizes."""
    gans = {}
    cfg1 = level1.Level1Config(preset=preset)
    spec = level_spec(preset, 1)
    gans[1] = level1_gan(spec.frames, spec.size, cfg1.batch_size, cfg1.g_ch, cfg1.d_ch, cfg1.z_dim,
                         cfg1.k_frames, device, cfg1.d_steps, amp_dtype, compile,
                         temporal_pool=cfg1.temporal_pool)
    for level in range(2, data.num_levels(preset) + 1):
        gans[level] = upsample_gan(upsample_level.UpsampleConfig(level=level, preset=preset),
                                   device, amp_dtype, compile)
    return gans


def throughput_worker(device: str, iterations: int, threads: int, sn_cache: bool,
                      compile: bool, preset: str = "tiny") -> dict:
    """Runs in a fresh process with `threads` threads: peak FLOP/s, then each level's
    iteration time and FLOPs (counted in eager mode: compiling changes how, not what,
    is computed)."""
    device = resolve_device(device)
    torch.set_num_threads(threads)
    amp_dtype = resolve_amp("auto", device)           # what the level scripts use by default
    peaks = {"float32": matmul_peak(device, torch.float32, 4096 if device.type == "cuda" else 1024)}
    if device.type == "cuda":
        peaks["bfloat16"] = matmul_peak(device, torch.bfloat16, 8192)
    step_dtype = "bfloat16" if amp_dtype == torch.bfloat16 else "float32"
    results = {"preset": preset, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
               "threads": torch.get_num_threads(), "sn_cache": sn_cache, "compile": compile,
               "peak_flops": peaks,
               "mfu_against": step_dtype, "levels": {}}
    for level, gan in training_gans(preset, device, amp_dtype).items():
        flops = step_flops(gan)
        compile_seconds = None
        if compile:
            gan = training_gans(preset, device, amp_dtype, compile=True)[level]
            start = time.perf_counter()
            train_step(gan)               # compiles (the next iterations reuse the code)
            compile_seconds = time.perf_counter() - start
        gan.sn_cache = sn_cache
        times = time_steps(gan, iterations)
        # The median: other processes on a shared machine slow some iterations down.
        seconds = statistics.median(times)
        # Clips per second counted as the level scripts' log counts them: every D
        # update and the G update each take one batch.
        clips = gan.batch * (gan.d_steps + 1)
        results["levels"][str(level)] = {
            "batch": gan.batch, "d_steps": gan.d_steps, "seconds_per_iteration": seconds,
            "seconds_each": times, "compile_seconds": compile_seconds,
            "clips_per_s": clips / seconds, "flops_per_iteration": flops,
            "achieved_flops": flops / seconds, "mfu": flops / seconds / peaks[step_dtype]}
    return results


def bench_throughput(device: torch.device, iterations: int, threads: int, sn_cache: bool,
                     compile: bool) -> dict:
    task = {"task": "throughput", "device": str(device), "iterations": iterations,
            "threads": threads, "sn_cache": sn_cache, "compile": compile}
    results = run_worker(task, threads=threads)
    for level, r in results["levels"].items():
        compiling = (f" (after {r['compile_seconds']:.0f} s compiling)"
                     if r["compile_seconds"] is not None else "")
        print(f"  training level {level}: {r['seconds_per_iteration']:.3f} s/iteration, "
              f"{r['clips_per_s']:.1f} clips/s, MFU {100 * r['mfu']:.1f}%{compiling}", flush=True)
    return results


# ----------------------------------------------------------------------------------
# 3. Sampling: the whole chain at 1x, 4x and 16x the training horizon, whole and streamed.
# ----------------------------------------------------------------------------------

def random_chain(preset: str, device) -> sample.Chain:
    """A chain of randomly initialised generators with the level scripts' default
    sizes (time and memory do not depend on the weights' values)."""
    torch.manual_seed(0)
    generators = [level1.build_generator(asdict(level1.Level1Config(preset=preset)), 0)]
    for level in range(2, data.num_levels(preset) + 1):
        cfg = upsample_level.UpsampleConfig(level=level, preset=preset)
        generators.append(upsample_level.build_generator(asdict(cfg), 0))
    specs = [level_spec(preset, level) for level in range(1, len(generators) + 1)]
    return sample.Chain(preset, specs, [sample.freeze(g).to(device) for g in generators],
                        paths=[], steps=[], num_classes=0, device=device)


class PeakPerCall:
    """Stands in for a generator in sample.upsample and records each call's peak
    memory: the memory one window needs."""

    def __init__(self, generator, device):
        self.generator, self.device, self.peaks = generator, device, []
        self.time_factor, self.space_factor = generator.time_factor, generator.space_factor

    def __call__(self, *args, **kwargs):
        with PeakMemory(self.device) as peak:
            out = self.generator(*args, **kwargs)
        self.peaks.append(peak.bytes)
        return out


def sampling_worker(horizon: int, num: int, runs: str | None, device: str, measure: str,
                    stream: bool = False) -> dict:
    """Runs in a fresh process: sample `num` videos of `horizon` x the training length.
    measure="speed": frames/s of the whole pipeline; "memory": its peak memory, and
    stage by stage. stream=False: `sample.generate` (the videos end up in memory, as
    `python sample.py --frames F` holds them before writing); stream=True:
    `sample.write_stream`, as `python sample.py --frames F --stream` runs it, mp4
    files included (into a temporary folder; ffmpeg's own processes are not counted)."""
    import tempfile

    device = resolve_device(device)
    chain = (sample.load_chain(runs=runs, device=device) if runs else random_chain("tiny", device))
    frames = chain.frames * horizon
    sample.generate(chain, 1, frames=chain.frames)                # warm-up

    def pipeline():
        if not stream:
            return sample.generate(chain, num, seed=0, frames=frames, batch_size=num)
        with tempfile.TemporaryDirectory() as out:
            sample.write_stream(out, chain, num, seed=0, frames=frames, batch_size=num)
        return None

    if measure == "speed":
        # The whole pipeline; best of two runs.
        times = []
        for _ in range(2):
            start = time.perf_counter()
            pipeline()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return {"frames": frames, "videos": num, "seconds": min(times),
                "frames_per_s": num * frames / min(times)}
    with PeakMemory(device) as peak:
        videos = pipeline()
    video_bytes = num * 3 * frames * chain.size**2 * 4
    result = {"peak_bytes": peak.bytes, "output_bytes": video_bytes}
    del videos
    if stream:
        return result
    # Stage by stage: level 1 (an RNN over all frames, the whole video at once), then
    # each upsampling level in windows (the peak of one window).
    unroll, _ = sample.level_frames(chain, frames)
    with torch.inference_mode():
        z = chain.generators[0].sample_latent(num, generator=torch.Generator().manual_seed(0))
        with PeakMemory(device) as peak:
            video = chain.generators[0](z, frames=unroll).float().cpu()
        result["level1_peak_bytes"] = peak.bytes
        result["window_peak_bytes"] = {}
        for spec, generator in zip(chain.specs[1:], chain.generators[1:]):
            measured = PeakPerCall(generator, device)
            z = generator.sample_latent(num, generator=torch.Generator().manual_seed(spec.level))
            video = sample.upsample(measured, video, z, context=spec.context,
                                    window=spec.crop_frames // spec.time_factor)
            result["window_peak_bytes"][str(spec.level)] = max(measured.peaks)
    # What the generators themselves need at once: level 1's unroll or one window,
    # whichever is larger. On a GPU this is the device memory (the videos between
    # levels wait in host memory); on the CPU the videos add to it (peak_bytes).
    result["generators_peak_bytes"] = max(result["level1_peak_bytes"],
                                          *result["window_peak_bytes"].values())
    return result


SAMPLING_HORIZONS = (1, 4, 16)


def bench_sampling(device: torch.device, num: int, runs: str | None) -> dict:
    """The whole pipeline at 1x, 4x and 16x the training horizon, whole-video
    ("1x", "4x", "16x": generate) and streamed ("stream", {"1x": ...}: write_stream)."""
    results = {"source": runs or "random weights, the level scripts' default sizes (tiny preset)",
               "stream": {}}
    for stream in (False, True):
        for horizon in SAMPLING_HORIZONS:
            task = {"task": "sampling", "horizon": horizon, "num": num, "runs": runs,
                    "device": str(device), "stream": stream}
            r = {**run_worker({**task, "measure": "speed"}),
                 **run_worker({**task, "measure": "memory"}, memory=True)}
            (results["stream"] if stream else results)[f"{horizon}x"] = r
            print(f"  sampling {horizon}x{' streamed' if stream else ''}: {r['frames']} frames, "
                  f"{r['frames_per_s']:.1f} frames/s, peak {mib(r['peak_bytes']):.1f} MiB"
                  + (f", generators {mib(r['generators_peak_bytes']):.1f} MiB" if not stream else ""),
                  flush=True)
    one, four = results["1x"], results["4x"]
    results["ratio_4x_1x"] = {
        "peak": four["peak_bytes"] / one["peak_bytes"],
        "generators": four["generators_peak_bytes"] / one["generators_peak_bytes"],
        "level1": four["level1_peak_bytes"] / one["level1_peak_bytes"],
        "windows": {l: four["window_peak_bytes"][l] / one["window_peak_bytes"][l]
                    for l in one["window_peak_bytes"]}}
    # Growth of the whole pipeline's peak against 1x: whole-video and streamed.
    results["growth"] = {kind: {f"{h}x": where[f"{h}x"]["peak_bytes"] / where["1x"]["peak_bytes"]
                                for h in SAMPLING_HORIZONS[1:]}
                         for kind, where in (("whole", results), ("stream", results["stream"]))}
    return results


# ----------------------------------------------------------------------------------
# Tables and the command line.
# ----------------------------------------------------------------------------------

def mib(n: float) -> float:
    return n / 2**20


def print_tables(results: dict) -> None:
    if "memory" in results:
        m = results["memory"]
        lengths = list(m["level1"].keys())
        print("\nPeak memory of one training step (MiB) vs output frames")
        print(f"{'model':10s}" + "".join(f"{l:>10s}" for l in lengths) + f"{'growth':>10s}")
        for kind in KINDS:
            print(f"{kind:10s}" + "".join(f"{mib(m[kind][l]):10.1f}" for l in lengths)
                  + f"{m['growth'][kind]:9.2f}x")
        s = m["settings"]
        print(f"(level1 at {s['low_size']}px; upsample: {s['low_size']}->{s['high_size']}px, "
              f"crops of {s['crop_frames']} frames + {s['context']} context; baseline at "
              f"{s['high_size']}px; batch {s['batch']}, width {s['ch']})")
        ok_up, ok_base = m["growth"]["upsample"] <= 1.05, m["growth"]["baseline"] >= 4
        print(f"upsampling level grows <= 5%: {'yes' if ok_up else 'NO'}; "
              f"baseline grows >= 4x: {'yes' if ok_base else 'NO'}")
    if "throughput" in results:
        t = results["throughput"]
        print(f"\nTraining throughput ({t['preset']} preset, default models, amp {t['amp']}, "
              f"{t['threads']} threads{', spectral norm cached' if t['sn_cache'] else ''}"
              f"{', compiled' if t['compile'] else ''}); peak "
              + ", ".join(
                  f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in t["peak_flops"].items()))
        print(f"{'level':>6s}{'batch':>7s}{'s/iter':>9s}{'clips/s':>9s}{'GFLOP/iter':>12s}"
              f"{'GFLOP/s':>9s}{'MFU':>8s}")
        for level, r in t["levels"].items():
            print(f"{level:>6s}{r['batch']:7d}{r['seconds_per_iteration']:9.3f}{r['clips_per_s']:9.1f}"
                  f"{r['flops_per_iteration'] / 1e9:12.2f}{r['achieved_flops'] / 1e9:9.2f}"
                  f"{100 * r['mfu']:7.1f}%")
    if "sampling" in results:
        s = results["sampling"]
        print(f"\nSampling ({s['source']}); memory in MiB")
        print(f"{'horizon':>8s}{'frames':>8s}{'frames/s':>10s}{'peak':>8s}{'videos':>8s}"
              f"{'level 1':>9s}{'windows':>18s}{'generators':>12s}")
        for horizon in [h for h in ("1x", "4x", "16x") if h in s]:
            r = s[horizon]
            windows = " / ".join(f"{mib(b):.1f}" for b in r["window_peak_bytes"].values())
            print(f"{horizon:>8s}{r['frames']:8d}{r['frames_per_s']:10.1f}{mib(r['peak_bytes']):8.1f}"
                  f"{mib(r['output_bytes']):8.1f}{mib(r['level1_peak_bytes']):9.1f}{windows:>18s}"
                  f"{mib(r['generators_peak_bytes']):12.1f}")
        ratio = s["ratio_4x_1x"]
        print(f"4x / 1x: whole pipeline {ratio['peak']:.2f}x, generators {ratio['generators']:.2f}x "
              f"(level 1 {ratio['level1']:.2f}x, windows "
              + ", ".join(f"level {l} {r:.2f}x" for l, r in ratio["windows"].items())
              + f"); generators within 10%: {'yes' if ratio['generators'] <= 1.10 else 'NO'}")
        if "growth" in s:
            print("\nWhole pipeline's peak memory (MiB), whole-video (generate) vs streamed (--stream)")
            print(f"{'':8s}" + "".join(f"{h:>10s}" for h in s["stream"]) + f"{'16x/1x':>10s}")
            for kind, where in (("whole", s), ("stream", s["stream"])):
                print(f"{kind:8s}" + "".join(f"{mib(where[h]['peak_bytes']):10.1f}" for h in s["stream"])
                      + f"{s['growth'][kind]['16x']:9.2f}x")
            print(f"streamed growth at 16x within 10%: {'yes' if s['growth']['stream']['16x'] <= 1.10 else 'NO'}")


def machine_info(device: torch.device) -> dict:
    # The load average says how busy the machine was: other processes slow timings down.
    info = {"device": str(device), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_parser() -> flags.ArgumentParser:
    """bench.py's command line; --threads has its range (flags.py), errors are one line."""
    parser = flags.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write all results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="reduced sizes: a few minutes on 2 CPU cores")
    parser.add_argument("--only", choices=["memory", "throughput", "sampling"], action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--runs", help="sample from these trained checkpoints (runs/<preset>) "
                                       "instead of random weights")
    threads_help = ("torch threads for the throughput part (1: see the README; on a "
                    "shared CPU more threads that wait on each other are far slower)")
    parser.add_argument("--threads", type=flags.ranged("--threads", int, "[1, inf)", "torch threads"),
                        default=1, help=flags.ranged_help(threads_help, "[1, inf)"))
    parser.add_argument("--sn-cache", action="store_true",
                        help="throughput with spectral-norm weights cached per update (see train_step)")
    parser.add_argument("--compile", action="store_true",
                        help="throughput with torch.compile, as the level scripts' --compile "
                             "(the first iteration compiles: minutes on a CPU, seconds once "
                             "Inductor's cache in /tmp holds the code)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)   # internal: one measurement
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        kind = task.pop("task")
        workers = {"memory": memory_worker, "throughput": throughput_worker,
                   "sampling": sampling_worker}
        answer = workers[kind](**task)
        print(json.dumps(answer))
        return

    device = resolve_device(args.device)
    if device.type == "cpu" and not Path("/proc/self/status").exists():
        raise UserError("measuring CPU memory needs Linux's /proc; run on Linux or with --device cuda")
    if args.json:
        # Fail now, not after the measurements, if the file cannot be written.
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).touch()
        except OSError as error:
            raise UserError(f"cannot write --json {args.json} ({error.strerror or error})") from error
    parts = args.only or ["memory", "throughput", "sampling"]
    if args.runs and "sampling" in parts:
        sample.load_chain(runs=args.runs, device="cpu")    # a bad --runs fails now, with its message
    results = {"machine": machine_info(device), "quick": args.quick}
    print(f"bench on {device} ({results['machine'].get('gpu') or results['machine'].get('cpu', 'cpu')}, "
          f"{os.cpu_count()} cores; measurements in one-thread processes, throughput with "
          f"{args.threads}){' --quick' if args.quick else ''}", flush=True)
    if "memory" in parts:
        results["memory"] = bench_memory(QUICK_MEMORY if args.quick else MemorySettings(), device)
    if "throughput" in parts:
        results["throughput"] = bench_throughput(device, 3 if args.quick else 7, args.threads,
                                                 args.sn_cache, args.compile)
    if "sampling" in parts:
        results["sampling"] = bench_sampling(device, num=4 if args.quick else 8, runs=args.runs)
    print_tables(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    run_main(main)
