"""What happens when things go wrong: a catalogue of the failures hvg handles.

A user will point this code at half-downloaded datasets, kill runs, fill disks and
load checkpoints from strangers. For every case here the program must

  * stop with a message that names the problem (with the value) and what to do
    (scripts print "error: <message>" and exit with code 2; Ctrl-C exits with 130),
  * lose nothing that was saved (an earlier checkpoint, earlier samples), and
  * never run code from a file it loads.

`pytest --collect-only -q tests/test_failures.py` lists the cases. The last test,
the kill test, SIGKILLs a real training process at random moments (some of them
in the middle of a checkpoint write) and checks every time that the checkpoint
loads and that the next run resumes from its step.
"""

import errno
import gc
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import level1
import training
import upsample_level
import videos
from conftest import ROOT, run_script
from data import UserError, make_dataset
from training import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.robustness   # the hardening catalogue: pytest -m robustness

# A level-1 run of the tiny preset small enough for a few tenths of a second a step.
SMALL = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4",
         "--num-samples", "2", "--log-every", "1", "--device", "cpu",
         "--ckpt-every", "1", "--sample-every", "0"]
SMALL_UPSAMPLE = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "2",
                  "--num-samples", "1", "--log-every", "1", "--device", "cpu", "--k-frames", "4"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a shared, busy machine two threads that spin-wait for each other
    make these small models ~10x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, one_thread):
    """A completed 2-step level-1 run: ckpt.pt, log.jsonl, samples/step_000002.*"""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_script(level1.main, SMALL + ["--steps", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def previous_run(finished_run, tmp_path):
    """A fresh copy of the finished run, for a test to point a new run at."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    folder = Path(folder)
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_nothing_lost(folder, before):
    """Every file that was there before is still there, byte for byte."""
    after = snapshot(folder)
    for name, content in before.items():
        assert name in after, f"{name} was deleted"
        assert after[name] == content, f"{name} was changed"


def error_of(capsys):
    """The one-line error a script printed on stderr (without the 'error: ' prefix)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0][len("error: "):]


def tmp_files(folder):
    return sorted(p.name for p in Path(folder).glob("ckpt.pt.tmp-*"))


# ----------------------------------------------------------------------------------
# Small video files, written by the tests themselves. Frame i is a flat grey of
# brightness 3 * i, so the frames a loader picked can be read back from the pixels.
# ----------------------------------------------------------------------------------

def grey_frames(num_frames, size=(24, 40), channels=3):
    shape = size if channels == 1 else (*size, channels)
    return [np.full(shape, 3 * i, np.uint8) for i in range(num_frames)]


def write_video_file(path, frames, fps=10, **options):
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
        return path
    options = {"codec": "libx264", "macro_block_size": 8, **options}
    with imageio.get_writer(path, fps=fps, ffmpeg_log_level="error", **options) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def brightness(video):
    """Mean of each frame of a (3, T, H, W) video in [-1, 1], on the 0..255 scale: (T,)."""
    return ((video + 1) * 127.5).mean(dim=(0, 2, 3))


def built_with_warnings(*args, **kwargs):
    """make_dataset(...) and every warning it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = make_dataset(*args, **kwargs)
    return dataset, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


# ----------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------

def train_on(root, out, capsys, data="folder", steps=1):
    code = run_script(level1.main, SMALL + ["--data", data, "--data-root", str(root),
                                            "--steps", str(steps), "--out", str(out)])
    return code, (error_of(capsys) if code else None)


def test_data_root_that_does_not_exist_is_a_clear_error(tmp_path, capsys):
    code, message = train_on(tmp_path / "kinetics", tmp_path / "run", capsys)
    assert code == 2
    assert f"--data-root {str(tmp_path / 'kinetics')!r} does not exist" in message
    assert "--data synthetic" in message                        # what to do instead


def test_data_root_that_is_empty_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    code, message = train_on(tmp_path / "videos", tmp_path / "run", capsys)
    assert code == 2 and "is an empty folder" in message and str(tmp_path / "videos") in message


def test_data_root_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "videos.tar").write_bytes(b"not extracted yet")
    code, message = train_on(tmp_path / "videos.tar", tmp_path / "run", capsys)
    assert code == 2 and "is a file, not a folder" in message
    assert (tmp_path / "videos.tar").read_bytes() == b"not extracted yet"


def test_data_root_with_no_video_files_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "videos" / "part1").mkdir(parents=True)
    (tmp_path / "videos" / "part1" / "clips.tar.gz").write_bytes(b"x")
    code, message = train_on(tmp_path / "videos", tmp_path / "run", capsys)
    assert code == 2
    assert "no video files (.mp4" in message and "clips.tar.gz" in message   # what IS there


def test_corrupt_empty_truncated_and_short_videos_are_skipped_counted_and_reported_once(
        tmp_path, capsys):
    root = tmp_path / "videos"
    for name in ("good_a.mp4", "good_b.avi"):
        write_video_file(root / name, grey_frames(40), codec="mjpeg" if name.endswith("avi") else "libx264")
    (root / "empty.mp4").write_bytes(b"")                                   # a download that never started
    whole = write_video_file(root / "truncated.mp4", grey_frames(40)).read_bytes()
    (root / "truncated.mp4").write_bytes(whole[:len(whole) // 2])         # a download cut in half
    (root / "corrupt.mkv").write_bytes(os.urandom(3000))
    write_video_file(root / "short.mp4", grey_frames(10))                   # tiny needs 32 frames

    dataset, messages = built_with_warnings("folder", root, "tiny", 1)
    assert len(messages) == 1, messages                                      # reported once
    message = messages[0]
    assert "skipped 4 of 6 videos" in message and "training uses the other 2" in message
    assert "2 could not be decoded" in message              # truncated.mp4 and corrupt.mkv
    assert "1 empty (0 bytes)" in message and "'empty.mp4'" in message
    assert "1 shorter than 32 frames" in message and "'short.mp4'" in message
    assert sorted(p.name for p in dataset.videos) == ["good_a.mp4", "good_b.avi"]

    # Training on the folder goes on, with the same single report.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _ = train_on(root, tmp_path / "run", capsys)
    assert code == 0
    assert len([w for w in caught if "skipped 4 of 6" in str(w.message)]) == 1
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == 1


def _refuse_reading(monkeypatch, module, name):
    """Make `open(...)` in `module` fail with a permission error for files called `name`
    (tests run as root, for whom chmod 000 does not stop reads)."""
    real_open = open

    def guarded_open(path, *args, **kwargs):
        if Path(path).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(module, "open", guarded_open, raising=False)


def test_unreadable_video_is_skipped_as_a_permission_problem(tmp_path, monkeypatch):
    for name in ("a.mp4", "locked.mp4"):
        write_video_file(tmp_path / name, grey_frames(36))
    _refuse_reading(monkeypatch, videos, "locked.mp4")
    dataset, messages = built_with_warnings("folder", tmp_path, "tiny", 1)
    assert [p.name for p in dataset.videos] == ["a.mp4"]
    assert len(messages) == 1
    assert "1 not readable (permission denied" in messages[0] and "'locked.mp4'" in messages[0]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads files whatever their mode; the monkeypatched test above "
                           "covers this case when the tests run as root")
def test_unreadable_video_by_file_mode_is_skipped_as_a_permission_problem(tmp_path):
    for name in ("a.mp4", "locked.mp4"):
        write_video_file(tmp_path / name, grey_frames(36))
    (tmp_path / "locked.mp4").chmod(0)
    dataset, messages = built_with_warnings("folder", tmp_path, "tiny", 1)
    assert [p.name for p in dataset.videos] == ["a.mp4"]
    assert "permission denied" in messages[0]


def test_video_that_becomes_unreadable_during_training_is_replaced_and_reported_once(
        tmp_path, monkeypatch):
    for name in ("a.mp4", "b.mp4"):
        write_video_file(tmp_path / name, grey_frames(36))
    dataset = make_dataset("folder", tmp_path, "tiny", 1)
    real_read = videos.read_frames

    def read_frames(path, *args, **kwargs):
        if path.name == "a.mp4":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(videos, "read_frames", read_frames)
    with pytest.warns(UserWarning, match=r"could not read .*a\.mp4 \(PermissionError"):
        video, _ = dataset.load(0, np.random.default_rng(0))
    assert video.shape == (3, 8, 16, 16)                   # b.mp4 stood in for it
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # the second failure is only counted
        dataset.load(0, np.random.default_rng(1))
    assert dataset.load_failures >= 2


def test_grayscale_and_rgba_videos_load_as_rgb(tmp_path):
    from PIL import Image

    write_video_file(tmp_path / "gray.mp4", grey_frames(40, channels=1))
    write_video_file(tmp_path / "gray.gif", grey_frames(40, channels=1))
    # RGBA: PNG frames in a .mov (alpha 128 everywhere; ffmpeg drops it) ...
    write_video_file(tmp_path / "rgba.mov", [np.dstack([f, np.full(f.shape[:2], 128, np.uint8)])
                                             for f in grey_frames(40)],
                     codec="png", pixelformat="rgba")
    # ... and a GIF whose left half is transparent: composited on black.
    frames = []
    for i in range(40):
        frame = np.full((24, 40), 3 * i, np.uint8)
        frame[:, :20] = 255                                   # palette index 255: transparent
        frames.append(Image.fromarray(frame, "L").convert("P"))
    frames[0].save(tmp_path / "rgba.gif", save_all=True, append_images=frames[1:],
                   transparency=255, duration=100, loop=0, disposal=2)

    dataset, messages = built_with_warnings("folder", tmp_path, "tiny", 3)
    assert messages == [] and len(dataset) == 4
    for i, path in enumerate(dataset.videos):
        video, _ = dataset.load(i, np.random.default_rng(0))
        assert video.shape == (3, 32, 64, 64), path.name
        assert torch.allclose(video[0], video[1], atol=0.03) and torch.allclose(video[1], video[2], atol=0.03)
        if path.name == "rgba.gif":
            # Centre crop 24x24 of 24x40: columns 8..31. Columns 8..19 were transparent.
            left, right = video[:, 1:, :, :24], video[:, 1:, :, 40:]
            assert (left < -0.95).all() and right.mean() > left.mean() + 0.1
        else:
            steps = brightness(video).diff()                  # every finest frame: 3 per frame
            assert torch.allclose(steps, torch.full_like(steps, 3.0), atol=2.0), (path.name, steps)


def test_videos_smaller_than_the_level_are_upscaled(tmp_path):
    write_video_file(tmp_path / "thumb.mp4", grey_frames(40, size=(8, 8)))
    dataset = make_dataset("folder", tmp_path, "tiny", 3)     # level 3 is 64x64
    video, _ = dataset[0]
    assert video.shape == (3, 32, 64, 64)
    steps = brightness(video).diff()
    assert torch.allclose(steps, torch.full_like(steps, 3.0), atol=2.0)
    assert video[:, 5].std() < 0.02                           # a flat frame stays flat


def test_variable_frame_rate_video_gives_full_clips(tmp_path):
    import imageio_ffmpeg

    # 30 frames shown 0.1 s each, then 60 frames at 1/30 s: the header says "30 fps",
    # 5 s, so the frame count estimated from it (150) is not the number of frames stored.
    path = tmp_path / "vfr.mkv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error",
                    "-f", "lavfi", "-i", "testsrc=size=48x32:rate=30:duration=3",
                    "-vf", "setpts='if(lt(N,30),3*N,90+(N-30))/30/TB'", "-fps_mode", "vfr",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    dataset = make_dataset("folder", tmp_path, "tiny", 3)
    assert len(dataset) == 1
    for seed in range(3):                                     # clips from random starts
        video, _ = dataset.load(0, np.random.default_rng(seed))
        assert video.shape == (3, 32, 64, 64) and torch.isfinite(video).all()
        assert (video[:, 1:] - video[:, :-1]).abs().amax(dim=(0, 2, 3)).max() > 0.05  # it moves
    assert dataset.load_failures == 0


def make_cache(root, preset="tiny", clips=2, shard_shape=None):
    """A cache folder as `python data.py prepare` writes it (index.json + one shard)."""
    finest = data.PRESETS[preset][-1]
    root.mkdir(parents=True)
    shape = shard_shape or (clips, finest.frames, finest.size, finest.size, 3)
    np.save(root / "shard_00000.npy", np.random.default_rng(0).integers(0, 255, shape, np.uint8))
    index = dict(format=videos.CACHE_FORMAT, preset=preset, frames=finest.frames, size=finest.size,
                 frame_stride=1, source="folder", data_root="videos", class_names=[],
                 labels=[-1] * clips, shards=[{"file": "shard_00000.npy", "clips": clips}])
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_truncated_cache_shard_is_a_clear_error(tmp_path, capsys):
    cache = make_cache(tmp_path / "cache")
    shard = cache / "shard_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-5000])              # the copy stopped early
    before = snapshot(cache)
    code, message = train_on(cache, tmp_path / "run", capsys, data="cache")
    assert code == 2
    assert f"cache shard {str(shard)!r} is missing, truncated or corrupt" in message
    assert "re-run `python data.py prepare`" in message
    assert_nothing_lost(cache, before)


def test_cache_from_another_preset_is_a_clear_error(tmp_path, capsys):
    cache = make_cache(tmp_path / "cache", preset="ucf101", clips=1)   # 24 frames of 128x128
    code, message = train_on(cache, tmp_path / "run", capsys, data="cache")
    assert code == 2
    assert "prepared for preset 'ucf101'" in message and "--preset tiny needs (32, 64, 64)" in message
    assert "into a new folder" in message


def test_cache_shard_of_another_shape_is_a_clear_error(tmp_path, capsys):
    # The index says tiny, but the shard holds clips of another shape (a mixed-up folder).
    cache = make_cache(tmp_path / "cache", clips=1, shard_shape=(1, 16, 32, 32, 3))
    code, message = train_on(cache, tmp_path / "run", capsys, data="cache")
    assert code == 2
    assert "holds uint8 (1, 16, 32, 32, 3), expected uint8 (1, 32, 64, 64, 3)" in message
    assert "another preset" in message


# ----------------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------------

def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    for main in (level1.main, upsample_level.main):
        code = run_script(main, ["--preset", "kinetics", "--out", str(tmp_path / "run")])
        assert code == 2
        assert error_of(capsys).startswith(
            "unknown preset 'kinetics'; valid presets: tiny, kinetics600, bdd100k, ucf101")
    assert not (tmp_path / "run").exists()                     # stopped before writing anything


def test_unknown_level_is_a_clear_error(tmp_path, capsys):
    code = run_script(upsample_level.main, ["--level", "4", "--out", str(tmp_path / "run")])
    assert code == 2 and error_of(capsys) == "--level 4: preset 'tiny' has only 3 levels"
    with pytest.raises(UserError, match=r"preset 'ucf101' has levels 1\.\.2, not 3"):
        data.level_spec("ucf101", 3)
    assert not (tmp_path / "run").exists()


def test_level_1_given_to_upsample_level_points_to_level1_py(tmp_path, capsys):
    code = run_script(upsample_level.main, ["--level", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    message = error_of(capsys)
    assert "--level 1" in message and "`python level1.py`" in message


def test_batch_size_not_divisible_by_the_number_of_gpus_is_a_clear_error(tmp_path, capsys, monkeypatch):
    assert training.per_rank_batch(12, 4) == 3
    with pytest.raises(UserError, match=r"--batch-size 10 is not divisible by the 4 processes .* "
                                        r"use a multiple of 4 \(e\.g\. 8\)"):
        training.per_rank_batch(10, 4)
    # The same through the script, as rank 0 of a 3-process torchrun job would see it
    # (the process group itself is not started: that is torchrun's business).
    three_ranks = training.Distributed(rank=0, local_rank=0, world_size=3, device=torch.device("cpu"))
    monkeypatch.setattr(level1, "setup_distributed", lambda device: three_ranks)
    code = run_script(level1.main, SMALL + ["--batch-size", "4", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--batch-size 4 is not divisible by the 3 processes" in error_of(capsys)
    assert not (tmp_path / "run").exists()


def test_crop_frames_longer_than_the_level_is_a_clear_error(tmp_path, capsys):
    for crop in ("32", "5"):                                   # level 2 has 16 frames, tf = 2
        code = run_script(upsample_level.main, SMALL_UPSAMPLE + ["--level", "2", "--crop-frames", crop,
                                                                 "--out", str(tmp_path / "run")])
        assert code == 2
        assert error_of(capsys) == (f"--crop-frames {crop}: must be a multiple of the time factor 2 "
                                    "between 2 and level 2's 16 frames")
    assert not (tmp_path / "run").exists()


def test_context_larger_than_the_condition_is_a_clear_error(tmp_path, capsys):
    code = run_script(upsample_level.main, SMALL_UPSAMPLE + ["--level", "2", "--context", "9",
                                                             "--out", str(tmp_path / "run")])
    assert code == 2
    assert error_of(capsys) == "--context 9: must be between 0 and the condition's 8 frames"


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = run_script(level1.main, SMALL + ["--device", "cuda", "--out", str(tmp_path / "run")])
    assert code == 2
    message = error_of(capsys)
    assert message.startswith("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    assert "Use --device cpu (or auto)" in message
    assert training.resolve_device("auto") == torch.device("cpu")   # auto falls back quietly


# ----------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------

def resume(out, capsys, *flags, main=level1.main):
    code = run_script(main, SMALL + ["--steps", "3", "--out", str(out), *flags])
    return code, (error_of(capsys) if code else capsys.readouterr().out)


def test_truncated_checkpoint_is_a_clear_error_and_is_left_alone(previous_run, capsys):
    ckpt = previous_run / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:len(ckpt.read_bytes()) // 3])   # a copy that stopped early
    before = snapshot(previous_run)
    code, message = resume(previous_run, capsys)
    assert code == 2
    assert message.startswith(f"checkpoint {ckpt} is corrupt or truncated")
    assert "--no-resume" in message and "restore a good copy" in message
    assert_nothing_lost(previous_run, before)


def test_corrupt_checkpoint_is_a_clear_error_and_is_left_alone(previous_run, capsys):
    ckpt = previous_run / "ckpt.pt"
    ckpt.write_bytes(os.urandom(20000))
    before = snapshot(previous_run)
    code, message = resume(previous_run, capsys)
    assert code == 2 and "is corrupt or truncated" in message
    assert "pickled" not in message                     # damage is not mistaken for code
    assert_nothing_lost(previous_run, before)


def test_checkpoint_damaged_in_the_middle_fails_its_checksum(previous_run, capsys):
    ckpt = previous_run / "ckpt.pt"
    content = bytearray(ckpt.read_bytes())
    content[len(content) // 2] ^= 0xFF                   # one flipped byte in the tensor data
    ckpt.write_bytes(bytes(content))
    code, message = resume(previous_run, capsys)
    assert code == 2
    assert message.startswith(f"checkpoint {ckpt} is corrupt: ") and "fails its checksum" in message


def test_checkpoint_of_another_level_is_refused(previous_run, tmp_path, capsys):
    level2 = tmp_path / "level2"
    level2.mkdir()
    shutil.copy(previous_run / "ckpt.pt", level2 / "ckpt.pt")          # a level-1 ckpt by mistake
    before = snapshot(level2)
    code = run_script(upsample_level.main, SMALL_UPSAMPLE + ["--level", "2", "--steps", "1",
                                                              "--out", str(level2)])
    assert code == 2
    message = error_of(capsys)
    assert message.startswith(f"checkpoint {level2 / 'ckpt.pt'} is of level 1, but level 2 was asked for")
    assert "`python level1.py`" in message and "another --out" in message
    assert_nothing_lost(level2, before)


def test_checkpoint_of_another_preset_is_refused(previous_run, capsys):
    before = snapshot(previous_run)
    code, message = resume(previous_run, capsys, "--preset", "ucf101")
    assert code == 2
    assert "was trained with --preset tiny, but --preset ucf101 was asked for" in message
    assert "Use --preset tiny or another --out" in message
    assert_nothing_lost(previous_run, before)


class RunsAShellCommand:
    """Pickles into "call os.system(command)": what a malicious checkpoint looks like."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class SomeonesClass:
    """A custom class: unpickling it would import and run this module's code."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")


def test_checkpoint_with_pickled_code_is_refused_not_run(previous_run, tmp_path, capsys):
    marker = tmp_path / "the_payload_ran"
    ckpt = previous_run / "ckpt.pt"
    good = load_checkpoint(ckpt)
    for payload in (RunsAShellCommand(f"touch {marker}"), SomeonesClass(str(marker))):
        # A checkpoint that looks right in every other way, with code inside.
        torch.save({**good, "models": {**good["models"], "generator": payload}}, ckpt)
        before = snapshot(previous_run)
        code, message = resume(previous_run, capsys)
        assert code == 2
        assert message.startswith(f"checkpoint {ckpt} contains pickled Python objects")
        assert "it was refused because loading it could run arbitrary code" in message
        assert not marker.exists()
        with pytest.raises(UserError, match="refused"):
            load_checkpoint(ckpt)                      # every loader says no: sample.py uses it too
        assert not marker.exists()
        assert_nothing_lost(previous_run, before)
    # The payload is live: an unsafe load runs it. (That is what weights_only=True prevents.)
    torch.save({"x": RunsAShellCommand(f"touch {marker}")}, tmp_path / "unsafe.pt")
    torch.load(tmp_path / "unsafe.pt", weights_only=False)
    assert marker.exists()


def test_resume_with_a_changed_architecture_is_a_clear_error(previous_run, capsys):
    before = snapshot(previous_run)
    code, message = resume(previous_run, capsys, "--g-ch", "16")
    assert code == 2
    assert message.startswith(f"cannot resume from {previous_run / 'ckpt.pt'}: the architecture "
                              "changed (--g-ch was 8, now 16)")
    assert "Use the old values, or --no-resume / another --out" in message
    assert_nothing_lost(previous_run, before)


# ----------------------------------------------------------------------------------
# Runs: disk full, NaN, Ctrl-C.
# ----------------------------------------------------------------------------------

class FullDiskFile(io.FileIO):
    """A file on a disk that fills up after `room` bytes."""
    room = 1000

    def write(self, chunk):
        if self.tell() + len(chunk) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(chunk)


@pytest.mark.parametrize("fails_in", ["write", "fsync"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, fails_in):
    out, opened = tmp_path / "run", []
    real_open, real_fsync = open, os.fsync

    def open_checkpoint_file(path, mode="r", *args, **kwargs):
        # The second checkpoint file goes to a full disk (torch.save's writes fail).
        if ".tmp-" in Path(path).name:
            opened.append(path)
            if len(opened) >= 2:
                return FullDiskFile(path, "wb")
        return real_open(path, mode, *args, **kwargs)

    def fsync(fd):
        # Or: the writes fit in the page cache and the disk fills when they are flushed.
        opened.append(fd)
        if len(opened) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    if fails_in == "write":
        monkeypatch.setattr(training, "open", open_checkpoint_file, raising=False)
    else:
        monkeypatch.setattr(os, "fsync", fsync)
    code = run_script(level1.main, SMALL + ["--steps", "3", "--out", str(out)])
    assert code == 2
    message = error_of(capsys)
    assert message == (f"could not write checkpoint {out / 'ckpt.pt'}: No space left on device; "
                       "the previous checkpoint is intact. Free disk space (or choose another "
                       "--out) and resume.")
    assert load_checkpoint(out / "ckpt.pt")["step"] == 1      # step 1's save; step 2's failed
    assert tmp_files(out) == []                               # no half file left taking space


def test_disk_full_on_a_real_small_filesystem_keeps_the_previous_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True, text=True) if shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        pytest.skip("cannot mount a 1 MB tmpfs here (needs root and CAP_SYS_ADMIN); "
                    "test_disk_full_while_saving_keeps_the_previous_checkpoint simulates it")
    try:
        ckpt = disk / "ckpt.pt"
        state = {"format": training.CHECKPOINT_FORMAT, "level": 1, "preset": "tiny", "step": 1,
                 "weights": torch.ones(1000)}
        save_checkpoint(ckpt, state)
        with pytest.raises(UserError, match="No space left on device; the previous checkpoint is intact"):
            save_checkpoint(ckpt, {**state, "step": 2, "weights": torch.ones(2**20)})   # 4 MB
        assert [p.name for p in disk.iterdir()] == ["ckpt.pt"]
        assert load_checkpoint(ckpt)["step"] == 1
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_disk_full_while_writing_samples_is_a_clear_error(tmp_path, capsys, monkeypatch):
    out, calls = tmp_path / "run", []
    real_write_video = training.write_video

    def write_video(path, video, fps=8):
        # Step 2's .mp4 is written, then the disk fills during its .gif.
        calls.append(path)
        if len(calls) == 4:
            Path(path).write_bytes(b"GIF89a half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_video(path, video, fps=fps)

    monkeypatch.setattr(training, "write_video", write_video)
    code = run_script(level1.main, SMALL + ["--steps", "3", "--sample-every", "1", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert message == [f"error: could not write sample video {out / 'samples' / 'step_000002.gif'}: "
                       "No space left on device; the run stopped at step 2 and its last checkpoint "
                       "is intact. Free disk space (or choose another --out) and resume."]
    # Step 1's samples are whole; step 2's unfinished files are gone.
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000001.gif", "step_000001.mp4"]
    assert load_checkpoint(out / "ckpt.pt")["step"] == 1


class FullDiskText:
    """A text file on a disk that fills up after `room` characters: it writes what fits."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def write(self, text):
        self.file.write(text[:self.room])
        self.file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_disk_full_while_writing_the_log_keeps_it_readable(tmp_path, capsys, monkeypatch):
    out, appends = tmp_path / "run", []
    real_open = open

    def open_log(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        if Path(path).name == "log.jsonl":
            appends.append(path)
            if len(appends) == 3:                         # the third line gets 10 characters in
                return FullDiskText(file, room=10)
        return file

    monkeypatch.setattr(training, "open", open_log, raising=False)
    code = run_script(level1.main, SMALL + ["--steps", "5", "--out", str(out)])
    assert code == 2
    assert error_of(capsys) == (f"could not write {out / 'log.jsonl'}: No space left on device; the "
                                "run stopped at step 3 and its last checkpoint is intact. Free disk "
                                "space (or choose another --out) and resume.")
    # Only whole lines: the half-written third one was cut off again.
    assert logged_steps(out) == [1, 2]
    assert (out / "log.jsonl").read_text().endswith("}\n")


def test_disk_full_on_a_real_small_filesystem_while_writing_samples(tmp_path, capfd):
    """A real full disk: imageio's GIF writer fails, and no "Exception ignored ...
    Traceback" from its clean-up at garbage collection follows the message."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                           capture_output=True, text=True) if shutil.which("mount") else None
    if mount is None or mount.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN); "
                    "test_disk_full_while_writing_samples_is_a_clear_error simulates it")
    try:
        (disk / "samples").mkdir()
        (disk / "filler").write_bytes(b"x" * (256 * 1024 - 16 * 1024))    # 16 KiB left
        grid = torch.rand(3, 16, 64, 64) * 2 - 1
        with pytest.raises(UserError, match=r"could not write sample video .*step_000007\.(mp4|gif): "
                                            "No space left on device"):
            training.write_samples(disk, 7, grid)
        gc.collect()
        assert "Traceback" not in capfd.readouterr().err
        assert list((disk / "samples").iterdir()) == []            # nothing half-written is left
    finally:
        gc.collect()                  # a writer still holding a file there would keep it busy
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


@pytest.mark.parametrize("loss,bad", [("loss_g", float("nan")), ("loss_d", float("inf"))])
def test_nan_or_inf_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path, capsys, monkeypatch, loss, bad):
    out, calls = tmp_path / "run", []
    # hinge_g_loss is called twice a step (D_S, D_T); hinge_d_loss 4 times (2 D steps).
    name, per_step = ("hinge_g_loss", 2) if loss == "loss_g" else ("hinge_d_loss", 4)
    real = getattr(level1, name)

    def goes_bad_at_step_3(*scores):
        calls.append(1)
        value = real(*scores)
        return value + bad if len(calls) > 3 * per_step else value

    monkeypatch.setattr(level1, name, goes_bad_at_step_3)
    code = run_script(level1.main, SMALL + ["--steps", "6", "--out", str(out)])
    assert code == 2
    message = error_of(capsys)
    assert message.startswith(f"{loss} became {bad} at step 3; the run was stopped and the last "
                              f"good checkpoint {out / 'ckpt.pt'} is kept")
    assert "lower learning rate" in message
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 3                                  # steps 0, 1, 2 completed
    assert all(torch.isfinite(t).all() for sd in ckpt["models"].values() for t in sd.values()
               if t.is_floating_point())
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]                                 # the bad step was never logged


def start_training(out, steps=1000, *flags):
    """`python level1.py ...` as a user starts it, with its output readable as it comes.
    It leads its own process group, as a shell's foreground job does, so a test can
    signal the whole group the way a terminal's Ctrl-C does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "level1.py"), *SMALL, "--steps", str(steps),
               "--out", str(out), *flags]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    process.lines = []
    # A thread collects stdout, so a test can wait for a line without blocking.
    process.reader = threading.Thread(target=lambda: process.lines.extend(process.stdout), daemon=True)
    process.reader.start()
    return process


def wait_for(condition, timeout=120.0, what="condition", poll=0.0005):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def logged_steps(out):
    log = Path(out) / "log.jsonl"
    return [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.exists() else []


# A terminal's Ctrl-C (and `timeout -s INT`, and many schedulers) signals the whole
# process group: with --num-workers the DataLoader's worker processes get SIGINT too.
# Left to Python's default they die of KeyboardInterrupt, and the training process,
# waiting for its next batch, crashed ("DataLoader worker exited unexpectedly")
# instead of saving: a GPU run lost 4 minutes of training that way. Workers now
# ignore it (data.make_loader) and the training process alone decides when to stop.
@pytest.mark.parametrize("who, workers", [("process", 0), ("group", 0), ("group", 2)],
                         ids=["signal-to-the-process", "ctrl-c-in-a-terminal", "ctrl-c-with-workers"])
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, who, workers):
    out = tmp_path / "run"
    # No checkpoint until step 1000: the one found afterwards is Ctrl-C's.
    process = start_training(out, 1000, "--ckpt-every", "1000", "--num-workers", str(workers))
    try:
        wait_for(lambda: len(logged_steps(out)) >= 2, what="two logged steps")
        if who == "group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        process.kill()
    process.reader.join(timeout=10)
    text = "".join(process.lines)
    match = re.search(r"interrupted: saved (\S+) at step (\d+); run the same command to resume", text)
    assert match, text
    assert match.group(1) == str(out / "ckpt.pt")
    step = int(match.group(2))
    assert load_checkpoint(out / "ckpt.pt", level=1, preset="tiny")["step"] == step
    # `step` counts completed steps: all the logged ones (the interrupt may fall
    # between a step's end and its log line).
    assert len(logged_steps(out)) <= step <= len(logged_steps(out)) + 1
    assert tmp_files(out) == []


# ----------------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------------

def test_out_that_is_not_writable_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    out = tmp_path / "file" / "run"
    code = run_script(level1.main, SMALL + ["--steps", "1", "--out", str(out)])
    assert code == 2
    assert error_of(capsys) == (f"cannot write to --out {out} (Not a directory); choose a folder "
                                "you can write to.")
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_existing_sample_files_are_not_overwritten_by_a_new_run(previous_run):
    before = {name: content for name, content in snapshot(previous_run).items()
              if name.parts[0] == "samples"}
    assert sorted(p.name for p in before) == ["step_000002.gif", "step_000002.mp4"]
    # A new run in the same folder (--no-resume) reaches the same step numbers.
    assert run_script(level1.main, SMALL + ["--steps", "2", "--no-resume", "--out", str(previous_run)]) == 0
    assert_nothing_lost(previous_run, before)
    assert sorted(p.name for p in (previous_run / "samples").iterdir()) == [
        "step_000002-1.gif", "step_000002-1.mp4", "step_000002.gif", "step_000002.mp4"]


def test_two_runs_into_one_folder_one_trains_the_other_stops_and_a_kill_frees_it(tmp_path):
    """The same command started twice at once (a scheduler's retry): exactly one run
    trains; the other stops at once with exit 2, naming the first one's pid, and
    touches nothing. After a SIGKILL of the first (no clean-up at all), the next
    run takes the folder and resumes from its checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "level1.py"), *SMALL, "--steps", "1000", "--out", str(out)]

    def start(name):
        with open(tmp_path / f"{name}.out", "w") as stdout, open(tmp_path / f"{name}.err", "w") as stderr:
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)

    runs = [start("a"), start("b")]
    try:
        wait_for(lambda: any(r.poll() is not None for r in runs), timeout=120, what="one run to stop")
        stopped = next(i for i, r in enumerate(runs) if r.poll() is not None)
        stopped_run, training_run = runs[stopped], runs[1 - stopped]
        assert stopped_run.returncode == 2
        err = (tmp_path / f"{'ab'[stopped]}.err").read_text()
        assert err == (f"error: {out} is in use by another run (pid {training_run.pid}); wait for it "
                       "to finish or choose another --out\n")
        # The other one trains on, alone: every step is logged once.
        wait_for(lambda: len(logged_steps(out)) >= 3 or training_run.poll() is not None,
                 what="three logged steps")
        assert training_run.poll() is None
        training_run.send_signal(signal.SIGKILL)
        training_run.wait(timeout=60)
    finally:
        for run in runs:
            run.kill()
    steps = logged_steps(out)
    assert steps == list(range(1, len(steps) + 1))           # no step twice
    saved = load_checkpoint(out / "ckpt.pt")["step"]
    # The kernel released the killed run's lock: a new run takes the folder and resumes.
    result = subprocess.run(command[:-4] + ["--steps", str(saved + 1), "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from {out / 'ckpt.pt'} at step {saved}" in result.stdout
    assert load_checkpoint(out / "ckpt.pt")["step"] == saved + 1


def test_a_folder_in_use_stops_sampling_too(tmp_path, capsys):
    """sample.py --out into a folder another process holds stops before generating."""
    out = tmp_path / "samples"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import training, "
         "pathlib; training.hold_out_dir(pathlib.Path(sys.argv[2])); print('held', flush=True); "
         "time.sleep(120)", str(ROOT), str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline() == "held\n"
        import sample
        runs = tmp_path / "runs"
        assert run_script(level1.main, SMALL + ["--steps", "1", "--out", str(runs / "level1")]) == 0
        capsys.readouterr()
        code = run_script(sample.main, ["--runs", str(runs), "--levels", "1", "--num", "1",
                                        "--no-progress", "--out", str(out)])
        assert code == 2
        assert error_of(capsys) == (f"{out} is in use by another run (pid {holder.pid}); wait for it "
                                    "to finish or choose another --out")
        assert [p.name for p in out.iterdir()] == [".lock"]          # nothing was written
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------------
# The kill test.
# ----------------------------------------------------------------------------------

def test_killed_at_random_moments_resumes_from_the_last_complete_checkpoint(tmp_path):
    """SIGKILL a training run 12 times (a checkpoint every step) and check after every
    kill that ckpt.pt, if there is one, loads, and that the next run resumes at its
    step and logs that step + 1 first. The moments:
      5 x during a checkpoint write: the moment the tmp file of the 1st, 2nd or 3rd
          save of the run appears, plus 0-10 ms (inside torch.save, fsync or rename);
      5 x while training: 0-1.5 s after the run logged its first step;
      2 x while starting: 0-3 s after the start (imports, loading the checkpoint).
    HVG_KILL_SEED=<seed> replays a failure."""
    seed = int(os.environ.get("HVG_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    out, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt.pt"
    modes = ["during a checkpoint write"] * 5 + ["while training"] * 5 + ["while starting"] * 2
    rng.shuffle(modes)
    last_step, history, caught_mid_write = None, [], 0
    for kill, mode in enumerate(modes):
        where = f"(seed {seed}, kill {kill}, {mode}, checkpoint steps so far {history})"
        logged_before = len(logged_steps(out))
        process = start_training(out)
        ended = lambda: process.poll() is not None                       # noqa: E731
        try:
            if mode == "during a checkpoint write":
                tmp = out / f"ckpt.pt.tmp-{process.pid}"
                for _ in range(rng.randint(0, 2)):                       # let some saves finish
                    wait_for(lambda: tmp.exists() or ended(), what=f"a save {where}")
                    wait_for(lambda: not tmp.exists() or ended(), what=f"the rename {where}")
                wait_for(lambda: tmp.exists() or ended(), what=f"a save {where}")
                time.sleep(rng.uniform(0, 0.01))
            elif mode == "while training":
                wait_for(lambda: len(logged_steps(out)) > logged_before or ended(),
                         what=f"a logged step {where}", poll=0.01)
                time.sleep(rng.uniform(0, 1.5))
            else:
                time.sleep(rng.uniform(0, 3.0))
            assert not ended(), f"the run ended by itself {where}: {process.lines}"
            process.kill()                                     # SIGKILL: no handler runs
            process.wait(timeout=30)
        finally:
            process.kill()
        process.reader.join(timeout=10)
        # The killed run resumed where the last checkpoint said (if it got that far).
        resumed = [line.strip() for line in process.lines if "resumed from" in line]
        if last_step is None:
            assert resumed == [], where
        else:
            assert resumed in ([f"resumed from {ckpt} at step {last_step}"],
                               [] if mode == "while starting" else None), f"{resumed} {where}"
        new_steps = logged_steps(out)[logged_before:]
        if new_steps:                                          # it trained: from the resume point
            assert new_steps[0] == (last_step or 0) + 1, f"{new_steps} {where}"
        if (out / f"ckpt.pt.tmp-{process.pid}").exists():
            caught_mid_write += 1                              # killed with the tmp file open
        # Whatever the moment, ckpt.pt is a complete checkpoint at a step >= the last one.
        if ckpt.exists():
            step = load_checkpoint(ckpt, level=1, preset="tiny")["step"]
            assert step >= (last_step or 0), where
            last_step = step
        history.append(last_step)
    print(f"kill test: seed {seed}; checkpoint step after each kill {history}; "
          f"{caught_mid_write} kills left a half-written tmp file")
    assert caught_mid_write >= 2, f"only {caught_mid_write} kills landed mid-write (seed {seed})"
    assert last_step is not None and last_step >= 2, history

    # One last run finishes: it resumes at the last checkpoint, trains two more steps,
    # and removes the half-written files the kills left behind.
    process = start_training(out, last_step + 2)
    assert process.wait(timeout=120) == 0
    process.reader.join(timeout=10)
    assert f"resumed from {ckpt} at step {last_step}\n" in process.lines
    assert load_checkpoint(ckpt)["step"] == last_step + 2
    assert logged_steps(out)[-2:] == [last_step + 1, last_step + 2]
    assert tmp_files(out) == []
