// The documented flows of Composio's current TypeScript SDK (@composio/core 0.21.0,
// v3.1 API) against keyhaven serve at KH_BASE with the admin key KH_KEY; run by
// crates/cli/tests/composio_v3.rs, sealed by ../composio-js/seal.cjs (no socket to
// anything but this machine), with tracking and the version check off.
//
// When the user must act at a page (an OAuth consent, a connection link), it prints
// `OPEN <url>` and waits for one line on stdin: the URL the user landed on, once the
// test has played the user. Everything the SDK logs goes to stderr, where the test
// looks for its validation warnings. The last line printed is a JSON object of what
// each step saw.
import readline from "node:readline";
import { Composio, AuthScheme } from "@composio/core";

const base = process.env.KH_BASE;
const key = process.env.KH_KEY;
const secret = process.env.KH_SECRET;
const issuer = process.env.KH_ISSUER;
const upstream = process.env.KH_UPSTREAM;
const proxyKey = process.env.KH_PROXY_KEY;
const callback = "http://127.0.0.1:5555/after";

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const userOpens = async (url) => {
  process.stdout.write(`OPEN ${url}\n`);
  const { value } = await lines.next();
  return (value || "").trim();
};

const composio = new Composio({
  apiKey: key,
  baseURL: base,
  allowTracking: false,
  disableVersionCheck: true,
});
const out = {};
const step = async (name, f) => {
  try {
    out[name] = await f();
  } catch (e) {
    out[name] = { error: `${e && e.constructor && e.constructor.name}: ${(e && e.message) || e}` };
  }
};

await step("toolkits", async () => {
  const items = await composio.toolkits.get();
  const detail = await composio.toolkits.get("github");
  const fields = await composio.toolkits.getConnectedAccountInitiationFields("openai", "API_KEY", {
    requiredOnly: true,
  });
  const creation = await composio.toolkits.getAuthConfigCreationFields("github", "OAUTH2", {
    requiredOnly: true,
  });
  return {
    count: items.length,
    hasGithub: items.some((t) => t.slug === "github"),
    modes: (detail.authConfigDetails || []).map((d) => d.mode),
    openaiFields: fields.map((f) => f.name),
    githubRequired: creation.map((f) => f.name).sort(),
  };
});

await step("apiKey", async () => {
  const ac = await composio.authConfigs.create("openai", {
    type: "use_custom_auth",
    authScheme: "API_KEY",
    name: "openai keys",
    credentials: {},
  });
  const request = await composio.connectedAccounts.initiate("alice", ac.id, {
    config: AuthScheme.APIKey({ api_key: secret }),
  });
  const account = await request.waitForConnection(10000);
  return { authConfig: ac.id, id: request.id, status: request.status, waited: account.status };
});

await step("duplicate", async () => {
  try {
    await composio.connectedAccounts.initiate("alice", out.apiKey.authConfig, {
      config: AuthScheme.APIKey({ api_key: secret }),
    });
    return { refused: false };
  } catch (e) {
    return { refused: true, error: e.constructor.name };
  }
});

await step("oauth", async () => {
  const ac = await composio.authConfigs.create("oidc-test", {
    type: "use_custom_auth",
    authScheme: "OAUTH2",
    name: "oidc from the TypeScript SDK",
    credentials: {
      client_id: "kh-post",
      client_secret: "kh-post-secret",
      token_auth_method: "client_secret_post",
      authorize_url: `${issuer}/auth`,
      token_url: `${issuer}/token`,
      base_url: issuer,
      // The SDK takes strings, numbers and booleans here: scopes as one string.
      scopes: "openid,offline_access,api",
    },
  });
  const request = await composio.connectedAccounts.initiate("bob", ac.id, {
    callbackUrl: callback,
  });
  const initiated = { status: request.status, hasRedirect: Boolean(request.redirectUrl) };
  const landed = await userOpens(request.redirectUrl);
  const account = await request.waitForConnection(20000);
  return {
    authConfig: ac.id,
    id: request.id,
    initiated,
    landed,
    waited: account.status,
    masked: account.state && account.state.val ? account.state.val.access_token : null,
  };
});

await step("link", async () => {
  const request = await composio.connectedAccounts.link("carol", out.oauth.authConfig, {
    callbackUrl: callback,
  });
  const landed = await userOpens(request.redirectUrl);
  const account = await request.waitForConnection(20000);
  return { id: request.id, link: request.redirectUrl, landed, waited: account.status };
});

