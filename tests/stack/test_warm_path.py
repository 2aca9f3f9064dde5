"""The local API server keeps the authorizer's answer for a token as API Gateway does.

A server of its own with a TTL of 3 s (the session's server runs with the cache off,
tests/conftest.py): a revoked token still passes while its answer is cached, and is refused
once the TTL has passed; a token that expired likewise, at most one TTL after its expiry.
The default TTL is app.py's and Terraform's (60 s); the bounds on a fake clock are in
tests/unit/test_lookup_cache.py.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from api_process import api_server

from chalicelib.auth import hash_token
from neblina_admin import operations as admin

TTL = 3.0


def test_a_revoked_or_expired_token_is_refused_within_the_authorizer_ttl(
    stack: Any, store: Any, make_researcher: Any, tmp_path: Path
) -> None:
    alice = make_researcher()
    env = {
        "NEBLINA_AUTHORIZER_TTL_SECONDS": str(TTL),
        "NEBLINA_WORKERS": stack.workers_config(),  # budget reads need no worker of its own
    }
    with api_server(stack, env, tmp_path) as api, httpx.Client(base_url=api.url) as http:

        def budget(secret: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {secret}"}
            return http.get("/v1/datasets/PENGUIN/budget", headers=headers)

        assert budget(alice.token).status_code == 200
        expiring = admin.add_token(store, alice.user_id, expires_in=timedelta(seconds=2)).secret
        assert budget(expiring).status_code == 200
        store.revoke_token(hash_token(alice.token))
        revoked_at = time.monotonic()
        assert budget(alice.token).status_code == 200  # the cached answer
        time.sleep(max(0.0, revoked_at + TTL - time.monotonic()) + 0.1)
        refused = budget(alice.token)
        assert refused.status_code == 403
        assert refused.json() == {"error": "forbidden", "message": "API token revoked"}
        time.sleep(max(0.0, 2 + TTL - (time.monotonic() - revoked_at)))
        expired = budget(expiring)
        assert expired.status_code == 403
        assert expired.json()["message"] == "API token expired"
