"""report.py: one HTML page that shows how a training run went, level by level.

The level scripts write, per level, `log.jsonl` (one line every --log-every steps:
loss_d, loss_g, each discriminator's own hinge loss d_<name>_loss and mean scores
d_<name>_real = E[D(x)], d_<name>_fake = E[D(G(z))], level 1's R1 term loss_d_r1 on
the steps whose last D update takes it (not drawn), and with --eval-every the
quality metrics: c2st, fvd, ...), `samples/step_XXXXXX.{gif,mp4}` (upsampling
levels: condition | output side by side, with `step_XXXXXX.json`: how far the output
strays from its condition, how much fine detail it has) and `ckpt.pt` (the config).
This file draws them:

    python report.py runs/tiny                # every level in runs/tiny -> runs/tiny/report.html
    python report.py runs/tiny/level2         # one level -> runs/tiny/level2/report.html
    python report.py runs/tiny --tensorboard  # also: the logs as TensorBoard events (needs tensorboard)

For each level: the losses over steps (loss_d, loss_g and one curve per
discriminator), the discriminators' mean scores on real and generated clips, the
quality metrics where they were evaluated, the sample videos in training order and
a strip of frames of the last one (upsampling levels: condition | output), and the
level's config. Charts are inline SVG and the page loads nothing from the network,
so it opens from disk in any browser. docs/report.md says how to read the curves.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
from pathlib import Path

import numpy as np

import flags
from flags import UserError
from training import load_checkpoint, run_main
from videos import write_image

# Quality metrics a log line may hold (metrics.py): lower is better for all but "is".
QUALITY = {"c2st": "C2ST accuracy (0.5: indistinguishable)", "fvd": "FVD", "fid": "FID", "is": "IS"}
NAMES = {"spatial": "D_S (spatial)", "temporal": "D_T (temporal)", "matching": "D_M (matching)"}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


# ----------------------------------------------------------------------------------
# Reading a run.
# ----------------------------------------------------------------------------------

def read_log(path: Path) -> list[dict]:
    """log.jsonl -> records sorted by step (a resumed run may repeat steps: the last wins)."""
    records = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue           # a line being written while we read: skip it
            raise UserError(f"{path}:{number} is not JSON: {line[:80]!r}") from None
        records[record["step"]] = record
    return [records[step] for step in sorted(records)]


def series(records: list[dict], key: str) -> list[tuple[float, float]]:
    """[(step, value)] of the records that hold a finite `key`."""
    return [(r["step"], float(r[key])) for r in records
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def discriminators(records: list[dict]) -> list[str]:
    """Names of the discriminators logged (d_<name>_loss), in a fixed order."""
    found = {m.group(1) for r in records for k in r if (m := re.fullmatch(r"d_(\w+?)_loss", k))}
    return sorted(found, key=lambda name: (list(NAMES).index(name) if name in NAMES else 99, name))


def level_folders(run: Path) -> list[Path]:
    """The level folders of a run (level1, level2, ...), or the run itself if it is one."""
    if (run / "log.jsonl").is_file():
        return [run]
    folders = sorted((p for p in run.glob("level*") if (p / "log.jsonl").is_file()),
                     key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    if not folders:
        raise UserError(f"{run} holds no log.jsonl nor level*/log.jsonl: point report.py at a run "
                        "folder (e.g. runs/tiny) or one level's folder (runs/tiny/level1)")
    return folders


def samples(folder: Path) -> list[tuple[int, Path]]:
    """[(step, samples/step_XXXXXX.gif)] in training order (mp4 where there is no gif)."""
    found = {}
    for path in sorted((folder / "samples").glob("step_*")):
        match = re.fullmatch(r"step_(\d+)(-\d+)?\.(gif|mp4)", path.name)
        if match and (match.group(3) == "gif" or int(match.group(1)) not in found):
            found[int(match.group(1))] = path
    return sorted(found.items())


def sample_checks(folder: Path) -> list[dict]:
    """The samples/step_XXXXXX.json numbers of an upsampling level, by step."""
    checks = []
    for path in sorted((folder / "samples").glob("step_*.json")):
        try:
            checks.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(checks, key=lambda c: c.get("step", 0))


def strip(video: Path, out: Path, frames: int = 8) -> Path | None:
    """`frames` frames of a sample video, evenly spaced, side by side in one PNG."""
    import imageio.v3 as iio

    try:
        pictures = [np.asarray(f)[:, :, :3] for f in iio.imiter(video, plugin="pillow" if video.suffix == ".gif" else None)]
    except Exception:  # noqa: BLE001 - a missing strip is not worth stopping the report for
        return None
    if not pictures:
        return None
    picked = [pictures[round(i * (len(pictures) - 1) / max(frames - 1, 1))] for i in range(min(frames, len(pictures)))]
    gap = np.full((picked[0].shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([part for picture in picked for part in (picture, gap)][:-1], axis=1)
    write_image(out, row)
    return out


# ----------------------------------------------------------------------------------
# Drawing: inline SVG line charts.
# ----------------------------------------------------------------------------------

def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round numbers (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e7:
        return str(int(value))                          # steps: 1000, not 1e+03
    return f"{value:.3g}"


def svg_chart(lines: list[dict], title: str, width: int = 500, height: int = 230,
              guides: tuple = ()) -> str:
    """A line chart: lines = [{"key", "label", "points": [(x, y)], "colour", "dash"}].
    Each line is one <polyline data-series="key">; guides are horizontal reference
    lines [(y, label)] (e.g. the hinge margins at +-1). Empty lines are left out."""
    lines = [line for line in lines if line["points"]]
    if not lines:
        return ""
    rows = (len(lines) + 2) // 3                       # legend rows, below the plot
    height += 14 * rows
    left, right, top, bottom = 52, 12, 26, 30 + 14 * rows
    xs = [x for line in lines for x, _ in line["points"]]
    ys = [y for line in lines for _, y in line["points"]] + [y for y, _ in guides]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x):
        return left + (x - x0) / (x1 - x0 or 1) * (width - left - right)

    def py(y):
        return height - bottom - (y - y0) / (y1 - y0 or 1) * (height - top - bottom)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" class="title">{html.escape(title)}</text>']
    for y in y_ticks:                                   # horizontal grid and y labels
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{py(y) + 4:.1f}" class="tick" text-anchor="end">{fmt(y)}</text>')
    for x in x_ticks:
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 14}" class="tick" '
                     f'text-anchor="middle">{fmt(x)}</text>')
    parts.append(f'<text x="{width - right}" y="{height - bottom + 26}" class="tick" text-anchor="end">step</text>')
    for y, label in guides:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="guide"/>')
        parts.append(f'<text x="{width - right - 2}" y="{py(y) - 3:.1f}" class="tick" '
                     f'text-anchor="end">{html.escape(label)}</text>')
    for line in lines:
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line["points"])
        dash = ' stroke-dasharray="5,3"' if line.get("dash") else ""
        if len(line["points"]) == 1:                    # one evaluation: a dot, still a series
            (x, y), = line["points"]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{line["colour"]}"/>')
        parts.append(f'<polyline data-series="{html.escape(line["key"])}" points="{points}" fill="none" '
                     f'stroke="{line["colour"]}" stroke-width="1.6"{dash}><title>'
                     f'{html.escape(line["label"])}</title></polyline>')
    for i, line in enumerate(lines):                    # the legend, 3 lines per row
        x, y = left + (i % 3) * 150, height - bottom + 30 + (i // 3) * 14
        dash = ' stroke-dasharray="5,3"' if line.get("dash") else ""
        parts.append(f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{line["colour"]}" '
                     f'stroke-width="2"{dash}/>')
        parts.append(f'<text x="{x + 22}" y="{y + 4}" class="legend">{html.escape(line["label"])}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------
# The page.
# ----------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1120px; }
h1 { font-size: 22px; } h2 { font-size: 19px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { background: #fff; border: 1px solid #ddd; }
.chart .title { font-size: 13px; font-weight: 600; } .chart .tick { font-size: 10px; fill: #555; }
.chart .legend { font-size: 11px; } .chart .grid { stroke: #eee; } .chart .guide { stroke: #999; stroke-dasharray: 2,2; }
.samples { display: flex; flex-wrap: wrap; gap: 10px; } figure { margin: 0; }
figcaption { font-size: 11px; color: #555; text-align: center; }
.strip { max-width: 100%; image-rendering: pixelated; }
table { border-collapse: collapse; font-size: 12px; } td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
.note { font-size: 13px; color: #444; max-width: 900px; }
details { margin-top: 8px; }
"""


