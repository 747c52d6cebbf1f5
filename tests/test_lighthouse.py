"""Lighthouse (pinned in package.json) on the built site: the front page, a text chapter, a Plotly chapter.

Performance >= 0.9; accessibility, best practices and SEO >= 0.95 on each page.
Lighthouse drives Debian's chromium (CHROME_PATH; no browser download) headless,
on the site as the test server of tests/test_site.py serves it (gzip, as GitHub
Pages does). Its JSON and HTML reports go to ``_build/lighthouse/``, the scores
to ``_build/lighthouse/scores.txt``.

Policy, from measurements on this 2-core machine (other sessions' builds and tests
running, load average 4-8; then with a busy loop ``python -c 'while 1: pass'`` as well):

- Two presets: Lighthouse's desktop preset (simulated desktop: 10 Mbit/s, 40 ms RTT, no CPU
  slowdown) and its default, mobile emulation (a mid-range phone on slow 4G, 150 ms RTT,
  the CPU slowed 4x). Mobile scored these pages 0.28-0.78 before tools/sphinx_site.py
  bundled and purged the stylesheets, cut the icon fonts to the icons drawn, typeset the
  maths at build time and fetched Plotly only near its figure (see its docstring). The
  CPU part of a mobile score is the trace's own task times multiplied by the slowdown, so it
  moves with this machine's load far more than desktop's does.
- Lighthouse's 4x assumes a host of benchmarkIndex 1500-2000 (its docs/throttling.md,
  "Calibrating the CPU slowdown"); this machine measured 1134-2247 from one run to the next,
  and a CI machine scored the Plotly chapter 0.83-0.95 where this one scored 0.94-0.97. So
  the slowdown is calibrated as those docs say: the median index of the runs so far (every
  run measures it) over 1750 / 4, within 1x-8x, so that the phone stays the same whatever
  the host. Each run's index and slowdown go to scores.txt and to a failure's message.
- Accessibility, best practices and SEO came out the same on every run (1.00; they read
  the page, not a clock). Performance moves from run to run: five runs of each page
  gave 0.95-1.00 (index, text chapter) and 0.90-0.99 (Plotly chapter), and with the busy
  loop 0.93-1.00 and 0.78-0.99: a run loses up to 0.2 when another process takes the CPU
  while Plotly's 1.5 MB script runs. So one run is no verdict, and a page is judged by
  the median of its runs: two runs, and when either is below the threshold three more
  (the median of five, which two unlucky runs cannot move). A page that regressed fails
  all five; one that is fine takes two runs.
- Each category is also reported by the audits that lost it; some audits must pass outright
  (``REQUIRED``), as one console error costs best practices only 0.04.
- One Node process and one chromium for all runs (Lighthouse's Node API): 12 runs (3 pages,
  2 presets, 2 runs) when all pass, up to 30. Desktop alone took 59 s at a load average
  of 1 and 112 s at 8; both presets took 749 s (18 runs) at a load average of 15-22.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess

import pytest

from tests.conftest import ROOT
from tests.test_site import CHROMIUM, server  # noqa: F401 (server is a fixture used here)

pytestmark = [pytest.mark.slow, pytest.mark.alone]

LIGHTHOUSE = ROOT / "node_modules" / "lighthouse"
REPORTS = ROOT / "_build" / "lighthouse"
CATEGORIES = {"performance": 0.9, "accessibility": 0.95, "best-practices": 0.95, "seo": 0.95}
# Audits that must pass outright, whatever the category's score: one console error (a missing
# favicon's 404, a script that failed) costs best practices only 0.04.
REQUIRED = ["errors-in-console", "meta-description", "document-title", "http-status-code", "is-crawlable"]
# The front page (the site's root, which Jupyter Book redirects to the introduction), a chapter
# of prose and maths, and a chapter whose interactive figure needs Plotly.
PAGES = {"index": "", "text": "book/04_softmax.html", "plotly": "book/09_decoding.html"}
# Lighthouse's desktop preset and its default, mobile, emulation (see the RUNNER's configs).
PRESETS = ("desktop", "mobile")

# Runs Lighthouse on each (name, url) of argv[1] (JSON) in one chromium, writes the reports,
# prints one line of JSON per run: {"name", "url", "scores", "failing", "metrics", "audits", "warnings"}.
RUNNER = r"""
import fs from "node:fs";
import lighthouse from "lighthouse";
import desktopConfig from "lighthouse/core/config/desktop-config.js";
import * as chromeLauncher from "chrome-launcher";

