#!/usr/bin/env python3
"""The documented flows of Composio's current Python SDK (composio 0.30.0, v3.1 API)
against keyhaven serve, run by crates/cli/tests/composio_v3.rs.

    KH_BASE=http://127.0.0.1:PORT KH_KEY=... KH_SECRET=... KH_ISSUER=http://127.0.0.1:PORT2 \
        python v3_flow.py

The SDK is sealed: telemetry is off (allow_tracking=False and, as that flag only holds
in the thread that made the client, the telemetry sender replaced), and every socket
to anything but this machine is refused and reported on stderr as "BLOCKED host:port".

When the user must act at a page (an OAuth consent, a connection link), this script
prints `OPEN <url>` and waits for one line on stdin: the test plays the user in
its place and answers with the URL the user landed on. The last line printed is a
JSON object of what each step saw.
"""

import json
import os
import socket
import sys
import warnings

# -- the seal ------------------------------------------------------------------
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_connect = socket.socket.connect


def _sealed_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in _LOOPBACK and not host.startswith("127."):
        sys.stderr.write(f"BLOCKED {host}:{address[1] if isinstance(address, tuple) else ''}\n")
        raise ConnectionRefusedError(f"the test allows no connection to {host}")
    return _connect(self, address)


socket.socket.connect = _sealed_connect
_getaddrinfo = socket.getaddrinfo


