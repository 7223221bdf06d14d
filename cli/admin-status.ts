import type { Command } from 'commander';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { action, out, printJson } from './output.js';

export function register(admin: Command): void {
  admin
    .command('status')
    .description('what is in force (templates and their versions, freezes) and what needs attention: revocations IAM has not accepted, roles under the role-wide fallback, audit sinks behind')
    .option('--json', 'print {templates, activeSessions, freezes, revocationWarnings, auditSinks} as JSON')
    .action(action(async (opts: { json?: boolean }) => {
      const r = await callDaemon({ op: 'admin-status' });
      if (opts.json) {
        printJson(r);
        return;
      }
      out(`Templates in force: ${r.templates.map((t) => `${t.name}@${t.version}`).join(', ') || 'none'}`);
      out(`Active task sessions: ${r.activeSessions}`);
      out(r.freezes.length ? `Frozen: ${r.freezes.map((f) => `${f.scope === '*' ? 'every template' : f.scope} (by ${f.by}: "${f.reason}")`).join(', ')}` : 'Nothing is frozen.');
      if (r.revocationWarnings.length === 0) out('Revocations: all accepted by IAM.');
      for (const w of r.revocationWarnings) out(`warning: ${w.message} (since ${w.since})`);
      if (r.auditSinks.length === 0) out('Audit sinks: none configured.');
      for (const s of r.auditSinks) {
        const when = s.lastDeliveredAt ? `, last delivery ${s.lastDeliveredAt}` : '';
        out(`Audit sink ${s.id} (${s.type}): delivered up to seq ${s.deliveredSeq}, ${s.backlog} behind${when}`);
        if (s.lastError) out(`warning: audit sink ${s.id} is failing: ${s.lastError}`);
      }
    }));
}
