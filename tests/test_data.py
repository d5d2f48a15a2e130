"""What data.py (and videos.py below it) guarantees: the level pyramid, partial views,
the synthetic dataset, real video files, the decode-once cache and reproducible loaders.

Run: python -m pytest -q tests/test_data.py
"""

import time

import numpy as np
import pytest
import torch

import data
import flags
from data import (PRESETS, LevelDataset, UserError, down, level_example, level_spec,
                  make_dataset, make_loader, pad_condition)
from videos import contact_sheet, to_uint8, video_grid, write_video


# ---------------------------------------------------------------- presets and pyramid

def test_presets_shapes_chain():
    for name, specs in PRESETS.items():
        for coarse, fine in zip(specs, specs[1:]):
            assert fine.frames == coarse.frames * fine.time_factor
            assert fine.size == coarse.size * fine.space_factor
    assert [(s.frames, s.size) for s in PRESETS["kinetics600"]] == [(12, 64), (24, 128), (48, 256)]
    # Context 3: the default upsampling generator's temporal receptive field.
    assert level_spec("tiny", 2).crop_frames == 8 and level_spec("tiny", 2).context == 3
    assert level_spec("tiny", 1).crop_frames == 8 and level_spec("tiny", 1).context == 0
    with pytest.raises(UserError, match="tiny"):
        level_spec("huge", 1)
    with pytest.raises(UserError, match="1..2"):
        level_spec("ucf101", 3)


def test_down_averages_space_and_keeps_every_tf_th_frame():
    video = torch.arange(2 * 3 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4, 4)
    small = down(video, 2, 2)
    assert small.shape == (2, 3, 2, 2, 2)
    # Frame 1 of the result is frame 2 of the input; pixel (0, 0) the mean of a 2x2 block.
    block = video[:, :, 2, 0:2, 0:2]
    assert torch.allclose(small[:, :, 1, 0, 0], block.mean(dim=(-2, -1)))
    assert down(video[0], 2, 2).shape == (3, 2, 2, 2)  # (C, T, H, W) works too


def test_pad_condition_replicates_edge_frames():
    condition = torch.randn(3, 4, 2, 2)
    padded = pad_condition(condition, 2)
    assert padded.shape == (3, 8, 2, 2)
    assert torch.equal(padded[:, 2:6], condition)
    assert torch.equal(padded[:, 0], condition[:, 0]) and torch.equal(padded[:, 1], condition[:, 0])
    assert torch.equal(padded[:, 7], condition[:, -1])
    assert torch.equal(pad_condition(condition, 0), condition)


