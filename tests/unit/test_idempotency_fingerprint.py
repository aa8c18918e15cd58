"""The Idempotency-Key fingerprint is hashed as it is encoded (no second copy of a large body);
it must stay the digest of the canonical JSON, so keys claimed before an upgrade still match."""

from __future__ import annotations

import hashlib
import json

from core.idempotency import fingerprint


def test_the_streamed_fingerprint_is_the_digest_of_the_canonical_json() -> None:
    body = {
        "prompt": 'caf\u00e9 \U0001f600 "quoted"',
        "image": "iVBORw0KGgo" * 10_000,
        "loras": [{"scale": 0.7, "name": "ink"}],
        "seed": None,
        "guidance_scale": 1e-7,
        "n": 2,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert fingerprint(body) == hashlib.sha256(canonical).hexdigest()
    assert fingerprint({**body, "n": 3}) != fingerprint(body)
