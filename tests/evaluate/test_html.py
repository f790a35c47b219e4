"""report.html: the markdown conversion, escaping of model output, every model's rows, run's
page with its funnel, and the page rendered by headless Chromium (`-m browser`) with no console
errors, its tables, images and the side-by-side filter working."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.evaluate.config import EvalSample, EvaluateConfig
from cotdistill.evaluate.html import (
    markdown_html,
    page,
    side_by_side,
    write_run_html,
)
from cotdistill.evaluate.stage import run_evaluate

EVIL = '<script>alert("x")</script></pre><img src=x onerror=alert(1)>'
# problem -> (question, gold, category, teacher's answer, student's answer)
PROBLEMS = {
    "p1": ("What is 2 + 3?", "5", "add", "5", "5"),
    "p2": ("What is 3 + 4?", "7", "add", "7", "1"),
    "p3": ("What is 9 - 5?", "4", 'sub & "minus" <x>', "4", "4"),
    "p4": ("What is 8 - 6?", "2", 'sub & "minus" <x>', "3", "9"),
}


class Tables(HTMLParser):
    """The text of every table's cells, row by row, and the <img> sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def parsed(html: str) -> Tables:
    tables = Tables()
    tables.feed(html)
    return tables


def fake_evaluation(tmp_path: Path) -> tuple[Path, EvaluateConfig]:
    """A small evaluation on the fake backend: two models, two categories, one completion
    that tries to inject markup."""
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(
        json.dumps({"id": pid, "question": q, "answer": a, "category": c}) + "\n"
        for pid, (q, a, c, _, _) in PROBLEMS.items()))
    by_question = {p[0]: pid for pid, p in PROBLEMS.items()}
    for name in ("teacher", "student"):  # local folders: nothing is looked up on the hub
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_text(name)

    def factory(model: str) -> FakeBackend:
        def respond(question: str, index: int) -> str:
            pid = by_question[question.rsplit("] ", 1)[-1]]
            name = Path(model).name
            answer = PROBLEMS[pid][3 if name == "teacher" else 4]
            noise = EVIL if (name, pid) == ("student", "p2") else "Adding up"
            return f"{noise} gives \\boxed{{{answer}}}"

        return FakeBackend(model, responder=respond, logprob=-0.2)

    config = EvaluateConfig(problems=problems, out=tmp_path / "eval",
                            model=[f"{n}={tmp_path / n}" for n in ("teacher", "student")],
                            n=1,
                            bootstrap_resamples=100, category_field="category",
                            prompt_template="plain", latency_prompts=0)
    run_evaluate(config, factory)
    return tmp_path / "eval", config


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EvaluateConfig]:
    return fake_evaluation(tmp_path_factory.mktemp("html"))


def sample(model: str, pid: str, completion: str, correct: bool, category: str | None = None
           ) -> EvalSample:
    return EvalSample(model=model, problem_id=pid, sample_index=0, question="q?",
                      gold_answer="1", completion=completion, predicted_answer="1",
                      verdict="correct" if correct else "wrong", correct=correct,
                      num_tokens=3, finish_reason="stop", mean_logprob=None, category=category)


@pytest.mark.parametrize(("markdown", "expected"), [
    ("# Title", "<h1>Title</h1>"),
    ("### `x` **y**", "<h3><code>x</code> <strong>y</strong></h3>"),
    ("| a | b |\n|---|---:|\n| 1 | <2> |",
     "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td>"
     "<td>&lt;2&gt;</td></tr></tbody></table>"),
    ("one\ntwo\n\nthree", "<p>one two</p>\n<p>three</p>"),
    ("- a\n- `b`", "<ul><li>a</li>\n<li><code>b</code></li></ul>"),
    ("  ```text\n  <b>x</b>\n  ```", "<pre>&lt;b&gt;x&lt;/b&gt;</pre>"),
    ("![plot](missing.png)", "<p><em>plot (image missing)</em></p>"),
])
def test_markdown_html(markdown: str, expected: str, tmp_path: Path) -> None:
    assert markdown_html(markdown, tmp_path) == expected


