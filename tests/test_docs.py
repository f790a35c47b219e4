"""README.md and docs/: every relative link resolves, every `cotdistill ...` command shown names a
real subcommand and real flags (read from the CLI's own parser), and docs/api.md's script runs."""

from __future__ import annotations

import argparse
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?<![\w/.-])cotdistill\s+([a-zA-Z][\w-]*|(?=-))(.*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The page without its fenced code blocks (a link there is not a link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", prose(path.read_text()), re.M)}


def link_resolves(page: Path, target: str) -> bool:
    if re.match(r"[a-z]+:", target):
        return True  # a URL: not checked (the tests reach no network)
    file, _, anchor = target.partition("#")
    resolved = (page.parent / file).resolve() if file else page
    if not resolved.exists():
        return False
    return not anchor or resolved.suffix != ".md" or anchor in anchors(resolved)


def broken_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not link_resolves(page, t)]


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_relative_links_resolve(path: Path) -> None:
    assert not broken_links(path), f"{page_id(path)}: links to nothing: {broken_links(path)}"


def test_link_check_catches_a_missing_file_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# B\n\n## Real part\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n\n[ok](b.md) [ok](b.md#real-part) [no](c.md) [no](b.md#nope) [ok](#a) [no](#b)\n"
        "```\n[not a link](nowhere.md)\n```\n[web](https://example.com)\n"
    )
    assert broken_links(page) == ["c.md", "b.md#nope", "#b"]


# --- commands ---------------------------------------------------------------------------------


def shown_commands(text: str) -> list[str]:
    """Every `cotdistill ...` command in a shell code block (continuation lines joined, comments
    cut) or an inline code span that starts with `cotdistill `."""
    commands = []
    for language, body in FENCE.findall(text):
        if language in ("python", "yaml", "json"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            match = COMMAND.search(line.split(" #")[0])
            if match:  # a tree's comment may quote a command in backticks: cut there
                commands.append(f"cotdistill {match.group(1)}{match.group(2).split('`')[0]}")
    for span in INLINE.findall(prose(text)):
        if span.startswith("cotdistill "):
            commands.append(span)
    return commands


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_commands() -> dict[str, set[str]]:
    """{"generate": its option strings, "student init": ..., ...} from the real parser."""
    from cotdistill.cli import build_parser

    parser = build_parser()
    commands = {"": set(parser._option_string_actions)}  # `cotdistill --help`
    for name, sub in subparsers(parser).items():
        nested = subparsers(sub)
        for leaf, parser in (nested.items() if nested else [("", sub)]):
            commands[f"{name} {leaf}".strip()] = set(parser._option_string_actions)
    return commands


def command_errors(command: str, known: dict[str, set[str]]) -> list[str]:
    words = command.split() + ["", ""]
    name = "" if words[1].startswith("-") else words[1]
    if f"{name} {words[2]}" in known:
        name = f"{name} {words[2]}"
    elif name not in known:
        return [f"no subcommand {name!r}"]
    return [f"{name}: no flag {flag}" for flag in FLAG.findall(command)
            if flag not in known[name]]


@pytest.fixture(scope="module")
def known() -> dict[str, set[str]]:
    return cli_commands()


@pytest.mark.parametrize("path", PAGES, ids=page_id)
def test_commands_shown_name_real_subcommands_and_flags(
    path: Path, known: dict[str, set[str]]
) -> None:
    errors = [f"`{c}`: {e}" for c in shown_commands(path.read_text())
              for e in command_errors(c, known)]
    assert not errors, f"{page_id(path)}:\n" + "\n".join(errors)


def test_every_command_is_shown_somewhere(known: dict[str, set[str]]) -> None:
    shown = {" ".join(c.split()[1:3]) if c.split()[1] == "student" else c.split()[1]
             for path in PAGES for c in shown_commands(path.read_text())}
    assert set(known) - {""} <= shown, f"never shown: {sorted(set(known) - shown)}"
    assert {"generate", "filter", "train", "student init", "evaluate", "quantize",
            "run"} <= set(known)


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("```bash\ncotdistill generate --problems p --out o \\\n    --n 4  # --comment\n```", []),
        ("```bash\ncotdistill generate --out o \\\n    --no-such-flag 1\n```",
         ["generate: no flag --no-such-flag"]),
        ("```\naccelerate launch -m cotdistill train --student M --shard 0/2\n```",
         ["train: no flag --shard"]),
        ("```bash\ncotdistill student init --teacher M --keep-every 2\n```", []),
        ("```bash\ncotdistill student init --epochs 2\n```", ["student init: no flag --epochs"]),
        ("Run `cotdistill generat --out o` first.", ["no subcommand 'generat'"]),
        ("```\ncotdistill --help\ncotdistill X --help\n```", ["no subcommand 'X'"]),
        ("```python\nimport cotdistill as cd\n```\n`cotdistill` and ~/.cache/cotdistill/x", []),
    ],
)
def test_command_check_catches_what_is_wrong(
    text: str, errors: list[str], known: dict[str, set[str]]
) -> None:
    found = [e for c in shown_commands(text) for e in command_errors(c, known)]
    assert found == errors


