"""What bench.py's measurements can be trusted for: its memory probe sees an
allocation of known size, and (the paper's Fig. 5 in miniature) an upsampling
level trained on partial views needs the same memory per training step whatever
the length of its videos, while a single GAN for the whole video needs more and
more.

    python -m pytest -q tests/test_bench.py
"""

import json
import os
import subprocess
import sys

import bench


PROBE = """
import json, torch, bench
with bench.PeakMemory(torch.device("cpu")) as peak:
    block = torch.ones(16 * 2**20 // 4)        # 16 MiB, touched, then freed
    del block
with bench.PeakMemory(torch.device("cpu")) as nothing:
    pass
print(json.dumps([peak.bytes, nothing.bytes]))
"""


def test_peak_memory_sees_an_allocation_of_known_size():
    # In a fresh process set up as bench.run_worker sets up its memory workers: in
    # this one, after heavier tests, malloc hands the block memory it already holds,
    # and the resident size does not grow at all (a peak of 0).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=bench.ROOT, capture_output=True,
                            text=True, timeout=300, check=True)
    peak, nothing = json.loads(result.stdout.strip().splitlines()[-1])
    assert 15 * 2**20 <= peak <= 20 * 2**20
    assert nothing < 2 * 2**20


def test_partial_views_keep_a_training_step_flat_while_the_whole_video_grows():
    # The upsampling level's step is made large enough (about 48 MiB) that the
    # allocator's run-to-run noise (about 1 MiB) stays below 3% of it: at ch 8, batch 2
    # (11 MiB) two runs of the same step differed by up to 15%. The single GAN stays
    # small: its 4x-longer step already needs about 4x the memory.
    settings = {"upsample": {"low_size": 16, "high_size": 32, "ch": 16, "batch": 4},
                "baseline": {"low_size": 16, "high_size": 32, "ch": 8, "batch": 2}}
    peak = {}
    for kind in ("upsample", "baseline"):
        for frames in (16, 64):
            task = {"task": "memory", "kind": kind, "frames": frames, "settings": settings[kind],
                    "device": "cpu"}
            # a fresh process, with malloc set up to return freed memory (see bench.py)
            peak[kind, frames] = bench.run_worker(task, memory=True)["bytes"]
    # 4x longer videos: the upsampling level's step is the same (a few % of noise) ...
    assert abs(peak["upsample", 64] / peak["upsample", 16] - 1) < 0.05
    # ... the single GAN's grows with the length (about linearly).
    assert peak["baseline", 64] > 2.5 * peak["baseline", 16]


def test_matmul_peak_waits_for_each_matmul_on_an_asynchronous_device(monkeypatch):
    """training.matmul_peak (the FLOP/s that MFU is measured against) on a simulated
    GPU: a launch returns at once and the device runs the queued matmuls one after
    another, 1 ms each; synchronize waits until the queue is empty. The estimate is
    the matmul's true rate and the measurement lasts about rounds x seconds. (Reading
    the clock without waiting for the matmuls queued thousands in each round's
    `seconds` of launching, then waited seconds for them: over 7 minutes on a
    shared H200 in float32.)"""
    import torch

    import training

    cost, launch = 1e-3, 1e-5                    # seconds: one matmul on the device, one launch
    clock = {"now": 0.0, "busy_until": 0.0}

    class Queued:
        def __matmul__(self, other):
            clock["now"] += launch
            clock["busy_until"] = max(clock["busy_until"], clock["now"]) + cost
            return self

    def wait(device):
        clock["now"] = max(clock["now"], clock["busy_until"])

    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: Queued())
    monkeypatch.setattr(training, "synchronize", wait)
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock["now"])
    n, seconds, rounds = 64, 0.02, 3
    peak = training.matmul_peak(torch.device("cuda"), torch.float32, n, seconds=seconds, rounds=rounds)
    assert abs(peak / (2 * n**3 / (cost + launch)) - 1) < 1e-6
    # Warm-up plus each round's seconds and the matmul that crosses its end.
    assert clock["now"] <= (cost + launch) + rounds * (seconds + cost + launch) + 1e-9
