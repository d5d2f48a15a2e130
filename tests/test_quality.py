"""Quality without downloads: the classifier two-sample test and motion statistics
(metrics.py), and the per-level evaluation of a hierarchy (evaluate.py).

What each test shows a reader:
  * the two-sample test reads ~0.5 for two independent sets of real clips and ~1.0
    for real clips against the same clips with their motion removed;
  * it is deterministic for a seed, and brings sets of different shapes to one;
  * motion energy is 0 for frozen clips, and its per-quarter profile sees a video
    that stops moving;
  * the per-level evaluation feeds an upsampling level down() of exactly the real
    clips it then compares the output with;
  * metrics.py's command line writes its JSON with no I3D file anywhere, and
    evaluate.py's asks for a trained hierarchy (or --calibrate) before any work;
  * `--eval-every` logs the two-sample accuracy and keeps ckpt_best.pt by it.
"""

import json
import math

import pytest
import torch

import data
import evaluate
import metrics
import sample
from data import down, level_spec, make_dataset
from videos import write_video

SMALL = metrics.C2STProtocol(num_videos=16, seeds=1, epochs=2)


def synthetic(level, seed, n, preset="tiny"):
    dataset = make_dataset("synthetic", None, preset, level, seed=seed)
    return torch.stack([dataset[i][0] for i in range(n)])


# ----------------------------------------------------------------------------------
# The two-sample test.
# ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def level1_sets():
    """Two independent sets of 256 real level-1 clips (8x16x16)."""
    return synthetic(1, 100, 256), synthetic(1, 200, 256)


def test_two_independent_real_sets_are_indistinguishable(level1_sets):
    real, other = level1_sets
    result = metrics.c2st(real, other)
    assert result["c2st"] < 0.6, result
    assert len(result["c2st_seeds"]) == 3 and result["clips"] == 256
    assert result["shape"] == [8, 16, 16]


def test_real_against_frozen_copies_is_plainly_different(level1_sets):
    real, other = level1_sets
    frozen = other[:, :, :1].expand_as(other).clone()          # every clip's first frame, held
    assert metrics.c2st(real, frozen)["c2st"] > 0.9


def test_the_test_is_deterministic_for_a_seed(level1_sets):
    real, other = level1_sets
    blurred = evaluate._blur(other)
    first = metrics.two_sample_accuracy(real[:32], blurred[:32], seed=3, epochs=2)
    again = metrics.two_sample_accuracy(real[:32], blurred[:32], seed=3, epochs=2)
    assert first == again


def test_sets_of_different_shapes_meet_at_the_smaller_one():
    # 32 frames at 64 px against 16 frames at 32 px: both become 16 x 32 x 32, by
    # area averaging, which for a factor of 2 is exactly data.down's spatial part.
    fine = synthetic(3, 0, 2)                                   # (2, 3, 32, 64, 64)
    coarse = synthetic(2, 0, 2)                                 # (2, 3, 16, 32, 32)
    frames, size = metrics.common_shape(fine.shape, coarse.shape)
    assert (frames, size) == (16, 32)
    torch.testing.assert_close(metrics.to_shape(fine, frames, size), down(fine, 1, 2)[:, :, :16])
    assert metrics.to_shape(coarse, frames, size) is coarse or torch.equal(
        metrics.to_shape(coarse, frames, size), coarse)
    # Caps keep the judge's cost bounded for large clips; sizes become multiples of
    # the judge's 4-pixel patches.
    assert metrics.common_shape((3, 48, 256, 256), max_frames=32, max_size=64) == (32, 64)
    assert metrics.common_shape((3, 16, 30, 40)) == (16, 28)
    from data import UserError
    with pytest.raises(UserError, match="too small"):
        metrics.c2st(fine[:, :, :1], fine[:, :, :1])


def test_the_judge_sees_motion_through_frame_differences():
    # Its input is [x_t, x_{t+1} - x_t] in 4x4 patches: for a frozen clip the
    # difference half is exactly zero.
    clip = synthetic(1, 0, 1)
    frozen = clip[:, :, :1].expand_as(clip)
    patches = metrics.judge_inputs(frozen)                      # (1, T-1, 4, 4, 96)
    assert patches.shape == (1, 7, 4, 4, 96)
    channels = patches.view(1, 7, 4, 4, 6, 4, 4)
    assert channels[:, :, :, :, 3:].abs().max() == 0 and channels[:, :, :, :, :3].abs().max() > 0
    assert metrics.judge_inputs(clip).view(1, 7, 4, 4, 6, 4, 4)[:, :, :, :, 3:].abs().max() > 0


