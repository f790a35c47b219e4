"""Benchmark answer extraction: `answers.extract_answer` against the committed version it replaced
(git HEAD) and against math-verify's own extraction (`math_verify.parse` with its default
`LatexExtractionConfig` + `ExprExtractionConfig`), on the same synthetic completions.

    .venv/bin/python bench/bench_answers.py [--texts 3000] [--words 200]

Completions are word salad of `--words` words with numbers in it, ending in one of the answer
forms a small model writes (`\\boxed{}`, `#### N`, "The answer is N ...", an answer in words).
Also counts, on the issue-14 trap table of tests/foundations/test_answers.py, how many answers
each method gets right. Writes bench/results/answers.md and bench/results/answers.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["we", "add", "the", "apples", "then", "subtract", "so", "each", "friend", "gets",
         "share", "multiply", "by", "price", "per", "item", "total", "cost", "boxes", "left"]
ENDINGS = [
    "The answer is \\boxed{{{n}}}.",
    "#### {n}",
    "The answer is {n}, since {a}+{b}.",
    "The answer is: Sam has {n} apples.",
    "So Sam has {n} apples now.",
    "The final answer is $\\frac{{{a}}}{{{b}}}$. I hope it is correct.",
]


def texts(count: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        body = " ".join(rng.choice(WORDS) if rng.random() > 0.1 else str(rng.randint(1, 999))
                        for _ in range(words))
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append(body + ". " + rng.choice(ENDINGS).format(n=a + b, a=a, b=b))
    return out


def committed_extractor():  # noqa: ANN201 - a function loaded from git HEAD
    source = subprocess.run(["git", "show", "HEAD:cotdistill/answers.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "answers_head.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("answers_head", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.extract_answer


def per_second(function, items: list[str]) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--words", type=int, default=200)
    args = parser.parse_args()

    from math_verify import parse

    from cotdistill.answers.extract import extract_answer
    from tests.foundations.test_answers import TRAPS

    head = committed_extractor()
    items = texts(args.texts, args.words)

    def math_verify_text(text: str) -> str | None:
        found = parse(text)
        return str(found[-1]) if found else None

    rates = {
        "extract_answer (this tree)": per_second(extract_answer, items),
        "extract_answer (git HEAD)": per_second(head, items),
        "math_verify.parse": per_second(math_verify_text, items[: max(1, args.texts // 10)]),
    }
    traps = {
        "extract_answer (this tree)": sum(extract_answer(t) == e for t, e in TRAPS),
        "extract_answer (git HEAD)": sum(head(t) == e for t, e in TRAPS),
        # parse() returns [value, extracted text]: the text is compared, as for the others.
        "math_verify.parse": sum(math_verify_text(t) == e for t, e in TRAPS),
    }
    result = {
        "texts": args.texts, "words_per_text": args.words, "trap_cases": len(TRAPS),
        "texts_per_second": {k: round(v) for k, v in rates.items()},
        "traps_right": traps, "python": platform.python_version(), "machine": platform.node(),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Answer extraction", "",
             f"{args.texts} synthetic completions of {args.words} words; {len(TRAPS)} trap cases "
             "from tests/foundations/test_answers.py. `math_verify.parse` timed on a tenth of "
             "the texts.", "",
             "| method | texts/s | traps right |", "|---|---:|---:|"]
    for name in rates:
        lines.append(f"| {name} | {result['texts_per_second'][name]} | {traps[name]} of "
                     f"{len(TRAPS)} |")
    lines += ["", "Command: `.venv/bin/python bench/bench_answers.py "
              f"--texts {args.texts} --words {args.words}`", ""]
    (out / "answers.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
