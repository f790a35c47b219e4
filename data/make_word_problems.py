"""Make the demo's one-step word problems, deterministically (seeded), with gold answers.

"NAME has A THINGS and gets B more. How many THINGS does NAME have now?" with A, B in 2..20:
problems the embedded SmolLM2-135M-Instruct teacher solves about half the time, so selective
distillation has something to select. Run from the repository root:

    python data/make_word_problems.py   # writes data/word_problems/{train,test}.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Sam", "Mia", "Leo", "Ava", "Noah", "Emma", "Liam", "Zoe", "Omar", "Ines", "Kai",
         "Lena", "Ravi", "Yuki", "Tom", "Nora"]
THINGS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards",
          "coins", "stamps", "balloons", "crayons"]
VERBS = ["gets", "finds", "buys", "is given", "picks up"]


def make(seed: int, count: int, exclude: set[str]) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen = set(exclude)
    while len(rows) < count:
        name, thing, verb = rng.choice(NAMES), rng.choice(THINGS), rng.choice(VERBS)
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        question = (
            f"{name} has {a} {thing} and {verb} {b} more. How many {thing} does {name} have now?"
        )
        if question in seen:
            continue
        seen.add(question)
        row_id = f"wp-{seed}-{len(rows):04d}"
        rows.append({"id": row_id, "question": question, "answer": str(a + b)})
    return rows


def main() -> None:
    out = Path(__file__).resolve().parent / "word_problems"
    out.mkdir(exist_ok=True)
    train = make(seed=1, count=600, exclude=set())
    test = make(seed=2, count=200, exclude={r["question"] for r in train})
    for name, rows in (("train", train), ("test", test)):
        with open(out / f"{name}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {len(train)} train and {len(test)} test problems to {out}")


if __name__ == "__main__":
    main()
