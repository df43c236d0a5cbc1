"""The reproduction report: ``report.md`` and a static ``report.html`` (plots embedded, no scripts).

Both are written from the same :class:`Section` objects, one per experiment, grouped by paper: the paper's
numbers against ours with the tolerance and the verdict, the findings, the plots, how to re-run one cell
(the command and the version), the cells' compute time and this run's wall time.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from experiments.reproduce.store import atomic_write_text
from experiments.reproduce.verdict import AGREES, DISAGREES, NOT_COMPUTED, OUTSIDE, WITHIN, Outcome

QUICK_BANNER = ("**Quick run: these are NOT the headline numbers.** `--quick` runs small instances, short "
                "windows and few cells so that the whole report is built in minutes; verdicts below judge the "
                "quick numbers against the paper's full-size ones and are expected to differ. Run without "
                "`--quick` for the headline comparison.")


@dataclass
class Section:
    """What the report says about one experiment."""

    name: str
    paper: str
    title: str
    about: str
    outcomes: list[Outcome]
    findings: str
    plots: list[Path]
    cells_planned: int
    cells_finished: int
    cells_failed: list[tuple[dict, str]]
    compute_s: float  # sum of the finished cells' wall times (all runs)
    computed_now: int
    elapsed_s: float  # wall time from this run's first to last finished cell of this experiment
    table_path: Path
    example_params: dict | None
    version: str  # of the code that computed the cells (several, with counts, if runs differed)


@dataclass
class Report:
    """The whole report: run settings and one section per experiment."""

    out_dir: Path
    quick: bool
    backend: str
    workers: int
    command: str
    version: str
    wall_s: float
    sections: list[Section] = field(default_factory=list)
    report_only: bool = False  # built from finished cells by --report-only: nothing was computed


def cell_command(experiment: str, params: dict) -> str:
    """The shell command that recomputes one cell and prints its rows."""
    return (f"python -m experiments.reproduce.cell {shlex.quote(experiment)} "
            f"--params {shlex.quote(json.dumps(params, sort_keys=True))}")


def write(report: Report) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``report.out_dir``; return their paths."""
    md_path, html_path = report.out_dir / "report.md", report.out_dir / "report.html"
    atomic_write_text(md_path, markdown(report))
    atomic_write_text(html_path, to_html(report))
    return md_path, html_path


# ---- markdown --------------------------------------------------------------------------------------

def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.6g}"


