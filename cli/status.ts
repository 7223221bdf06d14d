import type { Command } from 'commander';
import { activeSessions, authenticatedApi } from '../broker/client/api.js';
import { action, printJson } from './output.js';
import { timeLeft } from './time-left.js';

export function register(program: Command): void {
  program
    .command('status')
    .description('list your active task sessions and the time they have left')
    .option('--json', 'print as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const api = await authenticatedApi();
      const sessions = await activeSessions(api);
      if (opts.json) {
        printJson({ server: api.baseUrl, sessions: sessions.map((s) => ({ ...s, secondsLeft: Math.max(0, Math.floor((Date.parse(s.expiresAt) - Date.now()) / 1000)) })) });
        return;
      }
      if (sessions.length === 0) {
        process.stdout.write('No active task sessions. Start one with: broker task <template>\n');
        return;
      }
      const rows = sessions.map((s) => [s.template, s.id, timeLeft(s.expiresAt), s.agent,
        Object.entries(s.params).map(([k, v]) => `${k}=${v}`).join(' ')]);
      const header = ['TEMPLATE', 'SESSION', 'LEFT', 'AGENT', 'PARAMS'];
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
      for (const r of [header, ...rows]) process.stdout.write(`${r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
    }));
}
