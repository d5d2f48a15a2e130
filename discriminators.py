"""The discriminators of HVG and their hinge loss.

Every level of HVG is a GAN. Its generator is judged by up to three
discriminators, each looking at the video from a different angle:

  spatial D_S    (level 1 and every upsampling level)
      k frames picked uniformly at random from each clip, scored one by one by a
      2-D ResNet, the k scores summed.  Judges what single frames look like.
      (B, C, T, H, W) -> (B,)
  temporal D_T   (level 1 and every upsampling level)
      the whole clip, 2x average-pooled in space, through a ResNet whose first
      two blocks are 3-D (3x3x3 convolutions).  Judges motion.
      (B, C, T, H, W) -> (B,)
  matching D_M   (upsampling levels only)
      (condition, output) pairs: the lower-level video upsampled (nearest) to the
      output's shape and concatenated with it on channels.  Judges whether the
      output agrees with the video it was asked to upsample.
      (B, C, t, h, w), (B, C, T, H, W) -> (B,)

All three are BigGAN-style residual discriminators (Brock et al. 2019) as used
by DVD-GAN (Clark et al. 2019): spectral normalisation on every weight,
orthogonal initialisation, ReLU pre-activation residual blocks with average-pool
downsampling, global sum pooling, a linear score and an optional class
projection (Miyato & Koyama 2018).  They are trained with the hinge loss at the
bottom of this file.

`spectral_norm` and `orthogonal_init` live here (the lowest model file) because
the generators use them too.

This file imports nothing from the project.  Its tests show what each piece
guarantees:

    python -m pytest -q tests/test_discriminators.py

Notes for the training scripts
  * Parametrized modules (everything wrapped by `spectral_norm`) cannot be
    pickled whole: save and load them with `state_dict()`.  `copy.deepcopy`
    works (used for the generator's EMA copy).
  * Memory format: nothing in here forces one; every op accepts channels_last
    tensors.  On GPUs use `to_channels_last(model)` (below): it converts 4-D
    weights to channels_last and 5-D ones to channels_last_3d, which
    `model.to(memory_format=torch.channels_last)` refuses to do for 3-D convs.
  * `forward` has no value-dependent Python control flow, only checks on shapes,
    so torch.compile traces it without graph breaks.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize


# ---------------------------------------------------------------------------
# Spectral normalisation
# ---------------------------------------------------------------------------
#
# A discriminator that is K-Lipschitz cannot produce arbitrarily sharp scores,
# which keeps GAN training stable (Miyato et al. 2018).  The Lipschitz constant
# of a linear map x -> W x is its largest singular value sigma(W), so dividing
# every weight by its sigma makes every layer 1-Lipschitz:
#
#     W_sn = W / sigma(W),     sigma(W) = max_{v != 0} ||W v|| / ||v||
#
# Computing sigma exactly (an SVD) at every step is too slow.  Power iteration
# estimates it with two matrix-vector products per step, reusing the previous
# step's vector u, which stays close to the top singular vector because W moves
# slowly during training:
#
#     v     = W^T u / ||W^T u||
#     u     = W v   / ||W v||
#     sigma = u^T W v
#
# Convolution kernels (out, in, k, k[, k]) are treated as the matrix
# (out, in*k*k[*k]); an Embedding table (num_classes, dim) is already a matrix.


class SpectralNorm(nn.Module):
    """Parametrization weight -> weight / sigma(weight), sigma by power iteration.

    Registered with torch.nn.utils.parametrize, so `module.weight` is computed
    from the stored `module.parametrizations.weight.original` on every access.
    The vectors u (out,) and v (in,) are buffers: they are saved in the
    state_dict, so a resumed run continues with the same sigma estimate.
    """

    def __init__(self, weight, n_power_iterations=1, eps=1e-12, init_iterations=15):
        super().__init__()
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        matrix = self._as_matrix(weight)  # (out, in)
        # Random unit start vectors, then enough iterations that sigma is already
        # accurate at step 0 (one iteration per step only tracks a moving W).
        self.register_buffer("_u", F.normalize(torch.randn(matrix.shape[0]), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(torch.randn(matrix.shape[1]), dim=0, eps=eps))
        self.reset(weight, init_iterations)

    @staticmethod
    def _as_matrix(weight):
        # Always float32: in bf16 (8 bits of mantissa) the estimate of sigma is
        # off by up to ~1% (measured on a 256 x 2304 conv weight), and the
        # error changes from step to step.
        # (out, in, *kernel) -> (out, in * prod(kernel))
        return weight.detach().flatten(1).float()

    @torch.no_grad()
    def _power_iteration(self, matrix, iterations):
        u, v = self._u.float(), self._v.float()
        for _ in range(iterations):
            v = F.normalize(matrix.t() @ u, dim=0, eps=self.eps)  # v = W^T u / ||W^T u||
            u = F.normalize(matrix @ v, dim=0, eps=self.eps)      # u = W v / ||W v||
        # Rebound, not overwritten in place: a forward's sigma = u^T W v keeps its own
        # u and v for backward, and the next forward (D scores real, then fake, then
        # one backward) must not change them. torch.compile needs this too: it may
        # recompute u, v in backward from the buffers, which an in-place update would
        # have changed ("modified by an inplace operation"; pytorch PR #197039).
        # state_dict, DDP's buffer broadcast and update_ema look the buffers up by name
        # at every call, so they see the new tensors.
        self._u, self._v = u.to(self._u.dtype), v.to(self._v.dtype)

    @torch.no_grad()
    def reset(self, weight, iterations=15):
        """Re-estimate u, v for a new weight (e.g. after re-initialising it)."""
        with torch.autocast(device_type=weight.device.type, enabled=False):
            self._power_iteration(self._as_matrix(weight), iterations)

    def forward(self, weight):
        # autocast off: the matrix-vector products and the division run in
        # float32 even when the surrounding forward is bf16/fp16.  The layer that
        # uses the result (conv, linear) is still cast by autocast as usual.
        with torch.autocast(device_type=weight.device.type, enabled=False):
            weight32 = weight.float()
            if self.training:
                # One step of power iteration per forward, no gradient through it
                # (u and v are treated as constants, as in Miyato et al.).
                self._power_iteration(self._as_matrix(weight), self.n_power_iterations)
            # No clones needed: the buffers are never changed in place (see above).
            u, v = self._u.float(), self._v.float()
            # sigma = u^T W v; the gradient flows through W here, and with u, v
            # the top singular vectors d sigma / dW = u v^T, the exact gradient.
            sigma = torch.dot(u, weight32.flatten(1) @ v)
            return (weight32 / sigma).to(weight.dtype)


def spectral_norm(module, n_power_iterations=1, eps=1e-12, name="weight"):
    """Make `module.<name>` spectrally normalised; returns the same module.

    Works for Linear, Conv1d/2d/3d and Embedding (anything with a weight of 2+
    dims).  u, v are updated only in training mode (module.train()); in eval
    mode the last estimate is used, so evaluating does not change the model.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(
            f"spectral_norm needs a module with a 2+-D '{name}' tensor; "
            f"{type(module).__name__} has {None if weight is None else tuple(weight.shape)}"
        )
    parametrize.register_parametrization(
        module, name, SpectralNorm(weight, n_power_iterations, eps)
    )
    return module


