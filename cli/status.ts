import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { action, info, out, printJson } from './output.js';
import { timeLeft } from './time-left.js';

export function register(program: Command): void {
  program
    .command('status')
    .description('list your active task sessions, the time they have left and the credentials the daemon holds for them')
    .option('--json', 'print as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const s = await callDaemon({ op: 'status' });
      const now = Date.now();
      if (opts.json) {
        printJson({ ...s, sessions: s.sessions.map((x) => ({ ...x, secondsLeft: Math.max(0, Math.floor((Date.parse(x.expiresAt) - now) / 1000)) })) });
        return;
      }
      // In an outage the list is what the daemon holds, as it last heard of each session: a session
      // ended elsewhere meanwhile may still show (its credentials are dropped at the next refresh).
      if (s.serviceError) info(`warning: cannot reach the broker service (${s.serviceError}); showing the sessions the daemon holds credentials or Vault tokens for`);
      if (s.sessions.length === 0) {
        if (s.serviceError) {
          out('The daemon holds no credentials or Vault tokens.');
          return;
        }
        out(`No active task sessions${s.developer ? ` for ${s.developer}` : ''}.`);
        info('start one with: broker task <template>');
        return;
      }
      const rows = s.sessions.map((x) => [
        x.template, x.id, timeLeft(x.expiresAt, now), x.agent,
        x.credentials?.credentialsExpireAt ? `${timeLeft(x.credentials.credentialsExpireAt, now)}${x.credentials.health === 'retrying' ? ' (retrying)' : ''}` : '-',
        Object.entries(x.params).map(([k, v]) => `${k}=${v}`).join(' '),
      ]);
      const header = ['TEMPLATE', 'SESSION', 'LEFT', 'AGENT', 'CREDENTIALS', 'PARAMS'];
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
      for (const r of [header, ...rows]) out(r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
      // A "(retrying)" cell says that something is wrong; the line below it says what, so the
      // developer does not have to know about `broker daemon status` to find out.
      for (const x of s.sessions) {
        const c = x.credentials;
        if (c?.lastError) {
          const next = c.nextRefreshAt ? `, next attempt in ${timeLeft(c.nextRefreshAt, now)}` : '';
          out(`${x.template}: AWS credentials: last attempt failed: ${c.lastError}${next}`);
        }
        if (x.vaultToken?.lastError) out(`${x.template}: Vault token: last attempt failed: ${x.vaultToken.lastError}`);
      }
    }));
}
