import type { Command } from 'commander';
import { allPages } from '../broker/audit/principal-chain.js';
import { BrokerError } from '../broker/errors.js';
import { MAX_AUDIT_PAGE } from '../broker/wire/service-api.js';
import { chainBlock, recordLine } from './audit-output.js';
import { addSourceOptions, auditSource, type AuditParams } from './audit-source.js';
import { action, out, printJson } from './output.js';

interface ShowOptions {
  accessKeyId?: string; session?: string; developer?: string; agent?: string; template?: string; vaultAccessor?: string;
  since?: string; until?: string; denied?: boolean; limit?: string; json?: boolean; server?: boolean; db?: string;
}

export function register(audit: Command): void {
  addSourceOptions(audit
    .command('show')
    .description('the principal chain behind an AccessKeyId, a session, a developer…: per task session the human (SourceIdentity), agent, template and version, parameters, reason, who confirmed or approved, every credential and Vault token issued, and how it ended and by whom')
    .option('--access-key-id <id>', 'the session that was issued this AccessKeyId (ASIA…, as CloudTrail names it)')
    .option('--session <id>', 'this task session')
    .option('--developer <email>', 'this developer\'s sessions')
    .option('--agent <name>', 'sessions of this agent')
    .option('--template <name>', 'sessions of this template')
    .option('--vault-accessor <accessor>', 'the session that was issued this Vault token')
    .option('--since <time>', 'sessions alive at or after: an RFC 3339 time or a duration before now (24h, 7d)')
    .option('--until <time>', 'sessions started at or before: an RFC 3339 time or a duration before now')
    .option('--denied', 'list the refusals (records with decision denied) matching instead')
    .option('--limit <n>', 'at most this many sessions (or records)', '1000')
    .option('--json', 'print {chains} (or {records} with --denied) as JSON'))
    .action(action(async (opts: ShowOptions) => {
      const params: AuditParams = {
        accessKeyId: opts.accessKeyId, session: opts.session, developer: opts.developer, agent: opts.agent, template: opts.template,
        vaultAccessor: opts.vaultAccessor, since: opts.since, until: opts.until, ...(opts.denied ? { denied: '1' } : {}),
      };
      if (!opts.denied && Object.values(params).every((v) => v === undefined)) {
        throw new BrokerError('invalid_request', 'say which sessions to show', {
          hint: 'give --access-key-id, --session, --developer, --agent, --template, --vault-accessor or --since (or --denied)',
        });
      }
      const max = Number(opts.limit);
      if (!Number.isInteger(max) || max < 1 || max > 100_000) throw new BrokerError('invalid_request', '--limit must be a whole number from 1 to 100000');
      const source = auditSource(opts);
      try {
        const r = await allPages((after) => source.page({ ...params, limit: String(Math.min(max, MAX_AUDIT_PAGE)), ...(after === undefined ? {} : { after: String(after) }) }), max);
        if (opts.json) {
          printJson(opts.denied ? { records: r.records } : { chains: r.chains });
          return;
        }
        if (opts.denied) {
          if (r.records.length === 0) out('No refusals matched.');
          for (const rec of r.records) out(recordLine(rec));
          return;
        }
        if (r.chains.length === 0) out('No task session matched.');
        r.chains.forEach((c, i) => {
          if (i > 0) out('');
          for (const line of chainBlock(c)) out(line);
        });
      } finally {
        source.close();
      }
    }));
}
