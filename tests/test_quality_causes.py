"""One test per cause of the quality gap found while making the default hierarchy's
videos look like its data (docs/quality.md): each fails on the code as it was
before the fix, so the cause cannot come back unnoticed."""

import torch

import upsample_level as up


def test_the_upsampler_can_correct_saturated_colours_as_easily_as_grey():
    # The upsampler adds a learned detail to the interpolated condition. One unit of
    # detail must move an output pixel by the same amount (the gain) whatever its
    # colour: the data's objects have saturated colours (|x| ~ 0.9-1), and the
    # generator has to sharpen their blurred edges and move them to in-between
    # positions. Added under a tanh, tanh(atanh(base) + gain * detail), the step was
    # gain * (1 - out^2): 10x smaller at 0.95 than at 0, and the level cross-faded.
    torch.manual_seed(0)
    generator = up.UpsampleGenerator(time_factor=2, space_factor=2, z_dim=8, ch=4).eval()
    z = torch.randn(1, 8)
    nudge = {"amount": 0.0}
    # Add `amount` to every detail value the generator computes (its to_rgb output).
    generator.to_rgb.register_forward_hook(lambda module, inputs, out: out + nudge["amount"])
    steps = {}
    for colour in (-0.95, 0.0, 0.95):
        condition = torch.full((1, 3, 4, 8, 8), colour)
        with torch.no_grad():
            nudge["amount"] = 0.0
            before = generator(condition, z)
            nudge["amount"] = 0.01
            after = generator(condition, z)
        # Only pixels the clamp to [-1, 1] leaves alone have a step to compare.
        free = after.abs() < 1
        steps[colour] = ((after - before)[free] / 0.01).mean().item()
    gain = generator.detail_gain.item()
    for colour, step in steps.items():
        assert abs(step - gain) < 1e-3 * max(gain, 1e-3) + 1e-4, (colour, step, gain)


def test_nothing_in_the_upsampler_marks_the_frame_border():
    # Level 3 trains on 32-pixel crops of 64-pixel frames and samples whole frames.
    # With zero padding every convolution sees black beyond the edge, so the
    # generator can tell where a border is, and it drew lines along crop borders and
    # stripes at the left and right of sampled frames. With replicate padding a
    # spatially uniform condition (any colour, any noise) gives a spatially uniform
    # output: the border columns are the centre columns, exactly.
    torch.manual_seed(0)
    generator = up.UpsampleGenerator(time_factor=2, space_factor=2, z_dim=8, ch=4).eval()
    condition = torch.rand(2, 3, 4, 1, 1).mul(1.6).sub(0.8).expand(2, 3, 4, 8, 8)   # flat frames
    with torch.no_grad():
        out = generator(condition, torch.randn(2, 8), context=1)         # (2, 3, 4, 16, 16)
    centre = out[..., 8:9, 8:9]
    assert (out - centre).abs().max() < 1e-5


def one_pixel_move_and_its_cross_fade():
    """(move, fade), each (1, 3, 8, 16, 16): a 2x2 white square on black that moves one
    pixel per frame to the right, and the same clip with every odd frame replaced by
    the cross-fade (mean) of its two neighbours, the frames an upsampler or a level-1
    generator makes when it blends instead of moving."""
    move = torch.full((1, 3, 8, 16, 16), -1.0)
    for t in range(8):
        move[..., t, 6:8, 2 + t:4 + t] = 1.0
    fade = move.clone()
    for t in (1, 3, 5):
        fade[..., t, :, :] = (move[..., t - 1, :, :] + move[..., t + 1, :, :]) / 2
    return move, fade


def test_level1_temporal_discriminator_can_tell_a_one_pixel_move_from_a_cross_fade():
    # Level 1's objects move about one pixel per frame. D_T pooled 2x in space (as
    # DVD-GAN's, at 128 px) sees a square at an odd position half in each of two
    # pooled pixels, which is exactly what the cross-fade of the even positions gives:
    # the pooled clips are the same numbers, so no pooled D_T can score them apart and
    # nothing pushed level 1 to move its objects rather than fade them (its motion was
    # 0.58-0.67 of the data's). Level 1's default D_T now sees full resolution.
    from discriminators import TemporalDiscriminator
    from training import parse_config
    from level1 import Level1Config

    move, fade = one_pixel_move_and_its_cross_fade()
    assert (move - fade).abs().max() == 1.0                              # different clips ...
    pool = TemporalDiscriminator.pool
    assert torch.equal(pool(move), pool(fade))                           # ... the same pooled
    cfg = parse_config(Level1Config, [])
    torch.manual_seed(0)
    d_t = TemporalDiscriminator(3, 8, 16, pool_input=cfg.temporal_pool).eval()
    with torch.no_grad():
        scores = d_t(torch.cat([move, fade]))
    assert (scores[0] - scores[1]).abs() > 1e-3 * scores.abs().max(), scores
