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
