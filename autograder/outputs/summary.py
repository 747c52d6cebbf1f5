"""The class at a glance: one static HTML page per assignment.

``summarise(reports)`` computes every number the page shows, from the graded
reports alone; ``write_summary(folder, reports)`` renders it to
``<folder>/summary-<assignment>.html``: the number of submissions, mean,
median, lowest and highest score, the score distribution, each check's pass
rate, the most common failure messages (grouped by check and by the message's
first meaningful line, see :func:`first_meaningful_line`), and the late and
ungradable submissions.

Scores are the reports' ``score`` (after any late penalty); an ungradable
submission counts with the score its report gives it (0). The figures are SVG
bar charts drawn here (no plotting library) and embedded as data URIs with alt text;
each has a table beside it with the same numbers, so the page reads without
images or JavaScript.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

from autograder.outputs.feedback import (STATUS_TEXT, page, parse_test, points, safe_name, submission_label, table,
                                 write_text)

TOP_FAILURES = 15
UNGRADABLE = {"invalid_notebook", "crashed"}


def first_meaningful_line(message: str, status: str) -> str:
    """What a failure was, in one line, for grouping.

    For an exception, the exception's own line (the last line that is not indented
    traceback text); otherwise the message's first non-empty line.
    """
    lines = [line.rstrip() for line in message.splitlines() if line.strip()]
    if not lines:
        return STATUS_TEXT.get(status, status)
    if status == "exception":
        unindented = [line for line in lines if not line.startswith((" ", "\t"))]
        if len(unindented) > 1:
            return unindented[-1]
    return lines[0]


def is_late(late: dict | None) -> bool:
    """Submitted after the student's due date (past any grace period), or marked late by Canvas.

    A report records a timestamp for every submission, on time or not; only the late ones count.
    """
    if not isinstance(late, dict):
        return False
    if "late" in late:
        return bool(late["late"])
    return bool(late.get("seconds_late"))  # a report written before the "late" field


def _bins(max_score: float) -> list[tuple[float, float]]:
    """Score bins [lo, hi) of width 1 (max/10 for totals over 10), then one bin for full marks."""
    width = max(1.0, math.ceil(max_score / 10))
    edges, lo = [], 0.0
    while lo < max_score:
        edges.append((lo, min(lo + width, max_score)))
        lo += width
    return edges + [(max_score, max_score)]


def _label(report: dict) -> str:
    extra = report.get("extra_data") or {}
    student = extra.get("student")
    return f"{student} ({submission_label(report)})" if student else submission_label(report)


def summarise(reports: list[dict]) -> dict[str, dict]:
    """Assignment -> every number the summary page shows, computed from ``reports``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for report in reports:
        groups[str((report.get("extra_data") or {}).get("assignment") or "unknown_assignment")].append(report)
    out: dict[str, dict] = {}
    for assignment, group in sorted(groups.items()):
        group = sorted(group, key=_label)
        scores = [float(r.get("score") or 0.0) for r in group]
        max_score = max((float(r.get("max_score") or 0.0) for r in group), default=0.0)
        bins = _bins(max_score)
        counts = [0] * len(bins)
        for s in scores:
            index = len(bins) - 1 if s >= max_score else next((i for i, (lo, hi) in enumerate(bins) if lo <= s < hi), 0)
            counts[index] += 1
        checks: dict[str, dict] = {}
        failures: Counter = Counter()
        failure_who: dict[tuple[str, str], list[str]] = defaultdict(list)
        late, ungradable = [], []
        for report in group:
            label = _label(report)
            tests = [parse_test(t) for t in report.get("tests") or [] if isinstance(t, dict)]
            for t in tests:
                entry = checks.setdefault(t.name, {"name": t.name, "title": t.title, "max_score": t.max_score,
                                                   "hidden": t.hidden, "submissions": 0, "passed": 0,
                                                   "statuses": Counter()})
                entry["submissions"] += 1
                entry["passed"] += t.status == "passed"
                entry["statuses"][t.status] += 1
                if t.status != "passed" and t.status not in UNGRADABLE:
                    key = (t.name, first_meaningful_line(t.message, t.status))
                    failures[key] += 1
                    failure_who[key].append(label)
            extra = report.get("extra_data") or {}
            if is_late(extra.get("late")):
                late.append({"submission": label, "seconds_late": extra["late"].get("seconds_late"),
                             "penalty": float(extra["late"].get("penalty") or 0.0),
                             "score": float(report.get("score") or 0.0),
                             "extension": bool(extra["late"].get("extension"))})
            if tests and all(t.status in UNGRADABLE for t in tests):
                ungradable.append({"submission": label, "status": tests[0].status,
                                   "reason": first_meaningful_line(tests[0].message, tests[0].status)})
        for entry in checks.values():
            entry["pass_rate"] = entry["passed"] / entry["submissions"]
            entry["statuses"] = dict(sorted(entry["statuses"].items()))
        ordered = sorted(failures.items(), key=lambda item: (-item[1], item[0]))[:TOP_FAILURES]
        out[assignment] = {
            "assignment": assignment,
            "submissions": len(group),
            "max_score": max_score,
            "mean": statistics.fmean(scores) if scores else 0.0,
            "median": statistics.median(scores) if scores else 0.0,
            "min": min(scores, default=0.0),
            "max": max(scores, default=0.0),
            "scores": {_label(r): s for r, s in zip(group, scores)},
            "distribution": [{"low": lo, "high": hi, "count": c} for (lo, hi), c in zip(bins, counts)],
            "checks": list(checks.values()),
            "failures": [{"check": check, "message": message, "count": count, "submissions": failure_who[(check, message)]}
                         for (check, message), count in ordered],
            "late": late,
            "ungradable": ungradable,
        }
    return out


