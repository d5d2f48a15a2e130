"""What mixed precision and compilation guarantee.

  * `--amp bf16` and `--amp fp16` train a step of level 1 and of level 2 without
    NaNs: the convolutions really run in the low-precision type (autocast is on),
    while every spectral-norm weight W / sigma(W) is still computed in float32,
    the weights themselves stay float32, and only fp16 scales its loss (a
    GradScaler: fp16's exponent range is too small for small gradients; bf16 has
    float32's range and needs none).
  * `torch.compile` (`--compile`) gives the same losses and gradients as eager
    mode on a discriminator step: two forwards (real, fake), one backward, with
    spectral norm's power iteration updating its vectors in every forward.
    (Compiling a whole training script takes minutes on 2 CPU cores, so the test
    compiles one small discriminator.)
  * channels_last weights (`discriminators.to_channels_last`, the layout cuDNN
    prefers for bf16/fp16 convolutions) change neither the scores nor the gradients.

    python -m pytest -q tests/test_precision.py
"""

import copy
import json
import math

import pytest
import torch

import level1
import upsample_level
from conftest import run_script
from discriminators import (SpatialDiscriminator, SpectralNorm, TemporalDiscriminator,
                            hinge_d_loss, to_channels_last)
from training import load_checkpoint, make_grad_scaler

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and far faster when other processes
    share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("level", [1, 2])
def test_a_mixed_precision_training_step_is_finite_with_float32_spectral_norm(
        tmp_path, monkeypatch, small_level1_args, small_upsample_args, level, amp):
    # Watch every module call: which dtype each convolution and each spectral-norm
    # parametrization returned.
    outputs = []

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            outputs.append((module, output.dtype))

    # Watch the loss scaling: GradScaler.scale is called on every loss before backward.
    scalings = []
    real_scale = torch.amp.GradScaler.scale

    def recording_scale(self, loss):
        scalings.append(self.is_enabled())
        return real_scale(self, loss)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", recording_scale)
    main, args = (level1.main, small_level1_args) if level == 1 else (upsample_level.main, small_upsample_args)
    out = tmp_path / f"level{level}"
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        code = run_script(main, args + ["--amp", amp, "--steps", "1", "--sample-every", "0",
                                        "--out", str(out)])
    finally:
        handle.remove()
    assert code == 0

    # The step's losses are finite numbers, and the checkpoint holds finite float32 weights.
    record_ = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record_["step"] == 1
    assert math.isfinite(record_["loss_d"]) and math.isfinite(record_["loss_g"])
    ckpt = load_checkpoint(out / "ckpt.pt", level=level)
    assert ckpt["step"] == 1
    for model, state in ckpt["models"].items():
        for name, tensor in state.items():
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float32, f"{model}.{name} is {tensor.dtype}"
                assert torch.isfinite(tensor).all(), f"{model}.{name} is not finite"

    # Autocast was on: convolutions ran in the low-precision type ...
    conv_dtypes = {dtype for module, dtype in outputs
                   if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d))}
    assert AMP_DTYPES[amp] in conv_dtypes
    # ... and every spectral-norm weight W / sigma(W) was float32 all the same.
    sn_dtypes = {dtype for module, dtype in outputs if isinstance(module, SpectralNorm)}
    assert sn_dtypes == {torch.float32}
    # Loss scaling is on exactly for fp16 (both the D and the G losses went through it).
    assert len(scalings) >= 2 and set(scalings) == {amp == "fp16"}


def test_only_fp16_gets_a_gradient_scaler():
    cpu = torch.device("cpu")
    assert make_grad_scaler(cpu, torch.float16).is_enabled()
    assert not make_grad_scaler(cpu, torch.bfloat16).is_enabled()
    assert not make_grad_scaler(cpu, None).is_enabled()


def test_compiled_discriminator_step_matches_eager():
    """A compiled D step equals the eager one: same losses, same gradients, same
    spectral-norm vectors afterwards, over two steps (the second reuses the graph).
    D_T is used because it has no randomness (compiled code draws random numbers
    from its own generator, so D_S's frame choice would differ)."""
    torch.manual_seed(0)
    eager = TemporalDiscriminator(ch=4, resolution=16)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module)
    for step in range(2):
        real, fake = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 3, 4, 16, 16)
        losses = []
        for model in (eager, compiled):
            loss = hinge_d_loss(model(real), model(fake))   # two forwards, one backward
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
        for (name, p), q in zip(eager.named_parameters(), compiled_module.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4, msg=f"step {step}: {name}")
            p.grad = q.grad = None
    for (name, a), b in zip(eager.named_buffers(), compiled_module.buffers()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("make", [
    lambda: SpatialDiscriminator(ch=8, resolution=16, k_frames=4),
    lambda: TemporalDiscriminator(ch=8, resolution=16),
], ids=["spatial", "temporal"])
def test_channels_last_discriminators_give_the_same_scores_and_gradients(make):
    torch.manual_seed(1)
    standard = make()
    channels_last = to_channels_last(copy.deepcopy(standard))
    video = torch.randn(2, 3, 8, 16, 16)
    results = []
    for model in (standard, channels_last):
        torch.manual_seed(2)                          # D_S picks the same frames
        scores = model(video)
        scores.sum().backward()
        results.append((scores.detach(), [p.grad for p in model.parameters()]))
    (scores_a, grads_a), (scores_b, grads_b) = results
    torch.testing.assert_close(scores_b, scores_a, atol=1e-4, rtol=1e-4)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)
