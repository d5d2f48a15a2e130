"""Upsampling levels: the conditional generator, partial views, the matching
discriminator's pairs, and the training script."""

import pytest
import torch

import data
import upsample_level as up
from conftest import run_script
from data import PRESETS, down, level_example, level_spec, pad_condition
from discriminators import matching_input
from training import load_checkpoint


def small_generator(tf=2, sf=2, blocks=1, **kwargs):
    torch.manual_seed(0)
    return up.UpsampleGenerator(tf, sf, z_dim=8, ch=4, encoder_blocks=blocks, **kwargs).eval()


@pytest.mark.parametrize("preset,level", [(p, spec.level) for p, specs in PRESETS.items()
                                          for spec in specs if spec.level > 1])
def test_output_shape_for_every_preset_level(preset, level):
    """A training crop of every preset level: condition with context -> output crop."""
    spec = level_spec(preset, level)
    generator = up.UpsampleGenerator(spec.time_factor, spec.space_factor, z_dim=8, ch=2).eval()
    t, h = spec.crop_frames // spec.time_factor, spec.size // spec.space_factor
    condition = torch.zeros(1, 3, t + 2 * spec.context, h, h)
    with torch.no_grad():
        out = generator(condition, torch.randn(1, 8), context=spec.context)
    assert out.shape == (1, 3, spec.crop_frames, spec.size, spec.size)


def test_whole_video_output_has_time_factor_more_frames():
    generator = small_generator()
    condition = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        out = generator(pad_condition(condition, 2), torch.randn(2, 8), context=2)
    assert out.shape == (2, 3, 16, 32, 32)


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("inbetween", ["matched", "learned"])
def test_receptive_field(blocks, inbetween):
    """Output frames j*tf + r depend on condition frames j - 2*blocks .. j + R and no
    others, R = temporal_receptive_field(): 2*blocks + 1 with matched in-between frames
    (frame j*tf + 1 is made from aligned frames j and j+1), 2*blocks with learned ones
    (whose base reads frame j+1, inside that)."""
    generator = small_generator(blocks=blocks, inbetween=inbetween)
    radius = generator.temporal_receptive_field()
    assert radius == 2 * blocks + (inbetween == "matched")
    condition, z = torch.rand(1, 3, 16, 16, 16) * 2 - 1, torch.randn(1, 8)
    with torch.no_grad():
        before = generator(condition, z)
    j = 8                                        # look at output frames 16 and 17 (tf = 2)
    for frame in range(16):
        changed = condition.clone()
        changed[:, :, frame] = torch.rand(3, 16, 16)
        with torch.no_grad():
            after = generator(changed, z)
        moved = (after[:, :, 2 * j:2 * j + 2] - before[:, :, 2 * j:2 * j + 2]).abs().max()
        if -2 * blocks <= frame - j <= radius:
            assert moved > 1e-4, f"condition frame {frame} is inside the receptive field"
        else:
            assert moved == 0, f"condition frame {frame} is outside the receptive field"


def test_a_fresh_generator_starts_close_to_the_interpolated_condition():
    generator = small_generator()
    condition = torch.rand(1, 3, 4, 8, 8) * 1.6 - 0.8
    with torch.no_grad():
        out = generator(condition, torch.randn(1, 8))
    base = up.interpolate_condition(condition, 2, 2)
    assert (out - base).abs().mean() < 0.25


def test_interpolated_condition_keeps_condition_frames_and_blends_between():
    condition = torch.arange(3.0).view(1, 1, 3, 1, 1)          # frames 0, 1, 2
    video = up.interpolate_condition(condition, 2, 1)
    assert video.flatten().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_matching_pairs_share_the_condition_of_the_crop():
    """Real pair (down(x), x) and fake pair (down(x), G(down(x), z)): the condition
    D_M sees is the crop's condition without its context, and it is exactly the
    downsampled target crop."""
    video = torch.rand(3, 16, 32, 32) * 2 - 1
    example = level_example(video, "tiny", 2, crop_frames=8, context=2, crop_start=4)
    condition = example["condition"].unsqueeze(0)               # (1, 3, 4 + 2*2, 16, 16)
    target = example["target"].unsqueeze(0)                     # (1, 3, 8, 32, 32)
    pair_condition = up.matching_condition(condition, 2)
    torch.testing.assert_close(pair_condition, down(target, 2, 2))
    fake = small_generator()(condition, torch.randn(1, 8), context=2)
    real_pair, fake_pair = matching_input(pair_condition, target), matching_input(pair_condition, fake)
    torch.testing.assert_close(real_pair[:, :3], fake_pair[:, :3])     # same condition half
    assert real_pair.shape == fake_pair.shape == (1, 6, 8, 32, 32)


