"""Every numeric flag of every script refuses nonsense at once, in one line.

Each flag declares its valid range where it is declared (`option(..., range=...)`
on a config dataclass, or `flags.ranged(...)` in data.py, metrics.py, evaluate.py
and bench.py), and the
parser checks it before any data or model is built. The main test here reads the
flags from the scripts' own parsers, so a flag added later is tried too without
editing this file, and gives each of them 0, -1, nan, inf and a huge value. Every
try must end either

  * with the value accepted (exit 0), and then the value lies in the range --help
    shows for the flag, or
  * with exit 2 and exactly one line on stderr, starting with "error:",

never with a traceback. The tries only parse and check the flags (what the scripts
do first, before touching any file), so the whole sweep takes a few seconds.
"""

import math
import os
import subprocess
import sys

import pytest

import bench
import data
import evaluate
import flags
import level1
import metrics
import sample
import upsample_level
from conftest import ROOT
from training import build_parser, parse_config, run_main

sys.path.insert(0, str(ROOT / "experiments"))
import ablations  # noqa: E402

pytestmark = pytest.mark.robustness   # the hardening catalogue: pytest -m robustness


def subcommand(parser, name):
    """The parser of one subcommand (`data.py prepare`)."""
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices[name]


def bench_parse(argv):
    bench.build_parser().parse_args(argv)


def metrics_parse(argv):
    metrics.build_parser().parse_args(argv)


def evaluate_parse(argv):
    evaluate.build_parser().parse_args(argv)


def data_parse(argv):
    data.build_parser().parse_args(argv)


# Every script's command line: (name, its parser, the function that parses and checks
# a command line the way the script does before any work, the flags every try
# starts with).
SCRIPTS = [
    ("level1.py", lambda: build_parser(level1.Level1Config, ""),
     lambda argv: parse_config(level1.Level1Config, argv), []),
    ("upsample_level.py --level 2", lambda: build_parser(upsample_level.UpsampleConfig, ""),
     lambda argv: parse_config(upsample_level.UpsampleConfig, argv), ["--level", "2"]),
    ("sample.py", sample.build_sample_parser, sample.parse_args, []),
    ("data.py prepare", lambda: subcommand(data.build_parser(), "prepare"), data_parse,
     ["prepare", "--data", "kinetics600", "--out", "cache"]),
    ("data.py preview", lambda: subcommand(data.build_parser(), "preview"), data_parse,
     ["preview", "--out", "preview"]),
    ("bench.py", bench.build_parser, bench_parse, []),
    ("metrics.py", metrics.build_parser, metrics_parse, ["--real", "synthetic", "--fake", "samples"]),
    ("evaluate.py", evaluate.build_parser, evaluate_parse, ["--real", "synthetic", "--runs", "runs"]),
    ("experiments/ablations.py", ablations.build_parser, ablations.parse_args, []),
]

NONSENSE = ["0", "-1", "nan", "inf", "1" + "0" * 21]     # the last: 10**21


def numeric_flags(parser):
    """{flag: its argparse action} for every flag that takes a number."""
    return {a.option_strings[0]: a for a in parser._actions
            if a.option_strings and (isinstance(a.type, flags.RangedType) or a.type in (int, float))}


CASES = [pytest.param(name, flag, id=f"{name} {flag}")
         for name, make_parser, _, _ in SCRIPTS for flag in numeric_flags(make_parser())]


def attempt(parse, argv, capsys):
    """Run the script's parse-and-check step as its main() would: (exit code, stderr)."""
    try:
        run_main(parse, argv)      # a UserError becomes "error: ..." and exit 2, as in the scripts
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_the_sweep_covers_every_script_and_finds_the_flags():
    found = {name: len(numeric_flags(make_parser())) for name, make_parser, _, _ in SCRIPTS}
    assert found["level1.py"] >= 20 and found["upsample_level.py --level 2"] > found["level1.py"]
    assert all(found.values()), found
    assert len(CASES) == sum(found.values())


@pytest.mark.parametrize("name,flag", CASES)
def test_nonsense_values_end_in_one_error_line_or_a_documented_meaning(name, flag, capsys, monkeypatch):
    monkeypatch.delenv("HVG_I3D", raising=False)
    _, make_parser, parse, base = next(s for s in SCRIPTS if s[0] == name)
    action = numeric_flags(make_parser())[flag]
    assert isinstance(action.type, flags.RangedType), f"{name} {flag} declares no range"
    for value in NONSENSE:
        code, err = attempt(parse, base + [flag, value], capsys)
        where = f"{name} {flag} {value}: exit {code}, stderr:\n{err}"
        assert "Traceback" not in err, where
        if code == 0:
            # Accepted: the range --help shows says this value is valid.
            number = action.type.kind(value)
            assert number in action.type.interval and math.isfinite(number), where
            assert f"valid: {action.type.interval}" in action.help, where
        else:
            assert code == 2, where
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), where


@pytest.mark.parametrize("name,flag", CASES)
def test_help_shows_the_range_and_what_zero_means(name, flag):
    _, make_parser, _, _ = next(s for s in SCRIPTS if s[0] == name)
    action = numeric_flags(make_parser())[flag]
    assert f"valid: {action.type.interval}" in action.help


