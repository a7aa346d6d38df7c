"""WordNet's nouns, read straight from the database file `data.noun`.

Miller, "WordNet: A Lexical Database for English", 1995; the file format is
wndb(5) (`man 5 wndb`, WordNet 3.0). Debian's `wordnet-base` package installs the
files under `/usr/share/wordnet/`.

Why parse it here rather than use nltk: nltk is not installed in this project, and
its reader refuses a corpus outside its own data folder and needs a `lexnames`
file Debian does not ship (RECIPES.md). What CLIPScope needs, every noun synset's
words, is the first fields of each data line:

    synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...
    | gloss

Lines that start with two spaces are the license header. `w_cnt` is a two-digit
hexadecimal count; a word's spaces are underscores. In `data.noun` no word
carries the adjective marker that wndb(5) describes ("(a)", "(p)", "(ip)").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
NOUN_FILE = "data.noun"


class WordNetError(ValueError):
    """The WordNet files are missing or a line does not follow wndb(5)."""


@dataclass(frozen=True)
class Synset:
    """One noun synset: its offset in `data.noun`, its words and its gloss."""

    offset: int
    words: tuple[str, ...]  # as written, underscores turned into spaces
    gloss: str


def parse_data_line(line: str) -> Synset:
    """One `data.noun` line (not a header line) -> its synset."""
    body, _, gloss = line.partition(" | ")
    fields = body.split()
    try:
        offset = int(fields[0])
        count = int(fields[3], 16)
        words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
    except (IndexError, ValueError) as error:
        raise WordNetError(f"not a wndb(5) data line: {line[:80]!r}") from error
    if count == 0 or any(not word for word in words):
        raise WordNetError(f"a synset without words: {line[:80]!r}")
    return Synset(offset, words, gloss.strip())


def read_synsets(folder: Path | str = WORDNET_DIR) -> Iterator[Synset]:
    """Every noun synset of `folder/data.noun`, in file order."""
    path = Path(folder) / NOUN_FILE
    if not path.is_file():
        raise WordNetError(
            f"WordNet's nouns are read from {path}, which is missing: "
            "apt-get install --no-install-recommends wordnet-base"
        )
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  ") or not line.strip():
                continue  # the license header
            yield parse_data_line(line)


def key(word: str) -> str:
    """How words are compared: lower case, spaces for underscores, trimmed."""
    return " ".join(word.replace("_", " ").lower().split())


# WordNet's detachment rules for nouns (morphy(7WN)): suffix -> ending
NOUN_SUFFIXES = (
    ("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"),
    ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"),
)  # fmt: skip


def read_exceptions(folder: Path | str = WORDNET_DIR) -> dict[str, str]:
    """`noun.exc`: irregular inflected form -> base form (empty when missing)."""
    path = Path(folder) / "noun.exc"
    if not path.is_file():
        return {}
    pairs = (line.split() for line in path.read_text(encoding="utf-8").splitlines())
    return {key(p[0]): key(p[1]) for p in pairs if len(p) >= 2}


def base_forms(word: str, exceptions: Mapping[str, str] | None = None) -> set[str]:
    """The keys `word` may be an inflection of: itself, morphy's candidates.

    As WordNet's morphy does for nouns: the exception list, then each
    detachment rule whose suffix ends the word ("trousers" -> "trouser").
    Candidates need not be words; they only match WordNet's own.
    """
    k = key(word)
    forms = {k}
    if exceptions and k in exceptions:
        forms.add(exceptions[k])
    for suffix, ending in NOUN_SUFFIXES:
        if k.endswith(suffix) and len(k) > len(suffix):
            forms.add(k[: -len(suffix)] + ending)
    return forms


def synonyms(
    names: Iterable[str],
    synsets: Iterable[Synset],
    exceptions: Mapping[str, str] | None = None,
) -> set[str]:
    """The keys of `names` and of every word sharing a synset with one of them.

    A name matches a synset through its base forms too (`base_forms`: the
    class "trousers" finds the synset {trouser, pant}).
    """
    wanted = {form for name in names for form in base_forms(name, exceptions)}
    found = {key(name) for name in names}
    for synset in synsets:
        keys = {key(word) for word in synset.words}
        if keys & wanted:
            found |= keys
    return found


def noun_candidates(
    synsets: Iterable[Synset], exclude: Iterable[str] = ()
) -> list[str]:
    """Every distinct noun (first spelling kept), minus the `exclude` keys.

    Parameters
    ----------
    synsets : Iterable[Synset]
        Usually `read_synsets()`: 82,115 synsets, 117,770 distinct nouns.
    exclude : Iterable[str]
        Keys (`key`) left out: the ID class names and their synonyms.
    """
    excluded = {key(word) for word in exclude}
    seen: set[str] = set()
    nouns = []
    for synset in synsets:
        for word in synset.words:
            k = key(word)
            if k in excluded or k in seen:
                continue
            seen.add(k)
            nouns.append(word)
    return nouns
