// A real OpenID provider for Portcullis's integration tests: panva's
// oidc-provider (OpenID-certified) on http://127.0.0.1:<PORT>, with one or
// more confidential clients, a fixed set of test accounts and two tiny
// interaction routes in place of a login page (see README.md).
//
//   node tests/oidc/provider.mjs [PORT] [CONFIG_JSON]
//
// PORT: argv[2], else $OIDC_PORT, else 0 (0 = let the kernel choose; the
// ready line tells which). CONFIG_JSON: argv[3], else $OIDC_CONFIG, else the
// single client built from $OIDC_CLIENT_ID, $OIDC_CLIENT_SECRET,
// $OIDC_REDIRECT_URIS, $OIDC_TOKEN_AUTH_METHOD (see also
// $OIDC_CONFORM_ID_TOKEN_CLAIMS and $OIDC_EXIT_WITH_STDIN). Prints exactly
// one line to stdout, `listening http://127.0.0.1:<PORT>`, once it accepts
// connections; everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';

function fail(message) {
  process.stderr.write(`oidc provider: ${message}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------- config

function parseConfig() {
  const raw = process.argv[3] ?? process.env.OIDC_CONFIG;
  if (raw === undefined || raw === '') return {};
  try {
    const parsed = JSON.parse(raw);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new Error('not a JSON object');
    }
    return parsed;
  } catch (err) {
    return fail(`bad CONFIG_JSON: ${err.message}`);
  }
}

const config = parseConfig();

const portText = process.argv[2] ?? process.env.OIDC_PORT ?? config.port ?? '0';
const port = Number(portText);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad port ${portText}`);

function envList(name) {
  const value = process.env[name];
  if (!value) return undefined;
  return value.split(/[\s,]+/).filter(Boolean);
}

function defaultClient() {
  const redirectUris = envList('OIDC_REDIRECT_URIS');
  if (!redirectUris) {
    fail('no client: set OIDC_REDIRECT_URIS (or give CONFIG_JSON with "clients")');
  }
  return {
    client_id: process.env.OIDC_CLIENT_ID || 'portcullis',
    client_secret: process.env.OIDC_CLIENT_SECRET || 'portcullis-test-secret',
    redirect_uris: redirectUris,
    token_endpoint_auth_method: process.env.OIDC_TOKEN_AUTH_METHOD || 'client_secret_basic',
  };
}

// Every client is a confidential web client doing the authorization code
// flow (PKCE is required of all of them below); a client in CONFIG_JSON may
// set any other client metadata oidc-provider knows.
const clients = (config.clients ?? [defaultClient()]).map((client) => ({
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...client,
}));

// The fixed test accounts; CONFIG_JSON's "accounts" (same shape, keyed by
// account id) adds to or replaces them.
const ACCOUNTS = {
  carol: { email: 'carol@example.test', email_verified: true, name: 'Carol Test' },
  erin: { email: 'erin@example.test', email_verified: false, name: 'Erin Unverified' },
  mallory: { email: 'alice@example.com', email_verified: true, name: 'Mallory Impostor' },
  ...(config.accounts ?? {}),
};

// `carol` signs in as carol with amr ["pwd"]; `carol+mfa` signs in as carol
// with amr ["pwd","mfa"] (so does `carol mfa`, which is what an unescaped +
// in a form body decodes to). Anything else is an unknown account.
function parseLogin(login) {
  const text = String(login ?? '').trim();
  const mfa = /[+ ]mfa$/.test(text);
  const accountId = mfa ? text.slice(0, -'+mfa'.length).trim() : text;
  if (!Object.hasOwn(ACCOUNTS, accountId)) return undefined;
  return { accountId, amr: mfa ? ['pwd', 'mfa'] : ['pwd'] };
}

async function findAccount(_ctx, id) {
  if (!Object.hasOwn(ACCOUNTS, id)) return undefined;
  const account = ACCOUNTS[id];
  return {
    accountId: id,
    async claims() {
      return { sub: id, ...account };
    },
  };
}

// A fresh signing key and cookie key each run: nothing persists, and
// oidc-provider does not fall back to its (warned-about) development keys.
function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: crypto.randomBytes(8).toString('hex'),
    alg: 'RS256',
    use: 'sig',
  };
}

// ------------------------------------------------------------ interactions

const SCOPES = 'openid email profile';

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > 64 * 1024) ctx.throw(413, 'body too large');
    chunks.push(chunk);
  }
  const body = Buffer.concat(chunks).toString('utf8');
  if ((ctx.get('content-type') || '').includes('application/json')) {
    try {
      return JSON.parse(body || '{}');
    } catch {
      return ctx.throw(400, 'bad JSON');
    }
  }
  return Object.fromEntries(new URLSearchParams(body));
}

