"""Graders for the course assignments of docs/assignments.md: one idea of HVG per test.

Every idea has a grader, `check_<idea>(implementation)`, that raises AssertionError
when the implementation is wrong. It compares the implementation with an
independent computation: the equation written out by hand in the test, a closed
form, or a property the method guarantees. Each idea then has two tests:

  test_<idea>_...                the project's implementation passes its grader;
  test_<idea>_grader_rejects[*]  the grader fails each plausible wrong answer a
                                 student would write (defined below it, each a few
                                 lines: a subclass or a function with one mistake).

The second test is what makes the first one mean something: a grader that also
passes a swapped gate or a missing relu only checks shapes.

    python -m pytest -q tests/test_assignments.py              # all graders
    python -m pytest -q tests/test_assignments.py -k convgru   # one assignment

Shapes are tiny: the whole file runs in a few seconds on one CPU core.
"""

import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from data import down, level_example, level_spec, pad_condition
from discriminators import (SpectralNorm, TemporalDiscriminator, hinge_d_loss, hinge_g_loss,
                            spectral_norm)
from level1 import ConditionalBatchNorm, ConvGRU
from sample import upsample
from training import standing_statistics, update_ema
from upsample_level import UpsampleGenerator


def reject(check, implementation):
    """The grader must fail this implementation (with an AssertionError, not a crash)."""
    with pytest.raises(AssertionError):
        check(implementation)


# ==================================================================================
# Assignment 1: spectral norm, the hinge loss and D_T's input (discriminators.py)
# ==================================================================================

# ---- Spectral norm: W_sn = W / sigma(W), sigma the largest singular value. --------

def check_spectral_norm(spectral_norm_fn):
    """spectral_norm_fn(module) -> module whose `.weight` is W / sigma(W).

    After a few forward passes in training mode (one power iteration each) the
    normalised weight must have largest singular value 1 (torch.linalg.svdvals, an
    exact SVD, is the independent reference) and point the same way as W.
    A conv kernel (out, in, k, k) is the matrix (out, in*k*k)."""
    torch.manual_seed(0)
    for module in (nn.Linear(8, 5), nn.Conv2d(3, 4, 3)):
        with torch.no_grad():
            module.weight.mul_(7.0)                                   # sigma far from 1
        weight = module.weight.detach().clone()
        sigma = torch.linalg.svdvals(weight.flatten(1))[0]            # exact, (out, in*k*k)
        module = spectral_norm_fn(module).train()
        x = torch.randn(2, 8) if isinstance(module, nn.Linear) else torch.randn(2, 3, 6, 6)
        for _ in range(30):                                           # power iterations
            module(x)
        module.eval()                                                 # no more updates
        normalised = module.weight.detach()
        top = torch.linalg.svdvals(normalised.flatten(1))[0]
        assert abs(float(top) - 1.0) < 1e-3, (
            f"{type(module).__name__}: largest singular value of the normalised weight is "
            f"{float(top):.4f}, not 1")
        torch.testing.assert_close(normalised, weight / sigma, atol=1e-4, rtol=1e-3,
                                   msg="the normalised weight must be W / sigma(W)")


def not_normalised(module):
    return module                                   # forgot to register anything


class _FrobeniusNorm(nn.Module):
    def forward(self, weight):
        return weight / weight.norm()               # ||W||_F >= sigma(W): too small


def frobenius_normalised(module):
    parametrize.register_parametrization(module, "weight", _FrobeniusNorm())
    return module


class _NoPowerIteration(SpectralNorm):
    def _power_iteration(self, matrix, iterations):
        pass                                        # sigma = u^T W v with random u, v


def without_power_iteration(module):
    parametrize.register_parametrization(module, "weight", _NoPowerIteration(module.weight))
    return module


class _KernelAsWrongMatrix(nn.Module):
    def forward(self, weight):
        # A conv kernel (out, in, k, k) read as the matrix (out*in, k*k), not (out, in*k*k)
        matrix = weight.reshape(weight.shape[0] * weight.shape[1], -1) if weight.dim() > 2 else weight
        return weight / torch.linalg.svdvals(matrix)[0]


def conv_kernel_as_wrong_matrix(module):
    parametrize.register_parametrization(module, "weight", _KernelAsWrongMatrix())
    return module


def test_spectral_norm_makes_the_largest_singular_value_one():
    check_spectral_norm(spectral_norm)


@pytest.mark.parametrize("wrong", [not_normalised, frobenius_normalised, without_power_iteration,
                                   conv_kernel_as_wrong_matrix], ids=lambda f: f.__name__)
def test_spectral_norm_grader_rejects(wrong):
    reject(check_spectral_norm, wrong)


# ---- Hinge loss for D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]. ----------------