@pytest.mark.parametrize("crop_start", [0, 4, 8])
def test_level_example_condition_lines_up_with_target(crop_start):
    spec = level_spec("tiny", 2)  # 16x32x32, tf = sf = 2, crop 8, context 3
    video = torch.rand(3, spec.frames, spec.size, spec.size) * 2 - 1
    example = level_example(video, "tiny", 2, crop_start=crop_start)
    target, condition = example["target"], example["condition"]
    K = spec.context
    assert target.shape == (3, 8, 32, 32)
    assert condition.shape == (3, 8 // 2 + 2 * K, 16, 16)
    assert example["crop_start"] == crop_start
    assert torch.equal(target, video[:, crop_start:crop_start + 8])
    # Condition frame K is the downsampled first target frame ...
    assert torch.allclose(condition[:, K:K + 4], down(target, 2, 2))
    # ... and the context frames are the real neighbours (or the replicated edge).
    full = down(video, 2, 2)
    before = max(crop_start // 2 - 1, 0)
    assert torch.allclose(condition[:, K - 1], full[:, before])


def test_level_example_spatial_crop_matches_condition():
    video = torch.rand(3, 16, 32, 32)
    rng = np.random.default_rng(0)
    example = level_example(video, "tiny", 2, crop_size=16, rng=rng)
    assert example["target"].shape == (3, 8, 16, 16)
    K = level_spec("tiny", 2).context
    assert example["condition"].shape == (3, 4 + 2 * K, 8, 8)
    assert torch.allclose(example["condition"][:, K:K + 4], down(example["target"], 2, 2))
    assert level_example(video[:, :8, :16, :16], "tiny", 1)["target"].shape == (3, 8, 16, 16)


@pytest.mark.robustness
def test_level_example_rejects_bad_crops():
    video = torch.rand(3, 16, 32, 32)
    with pytest.raises(UserError, match="crop_frames=7"):
        level_example(video, "tiny", 2, crop_frames=7)
    with pytest.raises(UserError, match="crop_frames=32"):
        level_example(video, "tiny", 2, crop_frames=32)
    with pytest.raises(UserError, match="context=9"):
        level_example(video, "tiny", 2, context=9)
    with pytest.raises(UserError, match="crop_size=15"):
        level_example(video, "tiny", 2, crop_size=15)


# ---------------------------------------------------------------- synthetic data

def test_synthetic_is_deterministic_and_varied():
    ds = make_dataset("synthetic", None, "tiny", 1, seed=0)
    video, label = ds[3]
    assert video.shape == (3, 8, 16, 16) and video.dtype == torch.float32
    assert -1 <= video.min() and video.max() <= 1
    assert torch.equal(video, make_dataset("synthetic", None, "tiny", 1, seed=0)[3][0])
    assert not torch.allclose(video, make_dataset("synthetic", None, "tiny", 1, seed=1)[3][0])
    assert not torch.allclose(video, ds[4][0])
    assert 0 <= label < ds.num_classes == 3
    assert len({ds[i][1] for i in range(30)}) == 3  # every class occurs


def test_synthetic_objects_move():
    video, _ = make_dataset("synthetic", None, "tiny", 1)[0]
    step = (video[:, 1:] - video[:, :-1]).abs().mean(dim=(0, 2, 3))  # per frame pair
    assert (step > 0.005).all()


@pytest.mark.parametrize("level", [1, 2, 3])
def test_synthetic_texture_moves_whole_pixels_so_it_never_flickers(level):
    # The background (smooth waves and the fine checker) scrolls: at every level,
    # frame t+1 must be frame t shifted by a whole number of pixels, or a texture
    # near the pixel size would blink from frame to frame (aliasing). Objects are
    # removed to see the background alone; the shift is found by search.
    dataset = make_dataset("synthetic", None, "tiny", level)
    for index in range(4):
        scene = dataset.scene(index)
        scene["objects"] = []
        video = torch.from_numpy(dataset.render(scene))           # (3, T, S, S)
        for t in range(video.shape[1] - 1):
            now, after = video[:, t], video[:, t + 1]
            errors = {(dy, dx): (after[:, 2:-2, 2:-2] - torch.roll(now, (dy, dx), (1, 2))[:, 2:-2, 2:-2])
                      .abs().max().item() for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
            assert min(errors.values()) < 1e-4, (index, t, min(errors.values()))


def test_synthetic_objects_keep_their_texture_at_every_level():
    # A striped square at level 2 (32 px): its stripes (2 or 4 cells of 1/32) are
    # 2 or 4 pixels wide and stay as crisp in every frame: the square's
    # pixel-level standard deviation (its contrast) is the same in each frame.
    dataset = make_dataset("synthetic", None, "tiny", 2)
    checked = 0
    for index in range(40):
        scene = dataset.scene(index)
        squares = [o for o in scene["objects"] if o["kind"] == "square"]
        if not squares:
            continue
        scene["objects"] = squares[:1]
        scene["checker"] = np.float32(0)
        scene["tint"] = np.zeros(3, np.float32)                    # flat background
        video = dataset.render(scene)                               # (3, T, S, S)
        contrast = video.reshape(3, video.shape[1], -1).std(axis=2).sum(axis=0)   # (T,)
        assert contrast.max() - contrast.min() < 1e-3 * contrast.max(), index
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("preset", ["tiny", "ucf101"])
def test_synthetic_pyramid_is_consistent(preset):
    # down(level-l render) must equal the level-(l-1) render: the same scene at a lower
    # frame rate and resolution. Rendering samples one grid for all levels, so the
    # tolerance is float rounding; we state mean |diff| < 1e-4 and max < 1e-3.
    specs = PRESETS[preset]
    for index in range(3):
        videos = [make_dataset("synthetic", None, preset, s.level)[index][0] for s in specs]
        for spec, coarse, fine in zip(specs[1:], videos, videos[1:]):
            diff = (down(fine, spec.time_factor, spec.space_factor) - coarse).abs()
            assert diff.mean() < 1e-4 and diff.max() < 1e-3


def test_synthetic_renders_fast():
    small = make_dataset("synthetic", None, "tiny", 1)
    large = make_dataset("synthetic", None, "tiny", 3)
    small[0], large[0]  # warm-up
    start = time.perf_counter()
    for i in range(10):
        small[i]
    per_small = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    for i in range(5):
        large[i]
    per_large = (time.perf_counter() - start) / 5
    # Generous bounds (shared CI cores); typically ~2 ms and ~6 ms.
    assert per_small < 0.02 and per_large < 0.1


# ---------------------------------------------------------------- loaders

def _batches(loader, n):
    return [next(loader) for _ in range(n)]


def test_loader_is_reproducible_and_resumable():
    base = make_dataset("synthetic", None, "tiny", 2)
    dataset = LevelDataset(base, "tiny", 2, seed=5)
    first = _batches(make_loader(dataset, 3), 3)
    again = _batches(make_loader(LevelDataset(base, "tiny", 2, seed=5), 3, num_workers=2), 3)
    for a, b in zip(first, again):
        assert set(a) == {"target", "condition", "crop_start", "label"}
        assert a["target"].shape == (3, 3, 8, 32, 32) and a["condition"].shape == (3, 3, 4 + 2 * 3, 16, 16)
        assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = next(make_loader(dataset, 3, start_batch=2))
    assert torch.equal(resumed["target"], first[2]["target"])
    other_seed = next(make_loader(LevelDataset(base, "tiny", 2, seed=6), 3))
    assert not torch.equal(other_seed["crop_start"], first[0]["crop_start"]) or \
        not torch.equal(other_seed["target"], first[0]["target"])


def test_loader_ranks_split_positions():
    dataset = LevelDataset(make_dataset("synthetic", None, "tiny", 1), "tiny", 1, seed=0)
    whole = next(make_loader(dataset, 4))["target"]
    rank0 = next(make_loader(dataset, 2, rank=0, world_size=2))["target"]
    rank1 = next(make_loader(dataset, 2, rank=1, world_size=2))["target"]
    assert torch.equal(torch.cat([rank0, rank1]), whole)


# ---------------------------------------------------------------- video files

def test_write_video_mp4_and_gif(tmp_path):
    import imageio.v2 as imageio

    video = make_dataset("synthetic", None, "tiny", 1)[0][0]
    write_video(tmp_path / "a" / "clip.mp4", video)
    write_video(tmp_path / "clip.gif", video)
    frames = imageio.mimread(tmp_path / "a" / "clip.mp4")
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)  # 16 px upscaled to 64
    assert len(imageio.mimread(tmp_path / "clip.gif")) == 8
    with pytest.raises(UserError, match="clip.avi"):
        write_video(tmp_path / "clip.avi", video)


def test_grid_and_contact_sheet():
    videos = torch.rand(5, 3, 4, 8, 8) * 2 - 1
    grid = video_grid(videos, nrow=3, pad=1)
    assert grid.shape == (3, 4, 2 * 9 + 1, 3 * 9 + 1)
    assert torch.equal(grid[:, :, 1:9, 10:18], videos[1])
    sheet = contact_sheet([videos[0], torch.rand(3, 2, 16, 16)], size=16)
    assert sheet.dtype == np.uint8 and sheet.shape[0] == 2 * (16 + 2) and sheet.shape[2] == 3
    assert (to_uint8(torch.full((3, 1, 2, 2), -1.0)) == 0).all()
    assert (to_uint8(torch.ones(3, 1, 2, 2)) == 255).all()


# ---------------------------------------------------------------- real video files
# The tests write their own small videos: frame i of every test video is a flat grey
# of brightness 3 * i, so the frame stride can be read back from the pixels.

def write_test_video(path, num_frames, size=(24, 40), channels=3, fps=10):
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size if channels == 1 else (*size, channels)
    frames = [np.full(shape, 3 * i, np.uint8) for i in range(num_frames)]
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
        return
    codec = "mjpeg" if path.suffix == ".avi" else "libx264"
    with imageio.get_writer(path, fps=fps, codec=codec, macro_block_size=8,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)


def brightness(video):
    """Mean of each frame of a (3, T, H, W) video in [0, 255]: (T,)."""
    return ((video + 1) * 127.5).mean(dim=(0, 2, 3))


@pytest.fixture
def nested_videos(tmp_path):
    """train/<class>/<id>: three good videos (mp4, avi, gray gif), a corrupt file and
    one too short for tiny's 32-frame finest clip."""
    root = tmp_path / "kinetics"
    write_test_video(root / "train" / "archery" / "a.mp4", 40)
    write_test_video(root / "train" / "bowling" / "b.avi", 40)
    write_test_video(root / "train" / "bowling" / "c.gif", 40, channels=1)
    write_test_video(root / "train" / "bowling" / "short.mp4", 10)
    (root / "train" / "archery" / "broken.mp4").write_bytes(b"not a video" * 20)
    return root


def test_nested_videos_labels_skips_and_stride(nested_videos):
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 videos under .*train: "
                                         r"(1 could not be decoded, 1 shorter than 32 frames|"
                                         r"1 shorter than 32 frames, 1 could not be decoded)"):
        dataset = make_dataset("kinetics600", nested_videos, "tiny", 1, frame_stride=1)
    assert len(dataset) == 3 and dataset.class_names == ["archery", "bowling"]
    assert dataset.num_classes == 2
    assert sorted(dataset.labels) == [0, 1, 1]
    for i in range(3):
        video, label = dataset[i]
        assert video.shape == (3, 8, 16, 16) and label == dataset.labels[i]
        # Level 1 keeps every 4th finest frame at stride 1: brightness steps of 4 * 3.
        steps = brightness(video).diff()
        assert torch.allclose(steps, torch.full_like(steps, 12.0), atol=2.5), steps
        assert torch.allclose(video[0], video[1], atol=0.02)  # gray -> equal RGB channels


def test_real_pyramid_matches_down(nested_videos):
    # Random crops and flips too: each level draws them from the same rng.
    options = dict(frame_stride=1, random_crop=True, hflip=True)
    with pytest.warns(UserWarning):
        level1 = make_dataset("kinetics600", nested_videos, "tiny", 1, **options)
    with pytest.warns(UserWarning):
        level3 = make_dataset("kinetics600", nested_videos, "tiny", 3, **options)
    rng = np.random.default_rng
    for i in range(len(level1)):
        fine, _ = level3.load(i, rng([0, i]))
        coarse, _ = level1.load(i, rng([0, i]))
        assert fine.shape == (3, 32, 64, 64)
        # Level 1 is made from uint8 frames, so it matches down() to 1/255 rounding.
        assert (down(fine, 4, 4) - coarse).abs().max() < 0.01


def test_flat_layout_is_unlabelled_and_uses_the_dataset_stride(tmp_path):
    for name in ("x.mp4", "y.mov", "z.mkv"):
        write_test_video(tmp_path / "train" / name, 70, size=(20, 12))
    dataset = make_dataset("kinetics600", tmp_path, "tiny", 2)  # default stride 2
    assert dataset.labels == [-1, -1, -1] and dataset.num_classes == 0
    video, label = dataset[0]
    assert video.shape == (3, 16, 32, 32) and label == -1  # 20x12 upscaled
    steps = brightness(video).diff()  # every 2nd finest frame, stride 2: 4 * 3
    assert torch.allclose(steps, torch.full_like(steps, 12.0), atol=2.5), steps


@pytest.mark.robustness
@pytest.mark.parametrize("case", ["none", "missing", "file", "empty", "no videos"])
def test_kinetics_without_videos_is_a_user_error(tmp_path, case):
    root = {"none": None, "missing": tmp_path / "nope", "file": tmp_path / "f.txt",
            "empty": tmp_path / "empty", "no videos": tmp_path / "docs"}[case]
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(UserError) as error:
        make_dataset("kinetics600", root, "kinetics600", 1)
    message = str(error.value)
    assert "--data-root" in message or "no video files" in message
    if root is not None:
        assert str(root) in message
    assert "synthetic" in message or "Kinetics-600" in message


@pytest.mark.robustness
def test_no_usable_video_is_a_user_error(tmp_path):
    write_test_video(tmp_path / "a.mp4", 5)
    (tmp_path / "b.webm").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"found 2 videos .* none is usable"):
        make_dataset("folder", tmp_path, "tiny", 1)


