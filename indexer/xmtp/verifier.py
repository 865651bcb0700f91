"""The XMTP stage: prove that the inbox signed the DID, and keep proving it.

A repo-verified `org.xmtp.inbox` binding is `pending` until this worker fetches the inbox's
identity log from the XMTP network, folds it into the current installations and finds
one whose Ed25519ph signature over the DID verifies. Outcomes:

- `verified`: store the environment, the installation and the time;
- `invalid`: the log is forged or inconsistent (`inbox_log_invalid:<why>`), the node answered
  with another inbox's log (`inbox_id_mismatch`), no current installation signed this DID
  (`no_matching_installation`), or the inbox exists in no configured environment (`inbox_not_found`);
- `unverifiable`: no verdict could be had; retried with backoff. `xmtp_unreachable` (the node could
  not be asked), `xmtp_bad_response` (it answered something no honest node answers;
  `xmtp_sequence_not_increasing` from a source that does not check order itself),
  `xmtp_log_rewritten` (it no longer serves updates atmx stored from it), `xmtp_scw_unverifiable`
  (a smart-contract-wallet signature the log rests on was not decided: the node's chain lookup
  failed, or the link is plaintext to another host, where a verdict could be anyone's).

Environments are asked in configured order; the first that verifies decides. Otherwise one that
could not give a verdict makes the binding `unverifiable` (another environment might still prove
it), and only when every environment answered is it `invalid`. `Verdict.env` (stored as
`bindings.xmtp_env`, and the `env` label of `atmx_xmtp_verifications_total`) names the environment
whose answer decided: the one that verified; else the first, in order, that gave no verdict; else
the first that refused; for `inbox_not_found`, which every environment decided together, all of
them, comma-separated in configured order (`production,dev`; one name when one is configured).

Every binding is checked again on a schedule; the log is fetched incrementally (overlapping the
stored log by one update, and read whole every FULL_READ_EVERY), checked against what was stored
(`inbox_log.py`), and when it changed every binding of that inbox is re-checked, so a revoked
installation turns its bindings `invalid`. Nothing a node says is stored before it folds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from atmx.indexer import metrics
from atmx.indexer.store.xmtp_store import InboxLog, XmtpDue, XmtpOutcome, XmtpStore
from atmx.indexer.xmtp.association import (
    AssociationError,
    AssociationState,
    fold_identity_log,
    smart_contract_wallet_checks,
)
from atmx.indexer.xmtp.binding import check_binding
from atmx.indexer.xmtp.client import ScwSignatureCheck, XmtpNetwork, XmtpUnavailable
from atmx.indexer.xmtp.inbox_log import LogEntry, LogRefused, check_answer, continuation, overlap_after, reconcile
from atmx.indexer.xmtp.outage import OutageLog
from atmx.indexer.xmtp.signatures import decode_update

log = logging.getLogger(__name__)

RETRY_START = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)
BATCH = 50
# A stored log is read whole again this often, so that a hole an earlier answer left, or a change
# below its last update, is found (each check already overlaps its last update).
FULL_READ_EVERY = timedelta(hours=24)
# Client failures that are a node's answer, not a failure to reach it.
_BAD_ANSWERS = frozenset({"bad_response", "too_large"})


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # verified | invalid | unverifiable
    reason: str | None
    env: str  # the environment(s) whose answer decided (see the module docstring)
    installation: bytes | None = None


def retry_delay(attempts: int) -> timedelta:
    delay: timedelta = RETRY_START * (2 ** max(0, attempts - 1))
    return min(RETRY_MAX, delay)


class XmtpVerifier:
    def __init__(
        self,
        store: XmtpStore,
        network: XmtpNetwork,
        *,
        recheck: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.network = network
        self.recheck = recheck
        self.clock = clock
        self.outages = OutageLog(log)
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Something may be due now (a new binding, an on-demand recheck)."""
        self._wake.set()

    async def run(self, idle: float = 1.0) -> None:
        while True:
            try:
                done = await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                # the database is down or restarting: pause, never die (a due binding stays due)
                metrics.DB_ERRORS.labels("xmtp").inc()
                log.warning("XMTP stage paused: %s", exc)
                done = 0
            if done < BATCH:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle):
                        await self._wake.wait()

    async def run_once(self) -> int:
        """Check every binding that is due; returns how many were checked."""
        due = await self.store.due_xmtp_bindings(self.clock(), BATCH)
        metrics.XMTP_QUEUE.set(await self.store.xmtp_queue_size(self.clock()))
        for binding in due:
            await self.check(binding)
        return len(due)

    async def check(self, binding: XmtpDue) -> Verdict:
        verdict = await self.judge(binding)
        now = self.clock()
        attempts = binding.attempts + 1 if verdict.status == "unverifiable" else 0
        next_check = now + (retry_delay(attempts) if verdict.status == "unverifiable" else self.recheck)
        await self.store.set_xmtp_outcome(
            XmtpOutcome(
                did=binding.did,
                cid=binding.cid,
                status=verdict.status,
                reason=verdict.reason,
                env=verdict.env,
                installation=verdict.installation.hex() if verdict.installation else None,
                checked_at=now,
                next_check=next_check,
                attempts=attempts,
            )
        )
        metrics.XMTP_VERIFICATIONS.labels(verdict.status, verdict.reason or "ok", verdict.env).inc()
        if verdict.status != "verified" and binding.status == "verified":
            log.warning(
                "XMTP binding of %s to %s is now %s: %s", binding.did, binding.inbox_id, verdict.status, verdict.reason
            )
        return verdict

    async def judge(self, binding: XmtpDue) -> Verdict:
        signature = base64.b64decode(binding.signature, validate=True)
        undecided: list[Verdict] = []  # no verdict from this environment: retry
        refusals: list[Verdict] = []
        not_found: list[str] = []
        for env in self.network.envs:
            try:
                state = await self.inbox_state(binding.inbox_id, env)
            except XmtpUnavailable as exc:
                if exc.reason in _BAD_ANSWERS:
                    self._refused(env, exc.reason, binding, exc)
                    undecided.append(Verdict("unverifiable", "xmtp_bad_response", env))
                else:
                    self.outages.failed(env, binding.did, exc.reason)
                    undecided.append(Verdict("unverifiable", "xmtp_unreachable", env))
                continue
            except LogRefused as exc:
                self._refused(env, exc.reason, binding, exc)
                undecided.append(Verdict("unverifiable", f"xmtp_{exc.reason}", env))
                continue
            except AssociationError as exc:
                if exc.reason == "scw_unverifiable":
                    # the node's chain lookup failed: a question unanswered, not a forged log
                    self._refused(env, exc.reason, binding, exc)
                    undecided.append(Verdict("unverifiable", "xmtp_scw_unverifiable", env))
                    continue
                reason = "inbox_id_mismatch" if exc.reason == "inbox_id_mismatch" else f"inbox_log_invalid:{exc.reason}"
                self._refused(env, reason, binding, exc)
                refusals.append(Verdict("invalid", reason, env))
                continue
            self.outages.answered(env)
            if state is None:
                not_found.append(env)  # the inbox does not exist in this environment
                continue
            installation = check_binding(binding.did, signature, state.installations)
            if installation is not None:
                return Verdict("verified", None, env, installation)
            refusals.append(Verdict("invalid", "no_matching_installation", env))
        if undecided:
            # another environment might still prove it: never call it invalid yet
            return undecided[0]
        if refusals:
            return refusals[0]
        return Verdict("invalid", "inbox_not_found", ",".join(not_found))

    def _refused(self, env: str, reason: str, binding: XmtpDue, exc: Exception) -> None:
        metrics.XMTP_REFUSED.labels(env, reason).inc()
        log.warning(
            "XMTP %s: refused the answer about inbox %s of %s (%s): %s", env, binding.inbox_id, binding.did, reason, exc
        )

    async def inbox_state(self, inbox_id: str, env: str) -> AssociationState | None:
        """The inbox's current state in `env` (None: no such inbox there), from the stored log and
        what the node serves beyond it; stores what is new once it folds.

        Raises XmtpUnavailable, LogRefused, or AssociationError (the log does not fold).
        """
        stored_log = await self.store.load_inbox_log(inbox_id, env)
        stored = await self._stored_entries(inbox_id, env, stored_log)
        previous = await self._fold_stored(inbox_id, env, stored)
        if previous is None:
            stored = []
        now = self.clock()
        stale = stored_log.read_at is None or now - stored_log.read_at >= FULL_READ_EVERY
        if stored and not stale and (after := overlap_after(stored)) > 0:
            answer = await self._fetch(env, inbox_id, after)
            fresh = continuation(stored, answer)
            if fresh is not None:
                if not fresh:
                    return previous
                state = await self._fold(env, inbox_id, fresh, previous)
                await self.store.append_inbox_log(inbox_id, env, _rows(fresh), had_updates=True)
                return state
            # the answer does not continue the stored log: read it whole and see what changed
        full = await self._fetch(env, inbox_id, 0)
        if stored:
            reconciled = reconcile(stored, full)
            if reconciled.filled:
                metrics.XMTP_LOG_REPAIRS.labels(env, "gap_filled").inc()
                log.warning(
                    "XMTP %s: %d updates of inbox %s were missing from the stored log", env, reconciled.filled, inbox_id
                )
        if not full:
            return None
        state = await self._fold(env, inbox_id, full)
        if len(full) > len(stored) or stale:
            await self.store.replace_inbox_log(
                inbox_id,
                env,
                _rows(full),
                read_at=now,
                expected_last=stored[-1].sequence_id if stored else 0,
                had_updates=bool(stored) and len(full) > len(stored),
            )
        return state

    async def _stored_entries(self, inbox_id: str, env: str, stored: InboxLog) -> list[LogEntry]:
        try:
            return [LogEntry(s, decode_update(u)) for s, u in zip(stored.sequence_ids, stored.updates, strict=True)]
        except (AssociationError, ValueError) as exc:
            await self._discard(inbox_id, env, exc)
            return []

    async def _fold_stored(self, inbox_id: str, env: str, stored: list[LogEntry]) -> AssociationState | None:
        """The stored log folded, or None (nothing stored, or a stored log that no longer folds: kept
        by an atmx without today's checks, or resting on a smart-contract-wallet verdict the node
        changed; it is discarded, never a memory to judge by)."""
        if not stored:
            return None
        try:
            return await self._fold(env, inbox_id, stored)
        except AssociationError as exc:
            if exc.reason == "scw_unverifiable":
                raise  # undecided now, not invalid: keep it
            await self._discard(inbox_id, env, exc)
            return None

    async def _discard(self, inbox_id: str, env: str, exc: Exception) -> None:
        metrics.XMTP_REFUSED.labels(env, "stored_log_invalid").inc()
        log.warning("XMTP %s: discarding the stored log of inbox %s: %s", env, inbox_id, exc)
        await self.store.discard_inbox_log(inbox_id, env)

    async def _fetch(self, env: str, inbox_id: str, after: int) -> list[LogEntry]:
        # the client checks the same for its own transport; any IdentitySource is held to it here
        answer = [
            LogEntry(u.sequence_id, u.update) for u in await self.network.get_identity_updates(env, inbox_id, after)
        ]
        check_answer(inbox_id, after, answer)
        return answer

    async def _fold(
        self, env: str, inbox_id: str, entries: list[LogEntry], previous: AssociationState | None = None
    ) -> AssociationState:
        pairs = [(e.sequence_id, e.update) for e in entries]
        # Smart-contract-wallet signatures need the chain; like libxmtp, atmx asks the node
        # (and the state records that the node was trusted for it).
        checks = smart_contract_wallet_checks(pairs)
        answers: dict[tuple[str, int, bytes, bytes], bool | None] = {}
        if checks:
            verdicts = await self.network.verify_scw_signatures(
                env, [ScwSignatureCheck(c.account_id, c.block_number, c.signature, c.hash) for c in checks]
            )
            answers = {
                (c.account_id, c.block_number, c.signature, c.hash): v for c, v in zip(checks, verdicts, strict=True)
            }

        def scw_verifier(account_id: str, block_number: int, signature: bytes, digest: bytes) -> bool | None:
            return answers.get((account_id, block_number, signature, digest))

        return fold_identity_log(pairs, scw_verifier=scw_verifier, previous=previous, inbox_id=inbox_id)


def _rows(entries: list[LogEntry]) -> list[tuple[int, bytes]]:
    return [(e.sequence_id, e.update.SerializeToString()) for e in entries]
