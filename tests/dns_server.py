"""A loopback DNS server for handle lookups: authoritative for whatever TXT records a test puts in
`records`, NXDOMAIN for the rest, silent on demand. `dns_server` (a fixture, registered with
`-p dns_server`) yields it with a dnspython resolver pointed at it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rrset
import pytest


class DnsServer(asyncio.DatagramProtocol):
    """Authoritative for whatever TXT records the test puts in `records`; NXDOMAIN for the rest."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.silent = False
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queries += 1
        if self.silent:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        values = self.records.get(question.name.to_text(omit_final_dot=True).lower())
        if values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            txt = [json.dumps(v) for v in values]  # quoted TXT strings
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "TXT", txt))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[DnsServer, dns.asyncresolver.Resolver]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(DnsServer, local_addr=("127.0.0.1", 0))
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    yield protocol, resolver
    transport.close()