REAL_SCORES = torch.tensor([2.0, 0.5, -1.0])
FAKE_SCORES = torch.tensor([-2.0, 0.5, 1.0])


def check_hinge_d_loss(loss_fn):
    """loss_fn(real_scores (B,), fake_scores (B,)) -> scalar.

    Closed form for the scores above:
        E[relu(1 - D(x))]    = (relu(-1) + relu(0.5) + relu(2)) / 3 = 2.5 / 3
        E[relu(1 + D(G(z)))] = (relu(-1) + relu(1.5) + relu(2)) / 3 = 3.5 / 3
        L_D = 6 / 3 = 2
    and the margin: a real score above +1 (or a fake one below -1) gets no gradient."""
    real, fake = REAL_SCORES.clone().requires_grad_(), FAKE_SCORES.clone().requires_grad_()
    loss = loss_fn(real, fake)
    value = float(loss.detach())
    assert abs(value - 2.0) < 1e-6, f"L_D = {value:.4f} for the test scores, expected 2"
    loss.backward()
    # d L / d real_i = -1/B inside the margin, 0 beyond it; d L / d fake_i = +1/B, or 0.
    torch.testing.assert_close(real.grad, torch.tensor([0.0, -1 / 3, -1 / 3]))
    torch.testing.assert_close(fake.grad, torch.tensor([0.0, 1 / 3, 1 / 3]))


def hinge_d_wrong_sign(real, fake):
    return F.relu(1 + real).mean() + F.relu(1 - fake).mean()     # real pushed down, fake up


def hinge_d_without_relu(real, fake):
    return (1 - real).mean() + (1 + fake).mean()                 # no margin: a linear loss


def hinge_d_summed(real, fake):
    return F.relu(1 - real).sum() + F.relu(1 + fake).sum()       # scales with the batch size


def test_hinge_d_loss_matches_the_closed_form():
    check_hinge_d_loss(hinge_d_loss)


@pytest.mark.parametrize("wrong", [hinge_d_wrong_sign, hinge_d_without_relu, hinge_d_summed],
                         ids=lambda f: f.__name__)
def test_hinge_d_loss_grader_rejects(wrong):
    reject(check_hinge_d_loss, wrong)


# ---- Hinge loss for G: L_G = -E[D(G(z))] (no margin, no relu). -------------------

def check_hinge_g_loss(loss_fn):
    """loss_fn(fake_scores (B,)) -> scalar. For the scores above, -E[D(G(z))] =
    -(-2 + 0.5 + 1) / 3 = 1/6, and every fake score, even one beyond the margin,
    gets gradient -1/B: G always has a signal."""
    fake = FAKE_SCORES.clone().requires_grad_()
    loss = loss_fn(fake)
    value = float(loss.detach())
    assert abs(value - 1 / 6) < 1e-6, f"L_G = {value:.4f} for the test scores, expected 1/6"
    loss.backward()
    torch.testing.assert_close(fake.grad, torch.full((3,), -1 / 3))


def hinge_g_wrong_sign(fake):
    return fake.mean()                              # G would lower its own scores


def hinge_g_with_margin(fake):
    return F.relu(1 - fake).mean()                  # D's hinge reused: no gradient past +1


def test_hinge_g_loss_matches_the_closed_form():
    check_hinge_g_loss(hinge_g_loss)


@pytest.mark.parametrize("wrong", [hinge_g_wrong_sign, hinge_g_with_margin], ids=lambda f: f.__name__)
def test_hinge_g_loss_grader_rejects(wrong):
    reject(check_hinge_g_loss, wrong)


# ---- D_T sees the clip 2x average-pooled in space (and never pooled in time). ----

def check_temporal_discriminator_pooling(discriminator_class):
    """discriminator_class(in_channels, ch, resolution) -> D_T, (B, C, T, H, W) -> (B,).

    Two constructed inputs, no look inside:
      * add a checkerboard +-a that sums to zero over every 2x2 block: the 2x2 average
        pooled clip, hence D_T's score, must not change;
      * swap frames 0<->1, 2<->3, ...: a D_T that has not pooled time yet sees a
        different clip, so its score must change."""
    torch.manual_seed(0)
    discriminator = discriminator_class(3, 4, 16).eval()     # eval: spectral norm frozen
    video = torch.rand(2, 3, 8, 16, 16) * 2 - 1              # (B, C, T, H, W)
    rows, cols = torch.arange(16)[:, None], torch.arange(16)[None, :]
    checkerboard = 0.5 * (1 - 2 * ((rows + cols) % 2)).float()   # +-0.5, zero mean per 2x2 block
    swapped = video[:, :, torch.arange(8).view(4, 2).flip(1).flatten()]   # frames 1,0,3,2,...
    with torch.no_grad():
        score = discriminator(video)
        score_checkered = discriminator(video + checkerboard)
        score_swapped = discriminator(swapped)
    assert score.shape == (2,)
    torch.testing.assert_close(score_checkered, score, atol=1e-4, rtol=1e-4,
                               msg="D_T's score changed under a pattern that 2x2 average pooling removes")
    assert (score_swapped - score).abs().max() > 1e-3, (
        "D_T's score did not change when neighbouring frames were swapped: time is pooled before D_T looks")