# ---------------------------------------------------------------------------------------------
# Figures


def _svg_img(svg: str, alt: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img src="data:image/svg+xml;base64,{data}" alt="{html.escape(alt, quote=True)}">'


def _figures(summary: dict) -> tuple[str, str]:
    return _score_figure(summary), _pass_rate_figure(summary)


def _ticks(top: float, most: int = 6) -> list[float]:
    """Round axis ticks from 0 to at least ``top``: steps of 1, 2 or 5 times a power of ten (integers for counts)."""
    if top <= 0:
        return [0, 1]
    raw = top / most
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1) if float(top).is_integer() else step
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def _text(x: float, y: float, words: str, anchor: str = "middle", size: int = 11, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {extra}>'
            f"{html.escape(words)}</text>")


def bar_chart(values: list[float], labels: list[str], title: str, value_label: str, category_label: str = "",
              horizontal: bool = False, colour: str = "#3465a4", top: float | None = None) -> str:
    """A bar chart as a self-contained SVG (black text on white, so it reads in either site theme).

    Drawn by hand rather than by matplotlib: an instructor's regrade of one student redraws
    both figures, and importing and running matplotlib cost about a second of it.
    """
    ticks = _ticks(top if top is not None else max(values, default=0))
    scale = ticks[-1] or 1
    n = max(len(values), 1)
    out = []
    if horizontal:
        left = 12 + 6.5 * max((len(label) for label in labels), default=0)
        width, bar, top_margin = left + 420, 22, 34
        height = top_margin + bar * n + 44
        span = width - left - 20
        for tick in ticks:
            x = left + span * tick / scale
            out.append(f'<line x1="{x:.1f}" y1="{top_margin}" x2="{x:.1f}" y2="{top_margin + bar * n}" '
                       'stroke="#d0d0d0"/>')
            out.append(_text(x, top_margin + bar * n + 14, f"{tick:g}", size=10))
        for i, (value, label) in enumerate(zip(values, labels)):
            y = top_margin + bar * i
            out.append(f'<rect x="{left:.1f}" y="{y + 3:.1f}" width="{span * value / scale:.1f}" '
                       f'height="{bar - 6}" fill="{colour}"/>')
            out.append(_text(left - 6, y + bar / 2 + 4, label, anchor="end", size=10))
        out.append(_text(left + span / 2, height - 10, value_label))
    else:
        left, top_margin, bar = 56, 34, max(18, min(48, 480 // n))
        longest = max((len(label) for label in labels), default=0)
        rotate = n > 10 or 5.5 * longest > bar  # labels wider than a bar, slanted so they do not collide
        bottom = 44 + (int(3.8 * longest) if rotate else 0)
        width = left + bar * n + 20
        height = top_margin + 200 + bottom
        base = top_margin + 200
        for tick in ticks:
            y = base - 200 * tick / scale
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + bar * n}" y2="{y:.1f}" stroke="#d0d0d0"/>')
            out.append(_text(left - 6, y + 4, f"{tick:g}", anchor="end", size=10))
        for i, (value, label) in enumerate(zip(values, labels)):
            x = left + bar * i
            h = 200 * value / scale
            out.append(f'<rect x="{x + 2:.1f}" y="{base - h:.1f}" width="{bar - 4}" height="{h:.1f}" '
                       f'fill="{colour}"/>')
            cx = x + bar / 2
            out.append(_text(cx, base + 14, label, anchor="end" if rotate else "middle", size=9,
                             extra=f'transform="rotate(-45 {cx:.1f} {base + 14:.1f})"' if rotate else ""))
        out.append(_text(left + bar * n / 2, height - 6, category_label))
        out.append(_text(14, base - 100, value_label, extra=f'transform="rotate(-90 14 {base - 100})"'))
    width = max(width, 7.5 * len(title) + 20)  # a class with few distinct scores draws few bars; keep the title whole
    out.append(_text(width / 2, 20, title, size=13))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(out)}</svg>')


def _score_figure(summary: dict) -> str:
    dist = summary["distribution"]
    labels = [_bin_label(d, i == len(dist) - 1) for i, d in enumerate(dist)]
    svg = bar_chart([d["count"] for d in dist], labels,
                    f"{summary['assignment']}: scores of {summary['submissions']} submissions", "submissions",
                    "score")
    busiest = max(dist, key=lambda d: d["count"])
    return _svg_img(svg, f"Bar chart of the score distribution of {summary['submissions']} submissions; the most "
                    f"common range is {_bin_label(busiest, busiest is dist[-1])} with {busiest['count']}. "
                    "The table below gives every bar.")


