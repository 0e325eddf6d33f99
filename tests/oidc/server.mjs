// A real authorization server for keyhaven's tests: oidc-provider (a certified
// OpenID Connect implementation we did not write), on 127.0.0.1 and an OS-chosen
// port. Prints one JSON line {"issuer": ...} when ready.
//
// Clients (their redirect URI is $CALLBACK_URL):
//   kh-basic     confidential, client_secret_basic, refresh tokens rotate
//   kh-post      confidential, client_secret_post
//   kh-public    public (PKCE required by the server)
//   kh-norotate  confidential, refresh tokens are NOT rotated
//   kh-service   client credentials grant
//
// Test hooks, outside the provider's own routes:
//   GET  /__stats                 token requests counted by grant type
//   POST /__fail?status=500&count=N&delay_ms=D   the next N token requests fail
//                                 with that status (or hang D ms first)
import http from 'node:http';
import Provider from 'oidc-provider';

const callback = process.env.CALLBACK_URL;
if (!callback) {
  console.error('CALLBACK_URL is required');
  process.exit(2);
}
const accessTtl = Number(process.env.ACCESS_TOKEN_TTL || 600);

const confidential = (id, method) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  token_endpoint_auth_method: method,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: [callback],
});

const stats = { token: {}, revocation: 0, userinfo: 0 };
let failure = null; // { status, count, delayMs }

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [
      confidential('kh-basic', 'client_secret_basic'),
      confidential('kh-post', 'client_secret_post'),
      confidential('kh-norotate', 'client_secret_basic'),
      {
        client_id: 'kh-public',
        token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: [callback],
      },
      {
        client_id: 'kh-service',
        client_secret: 'kh-service-secret',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    cookies: { keys: ['keyhaven-test-cookie-key'] },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      clientCredentials: { enabled: true },
    },
    scopes: ['openid', 'offline_access', 'profile', 'api'],
    claims: { openid: ['sub'], profile: ['name'] },
    ttl: { AccessToken: accessTtl, ClientCredentials: accessTtl, RefreshToken: 86400, Grant: 86400 },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: (ctx) => ctx.oidc.client.clientId !== 'kh-norotate',
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, name: `User ${sub}` }),
    }),
  });
  provider.proxy = false;

  provider.use(async (ctx, next) => {
    if (ctx.path === '/token' && ctx.method === 'POST' && failure && failure.count > 0) {
      failure.count -= 1;
      const { status, delayMs } = failure;
      stats.token.failed = (stats.token.failed || 0) + 1;
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      ctx.status = status;
      ctx.type = 'text/html';
      ctx.body = `<html><body>injected failure ${status}</body></html>`;
      return;
    }
    await next();
    if (ctx.path === '/token' && ctx.method === 'POST') {
      const grant = (ctx.oidc && ctx.oidc.params && ctx.oidc.params.grant_type) || 'unknown';
      stats.token[grant] = (stats.token[grant] || 0) + 1;
    } else if (ctx.path === '/token/revocation') {
      stats.revocation += 1;
    } else if (ctx.path === '/me') {
      stats.userinfo += 1;
    }
  });

  const handle = provider.callback();
  server.on('request', (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(stats));
      return;
    }
    if (url.pathname === '/__fail' && req.method === 'POST') {
      failure = {
        status: Number(url.searchParams.get('status') || 500),
        count: Number(url.searchParams.get('count') || 1),
        delayMs: Number(url.searchParams.get('delay_ms') || 0),
      };
      res.end('ok');
      return;
    }
    handle(req, res);
  });
  console.log(JSON.stringify({ issuer }));
});
