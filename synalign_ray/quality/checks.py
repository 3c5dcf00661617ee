"""Per-row checks of generated rows: each names why a row is junk (empty, length, letter share, repetition, prompt
echo, copy of an input row), in CHECK_REASONS order. Pure Python and numpy."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import numpy as np

from synalign_ray.config import QualityCheck
from synalign_ray.errors import ConfigError

if TYPE_CHECKING:
    from synalign_ray.config import QualityConfig

CHECK_REASONS: tuple[str, ...] = get_args(QualityCheck)

# Characters a sentence of prose is made of besides letters and whitespace. Digits, slashes, braces, '_', '=',
# '#', '@' are not: digit runs, URLs and JSON fragments are what the letter-share check exists to catch.
PROSE_PUNCTUATION = frozenset("'\"`-,.!?;:()")

# Echoes of this project's prompts and schemas, whatever the preset. Terms holding a character other than a letter
# or space match anywhere in a row; plain words match only a row that is nothing but that word (see check_rows).
PROMPT_ECHO_TERMS: tuple[str, ...] = (
    "[task]", "[sample data]", "[instructions]", "[demonstration summary]", "now, begin", "{", "}",
    '"samples"', '"text"', '"label"', "samples", "sample data",
)

# snake_case identifiers: the schema's attribute keys are written this way ('movie_genre'); real rows almost never
# are (none of SST-2 train, 3 of 10,000 AG News leads).
_IDENTIFIER = re.compile(r"[^\W\d_]+_[^\W\d_]+")
_WORD = re.compile(r"[^\W_]+")
_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class RowBounds:
    """Bounds of the per-row checks (defaults: QualityConfig's); `checks` names the enabled ones."""

    min_chars: int
    max_chars: int
    min_letter_share: float
    max_char_run: int
    repeat_ngram: int
    max_ngram_repeat_share: float
    checks: frozenset[str]

    def __post_init__(self) -> None:
        if self.min_chars >= self.max_chars:
            raise ConfigError(f"quality: min_chars ({self.min_chars}) must be below max_chars ({self.max_chars}); "
                              f"no row could pass")
        unknown = set(self.checks) - set(CHECK_REASONS)
        if unknown:
            raise ConfigError(f"quality: unknown check(s) {sorted(unknown)}; known: {list(CHECK_REASONS)}")

    @classmethod
    def from_config(cls, config: QualityConfig, preset_max_chars: int) -> RowBounds:
        """Bounds for one run: the config's, with max_chars defaulting to the preset's longest sample."""
        return cls(min_chars=config.min_chars, max_chars=config.max_chars or preset_max_chars,
                   min_letter_share=config.min_letter_share, max_char_run=config.max_char_run,
                   repeat_ngram=config.repeat_ngram, max_ngram_repeat_share=config.max_ngram_repeat_share,
                   checks=frozenset(config.checks))


def attribute_echo_terms(attributes: Sequence[str]) -> tuple[str, ...]:
    """Echo terms for a preset's attributes: the name alone as a whole row ('topic') and as a key ('topic:').

    The snake_case keys themselves ('movie_genre') are caught by the identifier rule of check_rows.
    """
    return tuple(term for a in attributes for term in (a, f"{a}:"))


def letter_share(text: str) -> float:
    """Share of characters that are letters (any script), whitespace or prose punctuation; 0 for ''."""
    if not text:
        return 0.0
    return sum(c.isalpha() or c.isspace() or c in PROSE_PUNCTUATION for c in text) / len(text)


def longest_char_run(text: str) -> int:
    """Longest run of one repeated non-whitespace character (news leads indent with runs of spaces)."""
    best = run = 0
    prev = ""
    for c in text:
        run = run + 1 if c == prev and not c.isspace() else 1
        prev = c
        best = max(best, run)
    return best


def words(text: str) -> list[str]:
    """Casefolded runs of letters and digits; '_' and punctuation separate words ('a_b' is two)."""
    return _WORD.findall(text.casefold())


def ngram_repeat_share(text: str, n: int = 3) -> float:
    """Share of the words that lie inside a word n-gram occurring at least twice in the text: 1.0 for a loop
    ('a b c a b c'), 0 for prose whose n-grams are all distinct, 0 for texts of fewer than n words."""
    tokens = words(text)
    if len(tokens) < n:
        return 0.0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(tokens), dtype=bool)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i:i + n] = True
    return float(covered.mean())


