"""Handles are checked again on a schedule: a domain can change hands without the account it
pointed to ever announcing it (no `#identity` for the former owner), so a handle verified once
is not trusted for ever. Each account's handle is resolved again every `interval`; the result
goes through the index's write path, where verifying a handle for one account clears it for
every other, and a change of the handle an account is shown with is announced.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from atmx.indexer import metrics
from atmx.indexer.identity.resolver import IdentityResolver, ResolutionError
from atmx.indexer.index.writes import IdentityUpdate, WriteSet
from atmx.indexer.store.errors import TRANSIENT_DB_ERRORS
from atmx.indexer.store.index_store import Store

__all__ = ["HandleChecker"]

log = logging.getLogger(__name__)

BATCH: Final = 100
IDLE_SECONDS: Final = 60.0


class HandleChecker:
    def __init__(self, store: Store, resolver: IdentityResolver, *, interval: float) -> None:
        self.store = store
        self.resolver = resolver
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                checked = await self.run_once()
            except TRANSIENT_DB_ERRORS as exc:
                metrics.DB_ERRORS.labels("handle_check").inc()
                log.warning("handle checks paused: %s", exc)
                checked = 0
            if checked < BATCH:
                await asyncio.sleep(IDLE_SECONDS)

    async def run_once(self) -> int:
        dids = await self.store.due_handle_checks(self.interval, BATCH)
        for did in dids:
            await self.store.apply([await self.check(did)], None)
        return len(dids)

    async def check(self, did: str) -> WriteSet:
        """The account's handle as it resolves now (an unresolvable DID keeps what it had, re-dated)."""
        ws = WriteSet(did=did)
        try:
            info = await self.resolver.resolve_did(did)
        except ResolutionError as exc:
            metrics.HANDLE_CHECKS.labels("identity_" + exc.reason).inc()
            account = await self.store.account(did)
            if account is not None:  # nothing learnt: keep the handle, check again next round
                ws.identity = IdentityUpdate(account.handle, account.handle_verified, None)
            return ws
        handle, verified = await self.resolver.verify_handle(info, force_refresh=True)
        metrics.HANDLE_CHECKS.labels("verified" if verified else "not_verified").inc()
        ws.identity = IdentityUpdate(handle=handle, handle_verified=verified, pds=info.pds)
        return ws
