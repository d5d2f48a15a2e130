"""Level 1 of HVG: a DVD-GAN-style generator of short, low-resolution video outlines.

The first level of the hierarchy generates the whole video from noise, but small:
few frames, low frame rate, low resolution (the `tiny` preset: 8 frames of 16x16;
Kinetics-600: 12 frames of 64x64). Later levels (`upsample_level.py`) add frames
and pixels. This file holds the level's generator and its complete training loop.

    z ~ N(0, I)  (B, z_dim)                              (+ class label, optional)
      -> linear -> 4x4 feature map                        (B, C, 4, 4)
      -> + a clock: sines of the frame index t            (B, T, C, 4, 4)
      -> [ConvGRU over T frames -> residual up-block] x n (B, T, C', 2H, 2W) ...
      -> BN, ReLU, conv, tanh                             (B, 3, T, H, W) in [-1, 1]

Because frames come out of a recurrent network, the generator can be unrolled for
more frames than it was trained on: `generator(z, frames=4 * T)`.

Train it (defaults: synthetic data, tiny preset, CPU or GPU picked automatically):

    python level1.py                                   # -> runs/tiny/level1/
    python level1.py --data kinetics600 --data-root /data/kinetics600/train --preset kinetics600
    torchrun --nproc_per_node=8 level1.py --preset kinetics600 ...

It writes runs/<preset>/level1/ckpt.pt (resumed automatically), log.jsonl and
samples/step_XXXXXX.{mp4,gif} from the EMA generator.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import LevelDataset, UserError, level_spec, make_dataset, make_loader, video_grid
from discriminators import (SpatialDiscriminator, TemporalDiscriminator, discriminator_stats,
                            hinge_d_loss, hinge_g_loss, orthogonal_init, sn_conv2d, sn_linear)
from metrics import TrainingEvaluator   # --eval-every: the two-sample test (+ FVD)
from training import (StopRequest, TrainConfig, autocast, check_architecture, check_finite,
                      checkpoint_state, cleanup_distributed, count_flops, load_checkpoint,
                      log_line, make_grad_scaler, option, parse_config, peak_flops,
                      per_rank_batch, prepare_out_dir, release_out_dir, resolve_amp,
                      restore_checkpoint, run_main, save_checkpoint, seed_everything,
                      set_aside_previous_checkpoint, setup_distributed, standing_statistics,
                      step_seed, tensorboard_writer, unwrap, update_ema, wrap_ddp,
                      write_samples)


# ----------------------------------------------------------------------------------
# Configuration (the command line is generated from this dataclass).
# ----------------------------------------------------------------------------------

@dataclass
class Level1Config(TrainConfig):
    """Level 1's flags: those of training.TrainConfig (data, run, model widths,
    optimisation), with level 1's defaults: 1200 steps of 16 clips, D_T at full resolution."""
    out: str | None = option(None, "run folder (default: runs/<preset>/level1)")
    # 1200 steps: the README trains level 1 beside levels 2 and 3, one core each (they
    # learn from real clips, not from level 1), so level 1 has the whole run's time:
    # 1200 steps on one thread take about what 900 steps on two and the upsampling
    # levels after them did. Level 1 is the level short of steps (docs/quality.md
    # sections 6, 22, 23: its held frames are told from real ones less often at 1200
    # than at 900 steps, on two seeds).
    steps: int = option(1200, "generator steps to train for (the run stops at this step)", "[1, inf)")
    # D_T at full resolution here: level 1's objects move about one pixel per frame,
    # and 2x pooling makes such a move and a cross-fade of the two positions the same
    # pooled frames (tests/test_quality_causes.py): nothing told level 1 to move its
    # objects rather than fade them. At full resolution the two-sample test tells
    # its clips from real ones less often, on two seeds (docs/quality.md section 7).
    temporal_pool: bool = option(False, "D_T sees the clip 2x average-pooled in space, as DVD-GAN's "
                                        "(cheaper; the default --no-temporal-pool: full resolution, "
                                        "where a one-pixel move and a cross-fade differ)")
    # A clock in the ConvGRU's input (Level1Generator.clock_input): with the same
    # input at every frame, level 1's motion died out past its training length and a
    # 4x unroll froze; with it the last quarter moves as much as the first, and the
    # clips are harder to tell from real ones, on two seeds (docs/quality.md section 13).
    clock: bool = option(True, "add a random-phase clock (sines of the frame index) to the ConvGRU's "
                               "input (--no-clock: the same input at every frame, as DVD-GAN, "
                               "whose motion dies out past the training length)")

    # R1 (Mescheder et al. 2018) on real clips, lazily (StyleGAN2): with gamma 1, every
    # 4th D step, level 1's clips are told from real ones less often on two seeds, at
    # about the default's time (docs/quality.md section 20). Not in DVD-GAN.
    r1_gamma: float = option(1.0, "R1 penalty: gamma / 2 * E ||d(sum_D w_D D(x)) / dx||^2 over real clips x, "
                                  "added to the discriminators' loss (docs/quality.md section 20: 1 "
                                  "is better than 0 on two seeds)", "[0, inf)", zero_means="no penalty")
    r1_every: int = option(4, "lazy R1: the penalty on every N-th discriminator step only, weighted N "
                              "times (StyleGAN2)", "[1, inf)")

    def check(self) -> None:
        """Flag combinations level 1 cannot train with (see TrainConfig.check)."""
        super().check()
        frames = level_spec(self.preset, 1).frames
        if self.k_frames > frames:
            raise UserError(
                f"--k-frames {self.k_frames}: the spatial discriminator picks frames of level 1's "
                f"{frames}-frame clips (preset {self.preset!r}); use --k-frames {frames} or fewer")