def level_section(folder: Path, page_dir: Path, files_dir: Path) -> str:
    """The HTML of one level: charts, samples, strip, config."""
    records = read_log(folder / "log.jsonl")
    name = folder.name
    out = [f'<section id="{html.escape(name)}">\n<h2>{html.escape(name)}</h2>']
    if not records:
        return out[0] + "<p>log.jsonl is empty: no step has been logged yet.</p></section>"
    last = records[-1]
    ds = discriminators(records)
    out.append(f'<p class="note">{len(records)} log lines, steps {records[0]["step"]}..{last["step"]}; '
               f'discriminators: {", ".join(NAMES.get(d, d) for d in ds) or "not logged separately (an older run)"}.</p>')

    # Losses: the totals and each discriminator's own hinge loss.
    loss_lines = [{"key": "loss_d", "label": "loss_d (sum)", "points": series(records, "loss_d"),
                   "colour": "#000"},
                  {"key": "loss_g", "label": "loss_g", "points": series(records, "loss_g"),
                   "colour": "#888", "dash": True}]
    loss_lines += [{"key": f"d_{d}_loss", "label": f"{NAMES.get(d, d)} loss", "colour": COLOURS[i],
                    "points": series(records, f"d_{d}_loss")} for i, d in enumerate(ds)]
    # Any other logged loss (a future one) still gets its curve.
    known = {line["key"] for line in loss_lines}
    extra = sorted({k for r in records for k in r if "loss" in k and k not in known})
    loss_lines += [{"key": k, "label": k, "colour": COLOURS[(len(ds) + i) % len(COLOURS)],
                    "points": series(records, k)} for i, k in enumerate(extra)]
    charts = [svg_chart(loss_lines, "Losses", guides=((2.0, "2: one D guessing"),))]
    # Scores: E[D(x)] (solid) and E[D(G(z))] (dashed) per discriminator, hinge margins at +-1.
    score_lines = []
    for i, d in enumerate(ds):
        score_lines += [{"key": f"d_{d}_real", "label": f"{NAMES.get(d, d)} real", "colour": COLOURS[i],
                         "points": series(records, f"d_{d}_real")},
                        {"key": f"d_{d}_fake", "label": f"{NAMES.get(d, d)} fake", "colour": COLOURS[i],
                         "points": series(records, f"d_{d}_fake"), "dash": True}]
    charts.append(svg_chart(score_lines, "Mean scores: real (solid), generated (dashed)",
                            guides=((1.0, "+1 margin"), (-1.0, "-1 margin"))))
    if not any(series(records, key) for key in QUALITY):
        charts.append('<p class="note">No quality metric in this log: train with --eval-every N '
                      'to evaluate one (c2st, fvd) every N steps.</p>')
    for key, label in QUALITY.items():
        charts.append(svg_chart([{"key": key, "label": label, "colour": "#2ca02c",
                                  "points": series(records, key)}], f"Quality: {label}",
                                guides=((0.5, "0.5: chance"),) if key == "c2st" else ()))
    checks = sample_checks(folder)
    if checks:
        def check(*path):
            return [(c["step"], _dig(c, path)) for c in checks if _dig(c, path) is not None]
        charts.append(svg_chart(
            [{"key": "condition_error", "label": "mean |down(G(c)) - c|", "colour": "#d62728",
              "points": check("condition_error")},
             {"key": "detail_output", "label": "detail: output", "colour": "#1f77b4",
              "points": check("detail", "output")},
             {"key": "detail_real", "label": "detail: real", "colour": "#1f77b4", "dash": True,
              "points": check("detail", "real")}],
            "Sample checks (samples/step_*.json)"))
    out.append('<div class="charts">' + "\n".join(c for c in charts if c) + "</div>")

    # Samples in training order, and a strip of the last one.
    found = samples(folder)
    if found:
        is_pairs = bool(checks)
        out.append("<h3>Samples in training order" + (" (each: condition, upsampled nearest | output)"
                                                      if is_pairs else "") + "</h3>")
        out.append('<div class="samples">')
        for step, path in found:
            src = html.escape(path.relative_to(page_dir).as_posix())
            tag = (f'<img src="{src}" alt="samples at step {step}" height="140">' if path.suffix == ".gif"
                   else f'<video src="{src}" height="140" controls loop muted></video>')
            out.append(f"<figure>{tag}<figcaption>step {step}</figcaption></figure>")
        out.append("</div>")
        picture = strip(found[-1][1], files_dir / f"{name}_strip.png")
        if picture is not None:
            caption = ("condition | output" if is_pairs else "generated") + f", step {found[-1][0]}, 8 frames"
            out.append(f'<h3>Strip of the last samples ({html.escape(caption)})</h3>'
                       f'<img class="strip" src="{html.escape(picture.relative_to(page_dir).as_posix())}" '
                       f'alt="{html.escape(caption)}">')

    # The config the level was trained with (its checkpoint says how to rebuild it).
    ckpt = folder / "ckpt.pt"
    if ckpt.is_file():
        try:
            state = load_checkpoint(ckpt)
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in sorted(state["config"].items()))
            out.append(f"<details><summary>Config (ckpt.pt, step {state['step']})</summary>"
                       f"<table>{rows}</table></details>")
        except UserError as error:
            out.append(f"<p>ckpt.pt could not be read: {html.escape(str(error))}</p>")
    out.append("</section>")
    return "\n".join(out)


