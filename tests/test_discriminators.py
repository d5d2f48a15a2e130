"""What discriminators.py guarantees: spectral normalisation, frame sampling of
D_S, pooling of D_T, the (condition, output) input of D_M, the hinge loss, and
the shapes of all three discriminators.

    python -m pytest -q tests/test_discriminators.py
"""

import copy
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from discriminators import (  # noqa: E402
    DBlock2d,
    DBlock3d,
    MatchingDiscriminator,
    SpatialDiscriminator,
    TemporalDiscriminator,
    block_layout,
    downsample_3d,
    hinge_d_loss,
    hinge_g_loss,
    matching_input,
    orthogonal_init,
    spectral_norm,
    to_channels_last,
)


def top_singular_value(weight):
    # Independent reference: the exact spectral norm of the weight seen as a
    # matrix (out, in * kernel), from an SVD.
    return torch.linalg.matrix_norm(weight.detach().flatten(1).double(), ord=2).item()


LAYERS = {
    "linear": lambda: nn.Linear(20, 30),
    "conv2d": lambda: nn.Conv2d(4, 8, 3),
    "conv3d": lambda: nn.Conv3d(3, 5, 3),
    "embedding": lambda: nn.Embedding(10, 16),
}


# --- spectral norm ---------------------------------------------------------


@pytest.mark.parametrize("kind", list(LAYERS))
def test_spectral_norm_makes_largest_singular_value_one(kind):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    with torch.no_grad():
        layer.weight.mul_(7.0)  # sigma far from 1 before normalisation
    assert top_singular_value(layer.weight) > 2.0
    spectral_norm(layer).train()
    # Each access of .weight in training mode is one power iteration: during
    # training the estimate converges over the first steps (and then tracks W).
    for _ in range(200):
        weight = layer.weight
    assert top_singular_value(weight) == pytest.approx(1.0, abs=1e-4)


def test_power_iteration_converges_to_the_top_singular_value():
    # W = U diag(5, 1, 0.5) V^T: power iteration must find sigma = 5, so the
    # normalised weight has singular values (1, 0.2, 0.1).
    torch.manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(6, 3))
    V, _ = torch.linalg.qr(torch.randn(4, 3))
    singular_values = torch.tensor([5.0, 1.0, 0.5])
    layer = nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(U @ torch.diag(singular_values) @ V.t())
    spectral_norm(layer)
    norm = layer.parametrizations.weight[0]
    with torch.no_grad():  # forget the estimate made at registration
        norm._u.copy_(F.normalize(torch.randn(6), dim=0))
    for _ in range(40):
        weight = layer.weight
    # (6, 4) matrix of rank 3: singular values (5, 1, 0.5, 0) / 5
    expected = torch.tensor([1.0, 0.2, 0.1, 0.0])
    assert torch.allclose(torch.linalg.svdvals(weight.detach()), expected, atol=1e-4)


def test_power_iteration_runs_only_in_training_mode():
    torch.manual_seed(2)
    layer = spectral_norm(nn.Linear(8, 8))
    norm = layer.parametrizations.weight[0]
    with torch.no_grad():
        norm._u.copy_(F.normalize(torch.randn(8), dim=0))
    u_before = norm._u.clone()
    layer.eval()
    layer(torch.randn(2, 8))
    assert torch.equal(norm._u, u_before)  # evaluating never changes the model
    layer.train()
    layer(torch.randn(2, 8))
    assert not torch.equal(norm._u, u_before)


def test_spectral_norm_stays_float32_under_bf16_autocast():
    torch.manual_seed(3)
    layer = spectral_norm(nn.Conv2d(16, 32, 3, padding=1))
    for _ in range(300):  # let the power iteration converge (training mode)
        layer.weight
    layer.eval()
    reference = layer.weight.detach()
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight = layer.weight
        output = layer(x)
    # The normalised weight is computed in float32 and is identical to the
    # one computed without autocast (a bf16 power iteration would be ~1% off)...
    assert weight.dtype == torch.float32
    assert torch.equal(weight, reference)
    assert top_singular_value(weight) == pytest.approx(1.0, abs=1e-4)
    # ...while the convolution that uses it still runs in bf16.
    assert output.dtype == torch.bfloat16


