"""What the CUDA paths guarantee, checked on a GPU: `python -m pytest -m cuda -q`.

Without a GPU every test here is skipped, with the reason (see docs/multi_gpu.md
for what has and has not been run on one). On any CUDA machine the whole file
takes a few minutes; each test says which path it exercises:

  * a few training steps of level 1 and level 2 with --amp bf16 (the default on
    CUDA), --amp fp16 (with loss scaling) and --compile, finite losses, float32
    weights; level 2 with --grid-features;
  * resuming on the GPU gives the same weights as an uninterrupted run (within a
    tolerance: cuDNN's kernels are not bit-for-bit reproducible);
  * torchrun with one process joins an NCCL process group and trains;
  * channels_last discriminators and pinned-memory batches on the device;
  * sample.py and the metrics (I3D, FVD) on the device agree with the CPU;
  * bench.py --device cuda --quick: the memory-scaling claim measured with
    torch.cuda.max_memory_allocated (upsampling level flat within 5%, the
    non-hierarchical baseline at least 4x).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import level1
import upsample_level
from conftest import ROOT, run_script
from training import load_checkpoint

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: torch.cuda.is_available() is False "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"),
]

SMALL = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4", "--num-samples", "2",
         "--log-every", "1", "--sample-every", "0", "--device", "cuda"]
LEVELS = {1: (level1.main, []),
          2: (upsample_level.main, ["--level", "2", "--k-frames", "4", "--num-samples", "1"])}


def logged(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def weights(path):
    models = load_checkpoint(path)["models"]
    return {f"{m}.{k}": v.float() for m, sd in models.items() for k, v in sd.items()
            if v.is_floating_point()}


@pytest.mark.parametrize("flags", [["--amp", "bf16"], ["--amp", "fp16"], ["--amp", "bf16", "--compile"]],
                         ids=["bf16", "fp16", "compile"])
@pytest.mark.parametrize("level", [1, 2])
def test_a_few_steps_train_on_the_gpu(tmp_path, level, flags):
    """Level 1 takes R1 on its 4th D step (of 6); with --compile that step runs the
    discriminators uncompiled (compiled code has no second derivative)."""
    main, level_flags = LEVELS[level]
    out = tmp_path / "run"
    assert run_script(main, SMALL + level_flags + flags + ["--steps", "3", "--out", str(out)]) == 0
    rows = logged(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(abs(r["loss_d"]) < 1e4 and abs(r["loss_g"]) < 1e4 for r in rows)   # finite, sane
    ckpt = load_checkpoint(out / "ckpt.pt")
    for name, state in ckpt["models"].items():
        for key, value in state.items():
            if value.is_floating_point():
                assert value.dtype == torch.float32, (name, key)   # autocast leaves weights float32
                assert torch.isfinite(value).all(), (name, key)


def test_level2_with_grid_features_trains_on_the_gpu(tmp_path):
    """--grid-features (off by default): the Fourier features of the pixel grid are
    built on the device and in autocast's dtype (upsample_level.grid_features)."""
    main, level_flags = LEVELS[2]
    out = tmp_path / "run"
    assert run_script(main, SMALL + level_flags + ["--grid-features", "--amp", "bf16", "--steps", "3",
                                                   "--out", str(out)]) == 0
    rows = logged(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(abs(r["loss_d"]) < 1e4 and abs(r["loss_g"]) < 1e4 for r in rows)
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["config"]["grid_features"] is True
    assert "to_grid.weight" in ckpt["models"]["generator"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_level1_with_r1_trains_on_the_gpu(tmp_path, amp):
    """R1 at every D step (level 1's default is every 4th): the real clips scored in
    float32 with autocast off, the second derivative on the GPU, the penalty inside
    fp16's loss scaling."""
    main, level_flags = LEVELS[1]
    out = tmp_path / "run"
    assert run_script(main, SMALL + level_flags + ["--r1-gamma", "1", "--r1-every", "1", "--amp", amp,
                                                   "--steps", "3", "--out", str(out)]) == 0
    rows = logged(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(abs(r["loss_d"]) < 1e4 and abs(r["loss_g"]) < 1e4 for r in rows)


@pytest.mark.parametrize("level", [1, 2])
def test_resuming_on_the_gpu_gives_the_weights_of_an_uninterrupted_run(tmp_path, level, monkeypatch):
    # Deterministic cuDNN kernels where they exist. Some CUDA backward kernels have no
    # deterministic version (average pooling, used by level 2's D_T and D_M, adds
    # with atomics), and Adam turns their last-bit differences in near-zero gradients
    # into whole learning-rate steps, so two uninterrupted runs can end apart. The
    # resumed run is measured against that floor: it may end no farther from the
    # uninterrupted run than a second uninterrupted run does (times 3, for the
    # floor's own spread). Where the kernels are deterministic the floor is 0 and
    # the bound is the exact-resume one.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    main, level_flags = LEVELS[level]
    flags = SMALL + level_flags + ["--ckpt-every", "1"]
    straight, again, stopped = tmp_path / "straight", tmp_path / "again", tmp_path / "stopped"
    for out in (straight, again):
        assert run_script(main, flags + ["--steps", "4", "--out", str(out)]) == 0
    assert run_script(main, flags + ["--steps", "2", "--out", str(stopped)]) == 0
    halfway = weights(stopped / "ckpt.pt")
    assert run_script(main, flags + ["--steps", "4", "--out", str(stopped)]) == 0
    a, b, floor_run = weights(straight / "ckpt.pt"), weights(stopped / "ckpt.pt"), weights(again / "ckpt.pt")
    assert a.keys() == b.keys() == floor_run.keys()

    def distance(x, y):
        return sum((x[k] - y[k]).abs().sum().item() for k in x)

    # The resumed run ends where the straight one does: their distance is tiny next
    # to how far the last two steps moved the weights, or within the GPU's own floor.
    moved, apart, floor = distance(a, halfway), distance(a, b), distance(a, floor_run)
    assert moved > 0
    assert apart <= 0.01 * moved + 3 * floor, (apart, moved, floor)


TORCHRUN_WRAPPER = textwrap.dedent('''
    """level1.main under torchrun, printing the process group it ran in."""
    import sys
    sys.path.insert(0, {root!r})
    import torch.distributed as dist
    import level1, training

    real_cleanup = training.cleanup_distributed

    def cleanup():
        if dist.is_initialized():
            print(f"backend {{dist.get_backend()}} world {{dist.get_world_size()}}", flush=True)
        real_cleanup()

    level1.cleanup_distributed = cleanup         # the end of level1.main's loop calls it
    training.run_main(level1.main, sys.argv[1:])
''')


def test_torchrun_with_one_process_trains_over_nccl(tmp_path):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(TORCHRUN_WRAPPER.format(root=str(ROOT)))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
               str(wrapper), *SMALL, "--steps", "2", "--out", str(out)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1",    # keep the caller's path too
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "backend nccl world 1" in result.stdout
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2


def test_channels_last_discriminators_and_pinned_batches_on_the_gpu():
    from data import LevelDataset, make_dataset, make_loader
    from discriminators import SpatialDiscriminator, TemporalDiscriminator, to_channels_last

    device = torch.device("cuda")
    torch.manual_seed(0)
    video = torch.randn(2, 3, 8, 32, 32, device=device)
    for make in (lambda: SpatialDiscriminator(3, 8, 32, k_frames=4),
                 lambda: TemporalDiscriminator(3, 8, 32)):
        torch.manual_seed(1)
        plain = make().to(device)
        torch.manual_seed(1)
        fast = to_channels_last(make().to(device))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.manual_seed(2)
            a = plain(video).float()
            torch.manual_seed(2)
            b = fast(video).float()
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)
    # Pinned host memory: what lets `.to(device, non_blocking=True)` overlap the copy.
    dataset = LevelDataset(make_dataset("synthetic", None, "tiny", 1, seed=0), "tiny", 1, seed=0)
    batch = next(make_loader(dataset, 2, pin_memory=True))
    assert batch["target"].is_pinned()
    assert batch["target"].to(device, non_blocking=True).device.type == "cuda"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from test_sample import write_runs      # random checkpoints of the three tiny levels
    folder = tmp_path_factory.mktemp("runs")
    write_runs(folder)
    return folder


def test_sampling_on_the_gpu_matches_the_cpu(tiny_runs, tmp_path, capsys, monkeypatch):
    import sample

    # cuDNN convolutions default to TF32 on Ampere and newer GPUs (a 10-bit mantissa,
    # relative error ~5e-4 per product), summed over three levels of convolutions:
    # more than this test's tolerance allows. The comparison is of the code paths,
    # so both devices run in full float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    videos = {}
    for device in ("cpu", "cuda"):
        chain = sample.load_chain(runs=tiny_runs, device=device)
        videos[device] = sample.generate(chain, num=2, seed=0, frames=16).float().cpu()
    torch.testing.assert_close(videos["cuda"], videos["cpu"], rtol=1e-3, atol=2e-3)
    # The command line, as a user runs it.
    out = tmp_path / "samples"
    assert run_script(sample.main, ["--runs", str(tiny_runs), "--num", "2", "--device", "cuda",
                                    "--no-progress", "--out", str(out)]) == 0
    assert (out / "grid.mp4").stat().st_size > 0 and (out / "levels.png").exists()


def test_fvd_on_the_gpu_matches_the_cpu(tmp_path):
    import metrics
    from test_metrics import moving_videos, random_i3d

    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(random_i3d().state_dict(), path)
    real, fake = moving_videos(8, size=32, seed=0), moving_videos(8, size=32, seed=3)
    scores = {}
    for device in ("cpu", "cuda"):
        model = metrics.load_i3d(path, device=device)
        protocol = metrics.Protocol(num_videos=8, frames=8, resize=64, is_splits=2)
        evaluator = metrics.FVDEvaluator(model, real, device=device, protocol=protocol, batch_size=4)
        scores[device] = evaluator(fake)["fvd"]
    assert scores["cuda"] == pytest.approx(scores["cpu"], rel=1e-2, abs=1e-3)


def test_bench_memory_scaling_on_the_gpu(tmp_path):
    """The paper's Fig. 5 claim, measured with torch.cuda.max_memory_allocated."""
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--device", "cuda", "--quick",
                             "--only", "memory", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    memory = json.loads(out.read_text())["memory"]
    assert memory["method"].startswith("cuda: max_memory_allocated")
    assert memory["growth"]["upsample"] <= 1.05, memory["growth"]
    assert memory["growth"]["baseline"] >= 4, memory["growth"]
