"""Is a made problem new? Exact, n-gram and near-duplicate checks on Unicode-aware words.

Words come from `cotdistill/textstats.py` (letters and digits of any script, one unit per
character in Chinese, Japanese, Thai...), and every number is masked (`#`) before the
n-gram and near-duplicate checks: a problem that differs from an evaluation problem only in
its numbers is that problem, which is exactly what the `numbers` strategy would make.

- against the seeds and each other: exact (same words, numbers included);
- against the evaluation files (`--decontaminate`): exact, any shared `ngram`-word n-gram,
  and near-duplicate: Jaccard similarity of word 3-gram sets >= `near_duplicate`
  (default 0.3; docs/synthesize.md gives the measured similarities that chose it).

    index = Novelty(seeds=[...], evaluation=[...], ngram=10, near_duplicate=0.3)
    index.why_not("Tom has 7 apples ...")  -> "near-duplicate of an evaluation problem (0.83)"
    index.add("Tom has 7 apples ...")
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from cotdistill.textstats import ngrams, words

SHINGLE = 3


def masked_words(text: str) -> list[str]:
    return ["#" if any(c.isdigit() for c in w) else w for w in words(text)]


def shingles(units: list[str]) -> set[tuple[str, ...]]:
    return set(ngrams(units, SHINGLE)) or {tuple(units)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Novelty:
    def __init__(self, seeds: Iterable[str], evaluation: Iterable[str], ngram: int,
                 near_duplicate: float) -> None:
        self.ngram, self.threshold = ngram, near_duplicate
        self.known = {" ".join(words(q)): "a seed problem" for q in seeds}
        self.eval_exact: set[str] = set()
        # n-grams by size: an evaluation problem shorter than `ngram` words is one n-gram
        self.eval_grams: dict[int, set[tuple[str, ...]]] = defaultdict(set)
        self.eval_shingles: list[set[tuple[str, ...]]] = []
        # shingle -> evaluation problems holding it: only those are compared in full
        self.by_shingle: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for question in evaluation:
            units = masked_words(question)
            self.eval_exact.add(" ".join(units))
            if units:
                size = min(ngram, len(units))
                self.eval_grams[size].update(ngrams(units, size))
            sh = shingles(units)
            for gram in sh:
                self.by_shingle[gram].append(len(self.eval_shingles))
            self.eval_shingles.append(sh)

    def nearest_evaluation(self, question: str) -> float:
        """Highest similarity to any evaluation problem (0 when none shares a shingle)."""
        sh = shingles(masked_words(question))
        candidates = {i for gram in sh for i in self.by_shingle.get(gram, ())}
        return max((jaccard(sh, self.eval_shingles[i]) for i in candidates), default=0.0)

    def why_not(self, question: str) -> str | None:
        """Why `question` is not new (None: it is)."""
        plain = " ".join(words(question))
        if not plain:
            return "empty question"
        if plain in self.known:
            return f"duplicate of {self.known[plain]}"
        units = masked_words(question)
        if " ".join(units) in self.eval_exact:
            return "exact duplicate of an evaluation problem (numbers aside)"
        if any(g in grams for size, grams in self.eval_grams.items() for g in ngrams(units, size)):
            return f"shares a {self.ngram}-word n-gram with an evaluation problem"
        similarity = self.nearest_evaluation(question)
        if similarity >= self.threshold:
            return f"near-duplicate of an evaluation problem ({similarity:.2f})"
        return None

    def add(self, question: str, name: str = "another made problem") -> None:
        self.known.setdefault(" ".join(words(question)), name)
