"""What multi-process training guarantees: `torchrun --nproc_per_node=N level1.py ...`
(and the same for `upsample_level.py`) trains ONE model on N processes.

  * every rank ends with the same weights, generator and discriminators (DDP
    averages the gradients, and every rank starts from the same initialisation),
    although each rank draws its own noise and reads its own slice of the global batch;
  * only rank 0 writes: one log line per logged step, one checkpoint, one set of
    samples; rank 1 opens no file for writing at all;
  * the global --batch-size is split across the ranks and must divide evenly.

The tests start a real 2-process torchrun job on the CPU (gloo backend):

    python -m pytest -q tests/test_distributed.py

How the weights of every rank are seen without any hook in the product code: the
job runs a small wrapper script (written below into the test's folder) that
replaces the level script's `update_ema` by a function that calls the real one
and remembers its `model` argument, the plain (unwrapped) generator, after every
step, and the level's `discriminator_loss` by one that remembers the discriminators
it is given. When main() returns, each rank saves what it remembered to rank<r>.pt. On
rank 1 the wrapper also installs a Python audit hook that records every file it
opens for writing, every folder it creates or file it renames or removes, and
every subprocess it starts (ffmpeg writes the sample videos), so "rank 1 wrote
nothing" is observed, not inferred.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training import per_rank_batch
from data import UserError

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = textwrap.dedent('''
    """Run a level script's main() under torchrun, recording this rank's generator."""
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    import {module} as script

    rank = int(os.environ["RANK"])
    dump_dir = {dump_dir!r}
    snapshots = []          # generator parameters after every training step
    writes = []             # rank != 0: every write-like action seen by the audit hook
    recording = [True]

    real_update_ema = script.update_ema

    def recording_update_ema(ema_model, model, decay):
        real_update_ema(ema_model, model, decay)
        snapshots.append({{name: p.detach().clone() for name, p in model.named_parameters()}})

    script.update_ema = recording_update_ema      # main() looks the name up at call time

    # The discriminators: the dict every discriminator step passes to the level's
    # discriminator_loss (the same modules each time); their weights are saved at the end.
    real_discriminator_loss = script.discriminator_loss
    discriminators = {{}}

    def recording_discriminator_loss(modules, *args, **kwargs):
        discriminators.update(modules)
        return real_discriminator_loss(modules, *args, **kwargs)

    script.discriminator_loss = recording_discriminator_loss

    def audit(event, args):
        if not recording[0]:
            return
        if event == "open" and args[1] is not None:
            path, mode, flags = args
            writing = (any(c in str(mode) for c in "wax+") if isinstance(mode, str)
                       else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
            if writing:
                writes.append(("open", str(path)))
        elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
            writes.append((event, str(args[0])))
        elif event == "subprocess.Popen":
            writes.append((event, str(args[1])))

    if rank != 0:
        sys.addaudithook(audit)
    try:
        script.main(sys.argv[1:])
    finally:
        recording[0] = False
        d_states = {{name: {{k: v.detach().clone() for k, v in d.state_dict().items()}}
                    for name, d in discriminators.items()}}
        torch.save({{"snapshots": snapshots, "writes": writes, "discriminators": d_states}},
                   os.path.join(dump_dir, f"rank{{rank}}.pt"))
''')


def run_torchrun(tmp_path, module, flags, nproc=2):
    """Run `module.main(flags)` in `nproc` torchrun processes; returns (dumps, stdout)."""
    dump_dir = tmp_path / "dumps"
    dump_dir.mkdir()
    wrapper = dump_dir / "wrapper.py"
    wrapper.write_text(WRAPPER.format(root=str(ROOT), module=module, dump_dir=str(dump_dir)))
    # One thread per process: two processes with 2 threads each on 2 cores are ~10x
    # slower (OpenMP threads spin waiting for each other).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--standalone", str(wrapper), *flags]
    result = subprocess.run(command, cwd=tmp_path / "work", env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    dumps = [torch.load(dump_dir / f"rank{r}.pt") for r in range(nproc)]
    return dumps, result.stdout + result.stderr


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


SMALL = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4",
         "--num-samples", "2", "--log-every", "1", "--device", "cpu", "--steps", "2"]


@pytest.mark.parametrize("module,flags,run_name", [
    ("level1", [], "level1"),
    ("level1", ["--r1-gamma", "1", "--r1-every", "1"], "level1"),   # R1's double backward under DDP
    ("upsample_level", ["--level", "2", "--k-frames", "4", "--num-samples", "1"], "level2"),
])
def test_two_ranks_train_one_model_and_only_rank_0_writes(tmp_path, module, flags, run_name):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "runs" / run_name
    dumps, output = run_torchrun(tmp_path, module, SMALL + flags + ["--out", str(out)])

    # ---- Both ranks hold the same generator after every step. -------------------
    rank0, rank1 = (d["snapshots"] for d in dumps)
    assert len(rank0) == len(rank1) == 2                      # --steps 2
    for step, (a, b) in enumerate(zip(rank0, rank1), start=1):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0,
                                       msg=f"step {step}: {name} differs between ranks")
    # The second step changed the weights, so equality is not a model that never moved.
    assert any(not torch.equal(rank0[0][n], rank0[1][n]) for n in rank0[0])
    # ... and the same discriminators (with R1, its double backward's gradients too are
    # averaged across the ranks).
    d0, d1 = (d["discriminators"] for d in dumps)
    assert d0.keys() == d1.keys() and len(d0) >= 2
    for name in d0:
        for key in d0[name]:
            torch.testing.assert_close(d0[name][key], d1[name][key], rtol=0, atol=0,
                                       msg=f"discriminator {name}: {key} differs between ranks")

    # ---- The checkpoint (written by rank 0) holds those weights. -----------------
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    saved = ckpt["models"]["generator"]
    # named_parameters() of a spectrally normalised layer is "...parametrizations.weight.original"
    for name, value in rank1[-1].items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)

    # ---- Only rank 0 wrote, and it wrote each thing once. -------------------------
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]             # not [1, 1, 2, 2]
    sample_files = ["step_000002.gif", "step_000002.mp4"]
    if run_name != "level1":     # upsampling levels also report condition_error and detail
        sample_files.insert(1, "step_000002.json")
    # .lock: rank 0 holds the run folder while it trains (training.hold_out_dir).
    assert files_under(work) == [f"runs/{run_name}/.lock", f"runs/{run_name}/ckpt.pt",
                                 f"runs/{run_name}/log.jsonl",
                                 *(f"runs/{run_name}/samples/{name}" for name in sample_files)]
    rank1_writes = [w for w in dumps[1]["writes"] if str(tmp_path) in w[1]]
    assert rank1_writes == [], f"rank 1 wrote: {rank1_writes}"
    assert output.count("done:") == 1                         # rank 0 prints, rank 1 is silent


def test_the_global_batch_is_split_across_ranks():
    assert per_rank_batch(16, 1) == 16
    assert per_rank_batch(16, 8) == 2


@pytest.mark.robustness
def test_a_batch_that_does_not_divide_among_the_ranks_is_a_clear_error():
    with pytest.raises(UserError) as error:
        per_rank_batch(6, 4)
    message = str(error.value)
    assert "--batch-size 6" in message and "4 processes" in message
    assert "multiple of 4" in message


def test_torchrun_with_an_indivisible_batch_stops_with_the_message(tmp_path):
    """The check runs before any model is built, so a mistyped batch fails in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(ROOT / "level1.py"), *SMALL[:6], "--batch-size", "3", "--device", "cpu",
               "--out", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "error: --batch-size 3 is not divisible by the 2 processes" in result.stderr
    assert not (tmp_path / "run").exists()