def orthogonal_init(module):
    """Orthogonal init (Saxe et al. 2014) of every conv/linear/embedding weight.

    DVD-GAN and BigGAN initialise G and D this way: with all singular values 1,
    signals neither blow up nor vanish through the deep ResNets at the start.
    Biases are zeroed.  For spectrally normalised layers the stored
    (unnormalised) weight is initialised and sigma re-estimated.
    Returns the module.
    """
    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    for layer in module.modules():
        if not isinstance(layer, layer_types):
            continue
        if parametrize.is_parametrized(layer, "weight"):
            original = layer.parametrizations.weight.original
            nn.init.orthogonal_(original)
            for parametrization in layer.parametrizations.weight:
                if isinstance(parametrization, SpectralNorm):
                    parametrization.reset(original)
        else:
            nn.init.orthogonal_(layer.weight)
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
    return module


def to_channels_last(module):
    """Store conv weights channels-last (NHWC / NDHWC); returns the module.

    cuDNN runs bf16/fp16 convolutions fastest in this layout, and a conv whose
    weight is channels-last produces channels-last outputs, so converting the
    weights is enough.  Call it before creating the optimizer.  Spectral norm
    keeps the layout (W / sigma is elementwise).
    """
    for param in module.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
        elif param.dim() == 5:
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    return module