# ----------------------------------------------------------------------------------
# Motion statistics.
# ----------------------------------------------------------------------------------

def test_motion_energy_is_the_mean_absolute_frame_difference():
    video = torch.zeros(1, 3, 3, 2, 2)
    video[:, :, 1] = 0.5                                        # 0 -> 0.5 -> 0
    assert metrics.motion_energy(video) == pytest.approx(0.5)
    real = synthetic(1, 0, 8)
    frozen = real[:, :, :1].expand_as(real)
    stats = metrics.motion_statistics(real, frozen)
    assert stats["motion_fake"] == 0 and stats["motion_ratio"] == 0
    assert metrics.motion_statistics(real, real)["motion_ratio"] == pytest.approx(1)


def test_motion_by_quarter_sees_a_video_that_stops():
    video = synthetic(3, 0, 2)                                  # 32 frames, moving
    stopping = video.clone()
    stopping[:, :, 16:] = video[:, :, 16:17]                    # frozen from frame 16 on
    quarters = metrics.motion_by_segment(stopping, 4)
    assert quarters[0] > 0 and quarters[1] > 0 and quarters[2] == quarters[3] == 0
    moving = metrics.motion_by_segment(video, 4)
    assert min(moving) > 0.5 * max(moving)


# ----------------------------------------------------------------------------------
# Per-level evaluation.
# ----------------------------------------------------------------------------------

class NearestUpsampler(torch.nn.Module):
    """A stand-in upsampling level: nearest-neighbour in time and space, so that
    down(output) is exactly its condition. It records every window it is given."""

    def __init__(self, time_factor, space_factor):
        super().__init__()
        self.time_factor, self.space_factor, self.num_classes, self.z_dim = time_factor, space_factor, 0, 4
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    sample_latent = sample.level1.Level1Generator.sample_latent

    def temporal_receptive_field(self):
        return 0

    def forward(self, condition, z, labels=None, context=0):
        kept = condition[:, :, context:condition.shape[2] - context]
        video = kept.repeat_interleave(self.time_factor, 2)
        return video.repeat_interleave(self.space_factor, 3).repeat_interleave(self.space_factor, 4)


def test_per_level_evaluation_feeds_each_level_down_of_the_clips_it_is_compared_with(monkeypatch, tmp_path):
    from level1 import Level1Generator
    specs = [level_spec("tiny", level) for level in (1, 2, 3)]
    torch.manual_seed(0)
    generators = [Level1Generator(8, 16, z_dim=8, ch=4).eval()]
    generators += [NearestUpsampler(s.time_factor, s.space_factor) for s in specs[1:]]
    chain = sample.Chain("tiny", specs, generators, ["a", "b", "c"], [0, 0, 0], 0, torch.device("cpu"))
    compared = []
    real_quality = metrics.quality
    monkeypatch.setattr(evaluate, "quality", lambda real, fake, protocol=None: (
        compared.append((real, fake)) or real_quality(real, fake, protocol)))
    table = evaluate.level_table(chain, num=8,
                                 protocol=metrics.C2STProtocol(num_videos=8, seeds=1, epochs=1),
                                 log=lambda line: None, strips=tmp_path)
    rows = table["levels"]
    assert [row["level"] for row in rows] == [1, 2, 3] and "real_condition" not in rows[0]
    # Calls: level 1 (chain); level 2 (chain, alone); level 3 (chain, alone).
    assert len(compared) == 5
    for (real, alone), spec in ((compared[2], specs[1]), (compared[4], specs[2])):
        assert alone.shape == real.shape == (8, 3, spec.frames, spec.size, spec.size)
        # down(output) == down(real clips): the level was given down() of exactly these clips.
        torch.testing.assert_close(down(alone, spec.time_factor, spec.space_factor),
                                   down(real, spec.time_factor, spec.space_factor))
    assert rows[1]["real_condition"]["condition_error"] == pytest.approx(0, abs=1e-6)
    # The real clips are held out from training's (seed 0) clips.
    training_clip = make_dataset("synthetic", None, "tiny", 2, seed=0)[0][0]
    assert not torch.equal(compared[2][0][0], training_clip)
    assert len(table["long"]["motion_by_quarter"]) == 4 and table["long"]["frames"] == 4 * 32
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["level1.png", "level2.png", "level3.png"]
    # Beside each strip a GIF of the same clips playing: real | on real condition | in
    # the chain, side by side, every frame of the level (level 1: no real condition).
    import imageio.v2 as imageio
    for spec, columns in ((specs[0], 2), (specs[2], 3)):
        gif = imageio.mimread(tmp_path / f"level{spec.level}.gif")
        assert len(gif) == spec.frames
        # 3 clips down, `columns` across, 1-px borders (players get small videos
        # upscaled and padded to a multiple of 16: the aspect ratio, not the size).
        height, width = gif[0].shape[:2]
        size = spec.size + 1
        assert width / height == pytest.approx((columns * size + 1) / (3 * size + 1), rel=0.1)