# These fields decide the shapes of the weights: resuming with others is an error.
ARCHITECTURE_FIELDS = ("preset", "class_conditional", "z_dim", "g_ch", "d_ch", "temporal_pool",
                       "clock")


# ----------------------------------------------------------------------------------
# Generator building blocks.
# ----------------------------------------------------------------------------------

class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are predicted from the latent (and class).

        y = (1 + gamma(c)) * (x - mean) / sqrt(var + eps) + beta(c)

    c is the conditioning vector [z, embed(label)]; gamma and beta are linear maps
    of it (BigGAN). Every frame of a video gets the same gamma/beta: the latent
    describes the whole clip.
    """

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gamma = sn_linear(cond_dim, channels, bias=False)
        self.beta = sn_linear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W) with N = B*T; cond: (N, cond_dim)
        gamma = self.gamma(cond)[:, :, None, None]   # (N, C, 1, 1)
        beta = self.beta(cond)[:, :, None, None]
        return (1 + gamma) * self.norm(x) + beta


class UpBlock(nn.Module):
    """BigGAN residual up-block, applied to each frame (time folded into the batch).

        h = conv(relu(cbn(up(relu(cbn(x))))))  ... written out:
        h = relu(cbn1(x)); h = upsample2x(h); h = conv1(h)
        h = relu(cbn2(h)); h = conv2(h)
        out = h + conv_1x1(upsample2x(x))
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, padding_mode: str = "zeros"):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(in_ch, cond_dim)
        self.conv1 = sn_conv2d(in_ch, out_ch, 3, padding=1, padding_mode=padding_mode)
        self.bn2 = ConditionalBatchNorm(out_ch, cond_dim)
        self.conv2 = sn_conv2d(out_ch, out_ch, 3, padding=1, padding_mode=padding_mode)
        self.shortcut = sn_conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x, cond))
        h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.bn2(h, cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ConvGRU(nn.Module):
    """A convolutional GRU, unrolled once per frame: the source of motion.

    For each frame t, with input x_t and state h_{t-1} (both (B, C, H, W)):
        r_t = sigmoid(W_r * [x_t, h_{t-1}])            reset gate
        u_t = sigmoid(W_u * [x_t, h_{t-1}])            update gate
        c_t = tanh(W_c * [x_t, r_t . h_{t-1}])         candidate state
        h_t = u_t . h_{t-1} + (1 - u_t) . c_t          (. is elementwise, * is conv)
    The output for frame t is h_t. h_0 = `state` when given (sample.py's streaming
    continues a video from the state its previous chunk ended in), else 0. tanh (not
    DVD-GAN's ReLU) keeps the state bounded, which keeps long unrolls (4x the
    training length) stable.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gates = sn_conv2d(2 * channels, 2 * channels, 3, padding=1)   # r and u at once
        self.candidate = sn_conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        # inputs: (B, T, C, H, W), state: (B, C, H, W) or None -> outputs (B, T, C, H, W)
        h = torch.zeros_like(inputs[:, 0]) if state is None else state
        outputs = []
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            r, u = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
            c = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
            h = u * h + (1 - u) * c
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class Level1Generator(nn.Module):
    """z (and label) -> video (B, 3, T, H, W) in [-1, 1].

    Layout for an output of size S: log2(S / 4) groups, each a ConvGRU over the
    frames at the current resolution followed by a residual block that doubles it.
    Widths halve as the resolution doubles, from g_ch * min(8, 2**groups) at 4x4
    down to g_ch at S x S (tiny, S=16: 64 -> 32 -> 16 with the default g_ch=16).
    The defaults of z_dim, ch and clock are the command line's (--z-dim, --g-ch, --clock).
    """

    # The clock's periods, in level-1 frames (see clock_input): from faster than one clip
    # to eight clips, so a clip sees whole cycles and near-straight stretches.
    CLOCK_PERIODS = (8, 16, 32, 64)

    def __init__(self, frames: int, size: int, z_dim: int = 120, ch: int = 16,
                 num_classes: int = 0, clock: bool = True):
        super().__init__()
        self.frames, self.size, self.z_dim, self.num_classes = frames, size, z_dim, num_classes
        groups = int(round(torch.log2(torch.tensor(size / 4)).item()))
        if 4 * 2**groups != size:
            raise ValueError(f"level-1 size must be 4 * 2**n, got {size}")
        widths = [ch * min(8, 2 ** (groups - i)) for i in range(groups + 1)]
        # Class conditioning: a learned embedding joins z in the conditioning vector.
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        cond_dim = 2 * z_dim if num_classes else z_dim
        self.widths = widths
        self.to_map = sn_linear(z_dim, widths[0] * 4 * 4)
        self.clock = clock
        if clock:
            periods = torch.tensor(self.CLOCK_PERIODS, dtype=torch.float32)
            self.register_buffer("clock_speeds", 2 * torch.pi / periods, persistent=False)
            self.clock_map = sn_linear(2 * len(self.CLOCK_PERIODS), widths[0] * 4 * 4, bias=False)
        self.rnns = nn.ModuleList(ConvGRU(widths[i]) for i in range(groups))
        self.blocks = nn.ModuleList(UpBlock(widths[i], widths[i + 1], cond_dim) for i in range(groups))
        self.out_bn = nn.BatchNorm2d(widths[-1])
        self.to_rgb = sn_conv2d(widths[-1], 3, 3, padding=1)
        orthogonal_init(self)

    def sample_latent(self, n: int, truncation: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), or the truncated normal (resample |z| > truncation: BigGAN)."""
        z = torch.randn(n, self.z_dim, generator=generator)
        if truncation is not None:
            while (bad := z.abs() > truncation).any():
                z[bad] = torch.randn(int(bad.sum()), generator=generator)
        return z.to(next(self.parameters()).device)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                frames: int | None = None) -> torch.Tensor:
        frames = frames or self.frames          # unroll longer than trained: frames > T
        batch = z.shape[0]
        cond = torch.cat([z, self.embed(labels)], dim=1) if self.embed is not None else z
        cond = cond.repeat_interleave(frames, dim=0)            # (B, D) -> (B*T, D)
        x = self.frame_inputs(z, frames)                         # (B, T, C, 4, 4)
        for rnn, block in zip(self.rnns, self.blocks):
            x = rnn(x)                                           # (B, T, C, H, W)
            x = block(x.flatten(0, 1), cond)                     # (B*T, C', 2H, 2W)
            x = x.unflatten(0, (batch, frames))                  # (B, T, C', 2H, 2W)
        x = x.flatten(0, 1)                                      # (B*T, C, S, S)
        x = torch.tanh(self.to_rgb(F.relu(self.out_bn(x))))      # (B*T, 3, S, S)
        return x.unflatten(0, (batch, frames)).transpose(1, 2)   # (B, 3, T, S, S)

    def frame_inputs(self, z: torch.Tensor, frames: int, start: int = 0) -> torch.Tensor:
        """The first ConvGRU's input at frames start .. start + T - 1: (B, T, C, 4, 4).
        The 4x4 map from z, the same at every frame (DVD-GAN), plus the clock, which
        differs from frame to frame (clock_input says why)."""
        batch = z.shape[0]
        x = self.to_map(z).view(batch, 1, self.widths[0], 4, 4).expand(batch, frames, self.widths[0], 4, 4)
        return x + self.clock_input(z, frames, start) if self.clock else x

    def clock_input(self, z: torch.Tensor, frames: int, start: int = 0) -> torch.Tensor:
        """The clock's share of the ConvGRU's input at frames start .. start + T - 1:
        (B, T, C, 4, 4).

        With the same input at every frame (DVD-GAN), the ConvGRU is a fixed map
        iterated from h_0 = 0, and the motion it makes is the transient on the way to
        that map's fixed point: trained on 8 frames, it is free to be over by frame
        20, and unrolled 4x the video freezes. The clock gives each frame its own
        input, sines of the frame index t with a random phase per clip:

            clock_t = [sin(w_k t + p_k), cos(w_k t + p_k)]   k = 1..K, w_k = 2 pi / period_k
            input_t = to_map(z) + clock_map(clock_t)          (clock_map: learned, linear)

        Because the phase p_k is uniform on [0, 2 pi), clock_t has the same
        distribution at every t, frame 100 as well as frame 3: nothing in the input
        tells the network that the clip has gone on longer than the ones it trained
        on. The phases come from z (p_k = 2 pi Phi(z_k), Phi the normal CDF, uniform
        for z_k ~ N(0, 1)), so a video is still a function of its z alone.
        """
        t = torch.arange(start, start + frames, device=z.device, dtype=torch.float32)
        phase = 2 * torch.pi * torch.special.ndtr(z[:, :len(self.CLOCK_PERIODS)].float())   # 2 pi Phi(z_k)
        angle = t[None, :, None] * self.clock_speeds + phase[:, None, :]   # (B, T, K)
        clock = torch.cat([angle.sin(), angle.cos()], dim=2).to(z.dtype)   # (B, T, 2K)
        return self.clock_map(clock).view(z.shape[0], frames, self.widths[0], 4, 4)


