"""What streaming guarantees (sample.py --stream, --input): the chain run chunk by
chunk gives the same videos as the whole-video pipeline, level 1 continues across
chunks through its GRU states, memory does not grow with the video's length, and a
video file of your own comes out with x tf frames and x sf pixels per level while
still following its input.

The checkpoints hold small random-weight generators (tests/test_sample.py's helpers).

    python -m pytest -q tests/test_stream.py
"""

import weakref
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import data
import sample
from data import UserError, to_uint8
from test_sample import StandIn, make_generator, tiny_chain, tiny_runs  # noqa: F401 (shared fixtures)
from training import checkpoint_state, save_checkpoint
from videos import write_video


class LiveBytes(TorchDispatchMode):
    """The most bytes held at once by tensors that torch operations created inside
    the `with` (each new storage counted from its creation until it is freed): the
    pipeline's own memory, measured without timing or the allocator's noise."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor._base is None:   # not a view
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._freed, size)
        return out

    def _freed(self, size):
        self.live -= size


# ---------------------------------------------------------------- level 1 in chunks

@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_level1_in_chunks_equals_one_unroll(chunk):
    _, g1 = make_generator("tiny", 1)
    g1.eval()
    z = g1.sample_latent(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = g1(z, frames=10)                                          # (2, 3, 10, 16, 16)
        pieces = list(sample.level1_chunks(g1, z, None, frames=10, chunk=chunk))
        fresh = g1(z, frames=chunk)                                       # starts from h_0 = 0
    assert [p.shape[2] for p in pieces] == [min(chunk, 10 - s) for s in range(0, 10, chunk)]
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=0, atol=1e-5)
    if chunk < 10:
        # What carrying the state buys: the second chunk is not a fresh unroll from h_0 = 0.
        assert (pieces[1][:, :, :1] - fresh[:, :, :1]).abs().max() > 1e-3


# ---------------------------------------------------------------- an upsampling level over a stream

def chunked(video, sizes):
    """A (B, 3, t, h, w) video cut into chunks of the given sizes (cycled)."""
    start, k = 0, 0
    while start < video.shape[2]:
        size = sizes[k % len(sizes)]
        yield video[:, :, start:start + size]
        start, k = start + size, k + 1


@pytest.mark.parametrize("frames", [3, 4, 11, 16])
@pytest.mark.parametrize("sizes", [[1], [3], [2, 5], [100]])
@pytest.mark.parametrize("context", [0, 2, 5])                   # 5 > the window of 4
def test_upsample_over_a_stream_equals_upsample(frames, sizes, context):
    generator = StandIn(reach=2)
    condition = torch.randn(2, 3, frames, 4, 4)
    z = torch.randn(2, 3)
    expected = sample.upsample(generator, condition, z, context=context, window=4)
    pieces = list(sample.upsample_chunks(generator, chunked(condition, sizes), z, context=context, window=4))
    torch.testing.assert_close(torch.cat(pieces, dim=2), expected, rtol=0, atol=0)


def test_a_window_runs_as_soon_as_its_right_context_has_arrived():
    """Streaming, not buffering: output for condition frames j0 .. j0 + w - 1 comes out
    before the stream is asked for anything past frame j0 + w + K - 1."""
    read, emitted_after = [], []

    def frames_one_by_one(video):
        for j in range(video.shape[2]):
            read.append(j)
            yield video[:, :, j:j + 1]

    condition, context, window = torch.randn(1, 3, 20, 2, 2), 2, 4
    stream = sample.upsample_chunks(StandIn(reach=1), frames_one_by_one(condition), torch.randn(1, 3),
                                    context=context, window=window)
    for _ in stream:
        emitted_after.append(read[-1])
    # Windows at 0, 4, 8, 12 each need condition frames up to j0 + 4 + 2 - 1; the last
    # one (16) needs the end of the stream (its right context is past frame 19).
    assert emitted_after == [5, 9, 13, 17, 19]


# ---------------------------------------------------------------- the whole chain

@pytest.mark.parametrize("frames", [32, 30, 5, 128])
def test_streamed_videos_equal_generated_ones(tiny_chain, frames):
    expected, expected_levels = sample.generate(tiny_chain, 3, seed=2, frames=frames, batch_size=2,
                                                return_levels=True)
    got, got_levels = sample.generate(tiny_chain, 3, seed=2, frames=frames, batch_size=2,
                                      return_levels=True, stream=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    for a, b in zip(got_levels, expected_levels):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_streamed_memory_does_not_grow_with_the_length(tiny_chain):
    def peak(frames, stream):
        with torch.inference_mode(), LiveBytes() as live:
            if stream:
                for _ in sample.stream_batch(tiny_chain, range(2), seed=0, frames=frames):
                    pass
            else:
                sample.generate(tiny_chain, 2, seed=0, frames=frames)
        return live.peak

    short, long = 32, 16 * 32                                     # 1x and 16x the horizon
    assert peak(long, stream=True) == peak(short, stream=True)
    # The probe does see memory that grows: the whole-video pipeline at 16x.
    assert peak(long, stream=False) > 4 * peak(short, stream=False)


def test_stream_command_writes_the_same_videos(tiny_runs, tmp_path, monkeypatch):
    # The frames each path hands its video writer, as uint8, before H.264: comparing
    # the decoded mp4s instead compares two lossy codings, and H.264 codes a block
    # differently when one of its values moved by 1, so any rounding change anywhere
    # in the chain moved whole blocks there.
    handed = {"s": {}, "w": {}}

    def recorded_write_video(path, video, **kwargs):
        handed["w"].setdefault(Path(path).name, []).append(to_uint8(video))
        return write_video_before(path, video, **kwargs)

    def recorded_append(self, video):
        handed["s"].setdefault(self.path.name, []).append(to_uint8(video))
        return append_before(self, video)

    write_video_before, append_before = sample.write_video, sample.Mp4Stream.append
    monkeypatch.setattr(sample, "write_video", recorded_write_video)
    monkeypatch.setattr(sample.Mp4Stream, "append", recorded_append)
    sample.main(["--runs", str(tiny_runs), "--num", "3", "--batch-size", "2", "--frames", "40",
                 "--stream", "--out", str(tmp_path / "s"), "--no-progress"])
    sample.main(["--runs", str(tiny_runs), "--num", "3", "--batch-size", "2", "--frames", "40",
                 "--out", str(tmp_path / "w"), "--no-progress"])
    for name in ("video_000.mp4", "video_002.mp4", "grid.mp4"):
        streamed = np.concatenate(handed["s"][name], axis=0)      # (T, H, W, 3), chunks joined
        whole = np.concatenate(handed["w"][name], axis=0)
        assert streamed.shape == whole.shape and streamed.shape[0] == 40
        # The same frames: the two paths agree to float rounding (about 1e-6:
        # test_streamed_videos_equal_generated_ones), which can move a value that sat
        # on a rounding boundary to its neighbour, and nothing more.
        assert np.abs(streamed.astype(int) - whole).max() <= 1, name
        assert (streamed != whole).mean() < 1e-3, name
        # And both files hold them: 40 frames each.
        for folder in ("s", "w"):
            assert len(imageio.mimread(str(tmp_path / folder / name), memtest=False)) == 40
    assert (imageio.imread(tmp_path / "s" / "levels.png") == imageio.imread(tmp_path / "w" / "levels.png")).all()
    with pytest.raises(UserError, match="--whole"):
        sample.main(["--runs", str(tiny_runs), "--stream", "--whole", "--out", str(tmp_path / "x")])


# ---------------------------------------------------------------- upsampling your own video

@pytest.fixture(scope="module")
def faithful_runs(tmp_path_factory):
    """Random upsampling levels with a fresh level's detail gain (0.1): close to their
    interpolated condition, the way a trained level stays close to its input."""
    folder = tmp_path_factory.mktemp("faithful")
    for level in (1, 2, 3):
        cfg, generator = make_generator("tiny", level)
        if level > 1:
            with torch.no_grad():
                generator.detail_gain.fill_(0.1)
        state = checkpoint_state(cfg, level, 7, 0, {"generator": generator, "ema_generator": generator}, {})
        (folder / f"level{level}").mkdir()
        save_checkpoint(folder / f"level{level}" / "ckpt.pt", state)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real mp4: the synthetic dataset's moving shapes, 20 frames of 48x36 (not square)."""
    videos = data.SyntheticVideos(frames=20, size=48, frame_time=1.0, seed=3)
    video = videos[0][0][:, :, 6:42]                               # (3, 20, 36, 48)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, video, fps=4)
    return path