# Small constructors for spectrally normalised layers (used by G and D).
def sn_conv2d(in_channels, out_channels, kernel_size, padding=0, **kwargs):
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, **kwargs))


def sn_conv3d(in_channels, out_channels, kernel_size, padding=0, **kwargs):
    return spectral_norm(nn.Conv3d(in_channels, out_channels, kernel_size, padding=padding, **kwargs))


def sn_linear(in_features, out_features, **kwargs):
    return spectral_norm(nn.Linear(in_features, out_features, **kwargs))


def sn_embedding(num_embeddings, embedding_dim):
    return spectral_norm(nn.Embedding(num_embeddings, embedding_dim))


# ---------------------------------------------------------------------------
# Residual blocks (BigGAN discriminator blocks)
# ---------------------------------------------------------------------------
#
#   residual: [relu] -> sn conv3x3 -> relu -> sn conv3x3 -> [avg-pool 2x]
#   shortcut: [sn conv1x1] + [avg-pool 2x]   (identity if the shape is unchanged)
#   out = residual + shortcut
#
# The first block of each network has preactivation=False: its input is the
# raw video in [-1, 1], and a ReLU there would throw half of it away.  Its
# shortcut pools before the 1x1 conv (cheaper, same result for a linear map);
# the other blocks convolve first, as in BigGAN.


def downsample_3d(x):
    """3-D block downsampling: 2x average pooling in space and in time.

    Time is pooled only while there is more than one frame, and an odd frame
    count rounds up (ceil_mode: the last frame is pooled alone), so any clip
    length works: 8 -> 4 -> 2, 12 -> 6 -> 3, 3 -> 2, 1 -> 1.
    (B, C, T, H, W) -> (B, C, ceil(T/2), H/2, W/2)
    """
    time_kernel = 2 if x.shape[2] > 1 else 1  # shape check, not data: compile-safe
    return F.avg_pool3d(x, kernel_size=(time_kernel, 2, 2), ceil_mode=True)


class DBlock2d(nn.Module):
    """BigGAN residual D block on images: (N, in, H, W) -> (N, out, H/2, W/2) (or H, W)."""

    make_conv = staticmethod(sn_conv2d)  # DBlock3d swaps in 3-D convs

    def __init__(self, in_channels, out_channels, downsample=True, preactivation=True):
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = self.make_conv(in_channels, out_channels, 3, padding=1)
        self.conv2 = self.make_conv(out_channels, out_channels, 3, padding=1)
        # A learnable shortcut only where the shape changes.
        learnable_shortcut = in_channels != out_channels or downsample
        self.conv_shortcut = self.make_conv(in_channels, out_channels, 1) if learnable_shortcut else None

    def pool(self, x):
        return F.avg_pool2d(x, 2)  # (N, C, H, W) -> (N, C, H/2, W/2)

    def shortcut(self, x):
        if self.preactivation:
            if self.conv_shortcut is not None:
                x = self.conv_shortcut(x)
            if self.downsample:
                x = self.pool(x)
        else:
            if self.downsample:
                x = self.pool(x)
            if self.conv_shortcut is not None:
                x = self.conv_shortcut(x)
        return x

    def forward(self, x):
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = self.pool(h)
        return h + self.shortcut(x)


class DBlock3d(DBlock2d):
    """The same block with 3x3x3 convolutions on videos:
    (B, in, T, H, W) -> (B, out, ceil(T/2), H/2, W/2) (see downsample_3d), or unchanged size."""

    make_conv = staticmethod(sn_conv3d)

    def pool(self, x):
        return downsample_3d(x)


