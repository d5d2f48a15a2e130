"""Every command in the README and in docs/ runs as written: its script exists and
takes every flag the command gives it.

A tutorial whose commands fail is worse than none: the reader copies a line, gets
`error: unrecognized arguments`, and stops trusting the rest. Flags get renamed and
scripts get split while the prose stays put, so this test reads the docs the way a
reader does:

    README.md, docs/*.md
      -> fenced ```bash blocks                     (lines joined at a trailing backslash)
      -> commands, split at && || ; |              (comments dropped, quotes respected)
      -> `python SCRIPT.py [SUBCOMMAND] --flag ...` and `torchrun ... SCRIPT.py --flag ...`
      -> `python SCRIPT.py [SUBCOMMAND] --help`    (run once per script, in parallel)
      -> every --flag of the command appears in that help's usage or option list

It checks names only, not values, and runs nothing but `--help` (no training), so it
takes seconds. `python -m MODULE` commands (pytest) and shell commands (pip, rm,
export) are not checked. Flags are matched exactly: argparse would also accept a
unique prefix (`--num` for `--num-videos`), but a doc should spell the flag out.
"""

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SHELL_FENCES = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}     # a subshell's parentheses end a command too


@dataclass(frozen=True)
class Command:
    """One `python SCRIPT ...` or `torchrun ... SCRIPT ...` command of a doc."""
    doc: str                 # README.md, docs/metrics.md, ...
    line: int                # 1-based line of the command's first line in the doc
    script: str              # path relative to the repository root: "level1.py", "experiments/ablations.py"
    positionals: tuple       # the words after the script that are not flags or their values' slots
    flags: tuple             # "--flag" names, in order, "=value" stripped
    text: str                # the command as written, for the failure message

    def __str__(self):
        return f"{self.doc}:{self.line}: {self.text}"


def shell_blocks(markdown: str):
    """Yield (first line number, [lines]) of each fenced shell block, with lines that
    end in a backslash joined to the next (a command may span several lines)."""
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```+\s*(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        language, i = fence.group(1).lower(), i + 1
        block = []                                        # (line number, logical line)
        while i < len(lines) and not re.match(r"^\s*```", lines[i]):
            if block and block[-1][1].endswith("\\"):
                number, previous = block.pop()
                block.append((number, previous[:-1] + " " + lines[i].strip()))
            else:
                block.append((i + 1, lines[i]))
            i += 1
        i += 1                                            # the closing fence
        if language in SHELL_FENCES:
            yield from block


def split_commands(line: str):
    """A shell line -> its simple commands as token lists: `a --x && b # c` -> [[a, --x], [b]]."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [command for command in commands if command]


def parse_command(tokens):
    """Tokens of one simple command -> (script, positionals, flags), or None when it
    does not run one of this project's scripts (pip, rm, python -m pytest, ...)."""
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens = tokens[1:]                               # OMP_NUM_THREADS=1 python ...
    if not tokens:
        return None
    if tokens[0] in ("python", "python3"):
        if len(tokens) < 2 or tokens[1].startswith("-"):  # python -m pytest, python -c ...
            return None
        script_at = 1
    elif tokens[0] == "torchrun":                         # torchrun's own flags come before the script
        script_at = next((i for i, token in enumerate(tokens) if token.endswith(".py")), None)
        if script_at is None:
            return None
    else:
        return None
    arguments = tokens[script_at + 1:]
    flags = tuple(token.split("=", 1)[0] for token in arguments
                  if token.startswith("--") and token != "--")
    # Words before the first flag: a subcommand (`data.py preview`) or a positional
    # argument (`report.py runs/tiny`). "..." is the docs' placeholder, not an argument.
    positionals = []
    for token in arguments:
        if token.startswith("-"):
            break
        if token != "...":
            positionals.append(token)
    return tokens[script_at], tuple(positionals), flags


def doc_commands():
    """Every project command in README.md and docs/*.md."""
    found = []
    for path in DOCS:
        for number, line in shell_blocks(path.read_text()):
            for tokens in split_commands(line):
                parsed = parse_command(tokens)
                if parsed is not None:
                    script, positionals, flags = parsed
                    found.append(Command(str(path.relative_to(ROOT)), number, script,
                                         positionals, flags, " ".join(tokens)))
    return found


COMMANDS = doc_commands()


# ---------------------------------------------------------------------------------
# What a script accepts: read from its --help, once per (script, subcommand).
# ---------------------------------------------------------------------------------

