"""report.html: the evaluation as one self-contained page a person opens in a browser.

The page holds everything itself: CSS and a little JS inline, the PNG plots as base64 data
URIs, and a Content-Security-Policy that forbids any fetch, so it works offline and from an
e-mail attachment. Its text is report.md's (converted here, so the two never disagree), then
the paired accuracy differences and a side-by-side browser of every model's answer per problem
and sample, filtered by right / wrong / category with inline JS. Every piece of text goes
through `html.escape`: completions are model output, so untrusted.

    write_evaluation_html(out / "report.html", report_md, samples, config)
    html = page("title", evaluation_body(report_md, out, samples, config))
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path

from cotdistill.errors import InputError
from cotdistill.evaluate.config import EvalSample, EvaluateConfig
from cotdistill.evaluate.measures.samples import by_problem
from cotdistill.infra.files import read_jsonl

# No network at all: images only as data URIs, style and script only inline.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;
color:#222}
h1,h2,h3{margin:1.2em 0 .4em}h2{border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
code{background:#f1f1f1;padding:0 3px;border-radius:3px}
pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;word-break:break-word;
max-height:22em;overflow:auto;margin:.3em 0}
img{max-width:100%;border:1px solid #eee;margin:.4em .4em 0 0}
.right{color:#1a7f37;font-weight:600}.wrong{color:#c62828;font-weight:600}
.filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
.filters label{margin-right:1em}#page-errors:empty{display:none}
#page-errors{color:#c62828}
"""

# Before anything else runs: record script errors and console.error calls on the page, so a
# headless browser's DOM dump shows them (tests/evaluate/test_html.py reads #page-errors).
HEAD_SCRIPT = """
window.pageErrors=[];
function notePageError(m){window.pageErrors.push(String(m));
var el=document.getElementById('page-errors');
if(el){el.textContent=window.pageErrors.join('\\n');el.setAttribute('data-count',
String(window.pageErrors.length));}}
window.addEventListener('error',function(e){notePageError(e.message||'a resource failed')},true);
(function(){var original=console.error;console.error=function(){
notePageError(Array.prototype.join.call(arguments,' '));original.apply(console,arguments);};})();
"""

