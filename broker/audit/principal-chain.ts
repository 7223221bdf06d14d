/**
 * The principal chain behind anything an incident names: for each task session, who (the human, the
 * AWS SourceIdentity), through which agent, for which task (template, version, parameters, reason),
 * confirmed or approved by whom, what was issued (AccessKeyIds, Vault accessors) and how it ended.
 * Built from the audit records alone — the hash-chained record, not the mutable session rows — by
 * one function for every reader: `GET /v1/admin/audit` (the service's store) and `broker audit show
 * --db FILE` (a store file opened read-only), so both answer with the same blocks.
 */
import { parseDuration } from '../duration.js';
import { BrokerError } from '../errors.js';
import { MAX_DURATION_SECONDS } from '../limits/aws.js';
import type { AuditRecord } from '../store/audit-event.js';
import type { AuditSearch } from '../store/audit-search.js';
import type { ChainRow } from '../store/audit-verify.js';
import type { AdminAuditQuery, AdminAuditResponse, ChainRecordView, PrincipalChainView } from '../wire/service-api.js';

/** A page when the query names no limit. */
export const DEFAULT_AUDIT_PAGE = 100;

/**
 * How long after its start a session can still have had live credentials: a session lasts at most
 * STS's 43,200 s ceiling, and a credential issued at its last moment lives at most that long again
 * (templates/durations.ts). So a session alive in a window started at most this long before it.
 */
const LIFETIME_BOUND_MS = 2 * MAX_DURATION_SECONDS * 1000;

type RecordView = AdminAuditResponse['records'][number];

/** A record as an admin reads it: the fields that are set, without the chain's hash. */
export function recordView(r: AuditRecord): RecordView {
  return Object.fromEntries(Object.entries(r).filter(([k, v]) => v !== undefined && k !== 'hash')) as RecordView;
}

/** A stored row (ChainRow order) as the wire carries it: every field as stored. */
export function chainRecordOf(r: ChainRow): ChainRecordView {
  return {
    seq: r[0], at: r[1], event: r[2], decision: r[3], developer: r[4], template: r[5], sessionId: r[6], reason: r[7], accessKeyId: r[8],
    roleSessionName: r[9], expiration: r[10], detail: r[11], vaultAccessor: r[12], prevHash: r[13], hash: r[14], hashVersion: r[15],
  };
}

/** The inverse of chainRecordOf: a record from the wire as the verifier reads a stored one. */
export function chainRowOf(v: ChainRecordView): ChainRow {
  return [v.seq, v.at, v.event, v.decision, v.developer, v.template, v.sessionId, v.reason, v.accessKeyId, v.roleSessionName, v.expiration, v.detail, v.vaultAccessor, v.prevHash, v.hash, v.hashVersion];
}

/** An instant of the query (RFC 3339 UTC, or a duration before `now`) as the records' own time format. */
function instant(value: string | undefined, path: 'since' | 'until', now: number): string | undefined {
  if (value === undefined) return undefined;
  const seconds = /^\d{4}-/.test(value) ? undefined : parseDuration(value);
  const ms = seconds !== undefined ? now - seconds * 1000 : Date.parse(value);
  if (!Number.isFinite(ms)) {
    throw new BrokerError('invalid_request', `${path}: "${value.slice(0, 40)}" is not a time`, { details: [{ path, message: 'must be an RFC 3339 UTC time or a duration before now (24h, 7d)' }] });
  }
  // toISOString always writes milliseconds, as the records do, so strings compare as times.
  return new Date(ms).toISOString();
}

/**
 * Answers an audit query: the principal chains of the sessions matching (view `chains`), or the raw
 * records matching (view `records`, `denied`, `latest`). `now` resolves durations (since=24h).
 */
export async function queryAudit(search: AuditSearch, q: AdminAuditQuery, now: number): Promise<AdminAuditResponse> {
  const since = instant(q.since, 'since', now);
  const until = instant(q.until, 'until', now);
  if (since !== undefined && until !== undefined && since > until) {
    throw new BrokerError('invalid_request', 'since: is after until', { details: [{ path: 'since', message: 'must be at or before until' }] });
  }
  const limit = q.limit ?? DEFAULT_AUDIT_PAGE;
  const after = q.after ?? 0;
  if (q.view === 'chain') {
    // One page in memory at a time, however long the log; the store's own word on the first page.
    const rows = await search.chain(after, limit);
    const store = q.after === undefined ? await search.chainStore() : undefined;
    return {
      chains: [], records: [], chain: rows.map(chainRecordOf),
      ...(store ? { store: { sequenceMax: store.sequenceMax ?? null, missingTriggers: store.missingGuards } } : {}),
      next: rows.length === limit ? rows.at(-1)![0] : null,
    };
  }
  if (q.view === 'records' || q.denied || q.latest) {
    const records = await search.records({
      sessions: q.session, developers: q.developer, template: q.template, accessKeyIds: q.accessKeyId, roleSessionNames: q.roleSessionName,
      vaultAccessor: q.vaultAccessor, since, until, denied: q.denied,
    }, after, limit, q.latest === true);
    const full = records.length === limit && !q.latest;
    return { chains: [], records: records.map(recordView), next: full ? records.at(-1)!.seq : null };
  }
  const starts = await search.sessionStarts({
    sessions: q.session, developers: q.developer, template: q.template, agent: q.agent, accessKeyIds: q.accessKeyId,
    roleSessionNames: q.roleSessionName, vaultAccessor: q.vaultAccessor,
    startedFrom: since === undefined ? undefined : new Date(Date.parse(since) - LIFETIME_BOUND_MS).toISOString(), startedUntil: until,
  }, after, limit);
  const bySession = new Map<string, AuditRecord[]>();
  for (const r of await search.ofSessions(starts.map((s) => s.sessionId!))) {
    const list = bySession.get(r.sessionId!) ?? [];
    list.push(r);
    bySession.set(r.sessionId!, list);
  }
  const chains = starts
    .map((s) => buildChain(s, bySession.get(s.sessionId!) ?? [s]))
    .filter((c) => since === undefined || lastMoment(c) >= since);
  return { chains, records: [], next: starts.length === limit ? starts.at(-1)!.seq : null };
}

/** The last moment anything of the session could act: its end (or scheduled end), or a credential's expiry if later. */
export function lastMoment(c: PrincipalChainView): string {
  const times = [c.end?.at ?? c.endsAt ?? c.startedAt, ...c.credentials.map((k) => k.expiration), ...c.vaultTokens.map((t) => t.expiration)];
  return times.filter((t): t is string => typeof t === 'string').map((t) => new Date(Date.parse(t)).toISOString()).sort().at(-1)!;
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/** One session's chain from its `session.start allowed` record and all its records (oldest first). */
export function buildChain(start: AuditRecord, records: AuditRecord[]): PrincipalChainView {
  const d = start.detail ?? {};
  const ttl = typeof d.ttlSeconds === 'number' ? d.ttlSeconds : null;
  const params = d.params && typeof d.params === 'object' && !Array.isArray(d.params)
    ? Object.fromEntries(Object.entries(d.params as Record<string, unknown>).filter(([, v]) => typeof v === 'string')) as Record<string, string>
    : {};
  const credentials: PrincipalChainView['credentials'] = [];
  const vaultTokens: PrincipalChainView['vaultTokens'] = [];
  const agentChanges: PrincipalChainView['agentChanges'] = [];
  const revocations: PrincipalChainView['revocations'] = [];
  let end: PrincipalChainView['end'] = null;
  for (const r of records) {
    const rd = r.detail ?? {};
    if ((r.event === 'credentials.issue' || r.event === 'credentials.reissue') && r.decision === 'issued' && r.accessKeyId) {
      credentials.push({ accessKeyId: r.accessKeyId, issuedAt: r.at, expiration: r.expiration ?? null, reissue: r.event === 'credentials.reissue', roleArn: str(rd.roleArn) });
    } else if ((r.event === 'vault.issue' || r.event === 'vault.reissue') && r.decision === 'issued' && r.vaultAccessor) {
      vaultTokens.push({ accessor: r.vaultAccessor, issuedAt: r.at, expiration: r.expiration ?? null, revokedAt: null });
    } else if (r.event === 'vault.revoke' && r.decision === 'revoked' && r.vaultAccessor) {
      const t = vaultTokens.find((v) => v.accessor === r.vaultAccessor);
      if (t && t.revokedAt === null) t.revokedAt = r.at;
    } else if (r.event === 'session.update' && r.decision === 'updated' && typeof rd.agent === 'string') {
      agentChanges.push({ at: r.at, agent: rd.agent, previous: str(rd.previousAgent) });
    } else if (r.event === 'session.end' && r.decision === 'ended' && end === null) {
      const admin = str(rd.admin);
      // `broker end` records who ended it in `detail.by` (task-session-service.ts); records written
      // before it did are known by their reason. An expiry or a start that failed is the service's, by nobody.
      const by = admin ?? str(rd.by) ?? (r.reason === 'ended by developer' ? r.developer ?? null : null);
      end = { at: r.at, reason: r.reason ?? '', by, byAdmin: admin !== null };
    } else if (r.event === 'session.revoke' && r.decision === 'pending') {
      revocations.push({ roleArn: str(rd.roleArn), requestedAt: r.at, requestedBy: str(rd.revokedBy), reason: r.reason ?? '', appliedAt: null });
    } else if (r.event === 'session.revoke' && r.decision === 'revoked') {
      const pending = revocations.find((v) => v.appliedAt === null && v.roleArn === str(rd.roleArn));
      if (pending) pending.appliedAt = str(rd.appliedAt) ?? r.at;
    }
  }
  const grants = strings(d.grants);
  return {
    sessionId: start.sessionId!,
    startSeq: start.seq,
    developer: start.developer ?? '',
    sourceIdentity: grants.includes('aws') || credentials.length > 0 ? start.developer ?? null : null,
    agent: str(d.agent) ?? '',
    agentChanges,
    template: start.template ?? '',
    templateVersion: str(d.templateVersion),
    params,
    reason: start.reason ?? '',
    roleSessionName: start.roleSessionName ?? null,
    startedAt: start.at,
    endsAt: ttl === null ? null : new Date(Date.parse(start.at) + ttl * 1000).toISOString(),
    confirmation: typeof d.request === 'string'
      ? { request: d.request, confirmedBy: strings(d.confirmedBy), approvedBy: strings(d.approvedBy), breakGlass: d.breakGlass === true }
      : null,
    credentials,
    vaultTokens,
    end,
    revocations,
  };
}

/** Every page of a query, following `next`, up to `max` items (chains or records). */
export async function allPages(page: (after: number | undefined) => Promise<AdminAuditResponse>, max: number): Promise<AdminAuditResponse> {
  const chains: AdminAuditResponse['chains'] = [];
  const records: AdminAuditResponse['records'] = [];
  let after: number | undefined;
  for (;;) {
    const r = await page(after);
    chains.push(...r.chains);
    records.push(...r.records);
    if (r.next === null || chains.length + records.length >= max) return { chains: chains.slice(0, max), records: records.slice(0, max), next: r.next };
    after = r.next;
  }
}