function loginPage(uid, params, message) {
  const action = `/interaction/${encodeURIComponent(uid)}`;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Test OpenID provider: sign in</title></head>
<body>
<h1>Sign in to ${escapeHtml(params.client_id)}</h1>
${message ? `<p role="alert">${escapeHtml(message)}</p>` : ''}
<form method="post" action="${action}/login">
<label>Login <input name="login" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button>
</form>
<form method="post" action="${action}/abort"><button type="submit">Cancel</button></form>
<p>Accounts: ${Object.keys(ACCOUNTS).map(escapeHtml).join(', ')}; add +mfa for amr pwd,mfa. Any password.</p>
</body></html>
`;
}

// Consent is automatic: a grant of openid email profile (and the claims
// behind them) for the client the interaction is for.
async function grantFor(provider, interaction, accountId) {
  const clientId = interaction.params.client_id;
  let grant;
  if (interaction.grantId) grant = await provider.Grant.find(interaction.grantId);
  if (!grant || grant.accountId !== accountId || grant.clientId !== clientId) {
    grant = new provider.Grant({ accountId, clientId });
  }
  grant.addOIDCScope(SCOPES);
  grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name']);
  return grant.save();
}

function finish(ctx, returnTo) {
  ctx.status = 303;
  ctx.redirect(returnTo);
  ctx.body = '';
}

function interactionRoutes(provider) {
  return async (ctx, next) => {
    const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/.exec(ctx.path);
    if (!match) return next();
    const [, uid, action] = match;
    ctx.set('cache-control', 'no-store');
    try {
      await handleInteraction(ctx, uid, action);
    } catch (err) {
      // e.g. SessionNotFound (no or stale _interaction cookie): 400 and JSON
      // like oidc-provider's own errors, not Koa's bare text.
      ctx.status = err.statusCode || err.status || 500;
      ctx.type = 'json';
      ctx.body = {
        error: err.error || (ctx.status < 500 ? 'invalid_request' : 'server_error'),
        error_description: err.error_description || err.message,
      };
      process.stderr.write(`oidc provider: interaction: ${ctx.status} ${err.name} ${ctx.body.error_description}\n`);
    }
    return undefined;
  };

  async function handleInteraction(ctx, uid, action) {
    // Reads the interaction named by the _interaction cookie (path
    // /interaction/<uid>); throws SessionNotFound without it.
    const interaction = await provider.interactionDetails(ctx.req, ctx.res);
    if (interaction.uid !== uid) ctx.throw(400, 'interaction mismatch');
    const { prompt, params, session } = interaction;

    if (!action && ctx.method === 'GET') {
      // Already signed in at this provider but no grant yet: consent at once.
      if (prompt.name === 'consent' && session?.accountId) {
        const grantId = await grantFor(provider, interaction, session.accountId);
        return finish(ctx, await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } }));
      }
      ctx.type = 'html';
      ctx.body = loginPage(uid, params);
      return undefined;
    }

    if (ctx.method !== 'POST' || !action) ctx.throw(405, 'method not allowed');
    const form = await readForm(ctx);

    if (action === 'abort') {
      return finish(ctx, await provider.interactionResult(ctx.req, ctx.res, {
        error: 'access_denied',
        error_description: 'the user cancelled the sign-in',
      }, { mergeWithLastSubmission: false }));
    }

    const login = parseLogin(form.login);
    if (!login) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = loginPage(uid, params, `unknown account ${JSON.stringify(String(form.login ?? ''))}`);
      return undefined;
    }
    const grantId = await grantFor(provider, interaction, login.accountId);
    return finish(ctx, await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId: login.accountId, amr: login.amr, remember: true },
      consent: { grantId },
    }, { mergeWithLastSubmission: false }));
  }
}

// ------------------------------------------------------------------ start

const server = http.createServer();
server.on('error', (err) => fail(err.message));
server.listen(port, HOST, async () => {
  const issuer = `http://${HOST}:${server.address().port}`;
  let provider;
  try {
    provider = new Provider(issuer, {
      clients,
      findAccount,
      jwks: { keys: [signingKey()] },
      cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
      // amr and auth_time ride on the openid scope, so every ID token
      // carries them (oidc-provider otherwise adds them only when asked for
      // with the claims parameter); acr and sid stay standalone as by default.
      claims: {
        acr: null,
        sid: null,
        openid: ['sub', 'amr', 'auth_time'],
        email: ['email', 'email_verified'],
        profile: ['name'],
      },
      // Put the scope's claims (email, email_verified, name) in the ID token
      // too, not only at the userinfo endpoint. OIDC_CONFORM_ID_TOKEN_CLAIMS=1
      // keeps oidc-provider's strict default (ID token: sub, amr, ... only).
      conformIdTokenClaims: process.env.OIDC_CONFORM_ID_TOKEN_CLAIMS === '1',
      responseTypes: ['code'],
      pkce: { required: () => true },
      features: {
        devInteractions: { enabled: false },
      },
      interactions: {
        url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
      },
      renderError(ctx, out) {
        ctx.type = 'json';
        ctx.body = out;
      },
    });
  } catch (err) {
    fail(`bad configuration: ${err.message}`);
  }
  provider.use(interactionRoutes(provider));
  for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error']) {
    provider.on(event, (_ctx, err) => {
      // error_description is often generic ("grant request is invalid");
      // the cause says which check failed (e.g. the PKCE verifier).
      const cause = err.cause ? `; cause: ${err.cause.message ?? err.cause}` : '';
      process.stderr.write(`oidc provider: ${event}: ${err.name} ${err.message}${err.error_description ? ` (${err.error_description})` : ''}${cause}\n`);
    });
  }
  // Client metadata is only validated when a client is first looked up:
  // look each up now, so a bad one fails here and not at the first request.
  try {
    for (const client of clients) {
      if (!await provider.Client.find(client.client_id)) throw new Error(`client ${client.client_id} not found`);
    }
  } catch (err) {
    fail(`bad client: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}`);
  }
  server.on('request', provider.callback());
  process.stdout.write(`listening ${issuer}\n`);
});

// OIDC_EXIT_WITH_STDIN=1: exit when standard input reaches its end, so a
// harness that gives the provider a pipe it never writes to cannot leave it
// running after the harness itself dies.
if (process.env.OIDC_EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