def test_images_are_inlined(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    html = markdown_html("![acc](a.png)", tmp_path)
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in html


def test_model_output_is_shown_as_text() -> None:
    samples = [sample("teacher", "p1", "fine", True, category='a"b'),
               sample("student", "p1", EVIL, False, category='a"b')]
    html = page("t", side_by_side(samples, "teacher"))
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;/pre&gt;" in html
    assert html.count("<script>") == 2  # the page's own two
    assert 'data-category="a&quot;b"' in html
    row = parsed(html).tables[0][1]
    assert row[4].startswith("wrong") and EVIL in row[4]  # the text, as a reader sees it


def test_every_model_has_its_rows(evaluation: tuple[Path, EvaluateConfig]) -> None:
    out, _ = evaluation
    html = (out / "report.html").read_text()
    tables = parsed(html).tables
    accuracy = tables[0]
    assert [r[0] for r in accuracy[1:]] == ["teacher", "student"]
    paired = next(t for t in tables if t[0][:3] == ["model", "minus", "difference"])
    assert paired[1][:2] == ["student", "teacher"] and paired[1][2].startswith("-0.250 [")
    assert any(t[0][0] == "model" and "disk" in " ".join(t[0]) for t in tables)  # deployment
    side = tables[-1]
    assert side[0][3:] == ["teacher", "student"]
    assert [r[0] for r in side[1:]] == [f"{p} #0" for p in PROBLEMS]
    assert len(parsed(html).images) >= 4
    assert "<script>alert" not in html
    assert "Failure modes" in html and "Answers side by side" in html


def test_run_page_has_funnel_and_evaluation(evaluation: tuple[Path, EvaluateConfig],
                                            tmp_path: Path) -> None:
    out, config = evaluation
    funnel = {"traces_in": 10, "kept": 6, "rejected": 4,
              "steps": [{"check": "answer", "in": 10, "rejected": 3, "out": 7},
                        {"check": "<len>", "in": 7, "rejected": 1, "out": 6}]}
    path = write_run_html(out.parent / "report.html", "# cotdistill run\n\n| stage |\n|---|\n"
                          "| filter |", [("filter", funnel)], out, config)
    html = path.read_text()
    tables = parsed(html).tables
    assert tables[1][0][:4] == ["check", "in", "rejected", "out"]
    assert tables[1][2][:4] == ["<len>", "7", "1", "6"]
    assert '<a href="eval/report.html">' in html
    assert "<h2>Evaluation</h2>" in html and "<h3>Failure modes</h3>" in html
    assert tables[-1][0][3:] == ["teacher", "student"]


def test_run_page_says_why_it_shows_no_answers(evaluation: tuple[Path, EvaluateConfig]) -> None:
    # The stages are done: an unreadable results file leaves a page that says what is missing.
    out, config = evaluation
    (out / "results.jsonl").write_text('{"model": "teacher"}\n')
    html = write_run_html(out.parent / "report.html", "# cotdistill run", [], out,
                          config).read_text()
    assert "Answers not shown" in html and "results.jsonl:1" in html
    assert "<h2>Evaluation</h2>" in html


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def render(page_url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (`apt-get install -y chromium`, as .ci/run "
                    "does), or deselect this test with -m 'not browser'")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", *extra, page_url],
        capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.browser
def test_page_renders_in_chromium(evaluation: tuple[Path, EvaluateConfig],
                                  tmp_path: Path) -> None:
    out, _ = evaluation
    url = (out / "report.html").as_uri()
    done = render(url + "#model=1&outcome=wrong", tmp_path, "--dump-dom")
    dom = done.stdout
    # No script error, failed resource or CSP violation (a fetch) on the page or in the log.
    assert re.search(r'id="page-errors" data-count="0"></pre>', dom), dom[:2000]
    assert "Uncaught" not in done.stderr and "Content Security Policy" not in done.stderr
    rendered = parsed(dom)
    assert len(rendered.images) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in rendered.images)
    assert [r[0] for r in rendered.tables[0][1:]] == ["teacher", "student"]
    # The filter ran: the student was wrong on p2 and p4 only.
    assert "2 of 4 shown" in dom
    visible = re.findall(r'<tr (?!hidden)[^>]*data-r1="wrong"[^>]*>', dom)
    hidden = re.findall(r"<tr [^>]*hidden[^>]*>", dom)
    assert len(visible) == 2 and len(hidden) == 2, (visible, hidden)
    assert "&lt;script&gt;alert" in dom

    shot = tmp_path / "shot.png"
    render(url, tmp_path, f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.stat().st_size > 10_000


@pytest.mark.browser
def test_a_script_error_would_be_seen(tmp_path: Path) -> None:
    """The check above can fail: a page whose script throws shows the error where it looks."""
    bad = tmp_path / "bad.html"
    bad.write_text(page("t", "<script>noSuchFunction()</script>"))
    done = render(bad.as_uri(), tmp_path, "--dump-dom")
    assert 'data-count="1">Uncaught ReferenceError: noSuchFunction' in done.stdout
    assert "Uncaught" in done.stderr
