"""The one way Sfumato fetches a URL it was given (webhooks later): safe against SSRF.

A client-supplied URL must never reach the service's own network: Redis, the object store,
other pods, or a cloud metadata endpoint (169.254.169.254, fd00:ec2::254) that hands out
credentials. So :func:`fetch`:

1. accepts ``http`` and ``https`` only, without user:password, with a host;
2. resolves the host itself and refuses it if ANY address is not a public unicast one
   (loopback, private, link-local, CGNAT 100.64/10, multicast, reserved, unspecified,
   metadata, and IPv6 forms embedding an IPv4 address: mapped, 6to4, NAT64, Teredo);
3. connects to an address it checked (the URL's host is replaced by the IP; ``Host`` and TLS
   SNI/certificate checks still use the name), so a DNS answer that changes between check and
   connect (rebinding) cannot redirect it;
4. never follows redirects (a 3xx is returned as is), ignores proxy environment variables,
   and enforces a size limit while streaming and an overall time limit.

Tests that need a receiver on 127.0.0.1 pass ``FetchPolicy(allow_loopback=True)`` explicitly.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from core.errors import UnsafeUrl

log = logging.getLogger("sfumato.fetch")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolver(host, port) -> addresses``; the default asks the system (getaddrinfo).
Resolver = Callable[[str, int], list[str]]

#: Public-looking ranges that still must not be reached (``is_global`` lets these through).
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # cloud metadata (link-local anyway; named for the reader)
        "fd00:ec2::254/128",  # AWS metadata over IPv6 (unique-local anyway)
        "192.88.99.0/24",  # 6to4 relay anycast
        "64:ff9b::/96",  # NAT64: embeds an IPv4 address
        "64:ff9b:1::/48",  # local-use NAT64
        "2002::/16",  # 6to4: embeds an IPv4 address
        "2001::/32",  # Teredo: embeds an IPv4 address
    )
)
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch. ``allow_loopback`` exists for tests; production never sets it."""

    max_bytes: int = 1024 * 1024
    timeout_s: float = 10.0
    allow_loopback: bool = False


@dataclass(frozen=True)
class FetchResult:
    status_code: int
    headers: dict[str, str]
    content: bytes
    address: str  # the IP that was connected to


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the system's order, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"cannot resolve host {host!r}", param="url") from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    return addresses


def check_address(address: str, policy: FetchPolicy) -> IPAddress:
    """The parsed address if it may be connected to; :class:`UnsafeUrl` naming why not."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UnsafeUrl(f"{address!r} is not an IP address", param="url") from None
    if policy.allow_loopback and any(ip in net for net in _LOOPBACK if net.version == ip.version):
        return ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise UnsafeUrl(f"address {ip} is an IPv4-mapped IPv6 address; refused", param="url")
    blocked = any(ip in net for net in _BLOCKED_NETWORKS if net.version == ip.version)
    if blocked or not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        raise UnsafeUrl(f"address {ip} is not a public unicast address; refused", param="url")
    return ip


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UnsafeUrl(f"invalid URL: {exc}", param="url") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeUrl(f"scheme {parsed.scheme!r} is not allowed; use http or https", param="url")
    if not parsed.host:
        raise UnsafeUrl("the URL has no host", param="url")
    if parsed.userinfo:
        raise UnsafeUrl("credentials in the URL are not allowed", param="url")
    return parsed


def _checked_addresses(parsed: httpx.URL, policy: FetchPolicy, resolver: Resolver) -> list[IPAddress]:
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolver(parsed.host, port)
    if not addresses:
        raise UnsafeUrl(f"host {parsed.host!r} has no address", param="url")
    return [check_address(a, policy) for a in addresses]


def check_url(url: str, *, policy: FetchPolicy | None = None, resolver: Resolver = system_resolver) -> None:
    """Refuse ``url`` now (:class:`UnsafeUrl`) if :func:`fetch` would refuse it today.

    For validating a URL when it is handed over (a webhook at submit), so the client hears at
    once; :func:`fetch` checks again when it connects, since DNS answers can change.
    """
    _checked_addresses(_parse(url), policy or FetchPolicy(), resolver)


def fetch(
    url: str,
    *,
    method: str = "GET",
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    policy: FetchPolicy | None = None,
    resolver: Resolver = system_resolver,
    verify: ssl.SSLContext | bool = True,
) -> FetchResult:
    """Fetch ``url`` under ``policy``; :class:`UnsafeUrl` when refused or over a limit.

    Transport errors (refused connection, timeout, TLS) are :class:`UnsafeUrl` too, with the
    reason: callers treat every failure alike and never see an internal exception.
    """
    policy = policy or FetchPolicy()
    parsed = _parse(url)
    checked = _checked_addresses(parsed, policy, resolver)  # every one, before any connect
    deadline = time.monotonic() + policy.timeout_s
    host_header = parsed.netloc.decode("ascii")
    last_error: Exception | None = None
    with httpx.Client(
        trust_env=False, follow_redirects=False, verify=verify, timeout=httpx.Timeout(policy.timeout_s)
    ) as client:
        for ip in checked:
            request = client.build_request(
                method,
                parsed.copy_with(host=str(ip)),
                content=content,
                # identity: the size limit counts what arrives, never a decompressed expansion
                headers={**(headers or {}), "Host": host_header, "Accept-Encoding": "identity"},
                extensions={"sni_hostname": parsed.host},
            )
            try:
                return _send(client, request, str(ip), policy, deadline)
            except httpx.ConnectError as exc:
                last_error = exc  # try the next checked address
            except httpx.HTTPError as exc:
                raise UnsafeUrl(f"fetching {parsed.host} failed: {failure_reason(exc)}", param="url") from exc
    reason = failure_reason(last_error) if last_error is not None else "no address to try"
    raise UnsafeUrl(f"could not connect to {parsed.host}: {reason}", param="url") from last_error


def failure_reason(exc: BaseException) -> str:
    """A human phrase for a failed HTTP exchange, shown to clients (a webhook's ``last_error``).

    Never the exception's class or text: those name library internals and source locations
    (``[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)``); they are logged instead.
    """
    log.info("fetch failed: %s: %s", type(exc).__name__, exc)
    text = str(exc).lower()
    if isinstance(exc, httpx.TimeoutException):
        return "it did not answer in time"
    if "certificate" in text:
        return "its TLS certificate could not be verified"
    if "ssl" in text or "tls" in text:
        return "the TLS handshake failed"
    if "refused" in text:
        return "the connection was refused"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection or did not answer with valid HTTP"
    if isinstance(exc, httpx.ConnectError):
        return "the connection failed"
    return "the request failed"


def _send(
    client: httpx.Client, request: httpx.Request, address: str, policy: FetchPolicy, deadline: float
) -> FetchResult:
    response = client.send(request, stream=True)
    try:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
            raise UnsafeUrl(f"the response declares {declared} bytes; the limit is {policy.max_bytes}", param="url")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > policy.max_bytes:
                raise UnsafeUrl(f"the response is larger than {policy.max_bytes} bytes", param="url")
            if time.monotonic() > deadline:
                raise UnsafeUrl(f"the response took longer than {policy.timeout_s} s", param="url")
            chunks.append(chunk)
    finally:
        response.close()
    return FetchResult(response.status_code, dict(response.headers), b"".join(chunks), address)
