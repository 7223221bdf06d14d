import type { Command } from 'commander';
import { BrokerApi } from '../broker/client/api.js';
import { checkedServerUrl, readCliConfig, writeCliConfig } from '../broker/client/cli-config.js';
import { remoteLogin, startLoopbackLogin } from '../broker/client/browser-login.js';
import { deviceLogin, readIdTokenFile } from '../broker/client/device-login.js';
import { dpopProof, generateDpopKey } from '../broker/client/dpop-key.js';
import { loadDeviceKey, loadLogin, saveDeviceKey, saveLogin } from '../broker/client/login-record.js';
import { revokeLogin } from '../broker/client/revoke-login.js';
import { notifyDaemon } from '../broker/daemon/notify.js';
import type { PingResult } from '../broker/daemon/protocol.js';
import { BrokerError } from '../broker/errors.js';
import { loginStoreInUse, type LoginStoreInfo } from '../broker/keychain.js';
import { authTokenResponse, loginConfigResponse, type LoginConfig } from '../broker/wire/service-api.js';
import { canOpenBrowser, launchBrowser } from './open-browser.js';
import { action, info, out, printJson } from './output.js';

/**
 * A running daemon that reads another store, or another session's kernel keyring (one started under
 * systemd --user, or from another SSH login), does not see this login: say so, and how to fix it.
 */
function daemonCannotSee(daemon: PingResult | undefined, store: LoginStoreInfo, developer: string): string | undefined {
  if (!daemon || daemon.loginStore === undefined) return undefined;
  const same = daemon.loginStore?.kind === store.kind && daemon.loginStore.keyring === store.keyring;
  if (same && daemon.developer === developer) return undefined;
  const where = daemon.loginStore ? `the ${daemon.loginStore.label}${daemon.loginStore.keyring ? ` of another session (keyring ${daemon.loginStore.keyring})` : ''}` : 'no login store';
  return `the running daemon (pid ${daemon.pid}) reads ${where} and does not see this login; restart it from this session: broker daemon stop (the next broker command starts it here)`;
}

