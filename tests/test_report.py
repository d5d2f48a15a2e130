"""What the log and the run report guarantee: every discriminator's own loss and
mean scores are in log.jsonl (and add up to loss_d with the loss weights), and
report.py turns a run folder into one valid HTML page with one curve per logged
loss, that links only to files that exist and loads nothing from the network.

Tiny runs are trained here, a couple of steps per level.

    python -m pytest -q tests/test_report.py
"""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

import level1
import report
import upsample_level
from conftest import run_script
from data import UserError

VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "area", "base", "wbr"}
# SVG elements this report writes self-closed (<line .../>): html.parser reports them
# as start-end tags, so they never open.


class PageParser(HTMLParser):
    """Checks that tags nest properly and collects links and chart series per section."""

    def __init__(self):
        super().__init__()
        self.open, self.errors, self.links, self.series = [], [], [], {}
        self.section, self.chart_title, self.in_title = None, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.section = attrs["id"]
        if tag == "svg":
            self.chart_title = attrs.get("aria-label")
        for name in ("src", "href"):
            if name in attrs and tag != "svg":
                self.links.append(attrs[name])
        if tag == "polyline":
            self.series.setdefault((self.section, self.chart_title), []).append(attrs["data-series"])
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if name in attrs:
                self.links.append(attrs[name])

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.open[-1] if self.open else None}>")
        else:
            self.open.pop()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """runs/tiny-like folder: level1 and level2, 4 steps each, logged every step."""
    small = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--log-every", "1", "--device", "cpu",
             "--steps", "4", "--sample-every", "2"]
    folder = tmp_path_factory.mktemp("run")
    # A temporal weight of 0.5: loss_d must be the weighted sum, not the plain one.
    assert run_script(level1.main, small + ["--batch-size", "4", "--num-samples", "2",
                                            "--temporal-weight", "0.5", "--out", str(folder / "level1")]) == 0
    assert run_script(upsample_level.main, small + ["--batch-size", "2", "--num-samples", "1",
                                                    "--k-frames", "4", "--out", str(folder / "level2")]) == 0
    return folder


def records(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_each_discriminator_is_logged_and_they_add_up_to_loss_d(run):
    for level, names, weights in [("level1", ("spatial", "temporal"), (1.0, 0.5)),
                                  ("level2", ("spatial", "temporal", "matching"), (1.0, 1.0, 1.0))]:
        for r in records(run / level):
            assert {f"d_{n}_{what}" for n in names for what in ("loss", "real", "fake")} <= r.keys()
            # loss_d = sum_D w_D * L_D (+ level 1's R1 term), from the same, last, D update
            assert r["loss_d"] == pytest.approx(sum(w * r[f"d_{n}_loss"] for n, w in zip(names, weights))
                                                + r.get("loss_d_r1", 0.0), rel=1e-5)
            for n in names:
                # Each loss is a hinge loss of those scores: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]
                # >= relu(1 - E[D(x)]) + relu(1 + E[D(G(z))]) (Jensen: relu is convex), and >= 0.
                bound = max(0, 1 - r[f"d_{n}_real"]) + max(0, 1 + r[f"d_{n}_fake"])
                assert r[f"d_{n}_loss"] >= bound - 1e-5
    # Level 1's lazy R1 (every 4th D step, 2 D steps per step): the last D update of
    # steps 2 and 4 takes it; the upsampling levels have none.
    with_r1 = [r for r in records(run / "level1") if "loss_d_r1" in r]
    assert [r["step"] for r in with_r1] == [2, 4]
    assert all(r["loss_d_r1"] > 0 for r in with_r1)
    assert not any("loss_d_r1" in r for r in records(run / "level2"))


def parse(page):
    parser = PageParser()
    parser.feed(page.read_text())
    parser.close()
    return parser


def test_report_is_valid_html_with_a_curve_per_logged_loss(run):
    # A quality metric where it was evaluated (what --eval-every adds to a log line).
    log = run / "level1" / "log.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 4, "loss_d": 1.0, "loss_g": 0.5, "c2st": 0.71,
                                                 "d_spatial_loss": 0.5, "d_temporal_loss": 1.0,
                                                 "d_spatial_real": 0.2, "d_temporal_real": 0.1,
                                                 "d_spatial_fake": -0.3, "d_temporal_fake": 0.0}) + "\n")
    page = report.write_report(run)
    assert page == run / "report.html"
    parser = parse(page)
    assert parser.errors == [] and parser.open == []
    # Every link is a file next to the report (no network), and it exists.
    local = [link for link in parser.links if not link.startswith("#")]
    assert local, "the report shows the sample videos and strips"
    for link in local:
        assert "://" not in link and not link.startswith("//")
        assert (run / link).is_file(), link
    assert any(link.endswith("level2_strip.png") for link in local)
    assert sum("level1/samples/step_" in link for link in local) == 2      # steps 2 and 4, in order
    for level in ("level1", "level2"):
        logged = {k for r in records(run / level) for k in r if "loss" in k}
        curves = parser.series[(level, "Losses")]
        assert sorted(curves) == sorted(logged)                            # one curve per logged loss
        scores = parser.series[(level, "Mean scores: real (solid), generated (dashed)")]
        assert sorted(scores) == sorted({k for r in records(run / level) for k in r
                                         if k.startswith("d_") and k.endswith(("_real", "_fake"))})
    # The upsampling level's sample checks (samples/step_XXXXXX.json), one point per sample grid.
    assert parser.series[("level2", "Sample checks (samples/step_*.json)")] == [
        "condition_error", "detail_output", "detail_real"]
    assert parser.series[("level1", "Quality: C2ST accuracy (0.5: indistinguishable)")] == ["c2st"]
    assert ("level2", "Quality: C2ST accuracy (0.5: indistinguishable)") not in parser.series
    assert "http" not in page.read_text().replace("http://www.w3.org/2000/svg", "")


def test_report_of_one_level_and_errors(run, tmp_path):
    page = report.write_report(run / "level2")
    assert page == run / "level2" / "report.html"
    assert parse(page).errors == []
    with pytest.raises(UserError, match="holds no log.jsonl"):
        report.write_report(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        report.write_report(tmp_path / "missing")


def test_tensorboard_is_optional(run):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install tensorboard"):
            report.write_tensorboard(run)
    else:
        folder = report.write_tensorboard(run)
        assert any(Path(folder).rglob("events.out.tfevents*"))


def test_training_logs_to_tensorboard_only_when_asked_and_available(tmp_path, capsys):
    """--tensorboard: live scalars when the package is there, else a clear error
    before any work (nothing in the default install needs it)."""
    import level1
    from conftest import run_script
    out = tmp_path / "run"
    flags = ["--g-ch", "8", "--d-ch", "8", "--z-dim", "16", "--batch-size", "4", "--num-samples", "2",
             "--device", "cpu", "--steps", "1", "--log-every", "1", "--tensorboard", "--out", str(out)]
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        assert run_script(level1.main, flags) == 2
        assert "pip install tensorboard" in capsys.readouterr().err
        assert not out.exists()
        return
    assert run_script(level1.main, flags) == 0
    assert any((out / "tensorboard").iterdir())
