"""Evidence quotes found in the content in linear time, whitespace runs aside.

Models re-flow line breaks and indentation, so a quote is looked for with every run of
whitespace, in the content and in the quote, taken as one space. The content is flattened
once per reply and each quote once, then found with `str.find`: CPython's search is
linear for long needles (two-way), where a regular expression of the quote's words
backtracks at every start position: a 40,000-character quote against 100,000 characters
of `"a a a …"` took 8 s, and froze the worker's event loop for as long.

A found quote is returned as the span of the content it matched, as the content has it,
so evidence is always a literal substring of the content.
"""

import re
from bisect import bisect_left

_WHITESPACE_RUN = re.compile(r"\s+")
# Only runs longer than one character move positions; a lone "\n" becomes " " in place.
_LONG_RUN = re.compile(r"\s{2,}")


class QuoteFinder:
    """One content, flattened once, searched for any number of quotes."""

    def __init__(self, content: str) -> None:
        self._content = content
        self._flat = _WHITESPACE_RUN.sub(" ", content)
        # For each long run: where its space is in the flat text, and how many characters
        # were removed up to and including it.
        self._run_at: list[int] = []
        self._removed: list[int] = []
        removed = 0
        for run in _LONG_RUN.finditer(content):
            self._run_at.append(run.start() - removed)
            removed += run.end() - run.start() - 1
            self._removed.append(removed)

    def find(self, quote: str) -> str | None:
        """The span of the content the quote matches; None when it is not there."""
        needle = " ".join(quote.split())
        if not needle:
            return None
        at = self._flat.find(needle)
        if at < 0:
            return None
        # The needle starts and ends with a non-space: both ends map to a character.
        return self._content[self._original(at) : self._original(at + len(needle) - 1) + 1]

    def _original(self, flat_at: int) -> int:
        """Where a non-space character of the flat text is in the content."""
        runs_before = bisect_left(self._run_at, flat_at)
        return flat_at + (self._removed[runs_before - 1] if runs_before else 0)


def find_quote(content: str, quote: str) -> str | None:
    """The span of `content` the quote matches, whitespace runs aside; None when absent."""
    return QuoteFinder(content).find(quote)