class DTWithoutPooling(TemporalDiscriminator):
    def forward(self, video, labels=None):
        return self.score(video, labels)                          # full resolution in


class DTSubsampling(TemporalDiscriminator):
    def forward(self, video, labels=None):
        return self.score(video[..., ::2, ::2], labels)           # keeps 1 pixel in 4


class DTPoolingTimeToo(TemporalDiscriminator):
    def forward(self, video, labels=None):
        return self.score(F.avg_pool3d(video, (2, 2, 2)), labels)  # blurs motion away


class DTMaxPooling(TemporalDiscriminator):
    def forward(self, video, labels=None):
        return self.score(F.max_pool3d(video, (1, 2, 2)), labels)


def test_temporal_discriminator_pools_space_not_time():
    check_temporal_discriminator_pooling(TemporalDiscriminator)


@pytest.mark.parametrize("wrong", [DTWithoutPooling, DTSubsampling, DTPoolingTimeToo, DTMaxPooling],
                         ids=lambda c: c.__name__)
def test_temporal_discriminator_pooling_grader_rejects(wrong):
    reject(check_temporal_discriminator_pooling, wrong)


# ==================================================================================
# Assignment 2: the ConvGRU and conditional batch norm (level1.py)
# ==================================================================================

# ---- ConvGRU: one step, by hand. --------------------------------------------------

def check_convgru(gru_class):
    """gru_class(channels) -> module with convolutions `gates` (2C -> 2C: r, then u)
    and `candidate` (2C -> C), inputs (B, T, C, H, W) -> states (B, T, C, H, W).

    The reference is the GRU written out with the module's own (fixed) weights:
        r_t = sigmoid(W_r * [x_t, h_{t-1}])
        u_t = sigmoid(W_u * [x_t, h_{t-1}])
        c_t = tanh(W_c * [x_t, r_t . h_{t-1}])
        h_t = u_t . h_{t-1} + (1 - u_t) . c_t,     h_0 = state, or 0 without one
    Three frames: from h_0 = 0 the reset gate has nothing to reset, so the later
    steps (from a non-zero state) are the ones that test it. Then frames 2 and 3
    again, from frame 1's state: what sample.py's streaming does between chunks."""
    torch.manual_seed(0)
    gru = gru_class(4).eval()                      # eval: spectral norm frozen, weights fixed
    with torch.no_grad():                          # non-zero biases, so they are tested too
        for conv in (gru.gates, gru.candidate):
            conv.bias.normal_(0, 0.5)
    inputs = torch.randn(2, 3, 4, 5, 5)            # (B, T, C, H, W)
    w_gates, b_gates = gru.gates.weight.detach(), gru.gates.bias.detach()
    w_cand, b_cand = gru.candidate.weight.detach(), gru.candidate.bias.detach()
    h = torch.zeros(2, 4, 5, 5)
    expected = []
    for t in range(3):
        x = inputs[:, t]
        gates = torch.sigmoid(F.conv2d(torch.cat([x, h], 1), w_gates, b_gates, padding=1))
        r, u = gates[:, :4], gates[:, 4:]
        c = torch.tanh(F.conv2d(torch.cat([x, r * h], 1), w_cand, b_cand, padding=1))
        h = u * h + (1 - u) * c
        expected.append(h)
    with torch.no_grad():
        states = gru(inputs)
    assert states.shape == inputs.shape
    torch.testing.assert_close(states, torch.stack(expected, 1), atol=1e-5, rtol=1e-5,
                               msg="the ConvGRU's states differ from the GRU equations")
    with torch.no_grad():
        continued = gru(inputs[:, 1:], expected[0])
    torch.testing.assert_close(continued, torch.stack(expected[1:], 1), atol=1e-5, rtol=1e-5,
                               msg="the ConvGRU started from a given state does not continue from it")


class GRUSwappedUpdateGate(ConvGRU):
    def forward(self, inputs, state=None):
        h, outputs = torch.zeros_like(inputs[:, 0]) if state is None else state, []
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            r, u = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
            c = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
            h = (1 - u) * h + u * c                               # u and 1 - u swapped
            outputs.append(h)
        return torch.stack(outputs, 1)