def _pass_rate_figure(summary: dict) -> str:
    checks = summary["checks"]
    svg = bar_chart([100 * c["pass_rate"] for c in checks], [c["name"] for c in checks], "Pass rate of each check",
                    "% of submissions passing", horizontal=True, colour="#4e9a06", top=100)
    if not checks:
        return _svg_img(svg, "No checks were graded.")
    worst = min(checks, key=lambda c: c["pass_rate"])
    return _svg_img(svg, f"Horizontal bar chart of the pass rate of {len(checks)} checks; the lowest is "
                    f"{worst['name']} at {100 * worst['pass_rate']:.0f}%. The table below gives every bar.")


def _bin_label(d: dict, last: bool) -> str:
    if last:
        return f"{points(d['low'])} (full marks)"
    return points(d["low"]) if d["high"] - d["low"] == 1 else f"{points(d['low'])}–{points(d['high'])}"


# ---------------------------------------------------------------------------------------------
# The page


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "marked late by Canvas"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days} d {hours} h" if days else f"{hours} h {rest // 60} min"


def summary_html(summary: dict) -> str:
    e = html.escape
    scores_img, rates_img = _figures(summary)
    body = [f"<h1>{e(summary['assignment'])}: class summary</h1>",
            table("Scores (after late penalties; an ungradable submission counts with its report's 0)",
                  ["submissions", "mean", "median", "lowest", "highest", "out of"],
                  [[str(summary["submissions"]), f"{summary['mean']:.2f}"]
                   + [points(summary[k]) for k in ("median", "min", "max", "max_score")]], numeric=set(range(6))),
            "<h2>Score distribution</h2>", f"<figure>{scores_img}</figure>"]
    dist = summary["distribution"]
    body.append(table("Submissions per score range (a score from k up to, not including, the next range)",
                      ["score", "submissions"],
                      [[e(_bin_label(d, i == len(dist) - 1)), str(d["count"])] for i, d in enumerate(dist)], {1}))

    rows = []
    for c in summary["checks"]:
        others = ", ".join(f"{STATUS_TEXT.get(s, s)} ({s}): {k}" for s, k in c["statuses"].items() if s != "passed")
        rows.append([f"<code>{e(c['name'])}</code>{' (hidden)' if c['hidden'] else ''}<br>"
                     f"<span class=\"muted\">{e(c['title'])}</span>", points(c["max_score"]),
                     f"{c['passed']} / {c['submissions']}", f"{100 * c['pass_rate']:.1f}%", e(others) or "—"])
    body += ["<h2>Checks</h2>", f"<figure>{rates_img}</figure>",
             table("Each check: how many submissions passed it, and what the others got",
                   ["check", "points", "passed", "pass rate", "other results"], rows, {1, 2, 3})]

    sections = [
        ("Most common failures", "No check failed.", "Failure messages grouped by check and first meaningful line",
         ["check", "message", "count", "submissions"], {2},
         [[f"<code>{e(f['check'])}</code>", e(f["message"]), str(f["count"]), e(", ".join(f["submissions"]))]
          for f in summary["failures"]]),
        ("Late submissions", "None.", "Submitted after the due date (the student's own, where they have an "
         "extension)", ["submission", "late by", "penalty (points)", "score"], {1, 2, 3},
         [[e(x["submission"]) + (" (extension)" if x.get("extension") else ""), _duration(x["seconds_late"]),
           points(x["penalty"]), points(x["score"])] for x in summary["late"]]),
        ("Ungradable submissions", "None.", "Submissions no check could run on", ["submission", "status", "why"], set(),
         [[e(u["submission"]), e(u["status"]), e(u["reason"])] for u in summary["ungradable"]]),
    ]
    for heading, empty, caption, columns, numeric, rows in sections:
        body.append(f"<h2>{heading}</h2>")
        body.append(table(caption, columns, rows, numeric) if rows else f"<p>{empty}</p>")
    return page(f"{summary['assignment']}: class summary", "\n".join(body))


def write_summary(folder: Path, reports: list[dict], cache=None) -> list[Path]:
    """Write ``<folder>/summary-<assignment>.html`` for each assignment in ``reports``; return the paths.

    With ``cache`` (an :class:`autograder.grading.report.OutputCache`), a page whose reports have not
    changed is not drawn again.
    """
    from autograder.grading.report import digest, module_digest, report_key

    groups: dict[str, list[dict]] = defaultdict(list)
    for report in reports:
        groups[str((report.get("extra_data") or {}).get("assignment") or "unknown_assignment")].append(report)
    version = module_digest(sys.modules[__name__], sys.modules["autograder.outputs.feedback"])
    written = []
    for assignment, group in sorted(groups.items()):
        path = Path(folder) / f"summary-{safe_name(assignment, 'unknown_assignment')}.html"
        key = digest(version, [report_key(r) for r in group])
        if cache is None or not cache.fresh(path, key):
            write_text(path, summary_html(summarise(group)[assignment]))
            if cache is not None:
                cache.record(path, key)
        written.append(path)
    return written
