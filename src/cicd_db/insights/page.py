"""Insights as one self-contained HTML page: figures, charts and tables in a single file
that needs no network when it is opened (a CI artifact read offline).

The charts are SVG drawn by pygal (the `html` extra: `pip install 'cicd-db[html]'`):
pure Python, a 130 kB wheel, about 50 ms to import, no browser-side library. Its one
external script (tooltips, from a CDN) is left out (`js=[]`), so every chart is inline
SVG with its styles. Each figure on the page carries its exact value in a `data-value`
attribute (the JSON value), so a browser test can read the figures back from the DOM.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from html import escape
from typing import Any

from cicd_db.errors import ConfigError, one_line
from cicd_db.insights.figures import Insights, PipelineInsights, Summary
from cicd_db.insights.text import data, job_cells, percent, window_title
from cicd_db.report import seconds_text as _secs

COLORS = {"success": "#2e9e44", "failed": "#d1342f", "cancelled": "#9a9a9a", "running": "#3b7dd8"}
TOP = 10  # jobs a chart shows

STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0; } .window { color: #666; margin-top: .2em; }
dl.figures { display: grid; grid-template-columns: repeat(4, 1fr); gap: .6em; }
dl.figures div { background: #f4f5f7; border-radius: 6px; padding: .6em .8em; }
dt { color: #666; font-size: .85em; } dd { margin: 0; font-size: 1.4em; font-weight: 600; }
section { margin-top: 2em; } svg.pygal-chart { width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e3e3e3; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _pygal() -> Any:
    try:
        import pygal
    except ImportError:
        raise ConfigError(
            "{format} html draws its charts with pygal, which is not installed: "
            "pip install 'cicd-db[html]'",
            arguments=["format"],
        ) from None
    # pygal puts a finder of its own (for its `pygal.maps` plugins, which the page does not
    # use) last in Python's import path, without find_spec: every later import of a module
    # that is not there then warns (ImportWarning) before it fails, and where warnings are
    # errors (a library caller's, the tests') `try: import x / except ImportError` broke.
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "PluginImportFixer"]
    return pygal


def _chart(kind: str, title: str, **options: Any) -> Any:
    pygal = _pygal()
    style = pygal.style.Style(
        background="white",
        plot_background="white",
        colors=tuple(options.pop("colors", COLORS.values())),
        font_family="system-ui, sans-serif",
    )
    return getattr(pygal, kind)(
        title=title,
        style=style,
        js=[],  # no tooltip script from a CDN: the page works offline
        width=1000,
        height=options.pop("height", 360),
        legend_at_bottom=True,
        print_values=False,
        truncate_label=-1,  # dates and job names whole
        **options,
    )


def _svg(chart: Any) -> str:
    return str(chart.render(is_unicode=True, disable_xml_declaration=True))


def _axis(value: float | None) -> str:
    """A duration on an axis: 0 is 0s (a run never lasts 0.0s; an axis starts there)."""
    return "0s" if value == 0 else _secs(value)


def _figure(label: str, key: str, value: Any, text: str) -> str:
    return (
        f'<div><dt>{escape(label)}</dt><dd data-figure="{escape(key)}" '
        f"data-value='{escape(json.dumps(value))}'>{escape(text)}</dd></div>"
    )


def page(result: Insights) -> str:
    """The whole page, ending in a newline."""
    if isinstance(result, Summary):
        title, body = "CI insights: every pipeline", _summary_body(result)
    else:
        title, body = f"CI insights: {result.pipeline}", _pipeline_body(result)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The title cannot be isolated (<bdi> is no text there): its format characters
        # are written as text, a direction override among them.
        f"<title>{escape(one_line(title))}</title><style>{STYLE}</style></head>\n<body>\n"
        f'<h1><bdi>{_html_text(title)}</bdi></h1><p class="window">{escape(window_title(result))}</p>\n'
        f"{body}\n</body></html>\n"
    )


def _pipeline_body(r: PipelineInsights) -> str:
    d = data(r)
    shown = [  # label, key, text
        ("runs", "runs", str(r.runs)),
        ("success rate", "success_rate", percent(r.success_rate)),
        ("p50 duration", "duration_p50_seconds", _secs(r.duration_p50_seconds)),
        ("p95 duration", "duration_p95_seconds", _secs(r.duration_p95_seconds)),
        ("time to green (mean)", "mttr_seconds", _secs(r.mttr_seconds)),
        ("longest red streak", "longest_red_streak", str(r.longest_red_streak)),
        ("failed", "failed", str(r.failed)),
        ("cancelled", "cancelled", str(r.cancelled)),
    ]
    figures = "".join(_figure(label, key, d[key], text) for label, key, text in shown)
    sections = [f'<dl class="figures">{figures}</dl>']
    # Month and day, and the year too where the days span more than one (a window of the
    # last N runs may reach back years: 12-29 of three Decembers read as one).
    years = {day.date.year for day in r.days}
    labels = [day.date.strftime("%m-%d" if len(years) < 2 else "%Y-%m-%d") for day in r.days]
    every = max(1, len(labels) // 15)
    status = _chart(
        "StackedBar",
        "Runs per day, by status",
        x_labels=labels,
        x_labels_major_every=every,
        show_minor_x_labels=False,
    )
    for name in COLORS:
        status.add(name, [getattr(day, name) for day in r.days])
    sections.append(_section("status-per-day", "Status per day", _svg(status)))
    durations = _chart(
        "Line",
        "Run duration per day (finished runs)",
        x_labels=labels,
        x_labels_major_every=every,
        show_minor_x_labels=False,
        value_formatter=_axis,
        colors=("#3b7dd8", "#e08a1e"),
    )
    durations.add("p50", [day.duration_p50_seconds for day in r.days])
    durations.add("p95", [day.duration_p95_seconds for day in r.days])
    sections.append(_section("duration-per-day", "p50 and p95 duration per day", _svg(durations)))
    timed = [j for j in r.jobs if j.duration_p95_seconds is not None]
    slowest = sorted(timed, key=lambda j: -(j.duration_p95_seconds or 0))[:TOP]
    if slowest:
        chart = _chart(
            "HorizontalBar",
            "Slowest jobs (p95, p50)",
            x_labels=[one_line(f"{j.stage} / {j.job}") for j in reversed(slowest)],
            value_formatter=_axis,
            colors=("#e08a1e", "#3b7dd8"),
            height=120 + 36 * len(slowest),
        )
        chart.add("p95", [j.duration_p95_seconds for j in reversed(slowest)])
        chart.add("p50", [j.duration_p50_seconds for j in reversed(slowest)])
        sections.append(_section("slowest-jobs", "Slowest jobs", _svg(chart)))
    flaky = [j for j in r.jobs if j.flaky_commits or j.failed][:TOP]
    if flaky:
        chart = _chart(
            "HorizontalBar",
            "Flakiest jobs: commits that both failed and passed, and failures",
            x_labels=[one_line(f"{j.stage} / {j.job}") for j in reversed(flaky)],
            colors=("#8e44ad", "#d1342f"),
            height=120 + 36 * len(flaky),
        )
        chart.add("flaky commits", [j.flaky_commits for j in reversed(flaky)])
        chart.add("failed runs", [j.failed for j in reversed(flaky)])
        sections.append(_section("flakiest-jobs", "Flakiest jobs", _svg(chart)))
    else:
        sections.append(_section("flakiest-jobs", "Flakiest jobs", "<p>No job failed.</p>"))
    if not r.jobs:
        sections.append(_section("jobs", "Jobs, worst first", "<p>No jobs in the window.</p>"))
        return "\n".join(sections)
    sections.append(
        _section(
            "jobs",
            "Jobs, worst first",
            _table(
                [
                    "stage",
                    "job",
                    "runs",
                    "failed",
                    "allowed failures",
                    "flaky commits",
                    "p50",
                    "p95",
                ],
                [job_cells(j) for j in r.jobs],
            ),
        )
    )
    return "\n".join(sections)


def _summary_body(summary: Summary) -> str:
    lines = summary.pipelines
    if not lines:
        return "<p>No runs in the window.</p>"
    status = _chart("StackedBar", "Runs by status", x_labels=[one_line(p.pipeline) for p in lines])
    for name in COLORS:
        status.add(name, [getattr(p, name) for p in lines])
    durations = _chart(
        "Bar",
        "Run duration (finished runs)",
        x_labels=[one_line(p.pipeline) for p in lines],
        value_formatter=_axis,
        colors=("#3b7dd8", "#e08a1e"),
    )
    durations.add("p50", [p.duration_p50_seconds for p in lines])
    durations.add("p95", [p.duration_p95_seconds for p in lines])
    table = _table(
        ["pipeline", "runs", "success rate", "p50", "p95"],
        [
            [
                p.pipeline,
                str(p.runs),
                percent(p.success_rate),
                _secs(p.duration_p50_seconds),
                _secs(p.duration_p95_seconds),
            ]
            for p in lines
        ],
        numeric_from=1,
    )
    return "\n".join(
        [
            _section("pipelines", "Pipelines, busiest first", table),
            _section("status", "Runs by status", _svg(status)),
            _section("durations", "Durations", _svg(durations)),
        ]
    )


def _section(key: str, heading: str, content: str) -> str:
    return f'<section id="{key}"><h2>{escape(heading)}</h2>\n{content}\n</section>'


def _html_text(text: str) -> str:
    """`text` for the page: a control character written as repr writes it (`\\x1b`, as
    everywhere); a format character (the joiner of 👩‍💻, a direction mark) as a character
    reference, which the browser draws as the character and a terminal showing the file
    as text. Cells are <bdi>: a name's direction marks reorder nothing outside it."""
    escaped = escape(text)
    if escaped.isprintable():
        return escaped
    return "".join(
        ch
        if ch.isprintable()
        else f"&#x{ord(ch):x};"
        if unicodedata.category(ch) == "Cf"
        else one_line(ch)
        for ch in escaped
    )


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 2) -> str:
    """A table whose columns from `numeric_from` on are figures, right-aligned."""

    def cell(tag: str, text: str, n: int) -> str:
        numeric = n >= numeric_from
        return f"<{tag}{' class=n' if numeric else ''}><bdi>{_html_text(text)}</bdi></{tag}>"

    head = "".join(cell("th", h, n) for n, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", c, n) for n, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