# ---------------------------------------------------------------------------
# Block layout
# ---------------------------------------------------------------------------
#
# Like BigGAN: one downsampling block per halving of the resolution until the
# feature map is 4x4, then one more block at 4x4 without downsampling.  Widths
# double per block, capped at 16*ch.  With ch=32 (the default is 16, as --d-ch):
#
#   input   blocks (output channels, output size)
#    8x8    32@4  32@4
#   16x16   32@8  64@4  64@4
#   32x32   32@16 64@8  128@4  128@4
#   64x64   32@32 64@16 128@8  256@4  256@4
#  128x128  32@64 64@32 128@16 256@8  512@4  512@4
#  256x256  32@128 ... 512@8 512@4 512@4
#
# Then ReLU -> sum over positions -> sn linear -> one score.  Sum (not mean)
# pooling, as in BigGAN, so the score scales with the amount of evidence.


def block_layout(resolution, ch):
    """[(out_channels, downsample), ...] for an input of resolution x resolution."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(
            f"discriminator resolution must be a power of two >= 8 (blocks halve it down to 4x4), "
            f"got {resolution}"
        )
    num_down = int(math.log2(resolution)) - 2
    widths = [ch * min(2 ** i, 16) for i in range(num_down)]
    return [(w, True) for w in widths] + [(widths[-1], False)]


def _check_square(video, resolution, who):
    height, width = video.shape[-2:]
    if height != resolution or width != resolution:
        raise ValueError(
            f"{who} was built for {resolution}x{resolution} frames but got {height}x{width}; "
            f"build it with resolution={height} (square frames) or resize the input"
        )


class _ScoreHead(nn.Module):
    """relu -> (features summed beforehand) -> sn linear [+ projection] -> score.

    Projection discriminator (Miyato & Koyama 2018) for class labels y:
        D(x, y) = w^T h(x) + embed(y)^T h(x)
    The inner product lets D judge "is this a realistic video of class y"
    without concatenating a one-hot label to the input.
    """

    def __init__(self, features, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.linear = sn_linear(features, 1)
        self.embed = sn_embedding(num_classes, features) if num_classes > 0 else None

    def forward(self, h, labels):
        # h: (N, F) pooled features; labels: (N,) int or None -> (N,)
        score = self.linear(h).squeeze(1)  # (N, 1) -> (N,)
        if self.embed is not None:
            if labels is None:
                raise ValueError(
                    f"this discriminator is class-conditional (num_classes={self.num_classes}): "
                    f"pass labels=(B,) class ids"
                )
            score = score + (self.embed(labels) * h).sum(dim=1)  # <embed(y), h>
        elif labels is not None:
            raise ValueError("labels were given but the discriminator was built with num_classes=0")
        return score


# ---------------------------------------------------------------------------
# Spatial discriminator D_S
# ---------------------------------------------------------------------------


class SpatialDiscriminator(nn.Module):
    """D_S: k random frames per clip, each scored by a 2-D ResNet, scores summed.

    Sampling k frames (k=8 in DVD-GAN) instead of using all T keeps its cost
    independent of the clip length, and is still an unbiased look at frame
    quality.  (B, C, T, H, W) -> (B,)
    """

    def __init__(self, in_channels=3, ch=16, resolution=64, k_frames=8, num_classes=0):
        super().__init__()
        self.resolution = resolution
        self.k_frames = k_frames
        blocks, channels = [], in_channels
        for i, (out_channels, downsample) in enumerate(block_layout(resolution, ch)):
            blocks.append(DBlock2d(channels, out_channels, downsample, preactivation=i > 0))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = _ScoreHead(channels, num_classes)
        orthogonal_init(self)

    @staticmethod
    def sample_frames(video, k):
        """Pick k distinct frames per clip, uniformly at random, and flatten them.

        Uses torch's global RNG on the video's device, so seeding torch
        (torch.manual_seed) makes the choice reproducible.  Indices are sorted
        (only for readability: D_S scores frames independently).
        video (B, C, T, H, W) -> frames (B*k, C, H, W), indices (B, k) long
        with k = min(k, T).
        """
        batch, _, num_frames = video.shape[:3]
        k = min(k, num_frames)
        # A uniformly random permutation of 0..T-1 per clip: argsort of iid
        # uniforms.  Its first k entries are a uniform k-subset (no replacement).
        indices = torch.rand(batch, num_frames, device=video.device).argsort(dim=1)[:, :k]
        indices = indices.sort(dim=1).values  # (B, k)
        rows = torch.arange(batch, device=video.device)[:, None]  # (B, 1)
        # Advanced indexing on dims 0 and 2 puts the indexed dims first:
        frames = video[rows, :, indices]  # (B, C, T, H, W) -> (B, k, C, H, W)
        frames = frames.reshape(batch * k, *frames.shape[2:])  # -> (B*k, C, H, W)
        return frames, indices

    def score_frames(self, frames, labels=None):
        """Per-frame scores: frames (N, C, H, W), labels (N,) or None -> (N,)."""
        h = F.relu(self.blocks(frames))  # (N, F, 4, 4)
        h = h.sum(dim=(2, 3))            # global sum pooling -> (N, F)
        return self.head(h, labels)

    def forward(self, video, labels=None):
        # video (B, C, T, H, W), labels (B,) or None -> (B,)
        _check_square(video, self.resolution, "SpatialDiscriminator")
        batch = video.shape[0]
        frames, indices = self.sample_frames(video, self.k_frames)  # (B*k, C, H, W)
        k = indices.shape[1]
        if labels is not None:
            labels = labels.repeat_interleave(k)  # (B,) -> (B*k,): each frame keeps its clip's label
        scores = self.score_frames(frames, labels)  # (B*k,)
        # D_S(x) = sum over the k sampled frames of the per-frame score
        return scores.reshape(batch, k).sum(dim=1)  # (B*k,) -> (B, k) -> (B,)


# ---------------------------------------------------------------------------
# Temporal discriminator D_T (and the body shared with D_M)
# ---------------------------------------------------------------------------


class _VideoDiscriminator(nn.Module):
    """ResNet on videos: the first two blocks 3-D (3x3x3, pooling space and time,
    see downsample_3d), the rest 2-D per frame (time folded into the batch),
    then a sum over space AND time, a linear score and the class projection.

    Going 2-D after two blocks (a project choice; DVD-GAN only says the first
    two are 3-D) keeps the cost low: by then time has been pooled 4x and the
    3-D blocks have already seen 5+ input frames at once.
    (B, in_channels, T, S, S) -> (B,)   where S = resolution
    """

    num_3d_blocks = 2

    def __init__(self, in_channels, ch, resolution, num_classes):
        super().__init__()
        self.resolution = resolution
        blocks_3d, blocks_2d, channels = [], [], in_channels
        for i, (out_channels, downsample) in enumerate(block_layout(resolution, ch)):
            block_type = DBlock3d if i < self.num_3d_blocks else DBlock2d
            block = block_type(channels, out_channels, downsample, preactivation=i > 0)
            (blocks_3d if i < self.num_3d_blocks else blocks_2d).append(block)
            channels = out_channels
        self.blocks_3d = nn.Sequential(*blocks_3d)
        self.blocks_2d = nn.Sequential(*blocks_2d)
        self.head = _ScoreHead(channels, num_classes)
        orthogonal_init(self)

    def score(self, x, labels=None):
        # x (B, C, T, S, S) -> (B,)
        h = self.blocks_3d(x)  # (B, F, T', S', S')
        batch, features, frames = h.shape[:3]
        # (B, F, T', S', S') -> (B, T', F, S', S') -> (B*T', F, S', S')
        h = h.transpose(1, 2).reshape(batch * frames, features, *h.shape[3:])
        h = F.relu(self.blocks_2d(h))  # (B*T', F, 4, 4)
        h = h.sum(dim=(2, 3))          # sum over space -> (B*T', F)
        h = h.reshape(batch, frames, -1).sum(dim=1)  # (B*T', F) -> (B, T', F) -> sum over time (B, F)
        return self.head(h, labels)


class TemporalDiscriminator(_VideoDiscriminator):
    """D_T: judges motion on the whole clip, by default at half resolution.

    The paper's D_T (from DVD-GAN) sees the clip 2x average-pooled in space:
    motion is visible at low resolution, and halving H and W makes the costly
    3-D convolutions 4x cheaper.  Frame detail is D_S's job.
    pool_input=False keeps full resolution. Level 1 uses it by default: its
    objects move about one pixel per frame, and pooled 2x such a move gives the
    same numbers as a cross-fade of the two positions, so a pooled D_T cannot tell
    an object that moves from one that fades out and in again (and the generator,
    never told, learns the fade). The upsampling levels' new frames differ from a
    cross-fade of their condition frames by such moves too; they keep the pooling
    by default (`--no-temporal-pool` there was within noise, docs/quality.md).
    (B, C, T, H, W) -> (B,);  H = W = resolution.
    """

    def __init__(self, in_channels=3, ch=16, resolution=64, num_classes=0, pool_input=True):
        if pool_input and resolution < 16:
            raise ValueError(
                f"TemporalDiscriminator pools frames 2x, so resolution must be >= 16, got {resolution}"
            )
        super().__init__(in_channels, ch, resolution // 2 if pool_input else resolution, num_classes)
        self.input_resolution, self.pool_input = resolution, pool_input

    @staticmethod
    def pool(video):
        """2x2 average pooling of every frame: (B, C, T, H, W) -> (B, C, T, H/2, W/2)."""
        return F.avg_pool3d(video, kernel_size=(1, 2, 2))

    def forward(self, video, labels=None):
        _check_square(video, self.input_resolution, "TemporalDiscriminator")
        if self.pool_input:
            video = self.pool(video)  # (B, C, T, H, W) -> (B, C, T, H/2, W/2)
        return self.score(video, labels)  # -> (B,)


# ---------------------------------------------------------------------------
# Matching discriminator D_M (upsampling levels)
# ---------------------------------------------------------------------------
#
# Why it exists.  An upsampling level G_l(c, z) turns the previous level's video
# c into a larger one.  D_S and D_T only ask "is this a realistic video?": a
# generator could satisfy them with a realistic video that has nothing to do
# with c -- it is free to ignore its input.  D_M closes that loophole.  It sees
# pairs
#
#     real:  (down(x), x)                 x a real clip at level l's shape
#     fake:  (down(x), G_l(down(x), z))   the same condition, generated output
#
# and can only tell them apart if the output disagrees with its condition (in
# appearance: colours and layout; or in motion: where things are in each
# frame).  So the generator is pushed to produce outputs that, downsampled,
# give back the condition.  This replaces an explicit reconstruction loss and
# leaves the generator free to choose the detail.
#
# Input: the condition nearest-upsampled to the output's (T, H, W) and
# concatenated with the output on channels, so every output voxel sits next to
# the condition value it must agree with; then the same body as D_T (3-D blocks
# first, so disagreements in motion are visible).  Like D_T, it sees the pair
# 2x average-pooled in space by default (pool_input=True, `--matching-pool`).
# Pooling does not blur away the mismatch D_M must find: that mismatch is at
# the condition's scale, and with the space factor 2 of the presets a 2x2 average
# of the output is exactly the spatial part of down(output) (data.down averages
# sf x sf blocks), so the pooled pair still holds, pixel for pixel, the
# condition next to what the output gives back when downsampled.  What pooling
# hides is detail finer than the condition, which D_S judges.  Measured at
# level 2 of the tiny preset, full resolution (`--no-matching-pool`) was within
# run-to-run noise of the pooled pair (docs/quality.md, section 3), and pooling
# makes the 3-D blocks 4x cheaper.


def matching_input(condition, video, time_factor=None, space_factor=None):
    """Condition upsampled (nearest) to the video's shape, stacked on channels.

    condition (B, C, t, h, w), video (B, C, T, H, W), T = tf*t, H = sf*h, W = sf*w
    -> (B, 2C, T, H, W): channels 0..C-1 the condition, C..2C-1 the video.
    Frame j of the condition lands on frames j*tf .. j*tf + tf - 1 of the video
    (nearest repeat), each condition pixel on an sf x sf block.
    The factors are read from the shapes; pass the level's time_factor /
    space_factor to also check them (a condition that still carries 2K context
    frames can otherwise look like a valid one with a smaller factor).
    """
    if condition.dim() != 5 or video.dim() != 5:
        raise ValueError(
            f"matching_input wants (B, C, T, H, W) tensors, got condition {tuple(condition.shape)} "
            f"and video {tuple(video.shape)}"
        )
    (b, c, t, h, w), (B, C, T, H, W) = condition.shape, video.shape
    shapes_fit = (b, c) == (B, C) and T % t == 0 and H % h == 0 and W % w == 0
    shapes_fit = shapes_fit and (time_factor is None or T == time_factor * t)
    shapes_fit = shapes_fit and (space_factor is None or (H, W) == (space_factor * h, space_factor * w))
    if not shapes_fit:
        raise ValueError(
            f"condition {tuple(condition.shape)} does not match video {tuple(video.shape)} "
            f"(time_factor={time_factor}, space_factor={space_factor}): need the same batch and channels "
            f"and T, H, W = tf*t, sf*h, sf*w (strip the condition's temporal context frames, "
            f"condition[:, :, K:-K], before matching it with an output crop)"
        )
    time_factor, height_factor, width_factor = T // t, H // h, W // w
    # (B, C, t, h, w) -> (B, C, T, h, w) -> (B, C, T, H, w) -> (B, C, T, H, W)
    upsampled = condition.repeat_interleave(time_factor, dim=2)
    upsampled = upsampled.repeat_interleave(height_factor, dim=3)
    upsampled = upsampled.repeat_interleave(width_factor, dim=4)
    return torch.cat([upsampled, video], dim=1)  # (B, 2C, T, H, W)


class MatchingDiscriminator(_VideoDiscriminator):
    """D_M: scores (condition, output) pairs.  See the comment block above.
    condition (B, C, t, h, w), video (B, C, T, H, W) -> (B,)
    """

    def __init__(self, in_channels=3, ch=16, resolution=64, num_classes=0, pool_input=True,
                 time_factor=None, space_factor=None):
        if pool_input and resolution < 16:
            raise ValueError(f"pool_input=True needs resolution >= 16, got {resolution}")
        super().__init__(2 * in_channels, ch, resolution // 2 if pool_input else resolution, num_classes)
        self.pool_input = pool_input  # (B, 2C, T, H, W) pooled to (B, 2C, T, H/2, W/2) first
        self.input_resolution = resolution
        # the level's factors, if given, are checked against every input pair
        self.time_factor, self.space_factor = time_factor, space_factor

    def forward(self, condition, video, labels=None):
        _check_square(video, self.input_resolution, "MatchingDiscriminator")
        pair = matching_input(condition, video, self.time_factor, self.space_factor)  # (B, 2C, T, H, W)
        if self.pool_input:
            pair = TemporalDiscriminator.pool(pair)  # (B, 2C, T, H/2, W/2)
        return self.score(pair, labels)


# ---------------------------------------------------------------------------
# Hinge loss
# ---------------------------------------------------------------------------
#
#   L_D = E_x[relu(1 - D(x))] + E_z[relu(1 + D(G(z)))]
#   L_G = -E_z[D(G(z))]
#
# Why hinge (Lim & Ye 2017; used by SAGAN, BigGAN, DVD-GAN): D stops getting
# gradient from samples it already classifies with margin 1 (real scores above
# +1, fake below -1), so it spends its capacity on the samples near the
# boundary instead of pushing confident scores to infinity, while G keeps a
# non-saturating, linear signal.  Scores are summed over the discriminators by
# the caller.  Losses are computed in float32 (scores may be bf16 under autocast).


def hinge_d_loss(real_scores, fake_scores):
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]: scores (B,) -> scalar."""
    return F.relu(1.0 - real_scores.float()).mean() + F.relu(1.0 + fake_scores.float()).mean()


def hinge_g_loss(fake_scores):
    """-E[D(G(z))]: scores (B,) -> scalar."""
    return -fake_scores.float().mean()


def discriminator_stats(names, real_scores, fake_scores) -> dict:
    """What the log shows of each discriminator (report.py draws it), detached:
    d_<name>_loss = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (its own hinge loss,
    unweighted), d_<name>_real = E[D(x)] and d_<name>_fake = E[D(G(z))] (its mean scores).
    names, real_scores, fake_scores: parallel sequences, one entry per discriminator."""
    stats = {}
    for name, real, fake in zip(names, real_scores, fake_scores):
        real, fake = real.detach().float(), fake.detach().float()
        stats[f"d_{name}_loss"] = hinge_d_loss(real, fake)
        stats[f"d_{name}_real"], stats[f"d_{name}_fake"] = real.mean(), fake.mean()
    return stats
