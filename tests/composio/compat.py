#!/usr/bin/env python3
"""Composio client compatibility check for keyhaven.

Drives a running keyhaven server with the official Composio Python client
(composio-core 0.6.19), exactly as a Composio user pointing the client at a
self-hosted keyhaven would, and asserts every answer.

    KEYHAVEN_URL=http://127.0.0.1:9999 KEYHAVEN_API_KEY=kh_... python compat.py

The server must have been started with a GitHub OAuth client configured
(KEYHAVEN_GITHUB_CLIENT_ID / KEYHAVEN_GITHUB_CLIENT_SECRET, dummy values do)
and with `--allow-redirect http://127.0.0.1:5555`.

Prints one line per step; exits 1 with a message on the first failure, 2 when
the environment is incomplete. See docs/composio-compat.md for the shapes.
"""

import atexit
import os
import sys
import traceback

# The client phones home on import and at exit (Sentry DSN, PyPI version check,
# remote enums). Turn all of that off before importing it: this check talks to
# the keyhaven under test and to nothing else.
os.environ["COMPOSIO_DISABLE_SENTRY"] = "true"
os.environ["COMPOSIO_DISABLE_VERSION_CHECK"] = "true"
os.environ["COMPOSIO_NO_REMOTE_ENUM_FETCHING"] = "true"
os.environ.pop("COMPOSIO_API_KEY", None)
os.environ.pop("COMPOSIO_BASE_URL", None)

import requests  # noqa: E402  (only to see the 401 status itself)

from composio.client import Composio  # noqa: E402
from composio.client.exceptions import ComposioClientError  # noqa: E402
from composio.utils import sentry as _composio_sentry  # noqa: E402

# `composio.utils.sentry` registers `update_dsn` at exit unconditionally; it
# would fetch a DSN from backend.composio.dev and write ~/.composio/user_data.json.
atexit.unregister(_composio_sentry.update_dsn)

SECRET = "sk-compat-test-123"
ENTITY = "alice"
REDIRECT = "http://127.0.0.1:5555/done"
GITHUB_AUTHORIZE = "https://github.com/login/oauth/authorize"