def build_generator(config: dict, num_classes: int) -> Level1Generator:
    """Rebuild the generator from a checkpoint's config (used by sample.py)."""
    spec = level_spec(config["preset"], 1)
    return Level1Generator(spec.frames, spec.size, config["z_dim"], config["g_ch"],
                           num_classes if config["class_conditional"] else 0,
                           clock=config.get("clock", False))   # False: written before the flag


# ----------------------------------------------------------------------------------
# The losses (the upsampling levels have the same functions, with D_M added).
# ----------------------------------------------------------------------------------

def discriminator_scores(discriminators: dict, video: torch.Tensor, labels) -> dict:
    """Each discriminator's scores of a batch of clips: {"spatial": D_S(x), "temporal": D_T(x)},
    each (B,). video (B, 3, T, H, W); labels (B,) class ids, or None."""
    return {name: d(video, labels) for name, d in discriminators.items()}


def discriminator_loss(discriminators: dict, weights: dict, real, fake, real_labels, fake_labels,
                       r1_gamma: float = 0.0):
    """The discriminators' hinge loss, weighted, and the numbers the log shows of it:

        L_D = sum_D w_D * ( E_x[relu(1 - D(x))] + E_z[relu(1 + D(G(z)))] ),  D in {D_S, D_T}
              + r1_gamma * r1_penalty                          (only when r1_gamma > 0)

    real, fake (B, 3, T, H, W); fake = G(z) computed without gradients (only D learns
    from this loss). -> (L_D, {d_<name>_loss, d_<name>_real, d_<name>_fake: scalars,
    and loss_d_r1, the R1 term, when r1_gamma > 0}).
    With R1 the real clips are scored in float32: the penalty's gradient could
    underflow in float16.
    """
    if r1_gamma:
        real = real.detach().float().requires_grad_(True)     # R1 needs d D(x) / dx
        with torch.autocast(real.device.type, enabled=False):
            real_scores = discriminator_scores(discriminators, real, real_labels)
    else:
        real_scores = discriminator_scores(discriminators, real, real_labels)
    fake_scores = discriminator_scores(discriminators, fake, fake_labels)
    loss = sum(weights[name] * hinge_d_loss(real_scores[name], fake_scores[name]) for name in real_scores)
    stats = discriminator_stats(real_scores, real_scores.values(), fake_scores.values())
    if r1_gamma:
        r1 = r1_gamma * r1_penalty(real_scores, weights, real)
        loss = loss + r1
        stats["loss_d_r1"] = r1.detach()        # the log shows the R1 term on the steps that take it
    return loss, stats