export function register(program: Command): void {
  program
    .command('login')
    .description('log in with your identity provider in the browser (authorization code + PKCE) and keep the broker login in the OS keychain (or, on Linux without one, the kernel keyring of your session)')
    .option('--server <url>', 'broker service URL (remembered for later commands; or set BROKER_URL)')
    .option('--device', 'log in with a code shown here and confirmed at the IdP (OAuth 2.0 device flow) instead of a browser on this machine')
    .option('--remote', 'for an SSH session: print the login URL, open it in your own browser, and paste back the address it ends on')
    .option('--id-token-file <path|->', 'use an existing OIDC ID token (e.g. from CI) instead of an interactive login; - reads stdin')
    .option('--json', 'print the result as JSON')
    .action(action(async (opts: { server?: string; device?: boolean; remote?: boolean; idTokenFile?: string; json?: boolean }) => {
      const modes = [opts.device && '--device', opts.remote && '--remote', opts.idTokenFile !== undefined && '--id-token-file'].filter(Boolean);
      if (modes.length > 1) {
        throw new BrokerError('invalid_request', `${modes.join(' and ')} cannot be used together`, { hint: 'pick one way to log in' });
      }
      const serverUrl = opts.server !== undefined ? checkedServerUrl(opts.server, '--server') : readCliConfig()?.serverUrl;
      if (!serverUrl) {
        throw new BrokerError('invalid_request', 'no broker service URL', { hint: 'run: broker login --server https://broker.example.com' });
      }
      // Before anything else: without a keychain there is nowhere to keep the login, and the broker
      // never falls back to a file. (A read of our own entry; keychain_unavailable if none.) The
      // login this one replaces is revoked on the service once the new one is stored.
      const previous = await loadLogin(serverUrl).then(async (record) => {
        const key = record ? await loadDeviceKey(serverUrl) : null;
        return record && key ? { record, key } : undefined;
      }, (e: unknown) => {
        if (e instanceof BrokerError && e.code === 'keychain_unavailable') throw e;
        return undefined; // a v1 or damaged entry: replaced below
      });
      const anonymous = new BrokerApi(serverUrl);
      let idToken: string;
      if (opts.idTokenFile) {
        idToken = await readIdTokenFile(opts.idTokenFile);
      } else {
        if (process.env.CI) {
          throw new BrokerError('invalid_request', 'interactive login is disabled when CI is set', { hint: 'pass --id-token-file with the CI system\'s OIDC token' });
        }
        const lc = await anonymous.request('GET', '/v1/login-config', loginConfigResponse);
        idToken = await interactiveLogin(lc, opts.device ? 'device' : opts.remote ? 'remote' : 'browser');
      }
      // A new device key per login; the service binds the refresh token to it (RFC 9449).
      const { key, privateJwk } = await generateDpopKey();
      const r = await anonymous.request(
        'POST', '/v1/auth/token', authTokenResponse, { id_token: idToken }, { dpop: await dpopProof(key, 'POST', `${serverUrl}/v1/auth/token`) },
      );
      if (!r.refresh_token || !r.login) throw new BrokerError('upstream_error', 'the broker service did not issue a refresh token', { hint: 'the service may be an older version; ask its operator' });
      // Two keychain items: the device key first, so a login record is never there without its key.
      await saveDeviceKey(serverUrl, privateJwk, r.login.expiresAt);
      await saveLogin({ v: 2, serverUrl, developer: r.developer, refreshToken: r.refresh_token, login: r.login });
      // Best effort: the replaced login would otherwise stay valid on the service until its end.
      if (previous) await revokeLogin(serverUrl, previous.record.refreshToken, previous.key).catch(() => undefined);
      if (opts.server) writeCliConfig({ serverUrl });
      const store = await loginStoreInUse();
      const daemon = await notifyDaemon();
      if (opts.json) printJson({ developer: r.developer, groups: r.groups, server: serverUrl, loginStore: { kind: store.kind, label: store.label } });
      else out(`Logged in to ${serverUrl} as ${r.developer}${r.groups.length ? ` (groups: ${r.groups.join(', ')})` : ''}`);
      info(`login kept in the ${store.label}`);
      const blind = daemonCannotSee(daemon, store, r.developer);
      if (blind) info(`broker login: warning: ${blind}`);
    }));
}

/**
 * The interactive logins. The browser on this machine by default (RFC 8252: no code to type, so no
 * code someone else started can be slipped to the person, RFC 8628 §5.4); the device flow where no
 * browser can be opened here (CI, no graphical session, no browser command) or with --device.
 */
async function interactiveLogin(lc: LoginConfig, mode: 'browser' | 'remote' | 'device'): Promise<string> {
  const idp = { issuer: lc.issuer, clientId: lc.clientId, scope: lc.scopes, allowInsecureHttp: lc.allowInsecureHttp };
  if (mode === 'remote') {
    const { idToken } = await remoteLogin({
      ...idp,
      onUrl: (url, redirectUri) => {
        info(`To log in, open this URL in your browser:\n\n  ${url}\n`);
        info(`After the login, the browser goes to ${redirectUri}?… and fails to load it (nothing listens there on your machine).`);
        info('Copy that whole address from its address bar and paste it here:');
      },
    });
    return idToken;
  }
  if (mode === 'browser') {
    if (!canOpenBrowser()) {
      info('No browser can be opened here (no graphical session): logging in with a code instead (broker login --remote logs in with your own browser).');
    } else {
      const login = await startLoopbackLogin(idp);
      if (await launchBrowser(login.url)) {
        info(`Opened the login page in your browser. If it did not open, open:\n\n  ${login.url}\n`);
        info('Waiting for the browser (at most 5 min; Ctrl-C to stop)…');
        return (await login.result).idToken;
      }
      login.close();
      await login.result.catch(() => undefined);
      info('The browser could not be started: logging in with a code instead.');
    }
  }
  const { idToken } = await deviceLogin({
    ...idp,
    onPrompt: (p) => {
      info(`To log in, open ${p.verificationUriComplete ?? p.verificationUri}`);
      info(`and confirm the code: ${p.userCode}   (expires in ${Math.round(p.expiresIn / 60)} min)`);
    },
  });
  return idToken;
}
