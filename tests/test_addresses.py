"""indexer/identity/addresses.py: which addresses a stranger-named host may resolve to."""

from __future__ import annotations

import ipaddress

import pytest

from atmx.indexer.identity.addresses import forbidden_reason


@pytest.mark.parametrize(
    ("address", "allowed", "allowed_on_test_network"),
    [
        ("93.184.215.14", True, True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True, True),
        ("::ffff:93.184.215.14", True, True),
        ("64:ff9b::5db8:d70e", True, True),  # NAT64 of a public address
        ("127.0.0.1", False, True),
        ("127.8.9.10", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("10.1.2.3", False, False),
        ("172.16.0.1", False, False),
        ("192.168.1.1", False, False),
        ("169.254.169.254", False, False),
        ("100.64.0.1", False, False),
        ("0.0.0.0", False, False),
        ("255.255.255.255", False, False),
        ("224.0.0.251", False, False),
        ("192.0.2.1", False, False),
        ("198.18.0.1", False, False),
        ("::", False, False),
        ("fd12:3456::1", False, False),
        ("fe80::1", False, False),
        ("fe80::1%eth0", False, False),
        ("ff02::1", False, False),
        ("::ffff:10.0.0.1", False, False),
        ("::ffff:169.254.169.254", False, False),
        ("64:ff9b::a9fe:a9fe", False, False),  # NAT64 of 169.254.169.254
        ("2002:a00:1::1", False, False),  # 6to4 of 10.0.0.1
        ("::127.0.0.1", False, False),  # deprecated IPv4-compatible form
        ("2001:db8::1", False, False),
        ("not an address", False, False),
    ],
)
def test_address_policy(address: str, allowed: bool, allowed_on_test_network: bool) -> None:
    assert (forbidden_reason(address) is None) is allowed
    assert (forbidden_reason(address, allow_loopback=True) is None) is allowed_on_test_network


def test_reasons_name_the_range_and_the_address() -> None:
    assert forbidden_reason("169.254.169.254") == "link-local address 169.254.169.254"
    assert forbidden_reason("::ffff:10.0.0.1") == "private address 10.0.0.1 (as ::ffff:a00:1)"
    assert forbidden_reason("3000::1") is None  # inside 2000::/3
    assert forbidden_reason("4000::1") == "reserved address 4000::1"  # outside global unicast


def test_address_objects_are_judged_like_strings() -> None:
    assert forbidden_reason(ipaddress.ip_address("10.0.0.1")) == forbidden_reason("10.0.0.1")
    assert forbidden_reason(ipaddress.ip_address("::1"), allow_loopback=True) is None