const [runs, reports, categories, required, measured] = JSON.parse(process.argv[1]);
// "mobile" is Lighthouse's default config (a mid-range phone, slow 4G, the CPU 4x slower).
const configs = { desktop: desktopConfig, mobile: undefined };
const chrome = await chromeLauncher.launch({
  chromePath: process.env.CHROME_PATH,
  chromeFlags: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  // The mobile preset's CPU slowdown, calibrated to this host as Lighthouse's docs/throttling.md
  // describes: its 4x takes a host of benchmarkIndex 1500-2000 to a mid-tier phone, so the
  // slowdown is the host's index over 1750 / 4, the index being the median of every run's so far,
  // earlier calls' included (one alone moves by a third from run to run on a shared machine).
  const indices = [...measured];
  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1;
                           return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
  for (const [name, url, preset] of runs) {
    const flags = { port: chrome.port, output: ["json", "html"], logLevel: "error", onlyCategories: categories,
                    disableFullPageScreenshot: true };
    if (preset === "mobile" && indices.length) {
      const slowdown = Math.min(8, Math.max(1, median(indices) / (1750 / 4)));
      flags.throttling = { cpuSlowdownMultiplier: Math.round(slowdown * 100) / 100 };
    }
    const result = await lighthouse(url, flags, configs[preset]);
    const lhr = result.lhr;
    if (lhr.environment.benchmarkIndex) indices.push(lhr.environment.benchmarkIndex);
    fs.writeFileSync(`${reports}/${name}.json`, result.report[0]);
    fs.writeFileSync(`${reports}/${name}.html`, result.report[1]);
    const failing = {};
    for (const [id, category] of Object.entries(lhr.categories)) {
      failing[id] = category.auditRefs
        .map((ref) => [ref, lhr.audits[ref.id]])
        .filter(([ref, audit]) => (ref.weight > 0 || ref.group === "diagnostics" || ref.group === "load-opportunities")
                                  && audit.score !== null && audit.score < 0.9
                                  && !["notApplicable", "informative", "manual"].includes(audit.scoreDisplayMode))
        .map(([ref, audit]) => `${audit.id} (${audit.title}${audit.displayValue ? ": " + audit.displayValue : ""})`);
    }
    const metrics = ["first-contentful-paint", "largest-contentful-paint", "total-blocking-time",
                     "cumulative-layout-shift", "speed-index"]
      .map((id) => `${id} ${lhr.audits[id].displayValue}`);
    const scores = Object.fromEntries(Object.entries(lhr.categories).map(([id, c]) => [id, c.score]));
    const audits = Object.fromEntries(required.map((id) => [id, lhr.audits[id] ? {
      score: lhr.audits[id].score, title: lhr.audits[id].title,
      items: (lhr.audits[id].details?.items || []).map((item) => JSON.stringify(item).slice(0, 300)),
    } : null]));
    const host = { benchmarkIndex: lhr.environment.benchmarkIndex,
                   cpuSlowdown: lhr.configSettings.throttlingMethod === "simulate"
                     ? lhr.configSettings.throttling.cpuSlowdownMultiplier : 1 };
    console.log(JSON.stringify({ name, url, scores, failing, metrics, audits, host, warnings: lhr.runWarnings }));
  }
} finally {
  await chrome.kill();
}
"""


def lighthouse_runs(base: str, runs: list[tuple[str, str, str]], measured: list[float] = ()) -> list[dict]:
    """One Lighthouse run per (report name, page path, preset), in order.

    ``measured``: the host's benchmark indices from earlier runs, for the mobile slowdown's calibration.
    """
    REPORTS.mkdir(parents=True, exist_ok=True)
    argument = json.dumps([[[name, base + path, preset] for name, path, preset in runs], str(REPORTS),
                           list(CATEGORIES), REQUIRED, list(measured)])
    result = subprocess.run(["node", "--input-type=module", "-e", RUNNER, argument], cwd=ROOT,
                            env={**os.environ, "CHROME_PATH": CHROMIUM}, capture_output=True, text=True,
                            timeout=120 + 60 * len(runs))
    assert result.returncode == 0, f"Lighthouse failed:\n{result.stderr[-3000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def median_policy(base: str) -> dict[tuple[str, str], list[dict]]:
    """{(page, preset): [run, ...]}: two runs of each, five where either scored below the performance threshold.

    The runs alternate pages and presets, so that a spell of load falls on several of them
    rather than on every run of one.
    """
    results = {(page, preset): [] for page in PAGES for preset in PRESETS}
    plan = [(f"{page}-{preset}-{i}", PAGES[page], preset) for i in (1, 2) for page, preset in results]
    for run in lighthouse_runs(base, plan):
        results[tuple(run["name"].split("-")[:2])].append(run)
    threshold = CATEGORIES["performance"]
    doubtful = [key for key, runs in results.items() if min(r["scores"]["performance"] for r in runs) < threshold]
    measured = [run["host"]["benchmarkIndex"] for runs in results.values() for run in runs
                if run["host"]["benchmarkIndex"]]
    for run in lighthouse_runs(base, [(f"{page}-{preset}-{i}", PAGES[page], preset)
                                      for i in (3, 4, 5) for page, preset in doubtful], measured):
        results[tuple(run["name"].split("-")[:2])].append(run)
    return results


@pytest.fixture(scope="module")
def lighthouse(server):
    """{(page, preset): [run, ...]} by the median policy; the scores also go to scores.txt."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run tools/system_deps.sh (make test does)")
    if not (LIGHTHOUSE / "package.json").is_file() or shutil.which("node") is None:
        pytest.fail("Lighthouse is not installed: run `make node_modules/.npm-installed` (make test does)")
    for old in REPORTS.glob("*.*"):  # no report of an earlier run passes for this one
        old.unlink()
    results = median_policy(server)
    lines = []
    for (page, _preset), runs in results.items():
        for run in runs:
            scores = "  ".join(f"{c} {run['scores'][c]:.2f}" for c in CATEGORIES)
            host = f"benchmarkIndex {run['host']['benchmarkIndex']:g}, CPU slowdown {run['host']['cpuSlowdown']:g}x"
            lines.append(f"{run['name']}\t{PAGES[page] or 'index.html'}\t{scores}\t{'; '.join(run['metrics'])}"
                         f"\t{host}")
    (REPORTS / "scores.txt").write_text("\n".join(lines) + "\n")
    return results


