"""MUSTARD's synthesis loop: seeds -> generator -> parse -> checker -> kept set.

Every generated item gets one record, kept or not, with the reason the checker
gave: `accepted`, `format-error` (not a Problem/Solution/Answer/Formal item), the
first failing statement's reason (`parse-error`, `false`, `unknown`,
`unsupported`), `answer-mismatch` (every statement holds, but a number of the
final answer appears in none of them: the proof is of something else), or
`duplicate` (accepted, but the same problem and statement were kept before). The
records are what the task caches, partitions (the kept ones) and reports:
accept/reject shares by reason, and the diversity of the kept problems (distinct
1-/2-grams over all n-grams, distinct concept pairs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ...generators import Generator
from .checker import REASONS, Verdict, check
from .generator import FormatError, Item, parse_item, prompt_for
from .seeds import Seed

ITEM_REASONS: tuple[str, ...] = (
    "format-error",
    *REASONS,
    "answer-mismatch",
    "duplicate",
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:/\d+)?")
_WORD = re.compile(r"[a-z0-9]+(?:[/^.][a-z0-9]+)*")


def numbers(text: str) -> set[Fraction]:
    """The absolute values of the number literals in `text` (a/b as a fraction)."""
    found = set()
    for literal in _NUMBER.findall(text):
        top, _, bottom = literal.partition("/")
        if bottom and int(bottom) != 0:
            found.add(Fraction(top) / Fraction(bottom))
        found.update(Fraction(part) for part in literal.split("/"))
    return found


def check_item(item: Item, *, timeout_ms: int = 2000) -> Verdict:
    """Accepted only if every formal statement is and the answer is among them."""
    for statement in item.formal:
        verdict = check(statement, timeout_ms=timeout_ms)
        if not verdict.accepted:
            return verdict
    last = verdict
    wanted = {abs(n) for n in numbers(item.answer)}
    formal = set().union(*(numbers(s) for s in item.formal))
    if wanted - formal:
        shown = ", ".join(str(n) for n in sorted(wanted - formal))
        return Verdict(
            "answer-mismatch",
            last.statement_class,
            f"the answer's {shown} is in no formal statement",
        )
    return last


def synthesize(
    generator: Generator,
    seeds: Sequence[Seed],
    *,
    max_new_tokens: int,
    timeout_ms: int = 2000,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """One record per seed: the generated text, the parsed item, the verdict."""
    records: list[dict[str, Any]] = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        texts = generator([prompt_for(s) for s in chunk], max_new_tokens=max_new_tokens)
        for seed, text in zip(chunk, texts, strict=True):
            record: dict[str, Any] = {
                "concepts": [c.name for c in seed.concepts],
                "areas": sorted({c.area for c in seed.concepts}),
                "pair": seed.key,
                "text": text,
            }
            try:
                item = parse_item(text)
            except FormatError as error:
                record.update(reason="format-error", detail=str(error), kept=False)
                records.append(record)
                continue
            verdict = check_item(item, timeout_ms=timeout_ms)
            record.update(
                problem=item.problem,
                solution=item.solution,
                answer=item.answer,
                formal=list(item.formal),
                reason=verdict.reason,
                statement_class=verdict.statement_class,
                detail=verdict.detail,
                counterexample=dict(verdict.counterexample),
                kept=verdict.accepted,
            )
            records.append(record)
    return _deduplicated(records)


def mark_planted(records: list[dict[str, Any]], planted: Sequence[bool]) -> None:
    """Note which records the template writer made false on purpose (in order)."""
    for record, false in zip(records, planted, strict=True):
        record["planted-false"] = bool(false)


def _deduplicated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A kept item seen before (same problem and formal) is kept once."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for record in records:
        if not record["kept"]:
            continue
        key = (record["problem"], tuple(record["formal"]))
        if key in seen:
            record.update(kept=False, reason="duplicate", detail="kept once already")
        seen.add(key)
    return records


# -- what the kept set is like -----------------------------------------------------


def distinct_ngrams(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of `texts` (lower-case words); 0 if none."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = _WORD.findall(text.lower())
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Distinct-1/-2 of the kept problems, distinct concept pairs among them."""
    kept = [r for r in records if r["kept"]]
    pairs = {r["pair"] for r in kept}
    two = {r["pair"] for r in kept if len(r["concepts"]) == 2}
    return {
        "kept": len(kept),
        "distinct-1": distinct_ngrams([r["problem"] for r in kept], 1),
        "distinct-2": distinct_ngrams([r["problem"] for r in kept], 2),
        "distinct-seeds": len(pairs),
        "distinct-concept-pairs": len(two),
        "distinct-concepts": len({c for r in kept for c in r["concepts"]}),
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accept/reject counts and shares by reason (and class), plus diversity."""
    total = len(records)
    reasons = Counter(r["reason"] for r in records)
    classes = Counter(
        (r.get("statement_class") or "none", r["reason"]) for r in records
    )
    summary: dict[str, Any] = {
        "generated": total,
        "accepted": sum(r["kept"] for r in records),
        "accept-rate": sum(r["kept"] for r in records) / total if total else 0.0,
        "reasons": dict(sorted(reasons.items())),
        "reason-shares": {k: v / total for k, v in sorted(reasons.items())},
        "by-class": {f"{c}/{r}": n for (c, r), n in sorted(classes.items())},
        "diversity": diversity(records),
    }
    planted = [r for r in records if "planted-false" in r]
    if planted:
        false = [r for r in planted if r["planted-false"]]
        true = [r for r in planted if not r["planted-false"]]
        summary["planted"] = {
            "false": len(false),
            "false-rejected": sum(not r["kept"] for r in false),
            "true": len(true),
            "true-accepted": sum(r["kept"] or r["reason"] == "duplicate" for r in true),
        }
    return summary