def run_help(script: str, subcommand: str | None = None) -> str:
    """`python SCRIPT [SUBCOMMAND] --help`, run from the repository root like a reader
    would. Returns its output; a script whose --help fails fails the test here."""
    argv = [sys.executable, script] + ([subcommand] if subcommand else []) + ["--help"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"`{' '.join(argv[1:])}` failed (exit {result.returncode}):\n"
                             f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def accepted_flags(help_text: str) -> set:
    """The flags argparse lists in a help text: its usage block (everything up to the
    first blank line) and its option lines (two spaces, then the flag). The
    description in between is prose and may mention flags of other scripts, so it
    does not count."""
    lines = help_text.split("\n")
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    listed = lines[:end] + [line for line in lines[end:] if re.match(r"^  -", line)]
    return set(re.findall(r"--[A-Za-z0-9][A-Za-z0-9_-]*", "\n".join(listed)))


def subcommands(help_text: str) -> set:
    """`usage: data.py [-h] {prepare,preview} ...` -> {"prepare", "preview"}."""
    usage = help_text.split("\n\n", 1)[0]
    return {name for group in re.findall(r"\{([\w,-]+)\}", usage) for name in group.split(",")}


@pytest.fixture(scope="module")
def helps():
    """(script, subcommand or None) -> help text, for every script the docs run.
    The --help runs go in parallel: each imports torch, about a second or two."""
    scripts = sorted({command.script for command in COMMANDS if (ROOT / command.script).is_file()})
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = dict(zip(scripts, pool.map(run_help, scripts)))
    helps = {(script, None): text for script, text in texts.items()}
    wanted = sorted({(command.script, command.positionals[0]) for command in COMMANDS
                     if command.script in texts and command.positionals
                     and command.positionals[0] in subcommands(texts[command.script])})
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps.update(zip(wanted, pool.map(lambda key: run_help(*key), wanted)))
    return helps


# ---------------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------------

def test_the_reader_finds_the_commands_the_readme_promises():
    """The extractor itself: the README's first command is five commands joined by
    &&, of which four run project scripts; the docs run every top-level script."""
    readme = [command for command in COMMANDS if command.doc == "README.md"]
    first = [command.script for command in readme if command.line == readme[0].line]
    assert first == ["level1.py", "upsample_level.py", "upsample_level.py", "sample.py"]
    assert {"level1.py", "upsample_level.py", "sample.py", "data.py", "evaluate.py",
            "metrics.py", "bench.py", "report.py", "experiments/ablations.py"} <= \
        {command.script for command in COMMANDS}


def test_the_command_reader_handles_the_shell_forms_the_docs_use():
    text = "\n".join([
        "```bash",
        "OMP_NUM_THREADS=1 python data.py preview --out p/ --num=4   # a comment --not-a-flag",
        "torchrun --nproc_per_node=8 level1.py --preset kinetics600 \\",
        "    --batch-size 512 ...",
        "pip install -r requirements.txt && python -m pytest -q tests",
        "export OMP_NUM_THREADS=1 && (python level1.py & python sample.py --frames 64 && wait $!)",
        "```",
        "```python",
        "python not_a_shell_block.py --x",
        "```",
    ])
    parsed = [parse_command(tokens) for _, line in shell_blocks(text) for tokens in split_commands(line)]
    assert [p for p in parsed if p] == [
        ("data.py", ("preview",), ("--out", "--num")),
        ("level1.py", (), ("--preset", "--batch-size")),
        ("level1.py", (), ()),
        ("sample.py", (), ("--frames",)),
    ]


def test_the_readme_keeps_the_ci_test_command_and_fits_one_sitting():
    """`.ci/run` runs the README's test command; the README stays a one-sitting read."""
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest -q tests" in readme
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) <= 350, "README.md is a tutorial of at most 350 lines: move reference material to docs/"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.doc}:{c.line}:{c.script}")
def test_every_doc_command_names_a_script_and_flags_it_accepts(command, helps):
    assert (ROOT / command.script).is_file(), f"{command}\n  no such script: {command.script}"
    subcommand = command.positionals[0] if command.positionals else None
    help_text = helps.get((command.script, subcommand), helps[(command.script, None)])
    unknown = [flag for flag in command.flags if flag not in accepted_flags(help_text)]
    assert not unknown, (f"{command}\n  {command.script} does not accept {', '.join(unknown)} "
                         f"(see `python {command.script} --help`)")


def test_the_first_command_trains_level_1_beside_levels_2_and_3_then_samples(tmp_path):
    """The README's first command, run by bash with stand-ins for `pip` and `python`
    that log when each script starts and ends: level 1 (the slow one) runs while
    levels 2 and 3 train one after the other, each with one thread, and `sample.py`
    starts only once all three have ended; a failing level 1 stops it and fails the
    command. (Levels 2 and 3 train on real clips brought down, so they need nothing
    from level 1.)"""
    readme = (ROOT / "README.md").read_text()
    first = next(line for _, line in shell_blocks(readme) if "level1.py" in line)
    bin_dir, log = tmp_path / "bin", tmp_path / "events.log"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "python").write_text(
        "#!/bin/sh\n"
        f'echo "start $1 $OMP_NUM_THREADS" >> {log}\n'
        'case "$1" in level1.py) sleep 1.5; code=${LEVEL1_EXIT:-0};; *) sleep 0.2; code=0;; esac\n'
        f'echo "end $1" >> {log}\n'
        "exit $code\n")
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)

    def run(level1_exit):
        log.write_text("")
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   LEVEL1_EXIT=str(level1_exit))
        env.pop("OMP_NUM_THREADS", None)
        done = subprocess.run(["bash", "-c", first], cwd=tmp_path, env=env, timeout=60)
        return done.returncode, log.read_text().split("\n")[:-1]

    code, events = run(0)
    assert code == 0, events
    at = {event: i for i, event in enumerate(events)}
    assert sorted(events) == sorted(["start level1.py 1", "end level1.py", "start sample.py 1",
                                     "end sample.py"] + ["start upsample_level.py 1",
                                                         "end upsample_level.py"] * 2)
    ups = [i for i, event in enumerate(events) if event.startswith("end upsample")]
    assert at["start level1.py 1"] < ups[0], events           # beside them, not before
    assert ups[1] < at["end level1.py"] < at["start sample.py 1"], events
    code, events = run(3)
    assert code != 0 and not any("sample.py" in event for event in events), events