def test_training_step_only_builds_crop_length_tensors(tmp_path, monkeypatch, small_upsample_args):
    """However long the level's videos, a training step only handles the crop: every
    5-D tensor a module returns has at most crop frames (output side) or
    crop/tf + 2K frames (condition side)."""
    longest = {}
    for frames in (16, 64):
        monkeypatch.setitem(PRESETS, "long", data._pyramid([(frames // 2, 16), (frames, 32)]))
        seen = []

        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 5:
                seen.append(output.shape[2])

        handle = torch.nn.modules.module.register_module_forward_hook(record)
        try:
            code = run_script(up.main, small_upsample_args + [
                "--preset", "long", "--steps", "1", "--sample-every", "0", "--out", str(tmp_path / str(frames))])
        finally:
            handle.remove()
        assert code == 0
        longest[frames] = max(seen[:len(seen) // 2])   # the training step (sampling runs last)
    condition_frames = 8 // 2 + 2 * data._pyramid([(8, 16), (16, 32)])[1].context   # crop/tf + 2K
    assert longest[16] == longest[64] <= max(8, condition_frames)


def test_training_writes_checkpoint_and_condition_vs_output_samples(tmp_path, small_upsample_args):
    out = tmp_path / "level2"
    assert run_script(up.main, small_upsample_args + ["--steps", "2", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "ckpt.pt", level=2, preset="tiny")
    assert {"generator", "ema_generator", "spatial", "temporal", "matching"} <= ckpt["models"].keys()
    rebuilt = up.build_generator(ckpt["config"], ckpt["num_classes"])
    rebuilt.load_state_dict(ckpt["models"]["ema_generator"])
    assert (out / "samples" / "step_000002.mp4").exists()


def test_no_matching_ablation_trains_without_the_matching_discriminator(tmp_path, small_upsample_args):
    out = tmp_path / "ablation"
    assert run_script(up.main, small_upsample_args + ["--steps", "1", "--no-matching", "--context", "0",
                                                      "--out", str(out)]) == 0
    assert "matching" not in load_checkpoint(out / "ckpt.pt")["models"]


def test_resuming_gives_the_same_weights_as_not_stopping(tmp_path, small_upsample_args):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_script(up.main, small_upsample_args + ["--steps", "4", "--out", str(straight)]) == 0
    assert run_script(up.main, small_upsample_args + ["--steps", "2", "--out", str(stopped)]) == 0
    assert run_script(up.main, small_upsample_args + ["--steps", "4", "--out", str(stopped)]) == 0
    a, b = load_checkpoint(straight / "ckpt.pt")["models"], load_checkpoint(stopped / "ckpt.pt")["models"]
    for name in a:
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], msg=f"{name}.{key}")


@pytest.mark.robustness
def test_a_level2_checkpoint_given_to_level3_is_a_clear_error(tmp_path, capsys, small_upsample_args):
    out = tmp_path / "level2"
    assert run_script(up.main, small_upsample_args + ["--steps", "1", "--out", str(out)]) == 0
    code = run_script(up.main, small_upsample_args + ["--level", "3", "--steps", "2", "--out", str(out)])
    assert code == 2
    assert "is of level 2, but level 3 was asked for" in capsys.readouterr().err


@pytest.mark.robustness
def test_a_checkpoint_of_another_preset_is_a_clear_error(tmp_path, capsys, small_upsample_args):
    out = tmp_path / "level2"
    assert run_script(up.main, small_upsample_args + ["--steps", "1", "--out", str(out)]) == 0
    code = run_script(up.main, small_upsample_args + ["--preset", "ucf101", "--steps", "2", "--out", str(out)])
    assert code == 2
    assert "--preset tiny" in capsys.readouterr().err


@pytest.mark.robustness
@pytest.mark.parametrize("flags,message", [
    (["--level", "1"], "level 1 is trained by `python level1.py`"),
    (["--level", "4"], "has only 3 levels"),
    (["--crop-frames", "64"], "--crop-frames 64"),
    (["--crop-frames", "3"], "multiple of the time factor"),
    (["--context", "9"], "--context 9"),
])
def test_bad_partial_view_flags_are_clear_errors(tmp_path, capsys, small_upsample_args, flags, message):
    assert run_script(up.main, small_upsample_args + flags + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bank_crops_cut_partial_view_conditions_from_generated_videos():
    bank = torch.arange(2 * 3 * 12 * 8 * 8, dtype=torch.float32).view(2, 3, 12, 8, 8)
    torch.manual_seed(0)
    crops = up.bank_crops(bank, 5, frames=8, size=4, space_factor=2)
    assert crops.shape == (5, 3, 8, 4, 4)
    for crop in crops:   # every crop is a contiguous block of one bank video
        i, rest = divmod(int(crop[0, 0, 0, 0]), 3 * 12 * 8 * 8)
        j0, rest = divmod(rest, 64)
        y, x = divmod(rest, 8)
        torch.testing.assert_close(crop, bank[i, :, j0:j0 + 8, y:y + 4, x:x + 4])
        assert y % 2 == 0 and x % 2 == 0


def test_cond_from_trains_on_samples_of_the_previous_level(tmp_path, capsys, small_level1_args,
                                                           small_upsample_args):
    import level1
    runs = tmp_path / "runs"
    assert run_script(level1.main, small_level1_args + ["--steps", "1", "--out", str(runs / "level1")]) == 0
    flags = small_upsample_args + ["--steps", "1", "--cond-bank", "2", "--out", str(runs / "level2")]
    assert run_script(up.main, flags + ["--cond-from", str(runs / "level1")]) == 0
    assert load_checkpoint(runs / "level2" / "ckpt.pt", level=2)["config"]["cond_from"] == str(runs / "level1")
    # Samples of the wrong level are refused with a message.
    code = run_script(up.main, small_upsample_args + ["--level", "3", "--steps", "1", "--out", str(runs / "level3"),
                                                      "--cond-from", str(runs / "level1")])
    assert code == 2
    # level 3 needs level-2 samples: the chain below names the missing level.
    assert "level 2 is missing from the chain" in capsys.readouterr().err


def test_condition_error_and_detail_measure_what_the_samples_claim():
    """The numbers written next to each sample grid: a real clip follows its own
    condition exactly (error 0), an unrelated clip does not; nearest-neighbour
    upsampling has less fine detail than the real clip, and a flat video has none."""
    spec = level_spec("tiny", 2)
    base = data.make_dataset("synthetic", None, "tiny", 2)
    real = torch.stack([base[i][0] for i in range(4)])
    condition = down(real, 2, 2)
    assert up.condition_error(real, condition, spec) == 0
    assert up.condition_error(real.roll(1, dims=0), condition, spec) > 0.1
    nearest = condition.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    assert up.detail(torch.full((1, 3, 4, 8, 8), 0.3)) == 0
    assert up.detail(nearest) < up.detail(real)


def test_the_class_defaults_are_the_command_line_defaults():
    """`UpsampleGenerator(tf, sf)` and the discriminators built with their defaults
    are what `python upsample_level.py` trains (widths, pooling, padding)."""
    import inspect
    from discriminators import MatchingDiscriminator, SpatialDiscriminator, TemporalDiscriminator

    def default(cls, name):
        return inspect.signature(cls).parameters[name].default

    cfg = up.UpsampleConfig()
    assert default(up.UpsampleGenerator, "z_dim") == cfg.z_dim
    assert default(up.UpsampleGenerator, "ch") == cfg.g_ch
    assert default(up.UpsampleGenerator, "encoder_blocks") == cfg.encoder_blocks
    assert default(up.UpsampleGenerator, "padding_mode") == cfg.padding
    for cls in (SpatialDiscriminator, TemporalDiscriminator, MatchingDiscriminator):
        assert default(cls, "ch") == cfg.d_ch, cls.__name__
    assert default(TemporalDiscriminator, "pool_input") == cfg.temporal_pool
    # D_M pools by default, on both sides: see discriminators.py's D_M comment block.
    assert default(MatchingDiscriminator, "pool_input") == cfg.matching_pool is True


# ----------------------------------------------------------------------------------
# The losses with the matching discriminator, graded against wrong variants.
#
# Stand-in discriminators with closed forms make the losses computable by hand:
# D_S(x) = mean of x, D_T(x) = mean |frame difference|, and
# D_M(c, x) = 1 - 5 * mean |down(x) - c|: 1 for an output that agrees with the
# condition it is paired with, lower the more it strays from it.
# ----------------------------------------------------------------------------------

CONTEXT, TF, SF = 1, 2, 2
WEIGHTS = {"spatial": 1.0, "temporal": 2.0, "matching": 3.0}   # distinct: a swapped weight shows


def stand_in_discriminators():
    def matching(condition, video, labels=None):
        assert condition.shape[2] * TF == video.shape[2], "D_M's pair: condition frames the crop covers"
        return 1 - 5 * (down(video, TF, SF) - condition).abs().mean(dim=(1, 2, 3, 4))
    return {"spatial": lambda video, labels=None: video.mean(dim=(1, 2, 3, 4)),
            "temporal": lambda video, labels=None: video.diff(dim=2).abs().mean(dim=(1, 2, 3, 4)),
            "matching": matching}


def example_batch(batch=3):
    """Conditions (B, 3, t + 2K, h, w) that differ in every frame and example; real
    crops that agree with their condition; fakes that stray from it by 0, 0.1, 0.2, ..."""
    torch.manual_seed(3)
    condition = torch.rand(batch, 3, 4 + 2 * CONTEXT, 4, 4) * 2 - 1
    covered = condition[:, :, CONTEXT:-CONTEXT]                              # (B, 3, 4, 4, 4)
    real = covered.repeat_interleave(TF, 2).repeat_interleave(SF, 3).repeat_interleave(SF, 4)
    fake = real + 0.1 * torch.arange(batch).view(batch, 1, 1, 1, 1) * torch.rand_like(real)
    return condition, real, fake


def grade_generator_loss(generator_loss):
    """L_G = -sum_D w_D E[D(fake)], D_M on (the condition frames each crop covers, that
    crop); with --cond-from (generated > 0) D_M judges only the real-conditioned first
    B - generated examples. The expected value is computed example by example."""
    ds = stand_in_discriminators()
    condition, _, fake = example_batch()
    for generated in (0, 1):
        n = fake.shape[0] - generated
        matching = torch.stack([ds["matching"](condition[i:i + 1, :, CONTEXT:-CONTEXT], fake[i:i + 1])[0]
                                for i in range(n)])
        expected = -(WEIGHTS["spatial"] * ds["spatial"](fake).mean()
                     + WEIGHTS["temporal"] * ds["temporal"](fake).mean()
                     + WEIGHTS["matching"] * matching.mean())
        loss = generator_loss(ds, WEIGHTS, condition, fake, None, CONTEXT, generated)
        torch.testing.assert_close(loss, expected, msg=f"generated={generated}")


def grade_discriminator_loss(discriminator_loss):
    """L_D = sum_D w_D (E[relu(1 - D(real))] + E[relu(1 + D(fake))]), D_M's real and fake
    pairs sharing one condition."""
    ds = stand_in_discriminators()
    condition, real, fake = example_batch()
    covered = condition[:, :, CONTEXT:-CONTEXT]
    expected = sum(WEIGHTS[name] * (torch.relu(1 - real_s).mean() + torch.relu(1 + fake_s).mean())
                   for name, real_s, fake_s in [
                       ("spatial", ds["spatial"](real), ds["spatial"](fake)),
                       ("temporal", ds["temporal"](real), ds["temporal"](fake)),
                       ("matching", ds["matching"](covered, real), ds["matching"](covered, fake))])
    loss, stats = discriminator_loss(ds, WEIGHTS, condition, real, fake, None, CONTEXT)
    torch.testing.assert_close(loss, expected)
    assert stats["d_matching_real"] == pytest.approx(1.0)      # real pairs agree exactly


def test_generator_loss_includes_d_m_on_each_output_and_its_own_condition():
    grade_generator_loss(up.generator_loss)


def test_discriminator_loss_gives_d_m_real_and_fake_pairs_of_one_condition():
    grade_discriminator_loss(up.discriminator_loss)


# Wrong answers a student could plausibly write; each must fail its grader.
def g_loss_without_matching(ds, weights, condition, fake, labels, context, generated=0):
    no_matching = {name: d for name, d in ds.items() if name != "matching"}
    return up.generator_loss(no_matching, weights, condition, fake, labels, context, generated)


def g_loss_with_the_next_examples_condition(ds, weights, condition, fake, labels, context, generated=0):
    return up.generator_loss(ds, weights, condition.roll(1, dims=0), fake, labels, context, generated)


def g_loss_with_the_window_start_not_the_crop(ds, weights, condition, fake, labels, context, generated=0):
    # The first t condition frames: the left context is paired with the output, the crop's
    # last frames are not.
    shifted = condition[:, :, :condition.shape[2] - 2 * context]
    return up.generator_loss(ds, weights, shifted, fake, labels, 0, generated)


def g_loss_judging_bank_conditioned_outputs(ds, weights, condition, fake, labels, context, generated=0):
    return up.generator_loss(ds, weights, condition, fake, labels, context, 0)


def g_loss_with_unweighted_matching(ds, weights, condition, fake, labels, context, generated=0):
    return up.generator_loss(ds, {**weights, "matching": 1.0}, condition, fake, labels, context, generated)


@pytest.mark.parametrize("wrong", [g_loss_without_matching, g_loss_with_the_next_examples_condition,
                                   g_loss_with_the_window_start_not_the_crop,
                                   g_loss_judging_bank_conditioned_outputs, g_loss_with_unweighted_matching])
def test_the_generator_loss_grader_fails_wrong_answers(wrong):
    with pytest.raises(AssertionError):
        grade_generator_loss(wrong)


def d_loss_with_fake_pairs_of_another_condition(ds, weights, condition, real, fake, labels, context, generated=0):
    # Real and fake pairs with different conditions: D_M could then tell them apart
    # by the condition alone, without looking at agreement.
    real_part = {n: torch.relu(1 - s).mean() for n, s in up.discriminator_scores(
        ds, condition, real, labels, context, generated).items()}
    fake_part = {n: torch.relu(1 + s).mean() for n, s in up.discriminator_scores(
        ds, condition.roll(1, dims=0), fake, labels, context, generated).items()}
    return sum(weights[n] * (real_part[n] + fake_part[n]) for n in real_part), {}


def d_loss_without_matching(ds, weights, condition, real, fake, labels, context, generated=0):
    no_matching = {name: d for name, d in ds.items() if name != "matching"}
    return up.discriminator_loss(no_matching, weights, condition, real, fake, labels, context, generated)


@pytest.mark.parametrize("wrong", [d_loss_with_fake_pairs_of_another_condition, d_loss_without_matching])
def test_the_discriminator_loss_grader_fails_wrong_answers(wrong):
    with pytest.raises(AssertionError):
        grade_discriminator_loss(wrong)


def test_matching_pair_is_the_covered_condition_next_to_the_crop():
    condition, real, _ = example_batch()
    c, x, labels = up.matching_pair(condition, real, torch.arange(3), CONTEXT, generated=1)
    torch.testing.assert_close(c, condition[:2, :, CONTEXT:-CONTEXT])
    torch.testing.assert_close(x, real[:2])
    assert labels.tolist() == [0, 1]
    torch.testing.assert_close(down(x, TF, SF), c)          # a real crop gives its condition back