def _sealed_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host not in _LOOPBACK and not host.startswith("127."):
        sys.stderr.write(f"BLOCKED {host}:{args[0] if args else ''}\n")
        raise socket.gaierror(f"the test allows no lookup of {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _sealed_getaddrinfo

os.environ.pop("COMPOSIO_API_KEY", None)
os.environ.pop("COMPOSIO_BASE_URL", None)
warnings.simplefilter("ignore", DeprecationWarning)

import composio_client  # noqa: E402
from composio import Composio  # noqa: E402
from composio.core.models import _telemetry  # noqa: E402
from composio.exceptions import ComposioMultipleConnectedAccountsError  # noqa: E402

_telemetry.push_event = lambda *args, **kwargs: None

BASE = os.environ["KH_BASE"]
KEY = os.environ["KH_KEY"]
SECRET = os.environ["KH_SECRET"]
ISSUER = os.environ["KH_ISSUER"]
UPSTREAM = os.environ["KH_UPSTREAM"]
PROXY_KEY = os.environ["KH_PROXY_KEY"]
CALLBACK = "http://127.0.0.1:5555/after"

composio = Composio(api_key=KEY, base_url=BASE, allow_tracking=False)
out = {}


def step(name, fn):
    try:
        out[name] = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported as the step's result
        out[name] = {"error": f"{type(e).__name__}: {e}"}


def user_opens(url):
    """The test plays the user at `url`; answers where the user landed."""
    print(f"OPEN {url}", flush=True)
    return sys.stdin.readline().strip()


def toolkits():
    items = composio.toolkits.get()
    fields = composio.toolkits.get_connected_account_initiation_fields(
        "openai", "API_KEY", required_only=True
    )
    creation = composio.toolkits.get_auth_config_creation_fields("github", "OAUTH2")
    return {
        "count": len(items),
        "has_github": any(t.slug == "github" for t in items),
        "openai_fields": [f.name for f in fields],
        "github_creation": sorted(f.name for f in creation),
    }


def api_key_connect():
    ac = composio.auth_configs.create(
        "openai",
        {"type": "use_custom_auth", "auth_scheme": "API_KEY", "credentials": {}},
    )
    request = composio.connected_accounts.initiate(
        user_id="alice",
        auth_config_id=ac.id,
        config={"auth_scheme": "API_KEY", "val": {"status": "ACTIVE", "api_key": SECRET}},
    )
    account = request.wait_for_connection(timeout=10)
    return {"auth_config": ac.id, "id": request.id, "status": request.status, "waited": account.status}


def duplicate_guard():
    try:
        composio.connected_accounts.initiate(
            user_id="alice",
            auth_config_id=out["apiKey"]["auth_config"],
            config={"auth_scheme": "API_KEY", "val": {"status": "ACTIVE", "api_key": SECRET}},
        )
    except ComposioMultipleConnectedAccountsError:
        return {"refused": True}
    return {"refused": False}


def oauth_connect():
    ac = composio.auth_configs.create(
        "oidc-test",
        {
            "type": "use_custom_auth",
            "auth_scheme": "OAUTH2",
            "name": "oidc from the Python SDK",
            "credentials": {
                "client_id": "kh-basic",
                "client_secret": "kh-basic-secret",
                "authorize_url": f"{ISSUER}/auth",
                "token_url": f"{ISSUER}/token",
                "base_url": ISSUER,
                "authorize_params": {"prompt": "consent"},
                "scopes": "openid,offline_access,api",
            },
        },
    )
    request = composio.connected_accounts.initiate(
        user_id="bob", auth_config_id=ac.id, callback_url=CALLBACK
    )
    initiated = {"status": request.status, "has_redirect": bool(request.redirect_url)}
    landed = user_opens(request.redirect_url)
    account = request.wait_for_connection(timeout=20)
    return {
        "auth_config": ac.id,
        "id": request.id,
        "initiated": initiated,
        "landed": landed,
        "waited": account.status,
        "masked": account.state.val.access_token if account.state else None,
    }


def link():
    request = composio.connected_accounts.link(
        user_id="carol", auth_config_id=out["oauth"]["auth_config"], callback_url=CALLBACK
    )
    landed = user_opens(request.redirect_url)
    account = request.wait_for_connection(timeout=20)
    return {"id": request.id, "link": request.redirect_url, "landed": landed, "waited": account.status}


def get_and_list():
    a = composio.connected_accounts.get(out["apiKey"]["id"])
    by_user = composio.connected_accounts.list(user_ids=["alice"])
    by_toolkit = composio.connected_accounts.list(toolkit_slugs=["oidc-test"])
    by_status = composio.connected_accounts.list(statuses=["ACTIVE"], user_ids=["alice", "bob"])
    none = composio.connected_accounts.list(statuses=["REVOKED"])
    return {
        "status": a.status,
        "user": a.user_id,
        "toolkit": a.toolkit.slug,
        "by_user": [i.id for i in by_user.items],
        "by_toolkit": sorted(i.id for i in by_toolkit.items),
        "by_status": [i.id for i in by_status.items],
        "revoked": len(none.items),
    }


def auth_configs():
    listed = composio.auth_configs.list(toolkit_slug="oidc-test")
    got = composio.auth_configs.get(out["oauth"]["auth_config"])
    composio.auth_configs.update(
        out["oauth"]["auth_config"],
        options={"type": "custom", "credentials": {"scopes": ["openid", "offline_access"]}},
    )
    updated = composio.auth_configs.get(out["oauth"]["auth_config"])
    composio.auth_configs.disable(out["oauth"]["auth_config"])
    disabled = composio.auth_configs.get(out["oauth"]["auth_config"]).status
    composio.auth_configs.enable(out["oauth"]["auth_config"])
    enabled = composio.auth_configs.get(out["oauth"]["auth_config"]).status
    try:
        composio.auth_configs.create("github", {"type": "use_composio_managed_auth"})
        managed = "accepted"
    except composio_client.BadRequestError as e:
        managed = str(e)
    spare = composio.auth_configs.create(
        "openai", {"type": "use_custom_auth", "auth_scheme": "API_KEY", "credentials": {}}
    )
    composio.auth_configs.delete(spare.id)
    try:
        composio.auth_configs.get(spare.id)
        gone = False
    except composio_client.NotFoundError:
        gone = True
    return {
        "listed": [i.id for i in listed.items],
        "name": got.name,
        "connections": got.no_of_connections,
        "scopes": updated.credentials.get("scopes") if updated.credentials else None,
        "disabled": disabled,
        "enabled": enabled,
        "managed": managed,
        "deleted": gone,
    }


def authorize_custom():
    # An app outside the catalogue, with an auth config of its own.
    request = composio.toolkits.authorize(user_id="erin", toolkit="oidc-test")
    return {"status": request.status, "redirect": request.redirect_url}


def disable_enable_refresh():
    account_id = out["oauth"]["id"]
    composio.connected_accounts.disable(account_id)
    off = composio.connected_accounts.get(account_id).status
    composio.connected_accounts.enable(account_id)
    on = composio.connected_accounts.get(account_id).status
    refreshed = composio.connected_accounts.refresh(account_id)
    return {"off": off, "on": on, "refreshed": refreshed.status}


def delete():
    composio.connected_accounts.delete(out["apiKey"]["id"])
    try:
        composio.connected_accounts.get(out["apiKey"]["id"])
        return {"gone": False}
    except composio_client.NotFoundError as e:
        return {"gone": True, "error": str(e)}


def proxy():
    # An API of the user's own on this machine, its key sent in a header of its own.
    ac = composio.auth_configs.create(
        "echo-api",
        {
            "type": "use_custom_auth",
            "auth_scheme": "API_KEY",
            "credentials": {"base_url": UPSTREAM, "header_name": "X-Api-Key", "header_format": "{api_key}"},
        },
    )
    request = composio.connected_accounts.initiate(
        user_id="proxy-user",
        auth_config_id=ac.id,
        config={"auth_scheme": "API_KEY", "val": {"status": "ACTIVE", "api_key": PROXY_KEY}},
    )
    r = composio.tools.proxy(
        endpoint="/check?fixed=1",
        method="GET",
        connected_account_id=request.id,
        parameters=[
            {"name": "X-Test", "value": "hello", "type": "header"},
            {"name": "page", "value": "2", "type": "query"},
        ],
    )
    return {"status": r.status, "data": r.data}


def wrong_key():
    other = Composio(api_key="kh_not_the_key_0000000000", base_url=BASE, allow_tracking=False)
    try:
        other.connected_accounts.list(user_ids=["alice"])
    except composio_client.AuthenticationError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


def authorize():
    # authorize takes the newest auth config of the toolkit.
    ac = composio.auth_configs.create(
        "github",
        {
            "type": "use_custom_auth",
            "auth_scheme": "OAUTH2",
            "credentials": {"client_id": "gh-py-client", "client_secret": "gh-py-secret"},
        },
    )
    request = composio.toolkits.authorize(user_id="dave", toolkit="github")
    account = composio.connected_accounts.get(request.id)
    return {
        "status": request.status,
        "redirect": request.redirect_url,
        "auth_config": account.auth_config.id,
        "expected": ac.id,
    }


step("toolkits", toolkits)
step("apiKey", api_key_connect)
step("duplicate", duplicate_guard)
step("oauth", oauth_connect)
step("link", link)
step("getList", get_and_list)
step("authConfigs", auth_configs)
step("authorize", authorize)
step("authorizeCustom", authorize_custom)
step("disableEnableRefresh", disable_enable_refresh)
step("proxy", proxy)
step("delete", delete)
step("wrongKey", wrong_key)
print(json.dumps(out), flush=True)