class GRUWithoutResetGate(ConvGRU):
    def forward(self, inputs, state=None):
        h, outputs = torch.zeros_like(inputs[:, 0]) if state is None else state, []
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            _, u = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
            c = torch.tanh(self.candidate(torch.cat([x, h], 1)))  # h, not r . h
            h = u * h + (1 - u) * c
            outputs.append(h)
        return torch.stack(outputs, 1)


class GRUReluCandidate(ConvGRU):
    def forward(self, inputs, state=None):
        h, outputs = torch.zeros_like(inputs[:, 0]) if state is None else state, []
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            r, u = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
            c = F.relu(self.candidate(torch.cat([x, r * h], 1)))  # relu, not tanh
            h = u * h + (1 - u) * c
            outputs.append(h)
        return torch.stack(outputs, 1)


class GRUForgetsItsState(ConvGRU):
    def forward(self, inputs, state=None):
        outputs = []
        for t in range(inputs.shape[1]):
            x, h = inputs[:, t], torch.zeros_like(inputs[:, 0])   # h_0 = 0 at every frame
            r, u = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
            c = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
            outputs.append(u * h + (1 - u) * c)
        return torch.stack(outputs, 1)


def test_convgru_follows_the_gru_equations():
    check_convgru(ConvGRU)


class GRUIgnoresTheGivenState(ConvGRU):
    def forward(self, inputs, state=None):
        h, outputs = torch.zeros_like(inputs[:, 0]), []           # h_0 = 0, whatever state says
        for t in range(inputs.shape[1]):
            x = inputs[:, t]
            r, u = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
            c = torch.tanh(self.candidate(torch.cat([x, r * h], 1)))
            h = u * h + (1 - u) * c
            outputs.append(h)
        return torch.stack(outputs, 1)


@pytest.mark.parametrize("wrong", [GRUSwappedUpdateGate, GRUWithoutResetGate, GRUReluCandidate,
                                   GRUForgetsItsState, GRUIgnoresTheGivenState],
                         ids=lambda c: c.__name__)
def test_convgru_grader_rejects(wrong):
    reject(check_convgru, wrong)


# ---- Conditional batch norm: y = (1 + gamma(c)) * (x - mean) / sqrt(var + eps) + beta(c).

def check_conditional_batch_norm(norm_class):
    """norm_class(channels, cond_dim) -> module with linear maps `gamma` and `beta` of
    the conditioning vector; forward(x (N, C, H, W), cond (N, D)) -> (N, C, H, W).

    In training mode the statistics are the batch's, per channel over (N, H, W),
    with the biased variance (what batch norm normalises with)."""
    torch.manual_seed(0)
    norm = norm_class(3, 5).train()
    norm.gamma.eval()                              # spectral norm frozen: fixed linear maps
    norm.beta.eval()
    x = torch.randn(4, 3, 6, 6) * 2 + 1
    cond = torch.randn(4, 5)
    with torch.no_grad():
        gamma = norm.gamma(cond)[:, :, None, None]                           # (N, C, 1, 1)
        beta = norm.beta(cond)[:, :, None, None]
        mean = x.mean(dim=(0, 2, 3), keepdim=True)                           # (1, C, 1, 1)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)            # biased
        expected = (1 + gamma) * (x - mean) / torch.sqrt(var + 1e-5) + beta
        out = norm(x, cond)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4,
                               msg="conditional batch norm differs from (1 + gamma) * x_hat + beta")


class CBNScaleWithoutOne(ConditionalBatchNorm):
    def forward(self, x, cond):
        return self.gamma(cond)[:, :, None, None] * self.norm(x) + self.beta(cond)[:, :, None, None]


class CBNPerSampleStatistics(ConditionalBatchNorm):
    def forward(self, x, cond):
        normalised = F.instance_norm(x)                          # each clip frame on its own
        return (1 + self.gamma(cond)[:, :, None, None]) * normalised + self.beta(cond)[:, :, None, None]


class CBNIgnoresTheCondition(ConditionalBatchNorm):
    def forward(self, x, cond):
        return self.norm(x)                                      # plain batch norm


def test_conditional_batch_norm_matches_the_formula():
    check_conditional_batch_norm(ConditionalBatchNorm)


@pytest.mark.parametrize("wrong", [CBNScaleWithoutOne, CBNPerSampleStatistics, CBNIgnoresTheCondition],
                         ids=lambda c: c.__name__)
def test_conditional_batch_norm_grader_rejects(wrong):
    reject(check_conditional_batch_norm, wrong)


# ==================================================================================
# Assignment 3: down and the partial-view crops (data.py)
# ==================================================================================

# ---- down: average sf x sf blocks in space, keep every tf-th frame in time. -------