def r1_penalty(real_scores: dict, weights: dict, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): 1/2 * E_x ||d(sum_D w_D D(x)) / dx||^2 over the real
    clips x, which were scored with requires_grad. It keeps the discriminators' slope
    at the data small, which damps the swings of a GAN run; its gradient needs a
    second derivative (create_graph). -> scalar."""
    total = sum(weights[name] * scores.float().sum() for name, scores in real_scores.items())
    grad, = torch.autograd.grad(total, real, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


def generator_loss(discriminators: dict, weights: dict, fake, labels) -> torch.Tensor:
    """The generator's hinge loss: L_G = -sum_D w_D * E_z[D(G(z))], D in {D_S, D_T}.
    fake = G(z) with gradients; the discriminators passed in are frozen (no gradients
    for their weights) and unwrapped (DDP does not average gradients nobody uses)."""
    fake_scores = discriminator_scores(discriminators, fake, labels)
    return sum(weights[name] * hinge_g_loss(scores) for name, scores in fake_scores.items())


def step_flops(generator, discriminators: dict, batch: int, num_classes: int, d_steps: int,
               device) -> int:
    """FLOPs of one training step (training.count_flops): d_steps D updates and one G
    update, forward and backward, on a batch of `batch` clips.

    The hinge losses themselves are a few elementwise operations, which the counter
    does not count (it counts matmuls and convolutions), so the scores' sum stands in
    for them: its backward runs through the same layers. Counted on copies of the
    models, so counting changes nothing (spectral norm and batch norm update buffers
    as they run); the numbers in the clips do not matter, only their shapes.
    """
    generator, discriminators = copy.deepcopy(generator), copy.deepcopy(discriminators)
    z = torch.randn(batch, generator.z_dim, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if num_classes else None
    real = torch.zeros(batch, 3, generator.frames, generator.size, generator.size, device=device)

    def one_step():
        for _ in range(d_steps):                # D: scores of real and of G(z) (no grad for G)
            with torch.no_grad():
                fake = generator(z, labels)
            scores = [*discriminator_scores(discriminators, real, labels).values(),
                      *discriminator_scores(discriminators, fake, labels).values()]
            sum(s.sum() for s in scores).backward()
        scores = discriminator_scores(discriminators, generator(z, labels), labels).values()   # G
        sum(s.sum() for s in scores).backward()

    return count_flops(one_step)


# ----------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------

def main(argv=None) -> None:
    cfg = parse_config(Level1Config, argv, __doc__)
    dist = setup_distributed(cfg.device)
    device = dist.device
    spec = level_spec(cfg.preset, 1)
    out = Path(cfg.out or f"runs/{cfg.preset}/level1")
    ckpt_path = out / "ckpt.pt"
    local_batch = per_rank_batch(cfg.batch_size, dist.world_size)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed, dist.rank)
    if dist.is_main:
        prepare_out_dir(out)
        if not cfg.resume and ckpt_path.exists():
            set_aside_previous_checkpoint(ckpt_path)

    # Data: real clips at level 1's shape, (B, 3, T_1, H_1, W_1) in [-1, 1].
    base = make_dataset(cfg.data, cfg.data_root, cfg.preset, 1, seed=cfg.seed)
    dataset = LevelDataset(base, cfg.preset, 1, seed=cfg.seed)
    num_classes = base.num_classes if cfg.class_conditional else 0

    # Models: G, its EMA copy (used for every sample), and the two discriminators.
    torch.manual_seed(cfg.seed)                     # identical initial weights on every rank
    generator = Level1Generator(spec.frames, spec.size, cfg.z_dim, cfg.g_ch, num_classes,
                                clock=cfg.clock).to(device)
    discriminators = {
        "spatial": SpatialDiscriminator(3, cfg.d_ch, spec.size, cfg.k_frames, num_classes).to(device),
        "temporal": TemporalDiscriminator(3, cfg.d_ch, spec.size, num_classes,
                                          pool_input=cfg.temporal_pool).to(device),
    }
    weights = {"spatial": cfg.spatial_weight, "temporal": cfg.temporal_weight}
    ema_generator = copy.deepcopy(generator).eval().requires_grad_(False)
    d_params = [p for d in discriminators.values() for p in d.parameters()]
    # Adam with betas (--beta1, --beta2): BigGAN and DVD-GAN use (0, 0.999), no momentum;
    # the CPU defaults use beta1 = 0.5, which learns faster in a few hundred steps.
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.g_lr, betas=(cfg.beta1, cfg.beta2))
    d_opt = torch.optim.Adam(d_params, lr=cfg.d_lr, betas=(cfg.beta1, cfg.beta2))
    g_scaler, d_scaler = make_grad_scaler(device, amp_dtype), make_grad_scaler(device, amp_dtype)

    models = {"generator": generator, "ema_generator": ema_generator, **discriminators}
    optimizers = {"generator": g_opt, "discriminator": d_opt}
    step = 0
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, level=1, preset=cfg.preset)
        ckpt["config"].setdefault("temporal_pool", True)   # written before the flag existed
        ckpt["config"].setdefault("clock", False)          # likewise
        check_architecture(ckpt["config"], cfg, ARCHITECTURE_FIELDS, ckpt_path)
        step = restore_checkpoint(ckpt, models, optimizers, ckpt_path)
        if dist.is_main:
            print(f"resumed from {ckpt_path} at step {step}")
    # MFU in the log line: the FLOPs of one step (counted once, on copies of the plain
    # models) and the device's peak FLOP/s in the step's precision (training.peak_flops).
    if dist.is_main:
        flops_per_step = step_flops(generator, discriminators, local_batch, num_classes, cfg.d_steps,
                                    device)
        peak = peak_flops(device, amp_dtype)

    # Several GPUs: synchronised batch norm in G, gradients averaged by DDP.
    if dist.world_size > 1:
        generator = wrap_ddp(generator, device, sync_batch_norm=True)
        discriminators = {name: wrap_ddp(d, device) for name, d in discriminators.items()}
        models.update(generator=generator, **discriminators)
    # R1's steps take a second derivative, which compiled code cannot: they call the
    # discriminators uncompiled (the same modules, so the same weights).
    r1_discriminators = discriminators
    if cfg.compile:
        generator = torch.compile(generator)
        discriminators = {name: torch.compile(d) for name, d in discriminators.items()}
    # The G update calls the discriminators unwrapped: see generator_loss.
    plain_discriminators = {name: unwrap(d) for name, d in discriminators.items()}

    # Every step uses d_steps real batches; batch n is a pure function of (seed, n).
    batches = make_loader(dataset, local_batch, start_batch=step * cfg.d_steps,
                          num_workers=cfg.num_workers, rank=dist.rank, world_size=dist.world_size)
    # Fixed noise for the sample grids, so successive grids show the same videos.
    sample_gen = torch.Generator().manual_seed(cfg.seed)
    sample_z = unwrap(generator).sample_latent(cfg.num_samples, generator=sample_gen)
    sample_labels = (torch.randint(num_classes, (cfg.num_samples,), generator=sample_gen).to(device)
                     if num_classes else None)
    evaluator = None
    if cfg.eval_every and dist.is_main:   # the two-sample test (+ FVD with --i3d)
        evaluator = TrainingEvaluator(base, cfg.eval_videos, device, cfg.i3d, seed=cfg.seed)

    def new_latents():
        z = torch.randn(local_batch, cfg.z_dim, device=device)
        y = torch.randint(num_classes, (local_batch,), device=device) if num_classes else None
        return z, y

    def refresh_ema_statistics():
        # Batch-norm statistics measured with the EMA weights themselves (see
        # training.standing_statistics), before every sample grid, evaluation and checkpoint.
        standing_statistics(ema_generator, lambda g: g(*new_latents()))

    def save(step):
        # ckpt.pt: everything needed to resume (training.checkpoint_state), written atomically.
        save_checkpoint(ckpt_path, checkpoint_state(cfg, 1, step, num_classes, models, optimizers))

    def write_sample_grid(step):
        with torch.no_grad():
            videos = ema_generator(sample_z, sample_labels).float().cpu()   # (N, 3, T, H, W)
        write_samples(out, step, video_grid(videos), fps=4)

    # Rank 0 writes: the progress bar, log.jsonl (and TensorBoard), samples, checkpoints.
    progress = tqdm(total=cfg.steps, initial=step, disable=not dist.is_main, desc="level 1",
                    dynamic_ncols=True)
    tensorboard = tensorboard_writer(cfg, out, dist)        # None without --tensorboard
    clips_per_step = cfg.batch_size * (cfg.d_steps + 1)     # d_steps D batches + one G batch
    logged_step, logged_time = step, time.time()
    with StopRequest() as stop:     # Ctrl-C / SIGTERM: finish the step, save, exit with 130
        while step < cfg.steps:
            # All randomness of a step (noise, the frames D_S samples) is a function of
            # (seed, rank, step), so a resumed run continues exactly as a straight one.
            torch.manual_seed(step_seed(cfg.seed, dist.rank, step))
            # ---- Discriminator: d_steps updates on fresh real batches. ----------------
            # L_D = sum_D w_D * ( E_x[relu(1 - D(x))] + E_z[relu(1 + D(G(z)))] )
            # + lazy R1 (--r1-gamma): on every r1_every-th D step of the run, weighted r1_every times.
            for i in range(cfg.d_steps):
                batch = next(batches)
                real = batch["target"].to(device, non_blocking=True)   # (B, 3, T, H, W)
                labels = batch["label"].to(device) if num_classes else None
                z, fake_labels = new_latents()
                r1_now = cfg.r1_gamma > 0 and (step * cfg.d_steps + i + 1) % cfg.r1_every == 0
                with autocast(device, amp_dtype):
                    with torch.no_grad():
                        fake = generator(z, fake_labels)
                    loss_d, d_stats = discriminator_loss(r1_discriminators if r1_now else discriminators,
                                                         weights, real, fake,
                                                         labels, fake_labels,
                                                         cfg.r1_gamma * cfg.r1_every if r1_now else 0.0)
                d_opt.zero_grad(set_to_none=True)
                d_scaler.scale(loss_d).backward()
                d_scaler.step(d_opt)
                d_scaler.update()

            # ---- Generator: one update. L_G = -sum_D w_D * E_z[D(G(z))] ---------------
            # The discriminators are frozen: no gradients for their weights.
            for p in d_params:
                p.requires_grad_(False)
            z, fake_labels = new_latents()
            with autocast(device, amp_dtype):
                fake = generator(z, fake_labels)
                loss_g = generator_loss(plain_discriminators, weights, fake, fake_labels)
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
                              "clips_per_s": steps_done * clips_per_step / seconds,
                              # MFU: FLOPs done since the last line / seconds / peak FLOP/s
                              "mfu": steps_done * flops_per_step / seconds / peak,
                              **{name: value.item() for name, value in d_stats.items()}}
                    if evaluate_now:
                        # Score the EMA generator (statistics just refreshed); if it is the
                        # best so far, `save` keeps exactly that model as ckpt_best.pt.
                        record.update(evaluator.evaluate_generator(ema_generator, out, step, save))
                    log_line(out, record, progress, tensorboard, unit="clips")
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