await step("getList", async () => {
  const a = await composio.connectedAccounts.get(out.apiKey.id);
  const byUser = await composio.connectedAccounts.list({ userIds: ["alice"] });
  const byToolkit = await composio.connectedAccounts.list({ toolkitSlugs: ["oidc-test"] });
  const byStatus = await composio.connectedAccounts.list({
    statuses: ["ACTIVE"],
    userIds: ["alice", "bob"],
  });
  const revoked = await composio.connectedAccounts.list({ statuses: ["REVOKED"] });
  return {
    status: a.status,
    toolkit: a.toolkit.slug,
    byUser: byUser.items.map((i) => i.id),
    byToolkit: byToolkit.items.map((i) => i.id).sort(),
    byStatus: byStatus.items.map((i) => i.id),
    revoked: revoked.items.length,
  };
});

await step("authConfigs", async () => {
  const id = out.oauth.authConfig;
  const listed = await composio.authConfigs.list({ toolkit: "oidc-test" });
  const got = await composio.authConfigs.get(id);
  await composio.authConfigs.update(id, {
    type: "custom",
    credentials: { scopes: "openid,offline_access" },
  });
  const updated = await composio.authConfigs.get(id);
  await composio.authConfigs.disable(id);
  const disabled = (await composio.authConfigs.get(id)).status;
  await composio.authConfigs.enable(id);
  const enabled = (await composio.authConfigs.get(id)).status;
  let managed;
  try {
    await composio.authConfigs.create("github", { type: "use_composio_managed_auth" });
    managed = "accepted";
  } catch (e) {
    managed = `${e.constructor.name}: ${e.message}`;
  }
  const spare = await composio.authConfigs.create("openai", {
    type: "use_custom_auth",
    authScheme: "API_KEY",
    credentials: {},
  });
  await composio.authConfigs.delete(spare.id);
  let deleted = false;
  try {
    await composio.authConfigs.get(spare.id);
  } catch (e) {
    deleted = e.constructor.name;
  }
  return {
    listed: listed.items.map((i) => i.id),
    name: got.name,
    connections: got.noOfConnections,
    scopes: updated.credentials ? updated.credentials.scopes : null,
    disabled,
    enabled,
    managed,
    deleted,
  };
});

await step("authorize", async () => {
  // The SDK reads the toolkit first, so a catalogue app: GitHub, with an OAuth client
  // of its own; authorize takes the newest auth config of the toolkit.
  const ac = await composio.authConfigs.create("github", {
    type: "use_custom_auth",
    authScheme: "OAUTH2",
    credentials: { client_id: "gh-ts-client", client_secret: "gh-ts-secret" },
  });
  const request = await composio.toolkits.authorize("dave", "github");
  const account = await composio.connectedAccounts.get(request.id);
  return {
    status: request.status,
    redirect: request.redirectUrl,
    authConfig: account.authConfig.id,
    expected: ac.id,
  };
});

await step("authorizeCustom", async () => {
  // An app outside the catalogue is a toolkit once it has an auth config.
  const request = await composio.toolkits.authorize("erin", "oidc-test");
  return { status: request.status, redirect: request.redirectUrl };
});

await step("disableEnableRefresh", async () => {
  const id = out.oauth.id;
  await composio.connectedAccounts.disable(id);
  const off = (await composio.connectedAccounts.get(id)).status;
  await composio.connectedAccounts.enable(id);
  const on = (await composio.connectedAccounts.get(id)).status;
  const refreshed = await composio.connectedAccounts.refresh(id);
  return { off, on, refreshed: refreshed.status };
});

await step("delete", async () => {
  await composio.connectedAccounts.delete(out.apiKey.id);
  try {
    await composio.connectedAccounts.get(out.apiKey.id);
    return { gone: false };
  } catch (e) {
    return { gone: true, error: e.constructor.name };
  }
});

await step("proxy", async () => {
  // An API of the user's own on this machine, its key sent in a header of its own.
  const ac = await composio.authConfigs.create("echo-api", {
    type: "use_custom_auth",
    authScheme: "API_KEY",
    credentials: { base_url: upstream, header_name: "X-Api-Key", header_format: "{api_key}" },
  });
  const request = await composio.connectedAccounts.initiate("proxy-user", ac.id, {
    config: AuthScheme.APIKey({ api_key: proxyKey }),
  });
  const r = await composio.tools.proxyExecute({
    endpoint: "/check?fixed=1",
    method: "GET",
    connectedAccountId: request.id,
    parameters: [
      { in: "header", name: "X-Test", value: "hello" },
      { in: "query", name: "page", value: 2 },
    ],
  });
  return { status: r.status, data: r.data };
});

await step("wrongKey", async () => {
  const other = new Composio({
    apiKey: "kh_not_the_key_0000000000",
    baseURL: base,
    allowTracking: false,
    disableVersionCheck: true,
  });
  try {
    await other.connectedAccounts.list({ userIds: ["alice"] });
    return { error: null };
  } catch (e) {
    return { error: e.constructor.name, message: e.message };
  }
});

process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(0);
