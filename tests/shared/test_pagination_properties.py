"""Properties of the cursor codec: what it issues comes back intact; nothing else gets in.

Whatever a client sends as `cursor`, decoding either gives back a key the API issued or
raises `InvalidCursor` (a 422); any other exception would be a 500. A cursor is good
only for the listing it was issued for, under the key that signed it.
"""

import re
from datetime import UTC, datetime
from uuid import UUID

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.pagination import Cursors, InvalidCursor, listing

CURSORS = Cursors(b"k" * 32, "audits")
decode_cursor = CURSORS.read_keyset
encode_cursor = CURSORS.keyset
decode_name_cursor = CURSORS.read_name
encode_name_cursor = CURSORS.name
_encode = CURSORS._encode

SLUG = r"[a-z0-9][a-z0-9_-]{0,63}"
SLUGS = st.from_regex(rf"\A{SLUG}\Z")
# What travels in a query string: any text, the cursor alphabet, and what base64 ignores.
# A query string is UTF-8, which cannot carry a lone surrogate (category Cs).
CHARACTERS = st.characters(exclude_categories=["Cs"]) | st.sampled_from("ABCxyz019-_=+/|.: \n\x00")


def utc_twin(moment: datetime) -> datetime | None:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


@st.composite
def mutations(draw: st.DrawFn, cursor: str) -> str:
    """`cursor` with characters replaced, removed or inserted, cut short or run on."""
    chars = list(cursor)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(chars)))
        kind = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "append"]))
        if kind == "replace" and at < len(chars):
            chars[at] = draw(CHARACTERS)
        elif kind == "delete" and at < len(chars):
            del chars[at]
        elif kind == "insert":
            chars.insert(at, draw(CHARACTERS))
        elif kind == "truncate":
            del chars[at:]
        else:
            chars.extend(draw(st.lists(CHARACTERS, max_size=4)))
    return "".join(chars)


@given(moment=st.datetimes(timezones=st.timezones()), row_id=st.uuids())
@example(moment=datetime.max.replace(tzinfo=UTC), row_id=UUID(int=0))
@example(moment=datetime.min.replace(tzinfo=UTC), row_id=UUID(int=2**128 - 1))
def test_a_cursor_decodes_to_the_key_it_was_made_of(moment: datetime, row_id: UUID) -> None:
    twin = utc_twin(moment)
    assume(twin is not None)

    decoded = decode_cursor(encode_cursor(moment, row_id))

    assert decoded == (twin, row_id)
    assert is_utc_key(decoded)


@given(name=SLUGS)
def test_a_name_cursor_decodes_to_its_name(name: str) -> None:
    assert decode_name_cursor(encode_name_cursor(name)) == name


@given(data=st.data(), moment=st.datetimes(timezones=st.just(UTC)), row_id=st.uuids())
def test_an_altered_cursor_is_refused_or_means_the_same(
    data: st.DataObject, moment: datetime, row_id: UUID
) -> None:
    cursor = encode_cursor(moment, row_id)
    altered = data.draw(mutations(cursor))

    try:
        decoded = decode_cursor(altered)
    except InvalidCursor:
        return
    # Base64 decoding skips characters outside its alphabet, so some edits change nothing.
    assert decoded == (moment, row_id)


@given(data=st.data(), name=SLUGS)
def test_an_altered_name_cursor_is_refused_or_means_the_same(
    data: st.DataObject, name: str
) -> None:
    altered = data.draw(mutations(encode_name_cursor(name)))

    try:
        decoded = decode_name_cursor(altered)
    except InvalidCursor:
        return
    assert decoded == name


@given(text=st.text(CHARACTERS, max_size=600))
@example(text="")
@example(text="=")
@example(text="fA")
def test_any_text_is_refused_or_decodes_to_a_key(text: str) -> None:
    try:
        decoded = decode_cursor(text)
    except InvalidCursor:
        return
    assert is_utc_key(decoded)


@given(text=st.text(CHARACTERS, max_size=600))
@example(text="YXzDqQ")  # `a|é`: a MAC that is not ASCII
def test_any_text_is_refused_or_decodes_to_a_slug(text: str) -> None:
    try:
        name = decode_name_cursor(text)
    except InvalidCursor:
        return
    assert re.fullmatch(SLUG, name)


@given(
    moment=st.datetimes(timezones=st.just(UTC)),
    row_id=st.uuids(),
    other=st.sampled_from(
        [
            Cursors(b"another key, same listing".ljust(32), "audits"),
            Cursors(b"k" * 32, "batches"),
            Cursors(b"k" * 32, listing("audits", {"status": ["failed"]})),
        ]
    ),
)
def test_a_cursor_is_refused_under_another_key_or_listing(
    moment: datetime, row_id: UUID, other: Cursors
) -> None:
    with pytest.raises(InvalidCursor):
        other.read_keyset(encode_cursor(moment, row_id))


def test_a_listing_is_spelled_the_same_whatever_the_order_of_its_filters() -> None:
    first = listing("audits", {"status": ["queued", "failed"], "rubric": None, "batch_id": "b"})
    second = listing("audits", {"batch_id": "b", "status": ("failed", "queued"), "rubric": None})

    assert first == second == "audits?batch_id=b&status=failed,queued"
    assert listing("audits", {"status": ()}) == "audits"


# Signed with the right key (the key is a secret, so only the API can do this): what is
# inside is still checked, so a bug that issued a bad key would be a 422, not a 500.
MOMENTS = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat)
PARTS = MOMENTS | st.uuids().map(str) | st.text(CHARACTERS, max_size=40)


@given(parts=st.lists(PARTS, max_size=3))
@example(parts=["0001-01-01T00:00:00+01:00", str(UUID(int=0))])
@example(parts=["9999-12-31T23:59:59-01:00", str(UUID(int=0))])
@example(parts=["2026-11-30T00:00:00", str(UUID(int=0))])
@example(parts=["2026-11-30T00:00:00Z", "not-a-uuid"])
def test_a_forged_cursor_is_refused_or_decodes_to_a_key(parts: list[str]) -> None:
    try:
        decoded = decode_cursor(_encode(*parts))
    except InvalidCursor:
        return
    assert is_utc_key(decoded)


@given(parts=st.lists(PARTS | SLUGS, max_size=2))
@example(parts=["Not A Slug"])
def test_a_forged_name_cursor_is_refused_or_decodes_to_a_slug(parts: list[str]) -> None:
    try:
        name = decode_name_cursor(_encode(*parts))
    except InvalidCursor:
        return
    assert re.fullmatch(SLUG, name)


def is_utc_key(decoded: tuple[datetime, UUID]) -> bool:
    moment, row_id = decoded
    offset = moment.utcoffset()
    return offset is not None and offset.total_seconds() == 0 and isinstance(row_id, UUID)
