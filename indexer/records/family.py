"""What a record family is to atmx: its collection, its protocol, its record-key rule, its
validator and what the API shows of it (pure). One module per family fills one in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from atmx.indexer.records.stored import StoredBinding

__all__ = ["AccountContext", "Checked", "Compose", "Family", "Part"]


@dataclass(frozen=True, slots=True)
class Checked:
    """A record that passed its family's checks.

    status: `valid` (well formed; the family has no signature atmx can check), `verified` (a
    protocol signature was checked here) or `pending` (a check that needs the network follows).
    """

    status: str
    inbox_id: str | None = None  # XMTP: the inbox the record names
    key: bytes | None = None  # a public key the record publishes, for key lookups


@dataclass(frozen=True, slots=True)
class AccountContext:
    """What an account's identity view needs beyond its records (read with them, in one query)."""

    mls_endpoint: str | None = None  # the DID document's `#atproto_mls` delivery service, if usable


@dataclass(frozen=True, slots=True)
class Part:
    """One record of a protocol that composes many: its family, its binding, its own view."""

    family: Family
    binding: StoredBinding
    view: dict[str, Any]


# (the protocol's records, in collection and record-key order; the account) -> the protocol's object
Compose = Callable[[Sequence[Part], AccountContext], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Family:
    nsid: str
    protocol: str  # the API field the family is shown under: xmtp | didcomm | germ | catbird
    single: bool  # one record per account, at rkey "self"; otherwise any record key, many records
    validate: Callable[[dict[str, Any], str], Checked]  # (record, rkey) -> Checked; raises RecordError
    project: Callable[[StoredBinding], dict[str, Any]]  # the family's own fields of the API view
    legacy: bool = False  # a superseded collection, still read because repos still hold it
    # how an identity shows a protocol whose records are many (Catbird: a declaration and
    # devices); None: the protocol has one record per account, shown as its own view
    compose: Compose | None = None
