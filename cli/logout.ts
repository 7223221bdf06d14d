import type { Command } from 'commander';
import { requireCliConfig } from '../broker/client/cli-config.js';
import { deleteLogin, loadDeviceKey, loadLogin } from '../broker/client/login-record.js';
import { revokeLogin } from '../broker/client/revoke-login.js';
import { notifyDaemon } from '../broker/daemon/notify.js';
import { BrokerError, isBrokerError } from '../broker/errors.js';
import { action, out } from './output.js';

export function register(program: Command): void {
  program
    .command('logout')
    .description('end the broker login: revokes it on the service, removes it from the OS keychain, and the daemon drops every credential it holds')
    .action(action(async () => {
      const { serverUrl } = requireCliConfig();
      // Revoke on the service first (RFC 7009-like), with the login's own token and key; then forget
      // it here whatever the service said: a logout never leaves the login on this machine.
      let unrevoked: { expiresAt: string | undefined; why: BrokerError } | undefined;
      const record = await loadLogin(serverUrl).catch((e: unknown) => {
        if (isBrokerError(e) && e.code === 'not_logged_in') return null; // v1 or damaged: nothing the service would take
        throw e;
      });
      const key = record ? await loadDeviceKey(serverUrl).catch(() => null) : null;
      if (record && key) {
        try {
          await revokeLogin(serverUrl, record.refreshToken, key);
        } catch (e) {
          // Refused as invalid or ended: the service no longer honours it, which is what logout wants.
          if (!isBrokerError(e) || e.code !== 'unauthenticated') unrevoked = { expiresAt: record.login.expiresAt, why: isBrokerError(e) ? e : new BrokerError('internal', String(e)) };
        }
      }
      const removed = await deleteLogin(serverUrl);
      await notifyDaemon();
      if (unrevoked) {
        throw new BrokerError(unrevoked.why.code === 'rate_limited' ? 'rate_limited' : 'upstream_unavailable',
          `removed the login from this machine, but the broker service could not revoke it: ${unrevoked.why.message}`, {
            hint: `the login stays valid on the service until ${unrevoked.expiresAt ?? 'it expires'} unless an admin revokes it; anyone holding a copy of the keychain items can use it until then`,
          });
      }
      out(removed ? `Logged out of ${serverUrl}` : `Not logged in to ${serverUrl}`);
    }));
}
