"""``sfumato-admin`` / ``python -m api.admin``: manage API keys directly in Redis.

Uses the same Settings as the API (``SFUMATO_REDIS_URL``, ``SFUMATO_QUEUE_PREFIX``), so it
reaches the keys every replica reads. This is how the first admin key is made::

    sfumato-admin keys create --tenant ops --name bootstrap --scope admin
    sfumato-admin keys create --tenant acme --name ci --images-per-minute 30
    sfumato-admin keys create --tenant acme --name bulk --priority batch
    sfumato-admin keys list [--tenant acme]
    sfumato-admin keys revoke <id>
    sfumato-admin keys hash sf_<id>_<secret>     # an entry for SFUMATO_API_KEYS_FILE
    sfumato-admin keys seed keys.json            # what the API does at start-up

A new key is printed once, on stdout; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from core.apikeys import DEFAULT_SCOPES, SCOPES, ApiKey, KeyLimits, KeyStore, hash_token
from core.config import get_settings
from core.errors import ServiceError
from core.jobs import connect
from core.keyfile import read_key_file, seed_keys
from core.priority import DEFAULT_PRIORITY, PRIORITIES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfumato-admin", description="Manage Sfumato API keys in Redis.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    keys = parser.add_subparsers(dest="group", required=True).add_parser("keys", help="API keys")
    sub = keys.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, parents=[common])

    create = command("create", "create a key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope", action="append", choices=SCOPES, help=f"repeat for several (default: {' '.join(DEFAULT_SCOPES)})"
    )
    create.add_argument("--rps", type=float, help="requests per second (default: SFUMATO_RATE_LIMIT_RPS)")
    create.add_argument("--burst", type=int, help="request burst (default: SFUMATO_RATE_LIMIT_BURST)")
    create.add_argument("--images-per-minute", type=int, help="default: SFUMATO_IMAGES_PER_MINUTE")
    create.add_argument("--max-concurrent-jobs", type=int, help="default: SFUMATO_MAX_CONCURRENT_JOBS")
    create.add_argument(
        "--priority",
        choices=PRIORITIES,
        default=DEFAULT_PRIORITY,
        help="the class of the key's jobs: their default and the highest a request may ask for",
    )
    command("list", "list keys (never their secrets)").add_argument("--tenant")
    command("show", "show one key").add_argument("key_id")
    command("revoke", "revoke a key (effective at once)").add_argument("key_id")
    command("hash", "print a hashed keys-file entry for a key").add_argument(
        "key", nargs="?", help="the key (default: read from stdin)"
    )
    command("seed", "register the keys of a keys file now").add_argument("file", type=Path)
    return parser


def _line(key: ApiKey) -> str:
    created = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d %H:%M")
    state = "REVOKED" if key.revoked else "active"
    limits = " ".join(f"{k}={v}" for k, v in key.limits.overrides().items())
    scopes = ",".join(sorted(key.scopes))
    return f"{key.id}  {state:7}  {key.tenant:16}  {scopes:32}  {key.priority:11}  {created}  {key.name} {limits}"


def _run(args: argparse.Namespace, out: list[str]) -> None:
    if args.command == "hash":
        token = (args.key or sys.stdin.readline()).strip()
        key_id, digest = hash_token(token)
        out.append(json.dumps({"id": key_id, "secret_sha256": digest}))
        return
    settings = get_settings()
    connection = connect(settings)
    try:
        store = KeyStore(connection, settings)
        if args.command == "create":
            limits = KeyLimits(args.rps, args.burst, args.images_per_minute, args.max_concurrent_jobs)
            key, token = store.create(args.tenant, args.name, args.scope or list(DEFAULT_SCOPES), limits, args.priority)
            out.append(json.dumps({**key.public(), "key": token}) if args.json else token)
            if not args.json:
                print(f"created key {key.id} for tenant {key.tenant}; it is shown only this once", file=sys.stderr)
        elif args.command == "list":
            keys = store.list(args.tenant)
            out.extend([json.dumps([k.public() for k in keys])] if args.json else map(_line, keys))
        elif args.command in ("show", "revoke"):
            key = store.get(args.key_id) if args.command == "show" else store.revoke(args.key_id)
            out.append(json.dumps(key.public()) if args.json else _line(key))
        elif args.command == "seed":
            seeded = seed_keys(store, read_key_file(args.file))
            out.extend([json.dumps([k.public() for k in seeded])] if args.json else map(_line, seeded))
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: list[str] = []
    try:
        _run(args, out)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    for line in out:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