# --- docs/api.md's script ---------------------------------------------------------------------


def api_script() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = [body for language, body in FENCE.findall(text) if language == "python"]
    assert blocks, "docs/api.md has no python block"
    return blocks[0]


def test_api_script_is_short_and_uses_the_public_names() -> None:
    import cotdistill

    script = api_script()
    assert len(script.strip().splitlines()) <= 20
    assert script.startswith("import cotdistill as cd\n")
    used = set(re.findall(r"\bcd\.(\w+)", script))
    assert {"GenerateConfig", "run_generate", "FilterConfig", "run_filter", "TrainConfig",
            "run_train", "EvaluateConfig", "run_evaluate"} <= used
    assert used <= set(cotdistill.__all__)
    assert re.search(r'^teacher = "embedded"', script, re.M)


@pytest.mark.train
def test_api_script_runs_the_four_stages(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The script as written, with two substitutions: the tiny model for the embedded teacher,
    and the fake backend in place of vLLM for generation and evaluation (through the runners'
    `backend` / `backend_factory` hooks). Filtering and training are the real ones."""
    import cotdistill
    from cotdistill.backends.fake import FakeBackend

    script = api_script()
    script = script.replace("import cotdistill as cd\n", "", 1)
    script = re.sub(r'^teacher = "embedded".*$', f"teacher = {str(tiny_model)!r}", script,
                    count=1, flags=re.M)
    generated: list[str] = []
    served: list[str] = []

    def run_generate(config):  # noqa: ANN001, ANN202
        generated.append(config.teacher)
        return cotdistill.run_generate(config, FakeBackend(config.teacher))

    def backend(path: str) -> FakeBackend:
        served.append(Path(path).name)
        return FakeBackend(path)

    def run_evaluate(config):  # noqa: ANN001, ANN202
        return cotdistill.run_evaluate(config, backend, tables=False)

    cd = types.SimpleNamespace(**{n: getattr(cotdistill, n) for n in cotdistill.__all__})
    cd.run_generate, cd.run_evaluate = run_generate, run_evaluate
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)

    exec(compile(script, "docs/api.md", "exec"), {"cd": cd, "__name__": "__main__"})

    runs = tmp_path / "runs" / "api"
    assert generated == [str(tiny_model)]
    assert set(served) == {tiny_model.name, "student"}
    for stage in ("generate", "filter", "student", "evaluate"):
        assert (runs / stage / "manifest.json").exists(), stage
    assert (runs / "filter" / "sft.jsonl").read_text().strip()  # the filter kept some traces
    assert (runs / "student" / "model.safetensors").exists()  # a full fine-tune, saved whole
    assert "'models': 2" in capsys.readouterr().out  # the script's own print