# The side-by-side filter. The starting choice may come from the address (#model=0&outcome=
# wrong&category=x) so a link can open the page filtered.
FILTER_SCRIPT = """
(function(){
var rows=Array.prototype.slice.call(document.querySelectorAll('#side-by-side tbody tr'));
function value(id){var el=document.getElementById(id);return el?el.value:'';}
function apply(){var m=value('f-model'),o=value('f-outcome'),c=value('f-category'),shown=0;
rows.forEach(function(r){var ok=(c===''||r.getAttribute('data-category')===c)&&
(o===''||r.getAttribute('data-r'+m)===o);r.hidden=!ok;if(ok){shown++;}});
var n=document.getElementById('shown');if(n){n.textContent=shown+' of '+rows.length+' shown';}}
var start=new URLSearchParams(location.hash.slice(1));
['model','outcome','category'].forEach(function(k){var el=document.getElementById('f-'+k);
if(el){if(start.has(k)){el.value=start.get(k);}el.addEventListener('change',apply);}});
apply();
var errors=document.getElementById('page-errors');
if(errors){errors.setAttribute('data-count',String(window.pageErrors.length));
errors.textContent=window.pageErrors.join('\\n');}
})();
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around `body` (already escaped HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{CSS}</style>"
        f"<script>{HEAD_SCRIPT}</script></head>\n<body>\n"
        "<pre id=\"page-errors\" data-count=\"0\"></pre>\n"
        f"{body}\n<script>{FILTER_SCRIPT}</script>\n</body></html>\n"
    )


def image(path: Path, alt: str) -> str:
    """An <img> holding the file itself; the alt text alone when the file is missing."""
    if not path.is_file():
        return f"<p><em>{escape(alt)} (image missing)</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt=\"{escape(alt)}\" src=\"data:image/png;base64,{data}\">"


def inline(text: str) -> str:
    """Escaped text with markdown's `code` and **bold**; the markers survive escaping."""
    text = escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def markdown_html(markdown: str, folder: Path) -> str:
    """The markdown our reports write (headings, pipe tables, paragraphs, `- ` items, fenced
    code, image lines) as HTML; images are read from `folder` and inlined."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line, stripped = lines[i], lines[i].strip()
        if stripped.startswith("```"):
            flush()
            code = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i].strip())
                i += 1
            out.append(f"<pre>{escape(chr(10).join(code))}</pre>")
        elif heading := re.match(r"^(#{1,6}) (.*)$", line):
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            i -= 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]
            out.append(table(rows[0], body, cell=inline))
        elif found := IMAGE_LINE.match(stripped):
            flush()
            out.append(image(folder / found.group(2), found.group(1)))
        elif stripped.startswith("- "):
            flush()
            out.append(f"<ul><li>{inline(stripped[2:])}</li></ul>")
        elif not stripped:
            flush()
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    # Items one after another make one list.
    return "\n".join(out).replace("</ul>\n<ul>", "\n")


def table(header: Sequence[str], rows: Iterable[Sequence[str]],
          cell: Callable[[str], str] = escape, attrs: Sequence[str] | None = None) -> str:
    """A <table>; `cell` turns each text into HTML (escaping it); `attrs`: per-row attributes
    (already escaped)."""
    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    body = []
    for n, row in enumerate(rows):
        extra = f" {attrs[n]}" if attrs else ""
        body.append(f"<tr{extra}>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _grouped(samples: Iterable[EvalSample]) -> dict[str, list[EvalSample]]:
    per_model: dict[str, list[EvalSample]] = {}
    for sample in samples:
        per_model.setdefault(sample.model, []).append(sample)
    return per_model


def side_by_side(samples: Sequence[EvalSample], reference: str) -> str:
    """One row per problem and sample index, one column per model (reference first): its
    answer, verdict and whole completion; selects filter the rows (FILTER_SCRIPT)."""
    per_model = _grouped(samples)
    if not per_model:
        return ""
    names = sorted(per_model, key=lambda n: n != reference)
    grouped = {name: by_problem(per_model[name]) for name in names}
    problems: dict[tuple[str, int], EvalSample] = {}
    for name in names:
        for pid, group in grouped[name].items():
            for s in group:
                problems.setdefault((pid, s.sample_index), s)
    rows, attrs = [], []
    for (pid, index), first in problems.items():
        cells = [f"<code>{escape(pid)}</code> #{index}",
                 escape(first.category or ""),
                 f"{escape(first.question)}<br>gold <code>{escape(str(first.gold_answer))}"
                 "</code>"]
        marks = [f'data-category="{escape(first.category or "", quote=True)}"']
        for m, name in enumerate(names):
            sample = next((s for s in grouped[name].get(pid, []) if s.sample_index == index),
                          None)
            if sample is None:
                cells.append("-")
                continue
            verdict = "right" if sample.correct else "wrong"
            marks.append(f'data-r{m}="{verdict}"')
            cells.append(
                f"<span class=\"{verdict}\">{verdict}</span> "
                f"<code>{escape(str(sample.predicted_answer))}</code> "
                f"({escape(sample.verdict)}, {sample.num_tokens} tokens)"
                f"<details><summary>completion</summary><pre>{escape(sample.completion)}"
                "</pre></details>")
        rows.append(cells)
        attrs.append(" ".join(marks))
    categories = sorted({s.category for s in samples if s.category})
    model_options = "".join(f"<option value=\"{m}\">{escape(n)}</option>"
                            for m, n in enumerate(names))
    category_options = "".join(f"<option value=\"{escape(c, quote=True)}\">{escape(c)}"
                               "</option>" for c in categories)
    filters = (
        "<div class=\"filters\"><label>model <select id=\"f-model\">"
        f"{model_options}</select></label><label>was <select id=\"f-outcome\">"
        "<option value=\"\">right or wrong</option><option value=\"right\">right</option>"
        "<option value=\"wrong\">wrong</option></select></label>"
        "<label>category <select id=\"f-category\"><option value=\"\">all</option>"
        f"{category_options}</select></label><span id=\"shown\"></span></div>")
    head = [escape(h) for h in ["problem", "category", "question", *names]]
    body = table(head, rows, cell=str, attrs=attrs)
    return ("<h2 id=\"answers\">Answers side by side</h2><p>Every model's answer to each "
            "problem and sample; open a completion to read it whole.</p>" + filters
            + body.replace("<table>", "<table id=\"side-by-side\">", 1))


def evaluation_body(report_md: str, folder: Path, samples: Sequence[EvalSample],
                    config: EvaluateConfig, level: int = 1) -> str:
    """report.md (its paired differences included) as HTML with the answers browser at the
    end; `level=2` demotes its headings (a section of `run`'s page)."""
    if level > 1:
        report_md = re.sub(r"(?m)^#", "#" * level, report_md)
    return markdown_html(report_md, folder) + side_by_side(samples, config.reference)


def write_evaluation_html(path: Path, report_md: str, samples: Sequence[EvalSample],
                          config: EvaluateConfig) -> Path:
    path.write_text(page("cotdistill evaluation",
                         evaluation_body(report_md, path.parent, samples, config)))
    return path


def funnel_section(funnels: Sequence[tuple[str, dict]]) -> str:
    """Each filter stage's funnel (its report.json `funnel`): traces in and out of each check,
    with a bar of what is left."""
    if not funnels:
        return ""
    parts = ["<h2>Filter funnel</h2><p>Each rejected trace is counted at its first failing "
             "check.</p>"]
    for name, funnel in funnels:
        start = funnel.get("traces_in") or 0
        rows = []
        for step in funnel.get("steps", []):
            share = step["out"] / start if start else 0.0
            bar = (f"<div style=\"background:#4c78a8;height:9px;width:{share * 200:.0f}px\">"
                   "</div>")
            rows.append([escape(str(step["check"])), str(step["in"]), str(step["rejected"]),
                         str(step["out"]), bar])
        parts.append(f"<h3>{escape(name)}</h3><p>{funnel.get('traces_in')} traces in, "
                     f"{funnel.get('kept')} kept, {funnel.get('rejected')} rejected.</p>")
        parts.append(table(["check", "in", "rejected", "out", "left"], rows, cell=str))
    return "".join(parts)


def write_run_html(path: Path, run_md: str, funnels: Sequence[tuple[str, dict]],
                   evaluate_dir: Path, config: EvaluateConfig | None) -> Path:
    """`run`'s report.html: its chain (report.md without the evaluation), the funnel of each
    filter stage, then the evaluation's own page as a section, with a link to it."""
    body = markdown_html(run_md, path.parent) + funnel_section(funnels)
    report = evaluate_dir / "report.md"
    if config is not None and report.exists():
        results = evaluate_dir / "results.jsonl"
        note = ""
        try:
            samples = list(read_jsonl(results, EvalSample)) if results.exists() else []
        except InputError as exc:
            # The stages are done and their files stand; a page without the answers, saying
            # why, is better than no run report at all.
            samples = []
            note = f"<p><b>Answers not shown:</b> {escape(str(exc))}</p>"
        link = Path(evaluate_dir.name) / "report.html"
        if evaluate_dir.parent.resolve() != path.parent.resolve():
            link = evaluate_dir.resolve() / "report.html"
        body += (f"<p>The evaluation's own page: <a href=\"{escape(link.as_posix())}\">"
                 f"{escape(link.as_posix())}</a>.</p>" + note
                 + evaluation_body(report.read_text(), evaluate_dir, samples, config, level=2))
    path.write_text(page("cotdistill run", body))
    return path