def _dig(record: dict, path):
    for key in path:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return float(record) if isinstance(record, (int, float)) else None


def write_report(run, out=None) -> Path:
    """Write the report of a run folder (or one level's folder); returns its path."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run} is not a folder: give a run folder such as runs/tiny")
    folders = level_folders(run)
    page = Path(out) if out else run / "report.html"
    files_dir = page.parent / (page.stem + "_files")
    files_dir.mkdir(parents=True, exist_ok=True)
    sections = [level_section(folder, page.parent.resolve(), files_dir.resolve())
                if folder.resolve().is_relative_to(page.parent.resolve()) else None for folder in folders]
    if None in sections:
        raise UserError(f"--out {page}: the report must sit in {run} or above it, so that it "
                        "can link to the sample videos")
    nav = " | ".join(f'<a href="#{html.escape(f.name)}">{html.escape(f.name)}</a>' for f in folders)
    body = "\n".join(sections)
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>HVG run report: {html.escape(str(run))}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>HVG run report: {html.escape(str(run))}</h1>
<p class="note">{nav}. How to read these curves: docs/report.md. In short: with the hinge loss a
discriminator that cannot tell real from generated has loss 2 and scores near 0; a healthy one
sits between 0.5 and 1.8 with real scores above the generated ones. A discriminator loss
falling to 0 while its real and generated scores fly apart means it wins everything
(the generator gets no useful gradient: look at the samples for collapse).</p>
{body}
</body>
</html>
"""
    page.write_text(document)
    return page


# ----------------------------------------------------------------------------------
# TensorBoard (optional): the same logs as event files.
# ----------------------------------------------------------------------------------

def write_tensorboard(run) -> Path:
    """The logs of a run as TensorBoard scalars in <run>/tensorboard/<level>/ (needs the
    `tensorboard` package; nothing else in HVG does). `tensorboard --logdir <run>/tensorboard`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise UserError("--tensorboard needs the tensorboard package: `pip install tensorboard` "
                        "(the HTML report needs nothing)") from error
    run = Path(run)
    for folder in level_folders(run):
        with SummaryWriter(run / "tensorboard" / folder.name) as writer:
            for record in read_log(folder / "log.jsonl"):
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        writer.add_scalar(key, value, record["step"])
    return run / "tensorboard"


def main(argv=None) -> None:
    parser = flags.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder (runs/tiny: every level) or one level's folder")
    parser.add_argument("--out", help="the HTML file (default: <run>/report.html)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the logs as TensorBoard events into <run>/tensorboard")
    args = parser.parse_args(argv)
    if args.tensorboard:
        print(write_tensorboard(args.run))
    print(write_report(args.run, args.out))


if __name__ == "__main__":
    run_main(main)