# ----------------------------------------------------------------------------------
# The command line and evaluation during training.
# ----------------------------------------------------------------------------------

def test_command_line_writes_the_download_free_numbers_without_any_i3d_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HVG_I3D", raising=False)
    folder = tmp_path / "fake"
    folder.mkdir()
    # Generated clips as files, at another size than the real level-2 clips (16x32x32):
    # frozen level-3 clips of 64 px, which the test brings down to 32 px.
    for i, video in enumerate(synthetic(3, 7, 8)):
        write_video(folder / f"clip_{i}.mp4", video[:, :1].expand(-1, 16, -1, -1), fps=8)
    out = tmp_path / "m.json"
    result = metrics.main(["--real", "synthetic", "--level", "2", "--fake", str(folder),
                           "--c2st-num-videos", "8", "--c2st-seeds", "2", "--c2st-epochs", "1",
                           "--device", "cpu", "--out", str(out)])
    written = json.loads(out.read_text())
    for key in ("c2st", "c2st_std", "motion_ratio", "c2st_protocol", "shape", "clips"):
        assert key in written
    assert 0 <= written["c2st"] <= 1 and written["c2st"] == result["c2st"]
    assert written["shape"] == [16, 32, 32] and written["clips"] == 8
    assert written["motion_ratio"] < 0.05     # frozen clips (mp4 compression leaves a flicker)
    assert written["c2st_protocol"]["seeds"] == 2 and "fvd" not in written


@pytest.mark.robustness
def test_evaluate_needs_a_trained_hierarchy_or_calibrate(tmp_path):
    from flags import UserError
    with pytest.raises(UserError, match="--runs"):
        evaluate.main(["--real", "synthetic", "--out", str(tmp_path / "m.json")])
    with pytest.raises(UserError, match="not the folder"):       # every level's shape: a dataset
        evaluate.main(["--real", str(tmp_path), "--calibrate", "--out", str(tmp_path / "m.json")])


def test_evaluate_level_scores_the_chain_up_to_that_level(tmp_path, monkeypatch, small_level1_args):
    """A hierarchy whose upper levels are not trained yet: `evaluate.py --level L`
    scores levels 1..L; without it the error says which flag stops the chain there."""
    import level1
    from conftest import run_script
    from flags import UserError

    monkeypatch.delenv("HVG_I3D", raising=False)
    run = tmp_path / "level1"
    assert run_script(level1.main, small_level1_args + ["--steps", "1", "--out", str(run)]) == 0
    args = ["--real", "synthetic", "--ckpt", str(run / "ckpt.pt"), "--c2st-num-videos", "8",
            "--c2st-seeds", "1", "--c2st-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "e.json")]
    with pytest.raises(UserError, match=r"evaluate\.py --level 1\)"):
        evaluate.main(args)
    evaluate.main(args + ["--level", "1"])
    written = json.loads((tmp_path / "e.json").read_text())
    assert [row["level"] for row in written["levels"]] == [1]


def test_eval_every_logs_the_two_sample_accuracy_and_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    """`level1.py --eval-every N` without I3D weights: the two-sample accuracy of the
    EMA generator against held real clips lands in log.jsonl, ckpt_best.pt follows it."""
    import level1
    from conftest import run_script

    monkeypatch.delenv("HVG_I3D", raising=False)
    out = tmp_path / "run"
    flags = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4", "--num-samples", "2",
             "--device", "cpu", "--steps", "2", "--log-every", "5", "--eval-every", "1",
             "--eval-videos", "8", "--out", str(out)]
    assert run_script(level1.main, flags) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0 <= r["c2st"] <= 1 and math.isfinite(r["motion_ratio"]) for r in records)
    best = json.loads((out / "ckpt_best.json").read_text())
    assert best["c2st"] == min(r["c2st"] for r in records)
    assert (out / "ckpt_best.pt").is_file()