def read(path):
    """An mp4 -> (3, T, H, W) float in [-1, 1]."""
    frames = np.stack(imageio.mimread(str(path), memtest=False))          # (T, H, W, 3)
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("from_level, factor, size", [(1, 4, 64), (2, 2, 64)])
def test_input_is_upsampled_and_followed(faithful_runs, clip, tmp_path, from_level, factor, size):
    sample.main(["--runs", str(faithful_runs), "--input", str(clip), "--from-level", str(from_level),
                 "--out", str(tmp_path), "--no-progress"])
    decoded = np.stack(imageio.mimread(str(clip), memtest=False))         # (20, H', W', 3) as written
    level_input = sample.to_level_frames(decoded, size // factor)[0]      # (3, 20, s, s)
    output = read(tmp_path / "upsampled.mp4")
    assert output.shape == (3, 20 * factor, size, size)
    assert read(tmp_path / "input.mp4").shape[1] == 20
    # down(output) is close to the input it was given, and far from a shifted copy of it.
    back = data.down(output, factor, factor)
    error = (back - level_input).abs().mean()
    assert error < 0.15
    assert error < 0.5 * (back - level_input.roll(5, dims=1)).abs().mean()
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_input_is_centre_cropped_and_area_resized():
    frames = np.zeros((1, 6, 10, 3), np.uint8)
    frames[:, :, 2:8] = 255                                              # the centre 6x6 is white
    frames[:, :3, 2:5] = 0                                               # its top-left 3x3 black
    video = sample.to_level_frames(frames, 2)                            # (1, 3, 1, 2, 2)
    # Area averaging: each output pixel is the mean of a 3x3 block of the centre square.
    assert video[0, 0, 0].tolist() == [[-1.0, 1.0], [1.0, 1.0]]


@pytest.mark.robustness
def test_input_errors(tiny_runs, clip, tmp_path):
    runs = ["--runs", str(tiny_runs), "--out", str(tmp_path / "out"), "--no-progress"]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(UserError, match=r"could not be decoded \(.*Invalid data"):
        sample.main(runs + ["--input", str(bad)])
    short = tmp_path / "short.mp4"
    write_video(short, torch.zeros(3, 3, 16, 16), fps=4)
    with pytest.raises(UserError, match=r"has 3 frame\(s\); the first upsampling level needs at least 4"):
        sample.main(runs + ["--input", str(short)])
    with pytest.raises(UserError, match=r"no such file"):
        sample.main(runs + ["--input", str(tmp_path / "missing.mp4")])
    with pytest.raises(UserError, match=r"--from-level 3: the chain ends at level 3"):
        sample.main(runs + ["--input", str(clip), "--from-level", "3"])
    level2, level3 = (str(tiny_runs / f"level{level}" / "ckpt.pt") for level in (2, 3))
    with pytest.raises(UserError, match=r"must start at level 3, but the first one, .*level2.*is level 2"):
        sample.main(["--ckpt", level2, level3, "--input", str(clip), "--from-level", "2",
                     "--out", str(tmp_path / "out")])
    # A chain of levels 2..3 only (no level 1) is what --input needs.
    sample.main(["--ckpt", level2, level3, "--input", str(clip), "--out", str(tmp_path / "ok"),
                 "--no-progress"])
    assert read(tmp_path / "ok" / "upsampled.mp4").shape[1] == 80
