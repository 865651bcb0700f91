"""Deciding one event of an indexed repo, with whatever it needs: the repo's state, the DID
document (resolved with retries, refreshed once when a signature fails, in case the key
rotated) and the handle check. The pipeline (pipeline.py) decides on the spot through
`decide_now` when everything is in memory, and otherwise runs `process` in the DID's chain.

The pure decisions are decide.py's; this module reads what they need and counts what they
report.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from atmx.indexer import metrics
from atmx.indexer.firehose.frames import AccountEvent, CommitEvent, Event, IdentityEvent, MalformedEvent, SyncEvent
from atmx.indexer.identity.diddoc import DidInfo
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.index.decide import (
    Decision,
    RepoState,
    decide_account,
    decide_commit,
    decide_malformed,
    decide_sync,
    internal_error,
)
from atmx.indexer.index.writes import IdentityUpdate, Rejection, WriteSet
from atmx.indexer.repo.crypto import KeyParseError, PublicKey, key_from_did_key
from atmx.indexer.store.index_store import Store

__all__ = ["DEFER", "IDENTITY_RETRY_DELAYS", "EventProcessor"]

log = logging.getLogger(__name__)

IDENTITY_RETRY_DELAYS: Final = (0.5, 1.0, 2.0, 4.0)

DEFER: Final = object()  # decide_now: this event needs I/O, run it in its DID's chain


class EventProcessor:
    """Decides events of the repos in `tracked`, keeping `repos` (their states) as it reads them.

    Both collections are the pipeline's own, shared: the pipeline adds to them as batches go out.
    """

    def __init__(
        self,
        store: Store,
        resolver: IdentityResolver,
        *,
        tracked: set[str],
        repos: dict[str, RepoState],
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.tracked = tracked
        self.repos = repos
        self.clock = clock

    def decide_now(self, ev: Event) -> WriteSet | object | None:
        """Decide with what is in memory; DEFER when the event needs I/O first."""
        if isinstance(ev, AccountEvent):
            return self.count(decide_account(ev))
        if isinstance(ev, MalformedEvent):
            metrics.FRAME_ERRORS.labels(ev.reason).inc()
            return self.count(decide_malformed(ev))
        if isinstance(ev, CommitEvent):
            state = self.repos.get(ev.repo)
            info = self.resolver.cached_did(ev.repo)
            if state is None or info is None:
                return DEFER  # a repo state to read, or a new account whose identity is checked first
            decision = decide_commit(
                ev, state, _key(info), now=self.clock(), signing_key=info.signing_key, pds=info.pds
            )
            return DEFER if decision.refresh_key else self.count(decision)
        return DEFER  # #identity and #sync: rare, and they need the network

    async def process(self, ev: Event) -> WriteSet | None:
        """Decide with whatever I/O the event needs; database errors propagate (the chain retries)."""
        if isinstance(ev, CommitEvent):
            return await self._process_commit(ev)
        if isinstance(ev, SyncEvent):
            return await self._process_sync(ev)
        if isinstance(ev, IdentityEvent):
            return await self._process_identity(ev)
        if isinstance(ev, AccountEvent):
            return self.count(decide_account(ev))
        if isinstance(ev, MalformedEvent):
            metrics.FRAME_ERRORS.labels(ev.reason).inc()
            return self.count(decide_malformed(ev))
        raise TypeError(f"unexpected event {type(ev).__name__}")

    def count(self, decision: Decision) -> WriteSet | None:
        """Count what a decision reports (pure modules return outcomes; this layer counts them)."""
        if decision.verification is not None:
            metrics.VERIFICATIONS.labels(*decision.verification).inc()
        if decision.stale is not None:
            metrics.STALE_EVENTS.labels(decision.stale).inc()
        for protocol, reason in decision.records:
            metrics.RECORDS.labels(protocol, reason).inc()
        for collection, action in decision.ops:
            metrics.MATCHED_OPS.labels(collection, action).inc()
        return decision.writes

    def internal_error(self, did: str, seq: int, exc: BaseException) -> WriteSet:
        metrics.INTERNAL_ERRORS.labels(type(exc).__name__).inc()
        log.error("internal error processing seq=%s did=%s: %s: %s", seq, did, type(exc).__name__, exc, exc_info=exc)
        return internal_error(did, exc)

    async def _state(self, did: str) -> RepoState | None:
        state = self.repos.get(did)
        if state is None and did in self.tracked:  # first event since start, or tracked by the backfill
            state = await self.store.repo_state(did)
            if state is not None:
                self.repos[did] = state
        return state

    async def _identity(self, did: str, *, force: bool = False) -> DidInfo | None:
        """Resolve with retries; None when the identity cannot be had now."""
        for attempt, delay in enumerate((*IDENTITY_RETRY_DELAYS, None)):
            try:
                return await self.resolver.resolve_did(did, force_refresh=force or attempt > 0)
            except ResolutionError as exc:
                if exc.reason != "unreachable" or delay is None:
                    log.warning("cannot resolve %s: %s", did, exc)
                    return None
                await asyncio.sleep(delay)
        return None

    def _unavailable(self, kind: str, did: str, rev: str) -> WriteSet:
        metrics.VERIFICATIONS.labels(kind, "identity_unavailable").inc()
        ws = WriteSet(did=did, rejections=[Rejection(kind, "identity_unavailable", f"rev {rev}")])
        ws.resync_reason = "identity_unavailable"
        return ws

    async def _process_commit(self, ev: CommitEvent) -> WriteSet | None:
        did = ev.repo
        state = await self._state(did)
        if state is not None and state.rev is not None and ev.rev <= state.rev:
            return self.count(decide_commit(ev, state, None, now=self.clock()))  # a replay
        info = await self._identity(did)
        if info is None:
            return self._unavailable("commit", did, ev.rev)
        decision = decide_commit(ev, state, _key(info), now=self.clock(), signing_key=info.signing_key, pds=info.pds)
        if decision.refresh_key:
            # a bad signature may be a rotated key: refresh the DID document once, then decide for good
            fresh = await self._identity(did, force=True)
            if fresh is not None:
                info = fresh
            decision = decide_commit(
                ev, state, _key(info), now=self.clock(), key_refreshed=True, signing_key=info.signing_key, pds=info.pds
            )
        ws = self.count(decision)
        if ws is not None and ws.create_account:
            handle, verified = await self.resolver.verify_handle(self.resolver.cached_did(did) or info)
            ws.identity = IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)
        return ws

    async def _process_sync(self, ev: SyncEvent) -> WriteSet | None:
        state = await self._state(ev.did)
        if state is not None and state.rev is not None and ev.rev <= state.rev:
            return self.count(decide_sync(ev, state, None, now=self.clock()))
        info = await self._identity(ev.did)
        if info is None:
            return self._unavailable("sync", ev.did, ev.rev)
        decision = decide_sync(ev, state, _key(info), now=self.clock())
        if decision.refresh_key:
            fresh = await self._identity(ev.did, force=True)
            decision = decide_sync(ev, state, _key(fresh or info), now=self.clock(), key_refreshed=True)
        return self.count(decision)

    async def _process_identity(self, ev: IdentityEvent) -> WriteSet:
        ws = WriteSet(did=ev.did)
        self.resolver.invalidate(ev.did)
        info = await self._identity(ev.did, force=True)
        if info is None:
            # keep what we had; the next #identity or a backfill re-checks
            ws.rejections.append(Rejection("identity", "identity_unavailable"))
            return ws
        handle, verified = await self.resolver.verify_handle(info)
        ws.identity = IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)
        return ws


def _key(info: DidInfo) -> PublicKey | None:
    if info.signing_key is None:
        return None
    try:
        return key_from_did_key(info.signing_key)
    except KeyParseError:  # diddoc.py only passes parsed keys; a guard, not a path
        return None