def _duration(s: float) -> str:
    if s is None or math.isnan(s):
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def verdict_counts(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {v: 0 for v in (WITHIN, OUTSIDE, AGREES, DISAGREES, NOT_COMPUTED)}
    for o in outcomes:
        counts[o.verdict] += 1
    return counts


def claims_table(outcomes: list[Outcome]) -> list[list[str]]:
    """Header + rows: claim, paper, ours, tolerance, verdict, source and note."""
    rows = [["claim", "paper", "ours", "tolerance", "verdict", "source / note"]]
    for o in outcomes:
        c = o.claim
        note = "; ".join(x for x in (c.source, c.note, o.error) if x)
        rows.append([c.label, c.paper_text, _num(o.ours), c.tolerance_text, o.verdict, note])
    return rows


def _md_table(rows: list[list[str]]) -> list[str]:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(cell(x) for x in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows[1:]]
    return out


def summary_rows(report: Report) -> list[list[str]]:
    rows = [["paper", "experiment", "cells", "within", "outside", "direction agrees", "direction disagrees",
             "not computed", "compute time"]]
    for s in report.sections:
        c = verdict_counts(s.outcomes)
        rows.append([s.paper, s.name, f"{s.cells_finished}/{s.cells_planned}", str(c[WITHIN]), str(c[OUTSIDE]),
                     str(c[AGREES]), str(c[DISAGREES]), str(c[NOT_COMPUTED]), _duration(s.compute_s)])
    return rows


def _rerun_lines(report: Report, s: Section) -> list[str]:
    lines = [f"Cells computed by: {s.version}."]
    if s.example_params is not None:
        lines.append(f"Re-run one cell (the first of this run): `{cell_command(s.name, s.example_params)}`")
    quick = " --quick" if report.quick else ""
    lines.append(f"Re-run this experiment: `gpusched reproduce --only {s.name}{quick} --out {report.out_dir}` "
                 f"(finished cells are kept; delete `{s.name}/cells/` to recompute them)")
    return lines


def _partial(s: Section) -> str:
    """A warning for a section whose cells are not all finished ('' when they are)."""
    if s.cells_finished >= s.cells_planned:
        return ""
    return (f"**Partial: {s.cells_finished} of {s.cells_planned} cells finished.** The numbers and verdicts "
            f"below are on those cells only; the same command computes the rest.")


def _cells_line(s: Section) -> str:
    failed = f", **{len(s.cells_failed)} failed** (run again to retry them)" if s.cells_failed else ""
    now = (f"{s.computed_now} computed in this run, in {_duration(s.elapsed_s)} of wall time" if s.computed_now
           else "none computed in this run (all reused)")
    return (f"Cells: {s.cells_finished} of {s.cells_planned} finished{failed}; {now}. Compute time "
            f"{_duration(s.compute_s)} (sum of the cells' wall times). Table: "
            f"`{s.table_path.relative_to(s.table_path.parents[1])}`.")


def _run_line(report: Report) -> str:
    if report.report_only:
        return f"Built from the cells already finished; nothing computed ({_duration(report.wall_s)})."
    return (f"Backend: {report.backend} ({report.workers} worker{'s' if report.workers != 1 else ''}); "
            f"wall time {_duration(report.wall_s)}.")


def markdown(report: Report) -> str:
    lines = ["# gpusched: reproduction report", ""]
    if report.quick:
        lines += [QUICK_BANNER, ""]
    lines += [f"Command: `{report.command}`  ", f"Version: {report.version}  ", _run_line(report), "",
              "## Summary", ""]
    lines += _md_table(summary_rows(report)) + [""]
    for paper, sections in _by_paper(report).items():
        lines += [f"## {paper}", ""]
        for s in sections:
            lines += [f"### {s.title} (`{s.name}`)", ""]
            if report.quick:
                lines += ["*Quick run: not the headline numbers.*", ""]
            if s.about:
                lines += [s.about.strip(), ""]
            if partial := _partial(s):
                lines += [partial, ""]
            if s.outcomes:
                lines += _md_table(claims_table(s.outcomes)) + [""]
            if s.findings:
                lines += [s.findings.strip(), ""]
            for p in s.plots:
                lines += [f"![{p.stem}]({p.relative_to(report.out_dir).as_posix()})", ""]
            lines += [_cells_line(s), ""]
            for err_params, err in s.cells_failed[:5]:
                lines += [f"- failed cell `{json.dumps(err_params, sort_keys=True)}`: "
                          f"`{err.strip().splitlines()[-1] if err.strip() else err}`"]
            if s.cells_failed:
                lines.append("")
            lines += [line + "  " for line in _rerun_lines(report, s)] + [""]
    return "\n".join(lines)


def _by_paper(report: Report) -> dict[str, list[Section]]:
    out: dict[str, list[Section]] = {}
    for s in report.sections:
        out.setdefault(s.paper, []).append(s)
    return out


# ---- html ------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{background:#f3f3f3;padding:1px 3px}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:0.8em}img{max-width:100%}
.within{background:#d9f2d9}.outside{background:#f8d7da}.agrees{background:#e6f0ff}.disagrees{background:#fde2c8}
.notcomputed{background:#eee}"""
_VERDICT_CLASS = {WITHIN: "within", OUTSIDE: "outside", AGREES: "agrees", DISAGREES: "disagrees",
                  NOT_COMPUTED: "notcomputed"}


def inline_html(text: str) -> str:
    """Markdown inline markup (``code``, **bold**, *italic*) as HTML, the rest escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)
        out.append(s)
    return "".join(out)


def block_html(text: str) -> str:
    """A small subset of markdown as HTML: paragraphs, ``-`` lists, pipe tables and ``#`` headings."""
    out: list[str] = []
    lines = text.strip().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
            continue
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in block]
            rows = [r for r in rows if not all(re.fullmatch(r":?-{2,}:?", c) for c in r)]
            out.append(_html_table(rows))
            continue
        if re.match(r"\s*[-*] ", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                items.append(re.sub(r"^\s*[-*] ", "", lines[i]))
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and not re.match(r"\s*[-*] ", lines[i]):
                    items[-1] += " " + lines[i].strip()
                    i += 1
            out.append("<ul>" + "".join(f"<li>{inline_html(x)}</li>" for x in items) + "</ul>")
            continue
        m = re.match(r"(#{1,6}) (.*)", line)
        if m:
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline_html(m.group(2))}</h{level}>")
            i += 1
            continue
        para = []
        while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith("|") \
                and not re.match(r"\s*[-*] ", lines[i]):
            para.append(lines[i].strip())
            i += 1
        out.append(f"<p>{inline_html(' '.join(para))}</p>")
    return "\n".join(out)


def _html_table(rows: list[list[str]], verdict_col: int | None = None) -> str:
    head = "".join(f"<th>{inline_html(c)}</th>" for c in rows[0])
    body = []
    for r in rows[1:]:
        cells = []
        for j, c in enumerate(r):
            cls = f' class="{_VERDICT_CLASS[c]}"' if j == verdict_col and c in _VERDICT_CLASS else ""
            cells.append(f"<td{cls}>{inline_html(str(c).replace(chr(92) + '|', '|'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


def to_html(report: Report) -> str:
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         "<title>gpusched reproduction report</title>", f"<style>{_CSS}</style></head><body>",
         "<h1>gpusched: reproduction report</h1>"]
    if report.quick:
        h.append(f'<p class="banner">{inline_html(QUICK_BANNER)}</p>')
    h.append(f"<p>Command: <code>{html.escape(report.command)}</code><br>Version: {html.escape(report.version)}"
             f"<br>{html.escape(_run_line(report))}</p>")
    h += ["<h2>Summary</h2>", _html_table(summary_rows(report))]
    for paper, sections in _by_paper(report).items():
        h.append(f"<h2>{html.escape(paper)}</h2>")
        for s in sections:
            h.append(f"<h3>{html.escape(s.title)} (<code>{html.escape(s.name)}</code>)</h3>")
            if report.quick:
                h.append("<p><i>Quick run: not the headline numbers.</i></p>")
            if s.about:
                h.append(block_html(s.about))
            if partial := _partial(s):
                h.append(f'<p class="banner">{inline_html(partial)}</p>')
            if s.outcomes:
                h.append(_html_table(claims_table(s.outcomes), verdict_col=4))
            if s.findings:
                h.append(block_html(s.findings))
            h += [_img(p) for p in s.plots]
            h.append(f"<p>{inline_html(_cells_line(s))}</p>")
            if s.cells_failed:
                h.append("<ul>" + "".join(
                    f"<li>failed cell <code>{html.escape(json.dumps(p, sort_keys=True))}</code>: "
                    f"<code>{html.escape(e.strip().splitlines()[-1] if e.strip() else e)}</code></li>"
                    for p, e in s.cells_failed[:5]) + "</ul>")
            h.append("<p>" + "<br>".join(inline_html(x) for x in _rerun_lines(report, s)) + "</p>")
    h.append("</body></html>")
    return "\n".join(h)
