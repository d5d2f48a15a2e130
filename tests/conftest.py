"""Shared test settings: small threads, small models, and a helper to run a script's
main() in-process the way a user runs it from the shell."""

import os
import sys
from pathlib import Path

# One thread per process: the tests start subprocesses (torchrun, the kill test) and
# run small models, where two OpenMP threads fighting over 2 busy cores is up to 10x
# slower than one. Set before numpy/torch load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


def pytest_configure(config):
    # tests/test_cuda.py: `python -m pytest -m cuda -q` runs only them (on a CUDA machine).
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped, with the reason, without one)")
    # The hardening catalogue: bad input, kills, full disks, corrupt files (tests/test_failures.py,
    # tests/test_flags.py and the error cases of the other files). `python -m pytest -m robustness`
    # runs only them; `python -m pytest -m "not robustness"` runs the method's tests.
    config.addinivalue_line("markers", "robustness: checks the handling of bad input, kills and "
                                       "full disks rather than the method")


def run_script(main, argv):
    """Run `main(argv)` through training.run_main: returns the exit code (0 on success)."""
    from training import run_main
    try:
        run_main(main, argv)
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.fixture
def small_level1_args():
    """Flags for a level-1 run that takes about a second per step on 2 cores."""
    return ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4",
            "--num-samples", "2", "--log-every", "1", "--device", "cpu"]


@pytest.fixture
def small_upsample_args():
    return ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "2",
            "--num-samples", "1", "--log-every", "1", "--device", "cpu", "--k-frames", "4"]
