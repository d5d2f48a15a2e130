"""Command-line flags with their valid range declared where the flag is declared.

Every script of hvg (level1.py, upsample_level.py, sample.py, data.py, metrics.py,
evaluate.py, bench.py)
builds its command line with this file, so every numeric flag says which values
it takes, and a value outside them stops the script before any data or model is
built, with one line a user can act on:

    $ python level1.py --ema-decay 2
    error: --ema-decay 2: must be a number in [0, 1): EMA decay of G's weights ...
    (exit code 2)

A range is written as an interval, the way it is written in maths:

    "[1, inf)"     1, 2, 3, ...            (a count: steps, a batch size, a width)
    "[0, 1)"       0 <= x < 1              (an EMA decay, Adam's betas)
    "(0, inf)"     x > 0                   (a learning rate)
    "[0, 2**32)"   0 <= x < 4294967296     (a seed numpy accepts)

Where 0 is allowed and means something particular (`--sample-every 0`: only at
the end), the flag says so with `zero_means`, and --help shows it. nan and inf are
never a valid value of any flag: they are refused even where the interval is
open towards infinity.

    parser = ArgumentParser(description=...)
    parser.add_argument("--threads", type=ranged("--threads", int, "[1, inf)"), default=1,
                        help=ranged_help("torch threads", "[1, inf)"))

The level scripts and sample.py do not call this directly: they declare
`option(default, help, range="[1, inf)", zero_means=...)` on their config
dataclass (training.py), and training.build_parser turns that into the above.

A mistake found later, once the flags parsed (a missing folder, a file that is
not a checkpoint), is a `UserError`; every script runs its main() through
`run_main`, which prints it as the same one `error:` line and exits 2:

    if __name__ == "__main__":
        flags.run_main(main)

This file sits below everything else (it imports nothing from hvg), so every
module, data.py and videos.py included, can raise a UserError without importing
the data code.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass


# ----------------------------------------------------------------------------------
# UserError: a mistake the user can fix, reported in one line.
# ----------------------------------------------------------------------------------

class UserError(Exception):
    """Something the user can fix (a path, a flag, a file). The message says what was
    wrong, with the value, and what to do. Scripts print "error: <message>", exit 2."""


def run_main(main, argv=None) -> None:
    """Run a script's main(argv); a UserError ends with its message and exit code 2.

    A UserError is something the user can fix, so a traceback would only hide the
    message. Anything else is a bug: let it raise.
    """
    try:
        main(argv)
    except UserError as error:
        close_progress_bars()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def close_progress_bars() -> None:
    """Finish any tqdm bar still drawn on stderr, so that a message printed after it
    starts on its own line, not glued to the bar."""
    tqdm = sys.modules.get("tqdm")            # only if a bar can exist: tqdm was imported
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


# ----------------------------------------------------------------------------------
# Intervals: "[0, 1)" -> the set of values a flag takes.
# ----------------------------------------------------------------------------------

def _bound(text: str) -> float:
    """'0', '1e-3', 'inf', '-inf', '2**32' -> a number."""
    text = text.strip()
    power = re.fullmatch(r"(\d+)\*\*(\d+)", text)
    if power:
        return int(power.group(1)) ** int(power.group(2))
    return float(text) if any(c in text for c in ".einf") else int(text)


@dataclass(frozen=True)
class Interval:
    """The values between `low` and `high`, each end included or not."""
    text: str                 # as declared: "[0, 1)"
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> "Interval":
        match = re.fullmatch(r"\s*([\[(])\s*([^,]+),\s*([^\])]+)([\])])\s*", text)
        if not match:
            raise ValueError(f"an interval looks like '[0, 1)' or '[1, inf)', not {text!r}")
        opening, low, high, closing = match.groups()
        return cls(text.strip(), _bound(low), _bound(high), opening == "[", closing == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        return self.text


# ----------------------------------------------------------------------------------
# The argparse type that checks a value against its interval.
# ----------------------------------------------------------------------------------

class RangedType:
    """argparse `type=`: text -> int or float, refused unless it lies in the interval.

    The message names the flag, the value as typed, the range and what the flag is,
    so it reads on its own: "--g-lr -1: must be a number in (0, inf): generator
    Adam learning rate". argparse shows it as one `error:` line (see ArgumentParser).
    """

    def __init__(self, flag: str, kind: type, interval: str, what: str = ""):
        self.flag, self.kind, self.interval, self.what = flag, kind, Interval.parse(interval), what
        # argparse names the type in some messages ("invalid int value"): keep it readable.
        self.__name__ = kind.__name__

    def _refuse(self, text: str, problem: str):
        what = f": {self.what}" if self.what else ""
        return argparse.ArgumentTypeError(f"{self.flag} {text}: {problem}{what}")

    def __call__(self, text: str):
        noun = "a whole number" if self.kind is int else "a number"
        try:
            value = self.kind(text)
        except ValueError:
            raise self._refuse(text, f"must be {noun} in {self.interval}") from None
        # float("nan") and float("inf") convert fine; no flag means anything by them.
        if self.kind is float and not math.isfinite(value):
            raise self._refuse(text, f"must be a finite number in {self.interval}")
        if value not in self.interval:
            raise self._refuse(text, f"must be {noun} in {self.interval}")
        return value


def ranged(flag: str, kind: type, interval: str, what: str = "") -> RangedType:
    """The `type=` of a numeric flag whose values must lie in `interval`."""
    return RangedType(flag, kind, interval, what)


def ranged_help(help: str, interval: str, zero_means: str | None = None) -> str:
    """The --help text of a ranged flag: what it is, what 0 means, its range."""
    zero = f"; 0: {zero_means}" if zero_means else ""
    return f"{help}{zero}; valid: {interval}"


# ----------------------------------------------------------------------------------
# The parser: argparse with one-line errors.
# ----------------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line, `error: <message>`, exit 2.

    argparse's own errors print the whole usage block first, then
    "level1.py: error: argument --ema-decay: ..."; with 40 flags the message is lost
    under the usage. hvg's scripts all end a user's mistake the same way, with one
    line starting "error:" (training.run_main does it for everything found later),
    so this parser does too. Subcommand parsers (data.py) inherit it.
    """

    def error(self, message: str):
        # argparse says "argument --flag: <message>"; a RangedType's message already
        # starts with the flag, and the others read better as "--flag: <message>".
        match = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message, re.S)
        if match:
            flag, rest = match.groups()
            message = rest if rest.startswith(flag + " ") else f"{flag}: {rest}"
        message = " ".join(message.split())          # one line, whatever argparse wrote
        if ": must be " not in message:              # a range message says it all already
            message += f" (see {self.prog} --help)"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
