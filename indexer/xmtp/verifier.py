"""The XMTP stage: prove that the inbox signed the DID, and keep proving it.

A repo-verified `org.xmtp.inbox` binding is `pending` until this worker fetches the inbox's
identity log from the XMTP network, folds it into the current installations and finds
one whose Ed25519ph signature over the DID verifies. Outcomes:

- `verified`: store the environment, the installation and the time;
- `invalid`: the log is forged or inconsistent, no current installation signed this
  DID, or the inbox exists in no configured environment;
- `unverifiable`: the network could not be asked; retried with backoff.

Every binding is checked again on a schedule; the log is fetched incrementally (after
the last sequence id), and when it changed every binding of that inbox is re-checked,
so a revoked installation turns its bindings `invalid`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from atmx.indexer import metrics
from atmx.indexer.store.index_store import Store, XmtpDue, XmtpOutcome
from atmx.indexer.xmtp.association import (
    AssociationError,
    AssociationState,
    fold_identity_log,
    smart_contract_wallet_checks,
)
from atmx.indexer.xmtp.binding import check_binding
from atmx.indexer.xmtp.client import ScwSignatureCheck, XmtpNetwork, XmtpUnavailable

log = logging.getLogger(__name__)

RETRY_START = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)
BATCH = 50


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str  # verified | invalid | unverifiable
    reason: str | None = None
    env: str | None = None
    installation: bytes | None = None


def retry_delay(attempts: int) -> timedelta:
    delay: timedelta = RETRY_START * (2 ** max(0, attempts - 1))
    return min(RETRY_MAX, delay)


class XmtpVerifier:
    def __init__(
        self,
        store: Store,
        network: XmtpNetwork,
        *,
        recheck: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.network = network
        self.recheck = recheck
        self.clock = clock
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
                try:
                    await asyncio.wait_for(self._wake.wait(), idle)
                except TimeoutError:
                    pass

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
        metrics.XMTP_VERIFICATIONS.labels(verdict.status, verdict.reason or "ok", verdict.env or "none").inc()
        if verdict.status != "verified" and binding.status == "verified":
            log.warning(
                "XMTP binding of %s to %s is now %s: %s", binding.did, binding.inbox_id, verdict.status, verdict.reason
            )
        return verdict

    async def judge(self, binding: XmtpDue) -> Verdict:
        signature = base64.b64decode(binding.signature, validate=True)
        refusals: list[Verdict] = []
        unreachable: list[str] = []
        for env in self.network.envs:
            try:
                state = await self.inbox_state(binding.inbox_id, env)
            except XmtpUnavailable as exc:
                log.info("XMTP %s unavailable for inbox %s: %s", env, binding.inbox_id, exc)
                unreachable.append(env)
                continue
            except AssociationError as exc:
                refusals.append(Verdict("invalid", f"inbox_log_invalid:{exc.reason}", env))
                continue
            if state is None:
                continue  # the inbox does not exist in this environment
            installation = check_binding(binding.did, signature, state.installations)
            if installation is not None:
                return Verdict("verified", None, env, installation)
            refusals.append(Verdict("invalid", "no_matching_installation", env))
        if unreachable:
            # another environment might still prove it: never call it invalid yet
            return Verdict("unverifiable", "xmtp_unreachable")
        if refusals:
            return refusals[0]
        return Verdict("invalid", "inbox_not_found")

    async def inbox_state(self, inbox_id: str, env: str) -> AssociationState | None:
        """Fetch what is new in the inbox's log, store it, and fold the whole log."""
        stored = await self.store.load_inbox_log(inbox_id, env)
        fresh = await self.network.get_identity_updates(env, inbox_id, stored.last_sequence_id)
        if fresh:
            stored = await self.store.append_inbox_log(
                inbox_id,
                env,
                [(u.sequence_id, u.update.SerializeToString()) for u in fresh],
                had_updates=bool(stored.updates),
            )
        if not stored.updates:
            return None
        return await self._fold(env, list(zip(stored.sequence_ids, stored.updates, strict=True)))

    async def _fold(self, env: str, entries: list[tuple[int, bytes]]) -> AssociationState:
        # Smart-contract-wallet signatures need the chain; like libxmtp, atmx asks the node
        # (and the state records that the node was trusted for it).
        checks = smart_contract_wallet_checks(entries)
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

        return fold_identity_log(entries, scw_verifier=scw_verifier)
