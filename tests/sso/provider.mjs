// A real OpenID Connect provider (panva/oidc-provider, pinned in package.json) for the single
// sign-on tests, on loopback over plain http. Started by tests/sso/conftest.py:
//
//   node provider.mjs <port> '<clients as JSON>'
//
// Every login name is an account whose email is that name (so a test picks the email it
// needs); a name starting with "unverified." has `email_verified: false`. The development
// login and consent pages are on (devInteractions): the tests post their forms. PKCE is
// required for every client. Prints "ready <issuer>" on stdout once it listens.
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const clients = JSON.parse(process.argv[3]);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  cookies: { keys: ['domicile-sso-tests-only'] },
  async findAccount(ctx, id) {
    const unverified = id.startsWith('unverified.');
    const email = unverified ? id.slice('unverified.'.length) : id;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email, email_verified: !unverified };
      },
    };
  },
});

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
