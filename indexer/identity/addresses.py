"""Which IP addresses atmx may connect to when a stranger names the host; pure.

Anything that is not ordinary public unicast is refused: loopback, private (RFC 1918, ULA),
link-local (which holds cloud metadata services at 169.254.169.254), carrier-grade NAT,
multicast, unspecified (0.0.0.0 and :: reach the local host), documentation, benchmarking
and other special-purpose ranges (IANA IPv4/IPv6 special-purpose registries). IPv6 forms
that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that IPv4 address, and
IPv6 outside the global unicast block 2000::/3 is refused. The tables are explicit rather
than `ipaddress.is_global`, whose answers differ between Python releases.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["forbidden_reason"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4: Final = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address 255.255.255.255
    )
)
_V6: Final = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments"),  # Teredo, ORCHID, benchmarking, ...
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def forbidden_reason(address: IpAddress | str, *, allow_loopback: bool = False) -> str | None:
    """Why a connection to `address` is refused, or None when it is allowed.

    `allow_loopback` admits 127.0.0.0/8 and ::1 (in any IPv6 form), for loopback test
    networks; private and link-local ranges stay refused even then.
    """
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address)
        except ValueError:
            return "not an IP address"  # fail closed on anything a resolver could hand back oddly
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            why = forbidden_reason(embedded, allow_loopback=allow_loopback)
            return None if why is None else f"{why} (as {address})"
        table: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = _V6
    else:
        table = _V4
    if allow_loopback and address.is_loopback:
        return None
    for network, why in table:
        if address in network:
            return f"{why} address {address}"
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return f"reserved address {address}"
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through: IPv4-mapped, NAT64 or 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour
