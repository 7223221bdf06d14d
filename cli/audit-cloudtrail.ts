import type { Command } from 'commander';
import { joinTrail, readTrailFile, type ChainLookup, type JoinedEvent, type TrailEvent } from '../broker/audit/cloudtrail.js';
import { allPages } from '../broker/audit/principal-chain.js';
import { MAX_AUDIT_FILTER_VALUES, MAX_AUDIT_PAGE, type PrincipalChainView } from '../broker/wire/service-api.js';
import { addSourceOptions, auditSource, type AuditSource } from './audit-source.js';
import { action, out, printJson } from './output.js';

/** Chains by batches of values (the route takes at most MAX_AUDIT_FILTER_VALUES of one filter). */
function lookupVia(source: AuditSource): ChainLookup {
  const chains = async (params: Record<string, string | string[]>) =>
    (await allPages((after) => source.page({ ...params, limit: String(MAX_AUDIT_PAGE), ...(after === undefined ? {} : { after: String(after) }) }), 100_000)).chains;
  const batched = async (key: string, values: string[]) => {
    const out: PrincipalChainView[] = [];
    for (let i = 0; i < values.length; i += MAX_AUDIT_FILTER_VALUES) out.push(...await chains({ [key]: values.slice(i, i + MAX_AUDIT_FILTER_VALUES) }));
    return out;
  };
  return {
    byAccessKeyIds: (ids) => batched('accessKeyId', ids),
    byRoleSessionNames: (names) => batched('roleSessionName', names),
    byDeveloper: (developer, since, until) => chains({ developer, since, until }),
  };
}

const eventJson = (e: TrailEvent) => ({
  file: e.file, at: e.at, eventTime: e.eventTime, eventSource: e.eventSource, eventName: e.eventName, eventID: e.eventID, awsRegion: e.awsRegion,
  accessKeyId: e.accessKeyId, arn: e.arn, sourceIdentity: e.sourceIdentity,
});

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

function joinedRow(j: JoinedEvent): string[] {
  const s = j.session;
  const params = s ? Object.entries(s.params).map(([k, v]) => `${k}=${v}`).join(' ') : '';
  return [
    j.event.eventTime, `${j.event.eventSource.replace(/\.amazonaws\.com$/, '')}:${j.event.eventName}`, j.event.accessKeyId ?? '-', j.developer,
    s?.agent ?? '?', s ? `${s.template}${params ? ` ${params}` : ''}` : '?', s?.reason ? `"${s.reason}"` : '',
    s?.sessionId ?? `one of ${j.candidates.join(',')}`, j.link,
  ];
}

export function register(audit: Command): void {
  addSourceOptions(audit
    .command('cloudtrail')
    .description('annotate CloudTrail events with the task session behind them (human, agent, task, parameters, reason, session), by AccessKeyId, role session name or SourceIdentity (role chaining); events from keys the broker never issued are listed apart')
    .argument('<file...>', 'CloudTrail log files ({"Records": […]}, .json or .json.gz) or aws cloudtrail lookup-events output')
    .option('--json', 'print {joined, foreign} as JSON'))
    .action(action(async (files: string[], opts: { json?: boolean; server?: boolean; db?: string }) => {
      // Every file is read and checked before anything is asked: a bad one fails the run, naming it.
      const events = files.flatMap((f) => readTrailFile(f));
      const source = auditSource(opts);
      try {
        const r = await joinTrail(events, lookupVia(source));
        if (opts.json) {
          printJson({
            joined: r.joined.map((j) => ({ event: eventJson(j.event), link: j.link, developer: j.developer, session: j.session, candidates: j.candidates })),
            foreign: r.foreign.map(eventJson),
          });
          return;
        }
        out(`${events.length} event(s) in ${files.length} file(s): ${r.joined.length} from task sessions, ${r.foreign.length} not from the broker's credentials.`);
        if (r.joined.length) {
          out('');
          for (const line of table([['TIME', 'EVENT', 'ACCESS KEY', 'HUMAN', 'AGENT', 'TASK', 'REASON', 'SESSION', 'LINK'], ...r.joined.map(joinedRow)])) out(line);
        }
        if (r.foreign.length) {
          out('');
          out('Not issued by the broker (no task session has these keys, session names or SourceIdentity):');
          for (const line of table([['TIME', 'EVENT', 'ACCESS KEY', 'ARN', 'FILE'], ...r.foreign.map((e) => [
            e.eventTime, `${e.eventSource.replace(/\.amazonaws\.com$/, '')}:${e.eventName}`, e.accessKeyId ?? '-', e.arn ?? '-', `${e.file} ${e.at}`,
          ])])) out(line);
        }
      } finally {
        source.close();
      }
    }));
}
