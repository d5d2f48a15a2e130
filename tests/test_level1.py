"""Level 1: the DVD-GAN-style generator and its training script."""

import json

import pytest
import torch

import level1
from conftest import run_script
from training import load_checkpoint


def small_generator(**kwargs):
    torch.manual_seed(0)
    return level1.Level1Generator(frames=8, size=16, z_dim=16, ch=8, **kwargs)


def test_generator_makes_videos_of_the_level_shape_in_range():
    generator = small_generator()
    video = generator(torch.randn(3, 16))
    assert video.shape == (3, 3, 8, 16, 16)          # (B, C, T, H, W)
    assert video.abs().max() <= 1.0                  # tanh output


@pytest.mark.parametrize("size,groups", [(16, 2), (32, 3), (64, 4)])
def test_one_rnn_and_upsampling_group_per_doubling(size, groups):
    generator = level1.Level1Generator(frames=4, size=size, z_dim=8, ch=4)
    assert len(generator.rnns) == len(generator.blocks) == groups
    assert generator(torch.randn(2, 8)).shape == (2, 3, 4, size, size)


def test_unrolling_beyond_the_training_length_extends_the_same_video():
    """The ConvGRU is causal: frame t depends only on frames <= t. So unrolling 4x
    longer keeps the first T frames (in eval mode, where batch norm uses running
    statistics) and adds new, still-moving frames after them."""
    generator = small_generator().eval()
    z = torch.randn(2, 16)
    with torch.no_grad():
        short = generator(z)
        long = generator(z, frames=32)
    assert long.shape == (2, 3, 32, 16, 16)
    torch.testing.assert_close(long[:, :, :8], short, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(long).all()
    late_motion = (long[:, :, 25:] - long[:, :, 24:-1]).abs().mean()
    assert late_motion > 0                           # not frozen at the end


def test_class_conditional_generator_depends_on_the_label():
    generator = small_generator(num_classes=3).eval()
    z = torch.randn(1, 16).repeat(2, 1)
    with torch.no_grad():
        videos = generator(z, torch.tensor([0, 2]))
    assert not torch.allclose(videos[0], videos[1])


def test_truncated_latents_stay_inside_the_threshold():
    generator = small_generator()
    z = generator.sample_latent(64, truncation=0.5, generator=torch.Generator().manual_seed(1))
    assert z.shape == (64, 16) and z.abs().max() <= 0.5


def test_training_writes_checkpoint_log_and_samples(tmp_path, small_level1_args):
    out = tmp_path / "run"
    code = run_script(level1.main, small_level1_args + ["--steps", "2", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all({"loss_d", "loss_g", "clips_per_s", "mfu", "d_spatial_loss"} <= r.keys() for r in records)
    # MFU: FLOPs of the logged steps per second over a measured peak, a fraction.
    assert all(0 < r["mfu"] < 1 for r in records)
    ckpt = load_checkpoint(out / "ckpt.pt", level=1, preset="tiny")
    assert ckpt["step"] == 2 and ckpt["config"]["g_ch"] == 8
    assert {"generator", "ema_generator", "spatial", "temporal"} <= ckpt["models"].keys()
    # The checkpoint says how to rebuild its model.
    rebuilt = level1.build_generator(ckpt["config"], ckpt["num_classes"])
    rebuilt.load_state_dict(ckpt["models"]["ema_generator"])
    assert {p.name for p in (out / "samples").iterdir()} == {"step_000002.mp4", "step_000002.gif"}


def _weights(path):
    models = load_checkpoint(path)["models"]
    return {f"{m}.{k}": v for m, sd in models.items() for k, v in sd.items()}


def test_resuming_gives_the_same_weights_as_not_stopping(tmp_path, small_level1_args):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_script(level1.main, small_level1_args + ["--steps", "4", "--out", str(straight)]) == 0
    assert run_script(level1.main, small_level1_args + ["--steps", "2", "--out", str(stopped)]) == 0
    assert load_checkpoint(stopped / "ckpt.pt")["step"] == 2
    halfway = _weights(stopped / "ckpt.pt")
    assert run_script(level1.main, small_level1_args + ["--steps", "4", "--out", str(stopped)]) == 0
    a, b = _weights(straight / "ckpt.pt"), _weights(stopped / "ckpt.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    # ... and the last two steps did change the weights (the comparison means something).
    assert any(not torch.equal(halfway[k], a[k]) for k in a)


@pytest.mark.robustness
def test_kinetics_without_a_data_root_is_a_clear_error(tmp_path, capsys, small_level1_args):
    code = run_script(level1.main, small_level1_args + ["--data", "kinetics600", "--out", str(tmp_path)])
    assert code == 2
    message = capsys.readouterr().err
    assert message.startswith("error:") and "--data-root" in message


def test_help_lists_the_flags_of_the_config(capsys):
    with pytest.raises(SystemExit):
        level1.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--data-root", "--preset", "--out", "--steps", "--batch-size",
                 "--device", "--seed", "--log-every", "--sample-every", "--ckpt-every", "--resume"):
        assert flag in text


def test_the_generator_class_defaults_are_the_command_line_defaults():
    """`Level1Generator(frames, size)` builds what `python level1.py` trains."""
    import inspect
    defaults = inspect.signature(level1.Level1Generator).parameters
    cfg = level1.Level1Config()
    assert (defaults["z_dim"].default, defaults["ch"].default, defaults["clock"].default) == (
        cfg.z_dim, cfg.g_ch, cfg.clock)


def test_the_losses_are_the_weighted_hinge_losses_of_both_discriminators():
    """Level 1's losses in the form the upsampling levels share (there with D_M):
    L_D = sum_D w_D (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]), L_G = -sum_D w_D E[D(G(z))],
    with stand-in discriminators whose scores are known: D_S = 2 * mean, D_T = -mean."""
    ds = {"spatial": lambda video, labels=None: 2 * video.mean(dim=(1, 2, 3, 4)),
          "temporal": lambda video, labels=None: -video.mean(dim=(1, 2, 3, 4))}
    weights = {"spatial": 1.0, "temporal": 3.0}
    real = torch.full((2, 3, 4, 8, 8), 0.25)                 # D_S = 0.5, D_T = -0.25
    fake = torch.full((2, 3, 4, 8, 8), -0.75)                # D_S = -1.5, D_T = 0.75
    loss_d, stats = level1.discriminator_loss(ds, weights, real, fake, None, None)
    # spatial: relu(1 - 0.5) + relu(1 - 1.5) = 0.5; temporal: relu(1.25) + relu(1.75) = 3.0
    assert float(loss_d) == pytest.approx(1.0 * 0.5 + 3.0 * 3.0)
    assert float(stats["d_temporal_fake"]) == pytest.approx(0.75)
    # L_G = -(1.0 * (-1.5) + 3.0 * 0.75)
    assert float(level1.generator_loss(ds, weights, fake, None)) == pytest.approx(-(-1.5 + 2.25))


def test_r1_adds_gamma_over_two_times_the_squared_input_gradient_of_the_weighted_scores():
    """R1 with the stand-in discriminators above: d(sum_D w_D D(x)) / dx = (1 * 2 - 3 * 1) / N
    at each of a clip's N numbers, so 1/2 * ||grad||^2 = 1 / (2N), times gamma."""
    ds = {"spatial": lambda video, labels=None: 2 * video.mean(dim=(1, 2, 3, 4)),
          "temporal": lambda video, labels=None: -video.mean(dim=(1, 2, 3, 4))}
    weights = {"spatial": 1.0, "temporal": 3.0}
    real, fake = torch.full((2, 3, 4, 8, 8), 0.25), torch.full((2, 3, 4, 8, 8), -0.75)
    plain, _ = level1.discriminator_loss(ds, weights, real, fake, None, None)
    with_r1, stats = level1.discriminator_loss(ds, weights, real, fake, None, None, r1_gamma=4.0)
    # (float32 sums of ~10: the difference holds to about 1e-6 / 2.6e-3 relative)
    assert float((with_r1 - plain).detach()) == pytest.approx(4.0 / (2 * real[0].numel()), rel=1e-3)
    assert float(stats["d_spatial_real"]) == pytest.approx(0.5)      # the hinge part is unchanged


def test_r1_pulls_the_discriminators_slope_at_the_data_towards_zero():
    """A linear D(x) = <w, x>: d D / dx = w, the penalty gamma / 2 ||w||^2, its gradient
    gamma * w; with real = fake = 0 the hinge adds no gradient, so that is all of it."""
    w = torch.randn(3, 2, 4, 4, requires_grad=True)
    ds = {"linear": lambda video, labels=None: (w * video).flatten(1).sum(1)}
    zeros = torch.zeros(2, 3, 2, 4, 4)
    loss, _ = level1.discriminator_loss(ds, {"linear": 1.0}, zeros, zeros, None, None, r1_gamma=0.5)
    loss.backward()
    torch.testing.assert_close(w.grad, 0.5 * w.detach())


def test_lazy_r1_runs_on_every_nth_discriminator_step_weighted_n_times(tmp_path, small_level1_args,
                                                                       monkeypatch):
    """--r1-every 4 with 2 D steps per step: the run's 4th D step (step 2's second) has
    the penalty, weighted 4 x gamma; the others none."""
    given, real_loss = [], level1.discriminator_loss

    def recording(*args, **kwargs):
        given.append(args[6])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(level1, "discriminator_loss", recording)
    code = run_script(level1.main, small_level1_args + ["--steps", "3", "--r1-gamma", "0.5", "--r1-every", "4",
                                                        "--out", str(tmp_path / "run")])
    assert code == 0
    assert given == [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
