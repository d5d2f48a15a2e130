"""experiments/ablations.py: HVG's quality claims, each variant trained for the same time.

What it guarantees: every variant gets the same budget of training time, split
across a hierarchy's levels as the default run splits it; the one-GAN baseline
(`single`) sees exactly the clips the hierarchy's finest level sees; and the run
writes one row per variant with the numbers the README's table needs.
"""

import json
import math
import subprocess
import sys

import imageio
import pytest
import torch

import data
import level1
import upsample_level
from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import ablations  # noqa: E402


def test_single_gan_sees_the_same_clips_as_the_hierarchys_finest_level():
    # tiny_single's only level and tiny's level 3 render the same scenes at the same
    # frame times on the same pixel grid: the baseline learns the same videos.
    single = data.make_dataset("synthetic", None, "tiny_single", 1)
    finest = data.make_dataset("synthetic", None, "tiny", 3)
    for i in range(3):
        (a, label_a), (b, label_b) = single[i], finest[i]
        assert a.shape == b.shape == (3, 32, 64, 64)
        assert torch.equal(a, b) and label_a == label_b


def test_the_budget_is_split_in_the_default_proportions():
    # Level 1 is slow per step, level 3 fast: s = B / sum(default_l * t_l), steps_l = s * default_l.
    runs = [ablations.LevelRun(l, "x", None, [], default, seconds_per_step=t)
            for l, default, t in ((1, 900, 0.5), (2, 800, 0.25), (3, 800, 0.125))]
    ablations.split_budget(runs, budget=600.0)
    steps = [r.steps for r in runs]
    assert sum(r.steps * r.seconds_per_step for r in runs) == pytest.approx(600.0, rel=0.01)
    assert steps[1] == steps[2]                     # same default steps: same steps, whatever the speed
    assert steps[0] / steps[1] == pytest.approx(900 / 800, rel=0.01)
    # A twice-slower level 2 (more context, whole videos) costs every level steps.
    slower = [ablations.LevelRun(l, "x", None, [], d, seconds_per_step=t)
              for l, d, t in ((2, 800, 0.5), (3, 800, 0.125))]
    ablations.split_budget(slower, budget=600.0 - steps[0] * 0.5)
    assert slower[0].steps < steps[1]
    assert sum(r.steps * r.seconds_per_step for r in slower) == pytest.approx(600 - steps[0] * 0.5, rel=0.01)


def test_every_variants_runs_are_command_lines_their_level_script_accepts(tmp_path):
    # What each variant changes reaches the level script's config (the end-to-end test
    # below trains four of the seven variants; the other three differ only in these flags).
    args = ablations.parse_args(["--out", str(tmp_path), "--device", "cpu"])
    configs = {"level1": level1.Level1Config, "upsample_level": upsample_level.UpsampleConfig}
    for name, variant in ablations.VARIANTS.items():
        runs = ablations.level_runs(variant, args)
        assert [r.level for r in runs] == ([1] if variant.single else [1, 2, 3])
        for run in runs:
            cfg = ablations.run_config(configs[run.script], run.argv(run.out, 5))
            assert cfg.steps == 5 and cfg.out == str(run.out) and cfg.seed == 0
            assert cfg.preset == (ablations.SINGLE_PRESET if variant.single else ablations.PRESET)
            if run.level == 1:
                continue
            assert cfg.level == run.level
            assert cfg.matching is (name != "no_matching")
            assert cfg.context == (int(name[-1]) if name.startswith("context_") else None)
            whole = name == "whole_video"
            assert cfg.crop_frames == (data.level_spec(ablations.PRESET, run.level).frames if whole else None)
            assert cfg.crop_size == (0 if whole else None)


# The end-to-end run trains these: the hierarchy, the one-GAN baseline, and two that change
# only the upsampling levels (one of them on whole videos). All seven take twice as long.
TRAINED = ["hierarchy", "single", "context_0", "whole_video"]


def test_every_variant_trains_for_the_same_time_and_gets_a_row(tmp_path):
    out, table = tmp_path / "ablations", tmp_path / "rows.json"
    small = ("--g-ch 4 --d-ch 4 --z-dim 8 --batch-size 2 --num-samples 1 --k-frames 2 "
             "--ema-start 0")
    # In a fresh process, as a user runs it: the timing runs train in the script's own
    # process, and the memory they free would stay with this one (glibc keeps it, and
    # raises its mmap threshold), which upsets tests/test_bench.py's probe after it.
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "ablations.py"), "--minutes", "0.02",
         "--timing-steps", "2", "--clips", "8", "--seeds", "1", "--device", "cpu", "--out", str(out),
         "--train-flags", small, "--json", str(table), "--variants", ",".join(TRAINED)],
        capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(table.read_text())
    assert [r["name"] for r in rows] == TRAINED
    for r in rows:
        levels = 1 if r["name"] == "single" else 3
        assert 0.0 <= r["c2st"] <= 1.0 and 0.0 <= r["c2st_4x"] <= 1.0
        assert math.isfinite(r["motion_ratio"]) and r["motion_ratio"] > 0
        assert len(r["motion_by_quarter_4x"]) == 4
        assert len(r["condition_error"]) == levels - 1
        assert all(0.0 <= e <= 2.0 for e in r["condition_error"])     # |a - b| of values in [-1, 1]
        assert isinstance(r["peak_memory_bytes"], int) and r["peak_memory_bytes"] > 0
        assert len(r["seconds_per_step"]) == len(r["steps"]) == levels
        assert all(s > 0 for s in r["seconds_per_step"]) and all(n >= 1 for n in r["steps"])
        assert r["budget_seconds"] == pytest.approx(1.2)
    # The variants that change only the upsampling levels share the hierarchy's level 1.
    hierarchy = {r["name"]: r["levels"] for r in rows if r["name"] != "single"}
    assert len({levels[0] for levels in hierarchy.values()}) == 1
    assert len({levels[1] for levels in hierarchy.values()}) == len(hierarchy)
    # The training runs are normal run folders: the whole-video variant trained on whole clips.
    whole = torch.load(out / "whole_video" / "level3" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert whole["config"]["crop_frames"] == 32 and whole["config"]["crop_size"] == 0
    assert "| hierarchy |" in (out / "ablations.md").read_text()
    # The side-by-side GIF: a column of real clips, then one per variant, 3 clips each
    # (64x64 tiles, 1 px apart; videos.write_video pads to a multiple of 16), 32 frames.
    frames = imageio.mimread(out / "side_by_side.gif")
    padded = lambda pixels: -(-pixels // 16) * 16
    assert len(frames) == 32
    assert frames[0].shape[:2] == (padded(3 * 65 + 1), padded((1 + len(rows)) * 65 + 1))