def test_file_failing_at_load_time_is_replaced(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        write_test_video(tmp_path / name, 36)
    dataset = make_dataset("folder", tmp_path, "tiny", 1)
    (tmp_path / "a.mp4").write_bytes(b"broken after indexing")
    with pytest.warns(UserWarning, match="a.mp4"):
        video, _ = dataset.load(0, np.random.default_rng(1))
    assert video.shape == (3, 8, 16, 16) and dataset.load_failures >= 1


# ---------------------------------------------------------------- cache and commands

def test_cache_round_trip_and_errors(tmp_path, nested_videos):
    out = tmp_path / "cache"
    with pytest.warns(UserWarning):
        data.prepare_cache("kinetics600", nested_videos, out, "tiny", frame_stride=1, workers=2)
    with pytest.warns(UserWarning):
        source = make_dataset("kinetics600", nested_videos, "tiny", 3, frame_stride=1)
    for level in (1, 2, 3):
        cached = make_dataset("cache", out, "tiny", level)
        assert len(cached) == 3 and cached.class_names == ["archery", "bowling"]
        video, label = cached[0]
        assert video.shape == (3, *[(s.frames, s.size, s.size) for s in PRESETS["tiny"]][level - 1])
        assert label == source.labels[0]
    # The cached clip is the source clip (centred start: (40 - 32) / 2 = 4).
    clip = source.clip(0, None, start=4)
    assert np.array_equal(np.load(out / "shard_00000.npy", mmap_mode="r")[0], clip)

    with pytest.raises(UserError, match="preset"):
        make_dataset("cache", out, "ucf101", 1)
    shard = out / "shard_00000.npy"
    good = shard.read_bytes()
    np.save(shard, np.zeros((3, 16, 32, 32, 3), np.uint8))  # a shard of another shape
    with pytest.raises(UserError, match="another preset"):
        make_dataset("cache", out, "tiny", 1)
    shard.write_bytes(good)
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated"):
        make_dataset("cache", out, "tiny", 1)
    with pytest.raises(UserError, match="index.json"):
        make_dataset("cache", tmp_path, "tiny", 1)


def test_finite_dataset_positions_cover_each_epoch(tmp_path, nested_videos):
    out = tmp_path / "cache"
    with pytest.warns(UserWarning):  # the command line, as a user runs it
        data.main(["prepare", "--data", "kinetics600", "--data-root", str(nested_videos),
                   "--out", str(out), "--preset", "tiny", "--frame-stride", "1"])
    dataset = LevelDataset(make_dataset("cache", out, "tiny", 1), "tiny", 1, seed=3)
    epoch0 = [dataset.base_index(p) for p in range(3)]
    epoch1 = [dataset.base_index(p) for p in range(3, 6)]
    assert sorted(epoch0) == sorted(epoch1) == [0, 1, 2]
    batches = _batches(make_loader(dataset, 2, num_workers=2), 3)
    resumed = next(make_loader(dataset, 2, start_batch=2))
    assert torch.equal(resumed["target"], batches[2]["target"])


def test_preview_writes_clips_and_contact_sheet(tmp_path):
    data.main(["preview", "--data", "synthetic", "--preset", "tiny", "--num", "2",
               "--out", str(tmp_path / "preview")])
    for level in (1, 2, 3):
        for i in range(2):
            assert (tmp_path / "preview" / f"level{level}" / f"{i}.mp4").stat().st_size > 0
    assert (tmp_path / "preview" / "contact_sheet.png").stat().st_size > 0


def test_preview_of_real_videos(tmp_path):
    write_test_video(tmp_path / "videos" / "a.avi", 36)
    data.main(["preview", "--data", "folder", "--data-root", str(tmp_path / "videos"),
               "--preset", "tiny", "--num", "1", "--out", str(tmp_path / "preview")])
    assert len(list((tmp_path / "preview").rglob("*.mp4"))) == 3


@pytest.mark.robustness
def test_command_line_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:     # as `python data.py preview ...` runs it
        flags.run_main(data.main, ["preview", "--data", "kinetics600", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no --data-root given")