def test_pages_are_what_they_stand_for(built_html):
    """The text chapter has no interactive figure; the Plotly chapter has one that needs Plotly."""
    text = (built_html / PAGES["text"]).read_text()
    plotly = (built_html / PAGES["plotly"]).read_text()
    assert 'class="tinyllm-interactive"' not in text
    assert 'data-kind="sampling"' in plotly or 'data-kind="heatmap"' in plotly


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("category", CATEGORIES)
def test_lighthouse_score(lighthouse, page, preset, category):
    runs = lighthouse[page, preset]
    assert len(runs) >= 2, f"Lighthouse did not report on {page} ({preset})"
    score = statistics.median(run["scores"][category] for run in runs)
    if score >= CATEGORIES[category]:
        return
    worst = min(runs, key=lambda run: run["scores"][category])
    found = "\n  ".join(worst["failing"][category]) or "(no audit below 0.9: many small losses)"
    timings = "\n  ".join(worst["metrics"]) if category == "performance" else ""
    pytest.fail(f"{page} ({PAGES[page] or 'index.html'}), {preset}: Lighthouse {category} {score:.2f} "
                f"(median of {[run['scores'][category] for run in runs]}) < {CATEGORIES[category]}; "
                f"failing audits in {worst['name']}.json (host: {worst['host']}):\n  {found}"
                + (f"\nmetrics:\n  {timings}" if timings else "")
                + (f"\nwarnings: {worst['warnings']}" if worst["warnings"] else ""))


@pytest.mark.parametrize("page", PAGES)
def test_required_audits_pass(lighthouse, page):
    """No console error, a meta description, a title, HTTP 200, indexable: on every run."""
    failed = [f"{run['name']}: {audit} ({result['title'] if result else 'not run'})"
              + "".join(f"\n    {item}" for item in (result or {}).get("items", []))
              for preset in PRESETS for run in lighthouse[page, preset]
              for audit, result in run["audits"].items()
              if result is None or result["score"] != 1]
    assert not failed, f"{page} ({PAGES[page] or 'index.html'}): Lighthouse audits failed:\n  " + "\n  ".join(failed)