def test_spectral_norm_gradient_reaches_the_stored_weight():
    layer = spectral_norm(nn.Linear(5, 3))
    layer(torch.randn(4, 5)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_spectral_norm_survives_deepcopy_and_state_dict():
    torch.manual_seed(4)
    layer = spectral_norm(nn.Conv3d(3, 4, 3)).train()
    layer(torch.randn(1, 3, 4, 5, 5))
    # deepcopy (the EMA copy of G): same weights, independent buffers
    twin = copy.deepcopy(layer)
    assert torch.equal(twin.weight, layer.weight)
    u = layer.parametrizations.weight[0]._u.clone()
    with torch.no_grad():
        twin.parametrizations.weight.original.mul_(2.0)
    twin(torch.randn(1, 3, 4, 5, 5))
    assert torch.equal(layer.parametrizations.weight[0]._u, u)
    # state_dict round trip: u and v are saved, so a fresh layer reproduces the weight
    keys = set(layer.state_dict())
    assert {"parametrizations.weight.original", "parametrizations.weight.0._u"} <= keys
    torch.manual_seed(99)
    fresh = spectral_norm(nn.Conv3d(3, 4, 3))
    fresh.load_state_dict(layer.state_dict())
    layer.eval(), fresh.eval()
    assert torch.equal(fresh.weight, layer.weight)


def test_orthogonal_init_through_spectral_norm():
    torch.manual_seed(5)
    model = nn.Sequential(spectral_norm(nn.Conv2d(3, 8, 3)), nn.Linear(27, 6))
    orthogonal_init(model)
    stored = model[0].parametrizations.weight.original.flatten(1)  # (8, 27): orthonormal rows
    assert torch.allclose(stored @ stored.t(), torch.eye(8), atol=1e-5)
    linear = model[1].weight  # (6, 27)
    assert torch.allclose(linear @ linear.t(), torch.eye(6), atol=1e-5)
    assert torch.all(model[0].bias == 0) and torch.all(model[1].bias == 0)
    # sigma was re-estimated for the new weight: all singular values are 1
    assert top_singular_value(model[0].weight) == pytest.approx(1.0, abs=1e-4)


# --- blocks and layout -----------------------------------------------------


def test_block_layout_follows_biggan():
    # one downsampling block per halving down to 4x4, widths doubling (cap 16*ch), one block at 4x4
    assert block_layout(64, 32) == [(32, True), (64, True), (128, True), (256, True), (256, False)]
    assert block_layout(16, 8) == [(8, True), (16, True), (16, False)]
    assert [w for w, _ in block_layout(256, 32)][-3:] == [512, 512, 512]
    for bad in (4, 48, 100):
        with pytest.raises(ValueError, match="power of two"):
            block_layout(bad, 32)


def test_block_shapes():
    x = torch.randn(2, 4, 16, 16)
    assert DBlock2d(4, 8)(x).shape == (2, 8, 8, 8)
    assert DBlock2d(4, 4, downsample=False)(x).shape == (2, 4, 16, 16)
    v = torch.randn(2, 4, 6, 16, 16)
    assert DBlock3d(4, 8)(v).shape == (2, 8, 3, 8, 8)
    assert DBlock3d(4, 8, downsample=False)(v).shape == (2, 8, 6, 16, 16)


def test_first_block_sees_negative_inputs():
    # preactivation=False: no ReLU on the raw video, so its negative half matters.
    torch.manual_seed(6)
    block = DBlock2d(3, 8, preactivation=False)
    x = torch.randn(1, 3, 8, 8)
    assert not torch.allclose(block(x), block(F.relu(x)))


def test_downsample_3d_pools_time_while_there_is_more_than_one_frame():
    frames = torch.arange(3.0).reshape(1, 1, 3, 1, 1).expand(1, 1, 3, 2, 2)  # frame t has value t
    pooled = downsample_3d(frames)
    assert pooled.shape == (1, 1, 2, 1, 1)
    assert pooled.flatten().tolist() == [0.5, 2.0]  # mean(0, 1), then frame 2 alone
    assert downsample_3d(torch.ones(1, 1, 8, 4, 4)).shape == (1, 1, 4, 2, 2)
    assert downsample_3d(torch.ones(1, 1, 1, 4, 4)).shape == (1, 1, 1, 2, 2)


# --- spatial discriminator: frame sampling ----------------------------------


def labelled_video(batch, frames, size=8):
    # Every pixel of frame t of clip b holds 100*b + t, so frames are easy to recognise.
    values = 100.0 * torch.arange(batch)[:, None] + torch.arange(frames)[None, :]  # (B, T)
    return values[:, None, :, None, None].expand(batch, 3, frames, size, size).contiguous()


def test_sample_frames_picks_k_distinct_frames_per_clip():
    torch.manual_seed(7)
    video = labelled_video(batch=4, frames=10)
    frames, indices = SpatialDiscriminator.sample_frames(video, 6)
    assert frames.shape == (4 * 6, 3, 8, 8) and indices.shape == (4, 6)
    for b in range(4):
        chosen = indices[b].tolist()
        assert len(set(chosen)) == 6 and all(0 <= t < 10 for t in chosen)
    # the sampled frames are the video's frames at those indices, clip by clip
    for b in range(4):
        for i in range(6):
            assert torch.equal(frames[b * 6 + i], video[b, :, indices[b, i]])
    # clips draw independently
    assert len({tuple(row) for row in indices.tolist()}) > 1


def test_sample_frames_is_uniform_and_reproducible():
    torch.manual_seed(8)
    video = torch.zeros(4000, 1, 8, 1, 1)
    _, indices = SpatialDiscriminator.sample_frames(video, 3)
    counts = torch.bincount(indices.flatten(), minlength=8).float()
    expected = 4000 * 3 / 8  # each frame is chosen with probability k / T
    assert torch.all((counts - expected).abs() < 0.1 * expected)
    torch.manual_seed(8)
    _, again = SpatialDiscriminator.sample_frames(video, 3)
    assert torch.equal(indices, again)  # the global torch seed fixes the choice


def test_sample_frames_uses_all_frames_when_k_is_at_least_t():
    video = labelled_video(batch=2, frames=5)
    frames, indices = SpatialDiscriminator.sample_frames(video, 8)
    assert torch.equal(indices, torch.arange(5).expand(2, 5))
    assert torch.equal(frames.reshape(2, 5, 3, 8, 8), video.transpose(1, 2))


def test_spatial_score_is_the_sum_of_per_frame_scores():
    torch.manual_seed(9)
    D = SpatialDiscriminator(ch=8, resolution=16, k_frames=3, num_classes=4).eval()
    video = torch.randn(2, 3, 6, 16, 16)
    labels = torch.tensor([1, 3])
    torch.manual_seed(10)
    scores = D(video, labels)
    torch.manual_seed(10)  # the same seed draws the same frames
    _, indices = D.sample_frames(video, 3)
    for b in range(2):
        frames = video[b, :, indices[b]].transpose(0, 1)  # (C, k, H, W) -> (k, C, H, W)
        by_hand = D.score_frames(frames, labels[b].repeat(3)).sum()
        assert scores[b].item() == pytest.approx(by_hand.item(), rel=1e-5, abs=1e-5)


# --- temporal and matching discriminators ----------------------------------


def test_temporal_pool_is_2x2_average_pooling():
    video = torch.randn(2, 3, 4, 8, 8)
    by_hand = (
        video[..., 0::2, 0::2] + video[..., 1::2, 0::2] + video[..., 0::2, 1::2] + video[..., 1::2, 1::2]
    ) / 4
    pooled = TemporalDiscriminator.pool(video)
    assert pooled.shape == (2, 3, 4, 4, 4)  # time untouched
    assert torch.allclose(pooled, by_hand, atol=1e-6)


def test_matching_input_stacks_the_upsampled_condition_on_the_video():
    torch.manual_seed(11)
    tf, sf = 2, 2
    condition = torch.randn(2, 3, 4, 4, 4)  # (B, C, t, h, w)
    video = torch.randn(2, 3, 8, 8, 8)      # (B, C, t*tf, h*sf, w*sf)
    pair = matching_input(condition, video)
    assert pair.shape == (2, 6, 8, 8, 8)
    assert torch.equal(pair[:, 3:], video)  # channels C..2C-1: the video itself
    for j in range(4):
        # each condition pixel covers an sf x sf block of output pixels...
        upsampled = condition[:, :, j].repeat_interleave(sf, dim=2).repeat_interleave(sf, dim=3)
        # ...and condition frame j sits on output frames j*tf .. j*tf + tf - 1
        for r in range(tf):
            assert torch.equal(pair[:, :3, j * tf + r], upsampled)


def test_matching_input_rejects_a_condition_that_still_has_context():
    # An 8-frame output crop at tf=2 matches 4 condition frames; the training
    # condition carries K extra frames each side, which must be stripped first.
    video = torch.zeros(1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="context"):
        matching_input(torch.zeros(1, 3, 4 + 2 * 1, 4, 4), video)  # K=1: 6 frames do not divide 8
    # With K=2 the shapes alone look like tf=1; passing the known factor catches it.
    with pytest.raises(ValueError, match="context"):
        matching_input(torch.zeros(1, 3, 4 + 2 * 2, 4, 4), video, time_factor=2)
    assert matching_input(torch.zeros(1, 3, 4, 4, 4), video, time_factor=2, space_factor=2).shape == (1, 6, 8, 8, 8)


def test_matching_discriminator_depends_on_the_condition():
    # the whole point of D_M: the same output scores differently under another condition
    torch.manual_seed(12)
    D = MatchingDiscriminator(ch=8, resolution=16).eval()
    video = torch.randn(2, 3, 4, 16, 16)
    condition = torch.randn(2, 3, 2, 8, 8)
    assert not torch.allclose(D(condition, video), D(-condition, video))


# --- hinge loss -------------------------------------------------------------


def test_hinge_losses_against_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.3])
    # E[relu(1 - D(x))] = (0 + 0.5 + 2) / 3;  E[relu(1 + D(G(z)))] = (0 + 1.3) / 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 0.65, abs=1e-6)
    # -E[D(G(z))] = -(-2 + 0.3) / 2
    assert hinge_g_loss(fake).item() == pytest.approx(0.85, abs=1e-6)


