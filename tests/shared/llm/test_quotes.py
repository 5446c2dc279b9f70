"""Evidence quotes are found in linear time, whitespace runs aside (shared/llm/quotes.py)."""

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.llm.quotes import QuoteFinder, find_quote

# Issue 8's probe: 100,000 characters of "a a a …", a quote of 20,000 words of "a" then "b".
PROBE_CONTENT = ("a " * 50000)[:100000]
PROBE_QUOTE = " ".join(["a"] * 20000 + ["b"])
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x85\u00a0\u2003\u3000"
# Few letters, many kinds of whitespace: near misses and runs everywhere.
TEXTS = st.lists(st.sampled_from(["a", "b", "ab", *WHITESPACE]), max_size=40).map("".join)


def regex_span(content: str, quote: str) -> str | None:
    """What the former search found: the words in order, any whitespace between them."""
    words = quote.split()
    if not words:
        return None
    match = re.search(r"\s+".join(map(re.escape, words)), content)
    return match.group() if match else None


@pytest.mark.parametrize(
    ("text", "quote", "span"),
    [
        ("abc", "abc", "abc"),
        ("  a\n\nb  c ", "a b", "a\n\nb"),
        ("one two three", "wo thr", "wo thr"),
        ("x\u00a0y z", "x y", "x\u00a0y"),
        ("repeat, repeat", "repeat", "repeat"),
        ("p  q\t\t r   s  t", " r s\nt ", "r   s  t"),
        ("a  b  c  d", "c d", "c  d"),
    ],
)
def test_find_quote_returns_the_matching_span(text: str, quote: str, span: str) -> None:
    assert find_quote(text, quote) == span


@pytest.mark.parametrize("quote", ["", "   ", "abd", "a  b  c d", "b a"])
def test_find_quote_misses(quote: str) -> None:
    assert find_quote("abc a b c", quote) is None


def test_one_finder_serves_many_quotes() -> None:
    finder = QuoteFinder("first  line\n\nsecond line")

    assert finder.find("line second") == "line\n\nsecond"
    assert finder.find("first line") == "first  line"
    assert finder.find("third") is None


@given(content=TEXTS, quote=TEXTS)
def test_the_span_is_the_one_the_word_regex_finds(content: str, quote: str) -> None:
    assert find_quote(content, quote) == regex_span(content, quote)


@given(content=TEXTS, data=st.data())
def test_every_span_of_the_content_is_found_as_a_literal_substring(
    content: str, data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(content)))
    quote = content[start : data.draw(st.integers(start, len(content)))]

    span = find_quote(content, quote)

    if quote.split():
        assert span is not None
        assert span in content
        assert span.split() == quote.split()
    else:
        assert span is None


def test_the_probe_quote_is_searched_in_linear_time() -> None:
    # The regex search took about 8 s of CPU here; a linear one takes milliseconds.
    begun = time.process_time()

    assert find_quote(PROBE_CONTENT, PROBE_QUOTE) is None

    assert time.process_time() - begun < 1.0
