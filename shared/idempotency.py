"""Idempotency-Key semantics shared by POST /audits, POST /batches and their reruns.

The key is stored with the resource under a unique index, so two concurrent
requests with one key cannot both create: the loser's insert does nothing and
it answers with the winner's resource. "The same body" means the same request
once parsed: key order, spacing and spelled-out defaults do not matter.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel

from shared.errors import AppError

T = TypeVar("T")

MAX_KEY_LENGTH = 255


class IdempotencyKeyMismatch(AppError):
    status = 422
    code = "idempotency_key_mismatch"
    title = "Idempotency key reused with a different body"


@dataclass(frozen=True)
class Created(Generic[T]):
    """A created resource, or the one an earlier request with the same key created."""

    resource: T
    replayed: bool = False


def request_hash(body: BaseModel | Mapping[str, Any]) -> str:
    """The digest of a request: its parsed body, or what stands for a request without one
    (a rerun: `{"rerun_of": <id>}`, which no body can be)."""
    document = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def rerun_hash(source_id: UUID) -> str:
    """The digest of a rerun of `source_id`: the same key re-running another is a mismatch."""
    return request_hash({"rerun_of": str(source_id)})


def replay(resource: T, *, stored_hash: str | None, new_hash: str, key: str) -> Created[T]:
    """The earlier resource for a repeated key, if the body is the same."""
    if stored_hash != new_hash:
        raise IdempotencyKeyMismatch(
            f"Idempotency-Key {key!r} was first used with a different body; send that same "
            "body to get its result again, or use a new key for a new request."
        )
    return Created(resource, replayed=True)


def winner(replayed: Created[T] | None) -> Created[T]:
    """What a request whose insert lost to a concurrent one with the same key answers: the
    winner's resource. An insert loses only on a key, and the winner has committed by the
    time it does, so the replay finds it."""
    assert replayed is not None, "an insert that did nothing lost to a committed key"
    return replayed
