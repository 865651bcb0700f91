"""An inbox's identity log as atmx keeps it, and what a node's answer may do to it; pure.

atmx stores every log it accepted (per inbox and environment) and fetches only what is new, so a
node's answer is judged against two things: the protocol and the node's own earlier answers.

What a node can do, and what atmx does about it:

- Answer with updates of another inbox (`inbox_id_mismatch`, refused): every update names its
  inbox inside the signed text, so this is always seen.
- Sequence ids that do not strictly increase after the id asked for (`sequence_not_increasing`,
  refused): an honest node (xmtp-node-go) serves its log in order.
- A log that shrank or changed below what atmx stored (`log_rewritten`, refused, the stored log
  kept): atmx accepted each stored update after checking its signatures, and an inbox log is
  append-only, so a node that no longer serves one is hiding it (a revocation, say) or rewriting
  history (the same updates in another order can bring a revoked installation back). Each fetch
  overlaps the stored log by one update (`overlap_after`), so a change at its end shows at once;
  a change further back shows at the next full read (`reconcile`).
- A log with updates the stored one lacked before its end (accepted, `filled` counts them): an
  earlier answer left a hole; the longer log drops nothing atmx saw, so it replaces the stored one.

What cannot be seen from one node: a log withheld or cut at its end before atmx ever stored it
(an old state served as current), or a hole in a log never read in full since. Every XMTP client
trusts its node for that; see README, "What atmx trusts the XMTP node for".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from atmx.indexer.xmtp.association import require_inbox
from atmx.indexer.xmtp.proto import association_pb2 as pb


class LogRefused(Exception):
    """A node's answer contradicts the protocol or its own earlier answers; `reason` is snake_case."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LogEntry:
    sequence_id: int
    update: pb.IdentityUpdate


@dataclass(frozen=True, slots=True)
class Reconciled:
    log: list[LogEntry]  # the whole log as the node serves it now, every stored entry in it
    filled: int  # entries before the end of the stored log that it lacked


def check_answer(inbox_id: str, after: int, answer: Sequence[LogEntry]) -> None:
    """An answer to "the log of `inbox_id` after `after`": that inbox's updates, ids strictly increasing.

    Raises AssociationError(`inbox_id_mismatch`) or LogRefused(`sequence_not_increasing`).
    """
    require_inbox(inbox_id, (e.update for e in answer))
    previous = after
    for entry in answer:
        if entry.sequence_id <= previous:
            raise LogRefused("sequence_not_increasing", f"sequence id {entry.sequence_id} after {previous}")
        previous = entry.sequence_id


def overlap_after(stored: Sequence[LogEntry]) -> int:
    """The sequence id to fetch after so that the answer starts with the last stored entry (0: whole log)."""
    return stored[-2].sequence_id if len(stored) > 1 else 0


def continuation(stored: Sequence[LogEntry], answer: Sequence[LogEntry]) -> list[LogEntry] | None:
    """The entries after the stored log, if `answer` (fetched after `overlap_after(stored)`) starts
    with the last stored entry unchanged; None if it does not (then read the whole log and reconcile)."""
    if not stored:
        return list(answer)
    last = stored[-1]
    if not answer or answer[0].sequence_id != last.sequence_id or answer[0].update != last.update:
        return None
    return list(answer[1:])


def reconcile(stored: Sequence[LogEntry], full: Sequence[LogEntry]) -> Reconciled:
    """The whole log `full` must hold every stored entry under its sequence id, unchanged.

    Raises LogRefused(`log_rewritten`) if it does not; compare protobuf messages, not bytes, so that
    another encoding of the same update is the same update.
    """
    served = {e.sequence_id: e.update for e in full}
    for entry in stored:
        update = served.get(entry.sequence_id)
        if update is None:
            raise LogRefused("log_rewritten", f"stored update {entry.sequence_id} is no longer served")
        if update != entry.update:
            raise LogRefused("log_rewritten", f"stored update {entry.sequence_id} is served changed")
    known = {e.sequence_id for e in stored}
    end = stored[-1].sequence_id if stored else 0
    filled = sum(1 for e in full if e.sequence_id < end and e.sequence_id not in known)
    return Reconciled(list(full), filled)