class CheckFailed(Exception):
    """A step's assertion did not hold."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def step(number, title, fn):
    """Runs one step; prints `ok` or the failure and exits."""
    label = f"step {number}: {title}"
    try:
        detail = fn()
    except CheckFailed as e:
        print(f"FAIL {label}: {e}", flush=True)
        sys.exit(1)
    except Exception as e:  # the client raised: an HTTP error or a model that did not validate
        status = getattr(e, "status_code", None)
        status = f" (HTTP {status})" if status is not None else ""
        print(f"FAIL {label}: the Composio client raised {type(e).__name__}{status}: {e}", flush=True)
        traceback.print_exc(file=sys.stderr)
        sys.exit(1)
    print(f"ok   {label}" + (f" ({detail})" if detail else ""), flush=True)


def main():
    url = os.environ.get("KEYHAVEN_URL", "").rstrip("/")
    key = os.environ.get("KEYHAVEN_API_KEY", "")
    if not url or not key:
        print("set KEYHAVEN_URL (e.g. http://127.0.0.1:9999) and KEYHAVEN_API_KEY", file=sys.stderr)
        sys.exit(2)
    base_url = url + "/api"
    state = {}

    # 1. The client checks its key with GET /api/v1/client/auth/client_info.
    def connect():
        client = Composio(api_key=key, base_url=base_url)
        # The check is lazy: reading `api_key` (or the first request) runs it.
        check(client.api_key == key, "client.api_key did not return the key given")
        state["client"] = client
        return "GET /api/v1/client/auth/client_info accepted the key"

    step(1, "Composio(api_key, base_url=URL/api) validates the key", connect)

    def wrong_key():
        wrong = "kh_wrong_" + key
        bad = Composio(api_key=wrong, base_url=base_url)
        try:
            bad.apps.get(name="openai")
        except ComposioClientError as e:
            check("not valid" in str(e), f"unexpected error for a wrong key: {e}")
        else:
            raise CheckFailed("a wrong API key was accepted by the client")
        # The client folds 401 and 403 into one error; see the status itself.
        r = requests.get(
            base_url + "/v1/client/auth/client_info",
            headers={"x-api-key": wrong},
            timeout=10,
        )
        check(r.status_code == 401, f"wrong key: client_info answered HTTP {r.status_code}, expected 401")
        return "ComposioClientError, HTTP 401"

    step(1, "a wrong key is refused", wrong_key)

    client = state["client"]
    entity = client.get_entity(ENTITY)

    # 2. API key connection: ACTIVE at once.
    def initiate_api_key():
        req = entity.initiate_connection(
            app_name="openai",
            auth_mode="API_KEY",
            connected_account_params={"api_key": SECRET},
            labels=["compat", "team-a"],
        )
        check(req.connectionStatus == "ACTIVE", f"connectionStatus is {req.connectionStatus!r}, expected 'ACTIVE'")
        check(
            isinstance(req.connectedAccountId, str) and req.connectedAccountId.startswith("ca_"),
            f"connectedAccountId {req.connectedAccountId!r} does not start with 'ca_'",
        )
        check(SECRET not in req.model_dump_json(), "the initiate answer contains the API key")
        state["req"] = req
        return req.connectedAccountId

    step(2, "entity.initiate_connection(openai, API_KEY) is ACTIVE", initiate_api_key)
    req = state["req"]

    # 3. The account, without its secret.
    def get_account():
        acc = client.connected_accounts.get(connection_id=req.connectedAccountId)
        check(acc.id == req.connectedAccountId, f"id is {acc.id!r}, expected {req.connectedAccountId!r}")
        check(acc.status == "ACTIVE", f"status is {acc.status!r}, expected 'ACTIVE'")
        check(acc.appName == "openai", f"appName is {acc.appName!r}, expected 'openai'")
        check(acc.appUniqueId == "openai", f"appUniqueId is {acc.appUniqueId!r}, expected 'openai'")
        owner = acc.clientUniqueUserId or acc.entityId
        check(owner == ENTITY, f"clientUniqueUserId/entityId is {owner!r}, expected {ENTITY!r}")
        check(SECRET not in acc.model_dump_json(), "the ConnectedAccountModel contains the API key")
        # The model drops unknown fields, so also look at the whole answer, fetched
        # with the client's own HTTP session (same request as the call above).
        raw = client.http.get(url=f"/v1/connectedAccounts/{req.connectedAccountId}")
        check(raw.status_code == 200, f"GET /v1/connectedAccounts/{{id}} answered {raw.status_code}")
        check(SECRET not in raw.text, "the raw GET /api/v1/connectedAccounts/{id} answer contains the API key")
        return f"connectionParams={acc.connectionParams.model_dump(exclude_none=True)}"

    step(3, "connected_accounts.get(connection_id) is ACTIVE, openai, no secret", get_account)

    # 4. Listing by entity.
    def list_by_entity():
        accounts = client.connected_accounts.get(entity_ids=[ENTITY])
        check(isinstance(accounts, list), f"expected a list, got {type(accounts).__name__}")
        ids = [a.id for a in accounts]
        check(req.connectedAccountId in ids, f"{req.connectedAccountId} not in the accounts of {ENTITY!r}: {ids}")
        for a in accounts:
            check(SECRET not in a.model_dump_json(), f"listed account {a.id} contains the API key")
        others = client.connected_accounts.get(entity_ids=["nobody"])
        check(isinstance(others, list), f"expected a list, got {type(others).__name__}")
        check(
            req.connectedAccountId not in [a.id for a in others],
            f"{req.connectedAccountId} is listed for entity 'nobody'",
        )
        return f"{len(accounts)} for {ENTITY!r}, {len(others)} for 'nobody'"

    step(4, "connected_accounts.get(entity_ids=...) filters by entity", list_by_entity)

    # 5. Already active: wait_until_active answers at once.
    def wait_active():
        acc = req.wait_until_active(client=client, timeout=15)
        check(acc.id == req.connectedAccountId, f"wait_until_active returned {acc.id!r}")
        check(acc.status == "ACTIVE", f"wait_until_active returned status {acc.status!r}")
        return None

    step(5, "req.wait_until_active(client, timeout) returns the account", wait_active)

    # 6. OAuth2: INITIATED with GitHub's authorize URL.
    def initiate_oauth():
        oreq = entity.initiate_connection(app_name="github", redirect_url=REDIRECT)
        check(oreq.connectionStatus == "INITIATED", f"connectionStatus is {oreq.connectionStatus!r}, expected 'INITIATED'")
        check(
            oreq.connectedAccountId.startswith("ca_"),
            f"connectedAccountId {oreq.connectedAccountId!r} does not start with 'ca_'",
        )
        check(
            isinstance(oreq.redirectUrl, str) and oreq.redirectUrl.startswith(GITHUB_AUTHORIZE),
            f"redirectUrl {oreq.redirectUrl!r} does not start with {GITHUB_AUTHORIZE}",
        )
        check("state=" in oreq.redirectUrl, f"redirectUrl {oreq.redirectUrl!r} has no state parameter")
        acc = client.connected_accounts.get(connection_id=oreq.connectedAccountId)
        check(acc.status == "INITIATED", f"the account's status is {acc.status!r}, expected 'INITIATED'")
        check(acc.appName == "github", f"appName is {acc.appName!r}, expected 'github'")
        return oreq.connectedAccountId

    step(6, "entity.initiate_connection(github, redirect_url) is INITIATED", initiate_oauth)

    print("all steps passed")


if __name__ == "__main__":
    main()