def test_zero_with_a_meaning_is_documented_where_it_is_declared():
    # The fields that declare zero_means show it in --help ...
    for config in (level1.Level1Config, upsample_level.UpsampleConfig, sample.SampleConfig):
        parser_help = {a.dest: a.help for a in build_parser(config, "")._actions}
        for f in config.__dataclass_fields__.values():
            if f.metadata.get("zero_means"):
                assert f"0: {f.metadata['zero_means']}" in parser_help[f.name], f.name
    # ... among them the ones a user is likely to try.
    level1_help = build_parser(level1.Level1Config, "").format_help()
    for text in ("sample videos; 0: only at the end", "(always one at the end); 0: only at the end",
                 "0: no evaluation", "0: load in the training process"):
        assert text in " ".join(level1_help.split()), text
    upsample_help = " ".join(build_parser(upsample_level.UpsampleConfig, "").format_help().split())
    assert "0: whole frames" in upsample_help and "0: no context (ablation)" in upsample_help


def test_intervals_include_and_exclude_their_ends_as_written():
    unit = flags.Interval.parse("[0, 1)")
    assert 0 in unit and 0.999 in unit and 1 not in unit and -1e-9 not in unit
    positive = flags.Interval.parse("(0, inf)")
    assert 0 not in positive and 1e-12 in positive and 1e300 in positive
    seeds = flags.Interval.parse("[0, 2**32)")
    assert 2**32 - 1 in seeds and 2**32 not in seeds
    closed = flags.Interval.parse("[2, 5]")
    assert 2 in closed and 5 in closed and 1 not in closed and 6 not in closed


def test_a_value_out_of_range_names_the_flag_the_value_and_the_range(capsys):
    parse = lambda argv: parse_config(level1.Level1Config, argv)        # noqa: E731
    cases = {
        ("--ema-decay", "2"): "--ema-decay 2: must be a number in [0, 1): EMA decay of G's weights",
        ("--g-lr", "-1"): "--g-lr -1: must be a number in (0, inf): generator Adam learning rate",
        ("--g-lr", "nan"): "--g-lr nan: must be a finite number in (0, inf)",
        ("--steps", "-3"): "--steps -3: must be a whole number in [1, inf)",
        ("--batch-size", "0"): "--batch-size 0: must be a whole number in [1, inf)",
        ("--log-every", "0"): "--log-every 0: must be a whole number in [1, inf)",
        ("--num-samples", "0"): "--num-samples 0: must be a whole number in [1, inf)",
        ("--g-ch", "0"): "--g-ch 0: must be a whole number in [1, inf)",
        ("--seed", "-1"): "--seed -1: must be a whole number in [0, 2**32)",
        ("--steps", "2.5"): "--steps 2.5: must be a whole number in [1, inf)",
    }
    for (flag, value), start in cases.items():
        code, err = attempt(parse, [flag, value], capsys)
        assert code == 2 and err.startswith("error: " + start), (flag, value, err)


def test_flag_combinations_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HVG_I3D", raising=False)
    out = ["--out", str(tmp_path / "run")]
    cases = [
        (upsample_level.main, ["--level", "2", "--crop-size", "30"],
         "--crop-size 30: the discriminators take square crops whose side is a power of two, at "
         "least 16; for level 2 of 'tiny' use one of 16, 32 (or 0: whole 32x32 frames)"),
        (upsample_level.main, ["--level", "3", "--crop-size", "8"],
         "--crop-size 8: the discriminators take square crops whose side is a power of two, at "
         "least 16; for level 3 of 'tiny' use one of 16, 32, 64 (or 0: whole 64x64 frames)"),
        (upsample_level.main, ["--level", "2", "--k-frames", "9"],
         "--k-frames 9: the spatial discriminator picks frames of the 8-frame training crops; "
         "use --k-frames 8 or fewer (or a longer --crop-frames)"),
        (level1.main, ["--k-frames", "9"],
         "--k-frames 9: the spatial discriminator picks frames of level 1's 8-frame clips "
         "(preset 'tiny'); use --k-frames 8 or fewer"),
        (upsample_level.main, ["--eval-every", "50", "--i3d", str(tmp_path / "missing.pt")],
         f"--eval-every 50: --i3d points to {str(tmp_path / 'missing.pt')!r}, which is not a "
         "file; pass the I3D weights file (see metrics.py), or leave it out to evaluate with "
         "the download-free two-sample test only"),
    ]
    for main, argv, message in cases:
        code, err = attempt(main, argv + out, capsys)
        assert code == 2 and err.strip() == "error: " + message, (argv, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["data.py", "preview", "--num", "0", "--out", "x"], "error: --num 0: must be a whole number"),
    (["data.py", "preview", "--data", "kinetics600", "--out", "x"], "error: no --data-root given"),
    (["metrics.py", "--real", "synthetic", "--fake", "samples", "--c2st-seeds", "0"],
     "error: --c2st-seeds 0: must be a whole number"),
    (["metrics.py", "--real", "synthetic"], "error: the following arguments are required: --fake"),
    (["evaluate.py", "--real", "synthetic"], "error: nothing to evaluate: give the trained"),
    (["evaluate.py", "--real", "synthetic", "--runs", "runs", "--num-videos", "1"],
     "error: --num-videos 1: must be a whole number in [2, inf)"),
], ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else None)
def test_data_metrics_and_evaluate_end_a_mistake_the_same_way(argv, message, tmp_path):
    """The scripts that are not training scripts parse and report like them: one
    `error:` line, exit 2, no traceback, nothing written (flags.run_main)."""
    result = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HVG_I3D": ""})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_prints_only_the_error_line():
    """As a user sees it: no usage block, no traceback, exit 2."""
    result = subprocess.run([sys.executable, str(ROOT / "level1.py"), "--ema-decay", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr == ("error: --ema-decay 2: must be a number in [0, 1): EMA decay of G's "
                             "weights (DVD-GAN: 0.9999 on long runs)\n")
    assert result.stdout == ""
