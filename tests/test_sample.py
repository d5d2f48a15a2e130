"""What sample.py guarantees: a chain of trained levels becomes full-resolution
videos of any length; windowed sampling equals whole-sequence sampling when the
context covers the receptive field; a seed fixes the videos; a broken chain stops
with a message that says what to do.

The checkpoints here hold small random-weight generators, written in the real
checkpoint format (training.checkpoint_state); nothing is trained.

    python -m pytest -q tests/test_sample.py
"""

import dataclasses
import os
import sys

import imageio.v2 as imageio
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import level1  # noqa: E402
import sample  # noqa: E402
import upsample_level  # noqa: E402
from data import PRESETS, LevelSpec, UserError, pad_condition  # noqa: E402
from training import checkpoint_state, run_main, save_checkpoint  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is fastest, and far faster when other
    processes share the cores (threads then wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- helpers

def make_generator(preset, level, ch=4, z_dim=8, encoder_blocks=1, num_classes=0, seed=0, **extra):
    """(config dataclass, random-weight generator) of one level, as the level script builds it."""
    torch.manual_seed(seed + level)
    if level == 1:
        cfg = level1.Level1Config(preset=preset, g_ch=ch, z_dim=z_dim,
                                  class_conditional=bool(num_classes), **extra)
        return cfg, level1.build_generator(dataclasses.asdict(cfg), num_classes)
    cfg = upsample_level.UpsampleConfig(level=level, preset=preset, g_ch=ch, z_dim=z_dim,
                                        encoder_blocks=encoder_blocks,
                                        class_conditional=bool(num_classes), **extra)
    generator = upsample_level.build_generator(dataclasses.asdict(cfg), num_classes)
    with torch.no_grad():
        generator.detail_gain.fill_(1.0)   # a stronger learned part than a fresh model's 0.1
    return cfg, generator


def write_run(path, preset, level, **kwargs):
    """Save a checkpoint of one level at `path`, in the format the training scripts write."""
    cfg, generator = make_generator(preset, level, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state(cfg, level, 7, kwargs.get("num_classes", 0),
                             {"generator": generator, "ema_generator": generator}, {})
    save_checkpoint(path, state)
    return path


def write_runs(folder, preset="tiny", levels=None, **kwargs):
    """folder/level1/ckpt.pt, folder/level2/ckpt.pt, ...: what `--runs folder` reads."""
    levels = levels or data.num_levels(preset)
    return [write_run(folder / f"level{level}" / "ckpt.pt", preset, level, **kwargs)
            for level in range(1, levels + 1)]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    write_runs(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_chain(tiny_runs):
    return sample.load_chain(runs=tiny_runs)


class StandIn(nn.Module):
    """An upsampling 'generator' with an exactly known temporal receptive field R:
    R stacked convolutions of 3 frames, so output frame j reads condition frames
    j-R .. j+R. Same call signature as upsample_level.UpsampleGenerator."""

    time_factor, space_factor, z_dim = 2, 2, 3

    def __init__(self, reach):
        super().__init__()
        torch.manual_seed(reach)
        self.reach = reach
        self.convs = nn.Sequential(*[nn.Conv3d(3, 3, (3, 1, 1), padding=(1, 0, 0)) for _ in range(reach)])

    def temporal_receptive_field(self):
        return self.reach

    def forward(self, condition, z, labels=None, context=0):
        t = condition.shape[2]
        x = self.convs(condition) + z[:, :, None, None, None]       # (B, 3, t, h, w)
        x = x[:, :, context:t - context]                            # drop the context
        return x.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)


# ---------------------------------------------------------------- windowed sampling

def test_windows_tile_the_video_and_the_last_one_is_clamped():
    assert sample.window_starts(8, 4) == [0, 4]
    assert sample.window_starts(10, 4) == [0, 4, 6]     # 6..9: overlaps 4..7 by two frames
    assert sample.window_starts(3, 4) == [0]            # shorter than a window: one call


@pytest.mark.parametrize("context", [0, 1, 2, 3])
def test_windowed_equals_whole_exactly_when_context_covers_the_receptive_field(context):
    generator = StandIn(reach=2)
    condition = torch.randn(2, 3, 11, 4, 4)          # 11 frames: windows of 4 do not divide it
    z = torch.randn(2, 3)
    whole = sample.upsample(generator, condition, z, context=context)
    windowed = sample.upsample(generator, condition, z, context=context, window=4)
    assert windowed.shape == whole.shape == (2, 3, 22, 8, 8)
    if context >= generator.temporal_receptive_field():
        torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-5)
    else:
        # Frames near a window's edge read zero padding instead of their neighbours.
        assert (windowed - whole).abs().max() > 1e-2


@pytest.mark.parametrize("encoder_blocks", [1, 2])
def test_real_upsampling_generator_windowed_equals_whole(encoder_blocks):
    _, generator = make_generator("tiny", 2, encoder_blocks=encoder_blocks)
    generator.eval()
    reach = generator.temporal_receptive_field()
    condition = torch.rand(2, 3, 10, 16, 16) * 2 - 1
    z = generator.sample_latent(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = generator(pad_condition(condition, reach), z, context=reach)
        windowed = sample.upsample(generator, condition, z, context=reach, window=4)
        short = sample.upsample(generator, condition, z, context=reach - 1, window=4)
        short_whole = sample.upsample(generator, condition, z, context=reach - 1)
    assert windowed.shape == (2, 3, 20, 32, 32)
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-5)
    assert (short - short_whole).abs().max() > 1e-3     # context < R: the windows show


def test_every_generator_call_sees_the_same_window_whatever_the_length():
    """The reason memory stays flat: the generator only ever sees w + 2K frames."""
    seen = []

    class Recording(StandIn):
        def forward(self, condition, *args, **kwargs):
            seen.append(condition.shape[2])
            return super().forward(condition, *args, **kwargs)

    generator = Recording(reach=1)
    for frames in (4, 16, 64):
        sample.upsample(generator, torch.randn(1, 3, frames, 2, 2), torch.randn(1, 3),
                        context=2, window=4)
    assert set(seen) == {4 + 2 * 2} and len(seen) == 1 + 4 + 16


def test_generate_equals_the_levels_applied_by_hand(tmp_path):
    """An independent reference: level 1, then each level over the whole padded
    condition, with the same per-video noise, from generators built here (not the
    chain's, whose spectral norm is baked into the weights)."""
    paths = write_runs(tmp_path, "tiny", levels=2)
    chain = sample.load_chain(ckpts=paths, levels=2)
    _, g1 = make_generator("tiny", 1)
    _, g2 = make_generator("tiny", 2)
    g1.eval(), g2.eval()
    K = chain.specs[1].context
    videos = []
    with torch.no_grad():
        for i in range(2):
            z1 = g1.sample_latent(1, generator=sample.video_rng(4, i, 1))
            z2 = g2.sample_latent(1, generator=sample.video_rng(4, i, 2))
            coarse = g1(z1, frames=12)                               # (1, 3, 12, 16, 16)
            videos.append(g2(pad_condition(coarse, K), z2, context=K))
    expected = torch.cat(videos)                                     # (2, 3, 24, 32, 32)
    got = sample.generate(chain, 2, seed=4, frames=24, batch_size=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- seeds, shapes, lengths

def test_same_seed_same_videos_whatever_the_batch_size(tiny_chain):
    a = sample.generate(tiny_chain, 3, seed=5, batch_size=3)
    b = sample.generate(tiny_chain, 3, seed=5, batch_size=2)
    c = sample.generate(tiny_chain, 2, seed=5, batch_size=1)
    other = sample.generate(tiny_chain, 3, seed=6)
    # Batches of other sizes sum in another order: float rounding (1e-5) is all
    # that may differ; another seed or another video differs by 1e-2 and more.
    # One exception, bounded here: an upsampling level's in-between frames pick one
    # motion per pixel (upsample_level.motion_interpolate_condition), and where two
    # motions tie to within float rounding the pick can go either way: a handful of
    # pixels (at most 1 in 10^4 values) may differ, by as much as the two motions'
    # pictures do; everything else agrees to rounding.
    def same(x, y):
        apart = (x - y).abs()
        assert (apart > 1e-4).float().mean() <= 1e-4, (apart > 1e-4).float().mean()
        assert apart.mean() < 1e-5, apart.mean()

    same(a, b)
    same(a[:2], c)                                               # video i depends on (seed, i)
    assert (a - other).abs().max() > 1e-2
    for i, j in [(0, 1), (0, 2), (1, 2)]:                       # videos of one seed differ
        assert (a[i] - a[j]).abs().max() > 1e-2
    assert a.dtype == torch.float32 and a.min() >= -1 and a.max() <= 1


def test_truncation_changes_the_latents_and_is_reproducible(tiny_chain):
    a = sample.generate(tiny_chain, 2, seed=1, truncation=0.5)
    b = sample.generate(tiny_chain, 2, seed=1, truncation=0.5)
    plain = sample.generate(tiny_chain, 2, seed=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - plain).abs().max() > 1e-3
    z = tiny_chain.generators[0].sample_latent(500, 0.5, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5


@pytest.mark.parametrize("preset", list(PRESETS))
def test_output_shape_and_frames_for_every_preset(preset, tmp_path):
    write_runs(tmp_path, preset, ch=2, z_dim=4)
    # On the meta device tensors have shapes but no numbers: the 256 px presets
    # are checked through the real code path in no time.
    chain = sample.load_chain(runs=tmp_path, device=torch.device("meta"))
    assert chain.preset == preset and chain.levels == data.num_levels(preset)   # read from the files
    specs = PRESETS[preset]
    for frames in (None, 2 * specs[-1].frames + 1):
        final = frames or specs[-1].frames
        videos, levels = sample.generate(chain, 2, frames=frames, batch_size=1, return_levels=True)
        assert videos.shape == (2, 3, final, specs[-1].size, specs[-1].size)
        assert [tuple(v.shape[2:]) for v in levels] == [
            (-(-final // (specs[-1].frames // s.frames)), s.size, s.size) for s in specs]


@pytest.mark.parametrize("frames, unroll, kept", [
    (32, 8, [8, 16, 32]),          # the training length
    (128, 32, [32, 64, 128]),      # 4x: level 1's RNN unrolled to 32 frames
    (30, 8, [8, 15, 30]),          # not a multiple of 4: made longer, then trimmed
    (1, 1, [1, 1, 1]),
])
def test_frames_is_the_final_length(tiny_chain, frames, unroll, kept):
    assert sample.level_frames(tiny_chain, frames) == (unroll, kept)


def test_4x_the_horizon_windowed_equals_whole(tiny_chain):
    frames = 4 * tiny_chain.frames                                   # 128 frames of 64x64
    videos, levels = sample.generate(tiny_chain, 1, seed=3, frames=frames, return_levels=True)
    whole = sample.generate(tiny_chain, 1, seed=3, frames=frames, windowed=False)
    assert videos.shape == (1, 3, 128, 64, 64)
    assert [v.shape[2] for v in levels] == [32, 64, 128]
    torch.testing.assert_close(videos, whole, rtol=0, atol=1e-4)
    # The unrolled level 1 keeps changing past its 8 training frames.
    assert (levels[0][:, :, -1] - levels[0][:, :, 8]).abs().max() > 1e-3


def test_levels_stops_early(tiny_runs):
    chain = sample.load_chain(runs=tiny_runs, levels=2)
    assert sample.generate(chain, 1).shape == (1, 3, 16, 32, 32)


def test_upper_levels_stay_faithful_to_the_level_below(tiny_chain):
    """Each level's output, brought back down, resembles its input (the base of the
    upsampling generator is the interpolated condition)."""
    _, levels = sample.generate(tiny_chain, 2, return_levels=True)
    for coarse, fine, spec in zip(levels, levels[1:], tiny_chain.specs[1:]):
        back = data.down(fine, spec.time_factor, spec.space_factor)
        assert back.shape == coarse.shape
        assert (back - coarse).abs().mean() < (coarse - coarse.roll(1, 0)).abs().mean()


# ---------------------------------------------------------------- class conditioning

def test_class_conditional_chain(tmp_path):
    write_runs(tmp_path / "runs", num_classes=3)
    chain = sample.load_chain(runs=tmp_path / "runs")
    assert chain.num_classes == 3
    one = sample.generate(chain, 1, seed=0, label=1)
    two = sample.generate(chain, 1, seed=0, label=2)
    assert (one - two).abs().max() > 1e-3
    with pytest.raises(UserError, match=r"--class 3 is out of range.*0\.\.2"):
        sample.generate(chain, 1, label=3)


@pytest.mark.robustness
def test_class_on_an_unconditional_chain_is_an_error(tiny_chain):
    with pytest.raises(UserError, match="not class-conditional"):
        sample.generate(tiny_chain, 1, label=0)


# ---------------------------------------------------------------- broken chains

@pytest.fixture(scope="module")
def loose_ckpts(tiny_runs, tmp_path_factory):
    """Level 1..3 of tiny, and a level 2 of ucf101."""
    other = write_run(tmp_path_factory.mktemp("ucf") / "level2.pt", "ucf101", 2, ch=2)
    return [tiny_runs / f"level{level}" / "ckpt.pt" for level in (1, 2, 3)] + [other]


@pytest.mark.robustness
def test_missing_level_names_the_command_that_trains_it(tmp_path):
    runs = tmp_path / "myruns"
    write_runs(runs, "tiny", levels=2)
    with pytest.raises(UserError, match=r"level-3 checkpoint.*python upsample_level\.py --level 3 "
                                        r"--preset tiny --out .*myruns.level3.*--levels 2"):
        sample.load_chain(runs=runs)
    with pytest.raises(UserError, match=r"python level1\.py --preset tiny"):
        sample.load_chain(runs=tmp_path / "empty")


def test_checkpoints_out_of_order(loose_ckpts):
    one, two, three, _ = loose_ckpts
    with pytest.raises(UserError, match=r"out of order.*levels given: \[1, 3, 2\]"):
        sample.load_chain(ckpts=[one, three, two])


def test_level2_checkpoint_where_level1_is_expected(loose_ckpts):
    _, two, three, _ = loose_ckpts
    with pytest.raises(UserError, match=r"level 1 is missing.*level-2 checkpoint.*python level1\.py"):
        sample.load_chain(ckpts=[two, three])


def test_too_few_checkpoints(loose_ckpts):
    one, two, _, _ = loose_ckpts
    with pytest.raises(UserError, match=r"level 3 is missing.*--levels 2"):
        sample.load_chain(ckpts=[one, two])
    assert sample.load_chain(ckpts=[one, two], levels=2).levels == 2


def test_mismatched_preset(loose_ckpts, tiny_runs):
    one, _, three, ucf_two = loose_ckpts
    with pytest.raises(UserError, match=r"--preset ucf101, but this chain is --preset tiny"):
        sample.load_chain(ckpts=[one, ucf_two, three])
    with pytest.raises(UserError, match=r"--preset tiny, but this chain is --preset kinetics600"):
        sample.load_chain(runs=tiny_runs, preset="kinetics600")


def test_levels_that_do_not_fit_together(tmp_path, monkeypatch):
    # A preset whose level 2 multiplies frames by 4 but claims only twice level 1's frames.
    broken = (LevelSpec(1, 8, 16, 1, 1, 8, 0), LevelSpec(2, 16, 32, 4, 2, 8, 2))
    monkeypatch.setitem(PRESETS, "broken", broken)
    write_runs(tmp_path, "broken")
    with pytest.raises(UserError, match=r"level 2 does not fit level 1.*expects an input of 4 frames"
                                        r".*level 1 makes 8 frames"):
        sample.load_chain(runs=tmp_path)


# ---------------------------------------------------------------- files and command line

def test_contact_sheet_rows_line_up_in_time(tiny_chain):
    # Each video's pixels hold its frame index, so the picked frames can be read back.
    levels = [torch.arange(spec.frames, dtype=torch.float32).view(1, -1, 1, 1).expand(3, -1, 2, 2)
              for spec in tiny_chain.specs]                         # 8, 16, 32 frames
    rows = sample.level_rows(tiny_chain, levels, columns=16)
    picked = [row[0, :, 0, 0].tolist() for row in rows]
    assert picked[2] == list(range(0, 32, 2))                      # final frames 0, 2, ..., 30
    assert picked[1] == list(range(0, 16))                         # level 2: same times
    assert picked[0] == [i // 2 for i in range(16)]                # level 1: each frame twice


def test_command_line_writes_the_files_it_prints(tiny_runs, tmp_path, capsys):
    out = tmp_path / "out"
    sample.main(["--runs", str(tiny_runs), "--num", "2", "--frames", "24", "--out", str(out),
                 "--no-progress", "--device", "cpu"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(out))]
    names = sorted(os.path.basename(p) for p in printed)
    assert names == ["grid.gif", "grid.mp4", "levels.png", "video_000.mp4", "video_001.mp4"]
    for path in printed:
        assert os.path.getsize(path) > 0
    video = imageio.mimread(str(out / "video_000.mp4"), memtest=False)
    assert len(video) == 24
    sheet = imageio.imread(out / "levels.png")
    assert sheet.shape[0] == 3 * (64 + 2)                          # one row per level, at 64 px


@pytest.mark.robustness
def test_command_line_class_alias_and_errors(tiny_runs, tmp_path, capsys):
    assert sample.parse_args(["--class", "2"]).label == 2
    assert sample.parse_args(["--ckpt", "a", "b"]).ckpt == ["a", "b"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(sample.main, ["--runs", str(tmp_path / "nothing"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "error: no level-1 checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(sample.main, ["--runs", str(tiny_runs), "--class", "1", "--no-progress",
                               "--out", str(tmp_path / "x")])
    assert "not class-conditional" in capsys.readouterr().err
