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


def small_generator(tf=2, sf=2, blocks=1):
    torch.manual_seed(0)
    return up.UpsampleGenerator(tf, sf, z_dim=8, ch=4, encoder_blocks=blocks).eval()


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
def test_receptive_field(blocks):
    """Output frame j*tf + r depends on condition frames j-R .. j+R and no others."""
    generator = small_generator(blocks=blocks)
    radius = generator.temporal_receptive_field()
    assert radius == 2 * blocks
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
        if abs(frame - j) <= radius:
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
    assert longest[16] == longest[64] <= 8


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
