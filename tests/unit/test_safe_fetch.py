"""core.safe_fetch: which URLs and addresses are refused, before any connection is made.

The resolver is passed in (as production code can), so a host can "resolve" to any address
without a DNS server; nothing here opens a socket. Real fetches: tests/integration.
"""

from __future__ import annotations

import pytest

from core.errors import UnsafeUrl
from core.safe_fetch import FetchPolicy, check_address, fetch

BLOCKED = [
    "127.0.0.1",  # loopback
    "127.1.2.3",
    "::1",
    "10.0.0.1",  # private
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "169.254.169.254",  # cloud metadata
    "169.254.1.1",  # link-local
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",  # link-local v6
    "fc00::1",  # unique local
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:8.8.8.8",  # IPv4-mapped anything
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:a00:1::1",  # Teredo
    "0.0.0.0",
    "::",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "ff02::1",
    "255.255.255.255",
    "240.0.0.1",  # reserved
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "192.88.99.1",  # 6to4 relay
]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeUrl, match="refused"):
        check_address(address, FetchPolicy())


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_unicast_addresses_pass(address: str) -> None:
    assert str(check_address(address, FetchPolicy())) == address


def test_loopback_only_with_the_explicit_test_override() -> None:
    policy = FetchPolicy(allow_loopback=True)
    assert str(check_address("127.0.0.1", policy)) == "127.0.0.1"
    assert str(check_address("::1", policy)) == "::1"
    for still_blocked in ("10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "0.0.0.0"):
        with pytest.raises(UnsafeUrl):
            check_address(still_blocked, policy)


def _never(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host}:{port} for a URL that should be refused first")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com:70/",
        "dict://example.com:11211/",
        "http://user:pass@example.com/",
        "http:///nohost",
        "javascript:alert(1)",
    ],
)
def test_bad_schemes_credentials_and_hostless_urls_are_refused_without_resolving(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        fetch(url, resolver=_never)


def test_every_resolved_address_is_checked_not_just_the_first() -> None:
    seen: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["93.184.216.34", "10.1.2.3"]  # one public, one internal: the host is refused

    with pytest.raises(UnsafeUrl, match=r"10\.1\.2\.3"):
        fetch("https://mixed.example/hook", resolver=resolver)
    assert seen == [("mixed.example", 443)]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "fd00:ec2::254"),
        ("http://[::ffff:127.0.0.1]:6379/", "::ffff:127.0.0.1"),
        ("http://localhost:6379/", "127.0.0.1"),
    ],
)
def test_metadata_and_loopback_targets_are_refused(url: str, address: str) -> None:
    with pytest.raises(UnsafeUrl, match="refused"):
        fetch(url, resolver=lambda host, port: [address])


def test_a_host_with_no_address_is_refused() -> None:
    with pytest.raises(UnsafeUrl, match="no address"):
        fetch("http://empty.example/", resolver=lambda host, port: [])
