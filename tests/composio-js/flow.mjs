// The documented connection flows of composio-core 0.5.39 (Composio's older JS SDK,
// v2 routes) against keyhaven serve at KH_BASE with the admin key KH_KEY. Prints one
// JSON line of what each step saw; crates/cli/tests/composio_js.rs checks it.
import { Composio } from "composio-core";

const base = process.env.KH_BASE;
const key = process.env.KH_KEY;
const secret = process.env.KH_SECRET;
const upstream = process.env.KH_UPSTREAM;
const proxyKey = process.env.KH_PROXY_KEY;
const client = new Composio({ apiKey: key, baseUrl: base });
const out = {};
const step = async (name, f) => {
  try {
    out[name] = await f();
  } catch (e) {
    out[name] = { error: String((e && e.message) || e) };
  }
};

await step("apiKeyConnect", async () => {
  const r = await client.connectedAccounts.initiate({
    appName: "openai",
    authMode: "API_KEY",
    entityId: "alice",
    connectionParams: { api_key: secret },
  });
  const active = await r.waitUntilActive(5);
  return { status: r.connectionStatus, id: r.connectedAccountId, waited: active.status };
});
await step("get", async () => {
  const a = await client.connectedAccounts.get({ connectedAccountId: out.apiKeyConnect.id });
  return { status: a.status, app: a.appName, entity: a.clientUniqueUserId };
});
await step("createIntegration", async () => {
  const i = await client.integrations.create({
    appUniqueKey: "github",
    name: "github from the JS SDK",
    authScheme: "OAUTH2",
    authConfig: { client_id: "gh-js-client", client_secret: secret, scopes: "repo,read:user" },
    useComposioAuth: false,
  });
  return { id: i.id, scheme: i.authScheme, app: i.appName };
});
await step("oauthConnect", async () => {
  const r = await client.connectedAccounts.initiate({
    integrationId: out.createIntegration.id,
    entityId: "bob",
    redirectUri: "https://app.example.com/after",
  });
  return { status: r.connectionStatus, id: r.connectedAccountId, redirectUrl: r.redirectUrl };
});
await step("list", async () => {
  const page = await client.connectedAccounts.list({ user_uuid: "alice", appNames: "openai", status: "ACTIVE" });
  return { ids: page.items.map((a) => a.id) };
});
await step("disableEnable", async () => {
  const id = out.apiKeyConnect.id;
  await client.connectedAccounts.disable({ connectedAccountId: id });
  const off = await client.connectedAccounts.get({ connectedAccountId: id });
  await client.connectedAccounts.enable({ connectedAccountId: id });
  const on = await client.connectedAccounts.get({ connectedAccountId: id });
  return { off: off.status, on: on.status };
});
await step("proxy", async () => {
  // An API of the user's own on this machine, its key sent in a header of its own.
  const i = await client.integrations.create({
    appUniqueKey: "echo-api",
    name: "echo from the JS SDK",
    authScheme: "API_KEY",
    authConfig: { base_url: upstream, header_name: "X-Api-Key", header_format: "{api_key}" },
    useComposioAuth: false,
  });
  const r = await client.connectedAccounts.initiate({
    integrationId: i.id,
    entityId: "proxy-user",
    connectionParams: { api_key: proxyKey },
  });
  const answer = await client.actions.executeRequest({
    connectedAccountId: r.connectedAccountId,
    endpoint: "/check?fixed=1",
    method: "GET",
    parameters: [
      { in: "header", name: "X-Test", value: "hello" },
      { in: "query", name: "page", value: "2" },
    ],
  });
  return { status: answer.status, data: answer.data };
});
await step("delete", async () => {
  await client.connectedAccounts.delete({ connectedAccountId: out.apiKeyConnect.id });
  try {
    await client.connectedAccounts.get({ connectedAccountId: out.apiKeyConnect.id });
    return { gone: false };
  } catch (e) {
    return { gone: true };
  }
});
await step("wrongKey", async () => {
  const other = new Composio({ apiKey: "not-the-key", baseUrl: base });
  await other.connectedAccounts.get({ connectedAccountId: out.oauthConnect.id });
  return { refused: false };
});
console.log(JSON.stringify(out));