def _normalised_words(text: str) -> str:
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def _copy_key(text: str) -> int:
    """64 bits of the text after casefolding and collapsing whitespace: an input's copy keys take 8 bytes a row,
    and two different rows share one with probability 2^-64 per pair."""
    digest = hashlib.blake2b(" ".join(text.casefold().split()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def copy_keys(texts: Iterable[str]) -> np.ndarray:
    """The sorted, distinct copy keys of `texts` (what RowChecker's copy_of_input check looks up)."""
    return np.unique(np.fromiter((_copy_key(t) for t in texts), dtype=np.uint64))


def _echo_matchers(echo_terms: Iterable[str]) -> tuple[re.Pattern[str] | None, frozenset[str]]:
    """(regex of terms that match anywhere, normalised plain-word terms that match a whole row)."""
    anywhere, whole = [], set()
    for term in (*PROMPT_ECHO_TERMS, *echo_terms):
        term = term.strip()
        if not term:
            continue
        whole.add(_normalised_words(term))
        if any(not (c.isalpha() or c.isspace()) for c in term):
            # Word-ish: a term that starts or ends with a word character must not continue a longer word.
            left = r"(?<!\w)" if re.match(r"\w", term[0]) else ""
            right = r"(?!\w)" if re.match(r"\w", term[-1]) else ""
            anywhere.append(left + re.escape(term.casefold()) + right)
    whole.discard("")
    pattern = re.compile("|".join(sorted(set(anywhere), key=len, reverse=True))) if anywhere else None
    return pattern, frozenset(whole)


class RowChecker:
    """Per-row checks with the echo patterns prepared once, for a job that checks batch after batch against the same
    input. `input_keys`: the input rows' copy_keys (the input itself stays where it is)."""

    def __init__(self, bounds: RowBounds, echo_terms: Sequence[str] = (), input_keys: np.ndarray | None = None):
        self.bounds = bounds
        self.echo_anywhere, self.echo_whole = _echo_matchers(echo_terms)
        keys = input_keys if input_keys is not None and "copy_of_input" in bounds.checks else ()
        self.inputs = np.asarray(keys, dtype=np.uint64)
        self.enabled = [c for c in CHECK_REASONS if c in bounds.checks]

    def _fails(self, check: str, text: str) -> bool:
        b = self.bounds
        if check == "empty":
            return not text
        if check == "too_short":
            return len(text) < b.min_chars
        if check == "too_long":
            return len(text) > b.max_chars
        if check == "low_letter_share":
            return letter_share(text) < b.min_letter_share
        if check == "repetition":
            return (longest_char_run(text) > b.max_char_run
                    or ngram_repeat_share(text, b.repeat_ngram) > b.max_ngram_repeat_share)
        if check == "prompt_echo":
            return (_IDENTIFIER.search(text) is not None
                    or (self.echo_anywhere is not None and self.echo_anywhere.search(text.casefold()) is not None)
                    or _normalised_words(text) in self.echo_whole)
        key = np.uint64(_copy_key(text))  # copy_of_input
        at = int(np.searchsorted(self.inputs, key))
        return at < len(self.inputs) and self.inputs[at] == key

    def __call__(self, texts: Sequence[str]) -> list[str | None]:
        """The first failing check per row (None: the row passes every enabled check); see check_rows."""
        out: list[str | None] = []
        for raw in texts:
            text = (raw or "").strip()
            out.append(next((c for c in self.enabled if self._fails(c, text)), None))
        return out


def check_rows(texts: list[str], bounds: RowBounds, echo_terms: Sequence[str] = (),
               input_texts: Iterable[str] = ()) -> list[str | None]:
    """The first failing check per row, in CHECK_REASONS order (None: the row passes every enabled check).

    - empty: nothing but whitespace;
    - too_short / too_long: fewer than min_chars or more than max_chars characters (of the stripped text);
    - low_letter_share: letter_share below min_letter_share (SST-2 rows: 0.98 letters and spaces on average);
    - repetition: one non-space character repeated more than max_char_run times in a row, or more than
      max_ngram_repeat_share of the words inside repeated word n-grams (ngram_repeat_share);
    - prompt_echo: a snake_case identifier, a prompt/schema term of PROMPT_ECHO_TERMS or echo_terms anywhere in
      the row (case-insensitive; terms with a character other than letters and spaces, e.g. '[Task]', '{',
      'topic:'), or a row that is nothing but one term's words (plain-word terms such as 'topic' only this way,
      so a review that mentions a topic passes);
    - copy_of_input: equal to an input row after casefolding and collapsing whitespace.
    """
    return RowChecker(bounds, echo_terms, copy_keys(input_texts))(texts)