def test_hinge_ignores_samples_beyond_the_margin():
    real = torch.tensor([2.0, 0.5], requires_grad=True)
    fake = torch.tensor([-3.0, 0.0], requires_grad=True)
    hinge_d_loss(real, fake).backward()
    assert real.grad.tolist() == [0.0, -0.5]  # D(x) = 2 > 1: already confident, no gradient
    assert fake.grad.tolist() == [0.0, 0.5]
    assert hinge_d_loss(real.bfloat16(), fake.bfloat16()).dtype == torch.float32


# --- all three discriminators -----------------------------------------------


@pytest.mark.parametrize("resolution", [16, 32, 64, 128])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_discriminator_output_shapes(resolution, num_classes):
    torch.manual_seed(13)
    ch = 16 if resolution < 128 else 4
    video = torch.randn(2, 3, 4, resolution, resolution)
    condition = torch.randn(2, 3, 2, resolution // 2, resolution // 2)
    labels = torch.tensor([0, 4]) if num_classes else None
    spatial = SpatialDiscriminator(ch=ch, resolution=resolution, k_frames=2, num_classes=num_classes)
    temporal = TemporalDiscriminator(ch=ch, resolution=resolution, num_classes=num_classes)
    matching = MatchingDiscriminator(ch=ch, resolution=resolution, num_classes=num_classes)
    for scores in (spatial(video, labels), temporal(video, labels), matching(condition, video, labels)):
        assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_class_projection_changes_the_score_and_is_required():
    torch.manual_seed(14)
    D = TemporalDiscriminator(ch=8, resolution=16, num_classes=3).eval()
    video = torch.randn(1, 3, 4, 16, 16)
    assert D(video, torch.tensor([0])).item() != D(video, torch.tensor([2])).item()
    with pytest.raises(ValueError, match="labels"):
        D(video)


def test_wrong_resolution_is_reported():
    with pytest.raises(ValueError, match="resolution=32"):
        SpatialDiscriminator(ch=8, resolution=16)(torch.randn(1, 3, 2, 32, 32))


def test_gradients_flow_to_inputs_also_under_autocast():
    torch.manual_seed(15)
    spatial = SpatialDiscriminator(ch=8, resolution=16, k_frames=8)
    temporal = TemporalDiscriminator(ch=8, resolution=16)
    matching = MatchingDiscriminator(ch=8, resolution=16)
    video = torch.randn(2, 3, 8, 16, 16, requires_grad=True)
    condition = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = spatial(video) + temporal(video) + matching(condition, video)
        loss = hinge_g_loss(scores)
    loss.backward()
    for tensor in (video, condition):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_whole_discriminator_deepcopy_and_state_dict_round_trip():
    torch.manual_seed(16)
    D = TemporalDiscriminator(ch=8, resolution=16)
    D(torch.randn(2, 3, 4, 16, 16))  # a training-mode forward moves u, v
    video = torch.randn(2, 3, 4, 16, 16)
    D.eval()
    expected = D(video)
    assert torch.equal(copy.deepcopy(D)(video), expected)
    torch.manual_seed(17)
    fresh = TemporalDiscriminator(ch=8, resolution=16).eval()
    fresh.load_state_dict(D.state_dict())
    assert torch.equal(fresh(video), expected)


def test_a_discriminator_step_scores_real_and_fake_then_backpropagates_once():
    # As in training: two training-mode forwards (each moves u, v in place), one backward.
    torch.manual_seed(18)
    D = SpatialDiscriminator(ch=8, resolution=16, k_frames=4)
    real, fake = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 4, 16, 16)
    loss = hinge_d_loss(D(real), D(fake))
    loss.backward()
    assert all(p.grad is not None for p in D.parameters())


def test_channels_last_weights_give_the_same_scores():
    torch.manual_seed(19)
    D = MatchingDiscriminator(ch=8, resolution=16, pool_input=False).eval()
    video, condition = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 2, 8, 8)
    expected = D(condition, video)
    to_channels_last(D)
    conv3d = D.blocks_3d[0].conv1.weight  # (out, in, 3, 3, 3)
    conv2d = D.blocks_2d[0].conv1.weight  # (out, in, 3, 3)
    assert conv3d.is_contiguous(memory_format=torch.channels_last_3d)
    assert conv2d.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(D(condition, video), expected, atol=1e-4)