def check_down(down_fn):
    """down_fn(video (B, C, T, H, W), time_factor, space_factor) -> (B, C, T/tf, H/sf, W/sf).
    Reference, by loops: out[..., j, y, x] = mean of video[..., j*tf, y*sf + dy, x*sf + dx]."""
    torch.manual_seed(0)
    video = torch.rand(1, 2, 6, 4, 6) * 2 - 1
    tf, sf = 3, 2
    expected = torch.zeros(1, 2, 2, 2, 3)
    for j in range(2):
        for y in range(2):
            for x in range(3):
                block = video[:, :, j * tf, y * sf:(y + 1) * sf, x * sf:(x + 1) * sf]   # (B, C, sf, sf)
                expected[:, :, j, y, x] = block.mean(dim=(-2, -1))
    out = down_fn(video, tf, sf)
    assert out.shape == expected.shape, f"down gave {tuple(out.shape)}, expected {tuple(expected.shape)}"
    torch.testing.assert_close(out, expected,
                               msg="down must keep frames 0, tf, 2tf, ... and average sf x sf blocks")


def down_averaging_time(video, tf, sf):
    b, c, t, h, w = video.shape
    video = video.reshape(b, c, t // tf, tf, h, w).mean(3)        # motion blur: mean of tf frames
    return F.avg_pool3d(video, (1, sf, sf))


def down_subsampling_space(video, tf, sf):
    return video[:, :, ::tf, ::sf, ::sf]                          # aliasing: 1 pixel of sf*sf


def down_keeping_last_frame(video, tf, sf):
    return F.avg_pool3d(video[:, :, tf - 1::tf], (1, sf, sf))     # frames tf-1, 2tf-1, ...


def test_down_keeps_every_tf_th_frame_and_averages_space():
    check_down(down)


@pytest.mark.parametrize("wrong", [down_averaging_time, down_subsampling_space, down_keeping_last_frame],
                         ids=lambda f: f.__name__)
def test_down_grader_rejects(wrong):
    reject(check_down, wrong)


# ---- Partial views: the condition crop is aligned with the output crop. -----------

def check_partial_view(level_example_fn):
    """level_example_fn(video (C, T, H, W), preset, level, crop_frames, context, crop_size,
    rng, crop_start) -> {"target", "condition", "crop_start"}, as data.level_example.

    Tiny preset, level 2 (tf = sf = 2, 16 frames of 32x32, crop 8, context K = 3).
    Time: frame t of the clip is filled with the value t + 1, so every frame says which
    it is (and none looks like zero padding). For each crop start s, target frame i
    must be clip frame s + i, and condition frame k must be clip frame
    (s/tf - K + k) * tf, the index clamped to the clip (the context past the clip's
    ends repeats its first / last condition frame).
    Space: with a spatial crop, down(target) must equal the condition's middle frames
    (the condition crop covers exactly the output crop)."""
    spec = level_spec("tiny", 2)
    tf, crop, K = spec.time_factor, spec.crop_frames, spec.context
    frames, size = spec.frames, spec.size
    values = torch.arange(1, frames + 1, dtype=torch.float32)                 # frame t holds t + 1
    clip = values.view(1, frames, 1, 1).expand(3, frames, size, size)          # (C, T, H, W)
    last = frames // tf - 1                                        # the last condition frame
    for s in range(0, frames - crop + 1, tf):
        example = level_example_fn(clip, "tiny", 2, crop_frames=crop, context=K, crop_start=s)
        assert example["crop_start"] == s
        target_frames = example["target"][0, :, 0, 0] - 1                 # clip frame indices
        condition_frames = example["condition"][0, :, 0, 0] - 1
        torch.testing.assert_close(target_frames, torch.arange(s, s + crop, dtype=torch.float32),
                                   msg=f"crop start {s}: the target is not clip frames s .. s + crop - 1")
        expected = [min(max(s // tf - K + k, 0), last) * tf for k in range(crop // tf + 2 * K)]
        torch.testing.assert_close(condition_frames, torch.tensor(expected, dtype=torch.float32),
                                   msg=f"crop start {s}: condition frames {condition_frames.tolist()}, "
                                       f"expected clip frames {expected}")
    generator = torch.Generator().manual_seed(0)
    clip = torch.rand(3, frames, size, size, generator=generator) * 2 - 1
    for seed in range(3):
        example = level_example_fn(clip, "tiny", 2, crop_frames=crop, context=K, crop_size=16,
                                   rng=np.random.default_rng(seed))
        middle = example["condition"][:, K:K + crop // tf]                # the crop's own frames
        torch.testing.assert_close(down(example["target"], tf, spec.space_factor), middle,
                                   msg="the condition crop does not cover the output crop in space")


def _student_partial_view(video, preset, level, crop_frames=None, context=None, crop_size=None,
                          rng=None, crop_start=None, frame_offset=0, zero_context=False,
                          pixel_offset=0):
    """A student's level_example (crop_start or crop_size required), with one mistake set."""
    spec = level_spec(preset, level)
    tf, sf, K = spec.time_factor, spec.space_factor, context
    s = crop_start if crop_start is not None else 0
    condition = down(video, tf, sf)                                # (C, T/tf, h, w)
    if zero_context:                                               # black frames as context
        condition = F.pad(condition, (0, 0, 0, 0, K, K))
    else:
        condition = pad_condition(condition, K)
    j0 = s // tf + frame_offset
    target = video[:, s:s + crop_frames]
    condition = condition[:, j0:j0 + crop_frames // tf + 2 * K]
    if crop_size is not None:
        y = int(rng.integers(0, (video.shape[-1] - crop_size) // sf + 1)) * sf   # corner (y, y): enough here
        target = target[:, :, y:y + crop_size, y:y + crop_size]
        c, yc = crop_size // sf, y // sf + pixel_offset
        condition = condition[:, :, yc:yc + c, yc:yc + c]
    return {"target": target, "condition": condition, "crop_start": s}


condition_one_frame_late = functools.partial(_student_partial_view, frame_offset=1)
condition_one_frame_early = functools.partial(_student_partial_view, frame_offset=-1)
zero_context_at_the_ends = functools.partial(_student_partial_view, zero_context=True)
condition_crop_one_pixel_off = functools.partial(_student_partial_view, pixel_offset=1)


def test_partial_view_condition_is_aligned_with_the_output_crop():
    check_partial_view(level_example)


@pytest.mark.parametrize("wrong", [condition_one_frame_late, condition_one_frame_early,
                                   zero_context_at_the_ends, condition_crop_one_pixel_off],
                         ids=["condition_one_frame_late", "condition_one_frame_early",
                              "zero_context_at_the_ends", "condition_crop_one_pixel_off"])
def test_partial_view_grader_rejects(wrong):
    reject(check_partial_view, wrong)


# ==================================================================================
# Assignment 4: the upsampler's temporal receptive field and windowed sampling
# (upsample_level.py, sample.py)
# ==================================================================================

# ---- R: output frame j*tf + r depends on condition frames j - R .. j + R only. ----

def measured_receptive_field(generator, frames=11):
    """R measured by perturbing one condition frame m and finding the output frames
    that change: the largest |j - m| over the changed output frames j*tf + r."""
    torch.manual_seed(1)
    condition = torch.rand(1, 3, frames, 4, 4) * 2 - 1
    z = torch.randn(1, generator.z_dim)
    m = frames // 2
    perturbed = condition.clone()
    perturbed[:, :, m] = -perturbed[:, :, m]
    with torch.no_grad():
        change = (generator(perturbed, z) - generator(condition, z)).abs()   # (1, 3, T, H, W)
    changed = change.amax(dim=(0, 1, 3, 4)) > 1e-6                          # (T,)
    condition_frames = torch.arange(change.shape[2]) // generator.time_factor   # j of each output frame
    return int((condition_frames[changed] - m).abs().max())


def check_temporal_receptive_field(generator_class):
    """generator_class(time_factor, space_factor, z_dim, ch, encoder_blocks) -> G_l with
    temporal_receptive_field() -> R. R must be the measured one for 0, 1 and 2 encoder
    blocks (each block: two 3x3x3 convolutions, one frame each side each; the
    in-between frames read the next aligned frame, made from the next condition frame)."""
    for blocks in (0, 1, 2):
        torch.manual_seed(0)
        generator = generator_class(2, 2, z_dim=8, ch=4, encoder_blocks=blocks).eval()
        measured, stated = measured_receptive_field(generator), generator.temporal_receptive_field()
        assert stated == measured, (
            f"{blocks} encoder blocks: temporal_receptive_field() says {stated}, "
            f"but output frames depend on condition frames up to {measured} away")


class RFForgetsTheBase(UpsampleGenerator):
    def temporal_receptive_field(self):
        return 2 * self.encoder_blocks              # 0 with no encoder: but frame j*tf+1 reads j+1


class RFOneFramePerBlock(UpsampleGenerator):
    def temporal_receptive_field(self):
        return max(self.encoder_blocks, 1)          # counts one 3x3x3 conv per block, not two


def test_temporal_receptive_field_is_the_measured_one():
    check_temporal_receptive_field(UpsampleGenerator)


@pytest.mark.parametrize("wrong", [RFForgetsTheBase, RFOneFramePerBlock], ids=lambda c: c.__name__)
def test_temporal_receptive_field_grader_rejects(wrong):
    reject(check_temporal_receptive_field, wrong)


# ---- Windowed sampling: with context K >= R, windows give the whole-video output. ---

class RecordingGenerator(nn.Module):
    """Passes calls through to a generator and records how many condition frames each saw."""

    def __init__(self, generator):
        super().__init__()
        self.generator, self.frames_seen = generator, []
        self.time_factor, self.space_factor = generator.time_factor, generator.space_factor

    def forward(self, condition, z, labels=None, context=0):
        self.frames_seen.append(condition.shape[2])
        return self.generator(condition, z, labels, context=context)


def check_windowed_sampling(upsample_fn):
    """upsample_fn(generator, condition (B, 3, t, h, w), z, labels, context, window)
    -> (B, 3, t*tf, h*sf, w*sf), as sample.upsample.

    The reference is one generator call on the whole video, its ends padded by
    R replicated frames: generator(pad_condition(c, R), z, context=R).
      * context K >= R: the windowed video equals it (t = 10 in windows of 4: the last
        window does not fit whole), and no call sees more than window + 2K frames
        (the memory does not grow with the video's length);
      * context K = R - 1: some output frame misses a condition frame it depends on,
        so the windowed video differs (the first check means something)."""
    torch.manual_seed(0)
    generator = UpsampleGenerator(2, 2, z_dim=8, ch=4, encoder_blocks=1).eval()   # eval: fixed BN
    R = generator.temporal_receptive_field()
    condition = torch.rand(2, 3, 10, 4, 4) * 2 - 1
    z = torch.randn(2, 8)
    with torch.no_grad():
        whole = generator(pad_condition(condition, R), z, context=R)              # (2, 3, 20, 8, 8)
        for context in (R, R + 1):
            recording = RecordingGenerator(generator)
            windowed = upsample_fn(recording, condition, z, context=context, window=4)
            torch.testing.assert_close(
                windowed, whole, atol=1e-5, rtol=1e-5,
                msg=f"context {context} >= R = {R}: windows differ from the whole video")
            assert max(recording.frames_seen) <= 4 + 2 * context, (
                f"a generator call saw {max(recording.frames_seen)} condition frames; windows of 4 "
                f"with {context} context frames each side need at most {4 + 2 * context}")
        too_little = upsample_fn(generator, condition, z, context=R - 1, window=4)
    assert (too_little - whole).abs().max() > 1e-4, (
        f"context {R - 1} < R = {R} gave the whole-video output: the windows cannot have been "
        f"cut with only {R - 1} context frames")


def windows_padded_one_by_one(generator, condition, z, labels=None, context=0, window=None):
    t, pieces = condition.shape[2], []
    for j0 in range(0, t, window or t):
        piece = pad_condition(condition[:, :, j0:j0 + (window or t)], context)   # edge frames, not neighbours
        pieces.append(generator(piece, z, labels, context=context))
    return torch.cat(pieces, dim=2)


def windows_without_context(generator, condition, z, labels=None, context=0, window=None):
    t, pieces = condition.shape[2], []
    for j0 in range(0, t, window or t):
        pieces.append(generator(condition[:, :, j0:j0 + (window or t)], z, labels, context=0))
    return torch.cat(pieces, dim=2)


def whole_video_ignoring_window(generator, condition, z, labels=None, context=0, window=None):
    return generator(pad_condition(condition, context), z, labels, context=context)   # memory grows with t


def test_windowed_sampling_equals_whole_video_sampling():
    check_windowed_sampling(upsample)


@pytest.mark.parametrize("wrong", [windows_padded_one_by_one, windows_without_context,
                                   whole_video_ignoring_window], ids=lambda f: f.__name__)
def test_windowed_sampling_grader_rejects(wrong):
    reject(check_windowed_sampling, wrong)


# ==================================================================================
# Assignment 5: the EMA of G's weights and standing statistics (training.py)
# ==================================================================================

# ---- EMA: theta_ema <- decay * theta_ema + (1 - decay) * theta; buffers copied. ----

def check_update_ema(update_fn):
    """update_fn(ema_model, model, decay), in place on ema_model.

    Closed form after three updates towards weights theta_1, theta_2, theta_3:
        theta_ema = d^3 theta_0 + (1 - d) (d^2 theta_1 + d theta_2 + theta_3)
    Buffers (batch-norm running statistics) are the model's last ones, copied;
    the model is not touched; decay 0 copies the weights (the warm-up)."""
    torch.manual_seed(0)
    ema, model = (nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for _ in range(2))
    d = 0.9
    expected = [p.detach().clone() * d**3 for p in ema.parameters()]
    for k in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
            model[1].running_mean.normal_()
            model[1].running_var.uniform_(0.5, 2)
        for e, p in zip(expected, model.parameters()):
            e += (1 - d) * d ** (3 - k) * p.detach()
        weights = [p.detach().clone() for p in model.parameters()]
        update_fn(ema, model, d)
    names = ("linear.weight", "linear.bias", "bn.weight", "bn.bias")
    for name, e, p in zip(names, expected, ema.parameters()):
        torch.testing.assert_close(p.detach(), e, msg=f"EMA of {name} differs from the closed form")
    for e, p in zip(weights, model.parameters()):
        torch.testing.assert_close(p.detach(), e, msg="update_ema changed the model it averages")
    torch.testing.assert_close(ema[1].running_mean, model[1].running_mean,
                               msg="the EMA model's running statistics must be the model's, copied")
    torch.testing.assert_close(ema[1].running_var, model[1].running_var)
    update_fn(ema, model, 0.0)
    for e, p in zip(ema.parameters(), model.parameters()):
        torch.testing.assert_close(e.detach(), p.detach(), msg="decay 0 must copy the weights")


@torch.no_grad()
def ema_decay_swapped(ema_model, model, decay):
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.copy_((1 - decay) * e + decay * p)                     # mostly the new weights
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def ema_without_buffers(ema_model, model, decay):
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.copy_(decay * e + (1 - decay) * p)                     # running stats left stale


@torch.no_grad()
def ema_moves_the_model(ema_model, model, decay):
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.copy_(decay * e + (1 - decay) * p)
        p.copy_(e)                                               # "keep them in sync"
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def test_update_ema_matches_the_closed_form():
    check_update_ema(update_ema)


@pytest.mark.parametrize("wrong", [ema_decay_swapped, ema_without_buffers, ema_moves_the_model],
                         ids=lambda f: f.__name__)
def test_update_ema_grader_rejects(wrong):
    reject(check_update_ema, wrong)


# ---- Standing statistics: batch-norm statistics measured afresh, equally weighted. ---

def check_standing_statistics(standing_fn):
    """standing_fn(model, forward, batches): forward(model) runs one batch.

    A batch norm that carries training statistics (mean 5, variance 9, 1000 batches
    tracked) is shown 4 batches x_1..x_4. Afterwards, closed form:
        running_mean = (1/4) sum_i mean(x_i)
        running_var  = (1/4) sum_i var(x_i)   (unbiased, as batch norm tracks it)
    with nothing left of the training statistics, the model back in eval mode and
    its momentum as it was."""
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(3, momentum=0.1)
    with torch.no_grad():
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
        norm.num_batches_tracked.fill_(1000)
    norm.eval()
    xs = [torch.randn(8, 3) * (i + 1) + i for i in range(4)]      # 4 batches, different statistics
    batches = iter(xs)
    standing_fn(norm, lambda model: model(next(batches)), 4)
    expected_mean = torch.stack([x.mean(0) for x in xs]).mean(0)
    expected_var = torch.stack([x.var(0, unbiased=True) for x in xs]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected_mean,
                               msg="running_mean is not the plain average of the batches' means")
    torch.testing.assert_close(norm.running_var, expected_var,
                               msg="running_var is not the plain average of the batches' variances")
    assert not norm.training, "the model must be back in eval mode"
    assert norm.momentum == 0.1, f"momentum must be restored to 0.1, is {norm.momentum}"


@torch.no_grad()
def standing_keeping_training_stats(model, forward, batches=8):
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None                                         # no reset_running_stats()
    model.train()
    for _ in range(batches):
        forward(model)
    model.eval()
    for m in norms:
        m.momentum = 0.1


@torch.no_grad()
def standing_with_exponential_average(model, forward, batches=8):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()                               # momentum left at 0.1
    model.train()
    for _ in range(batches):
        forward(model)
    model.eval()


@torch.no_grad()
def standing_in_eval_mode(model, forward, batches=8):
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    for _ in range(batches):
        forward(model)                                            # eval: statistics never updated
    for m in norms:
        m.momentum = 0.1


@torch.no_grad()
def standing_left_in_train_mode(model, forward, batches=8):
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(batches):
        forward(model)
    for m in norms:
        m.momentum = 0.1                                          # and no model.eval()


def test_standing_statistics_match_the_closed_form():
    check_standing_statistics(standing_statistics)


@pytest.mark.parametrize("wrong", [standing_keeping_training_stats, standing_with_exponential_average,
                                   standing_in_eval_mode, standing_left_in_train_mode],
                         ids=lambda f: f.__name__)
def test_standing_statistics_grader_rejects(wrong):
    reject(check_standing_statistics, wrong)
