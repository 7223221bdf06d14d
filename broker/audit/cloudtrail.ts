/**
 * CloudTrail joined to task sessions (`broker audit cloudtrail FILE…`): which human's request,
 * through which agent, for which task, made each event.
 *
 * Input, as AWS documents it:
 * - a trail's log file: `{"Records": [event, …]}`, delivered gzipped as `….json.gz` (CloudTrail User
 *   Guide, "CloudTrail log file examples"), read gzipped or not (by its magic bytes, not its name);
 * - `aws cloudtrail lookup-events` output: `{"Events": [{"CloudTrailEvent": "<the event as a JSON
 *   string>", …}]}` (AWS CLI Command Reference, cloudtrail lookup-events; CloudTrail API Reference,
 *   Event).
 * Each event's fields (CloudTrail User Guide, "CloudTrail record contents for management, data, and
 * network activity events"): `eventTime`, `eventSource`, `eventName`, `eventID`, `awsRegion`, and
 * `userIdentity` ("CloudTrail userIdentity element"): for a call made with assumed-role credentials
 * `type: AssumedRole`, `accessKeyId` (the ASIA… key that signed it), `arn`
 * `arn:aws:sts::<account>:assumed-role/<role>/<RoleSessionName>`, and `sessionContext.sourceIdentity`
 * when the session has one ("AWS STS source identity" on that page).
 *
 * The links, strongest first: the AccessKeyId the broker issued; the role session name it chose
 * (same session, a key this store does not know, e.g. one issued by another replica's store copy);
 * the SourceIdentity, which is the developer and which AWS keeps through role chaining (IAM User
 * Guide, "Monitor and control actions taken with assumed roles"): a key made by AssumeRole *with* a
 * broker key carries it, while its key and session name are the chainer's. By SourceIdentity alone
 * an event is tied to the developer's sessions alive at its time: one, or several to choose from.
 */
import { readFileSync, statSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { z } from 'zod';
import { BrokerError } from '../errors.js';
import type { PrincipalChainView } from '../wire/service-api.js';
import { lastMoment } from './principal-chain.js';

/** What the join reads of one CloudTrail event (nothing else of it is kept or printed). */
export interface TrailEvent {
  file: string;
  /** Where in the file: `Records[3]`, `Events[0].CloudTrailEvent`. */
  at: string;
  eventTime: string;
  eventSource: string;
  eventName: string;
  eventID: string | null;
  awsRegion: string | null;
  accessKeyId: string | null;
  arn: string | null;
  roleSessionName: string | null;
  sourceIdentity: string | null;
}

const optionalString = z.string().max(2048).optional();
/** The fields we read, checked; every other field is left alone (the format grows, eventVersion 1.x). */
const trailEvent = z.object({
  eventTime: z.string().regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z$/, 'must be an ISO 8601 UTC time, as CloudTrail writes it'),
  eventSource: z.string().max(256),
  eventName: z.string().max(256),
  eventID: optionalString,
  awsRegion: optionalString,
  sourceIdentity: optionalString,
  userIdentity: z.object({
    type: optionalString,
    arn: optionalString,
    accessKeyId: optionalString,
    sessionContext: z.object({ sourceIdentity: optionalString }).optional(),
  }).optional(),
});

/** The RoleSessionName of an assumed-role ARN (`arn:<partition>:sts::<account>:assumed-role/<role>/<name>`). */
export function roleSessionNameOf(arn: string | undefined): string | null {
  const m = /^arn:[\w-]+:sts::\d*:assumed-role\/[^/]+\/([\w+=,.@-]{2,64})$/.exec(arn ?? '');
  return m ? m[1]! : null;
}

function bad(file: string, where: string, message: string, hint?: string): BrokerError {
  return new BrokerError('invalid_request', `${file}: ${where ? `${where}: ` : ''}${message}`, {
    details: [{ path: where ? `${file}:${where}` : file, message }],
    hint: hint ?? 'give CloudTrail log files ({"Records": […]}, gzipped or not) or the JSON output of aws cloudtrail lookup-events',
  });
}

/**
 * Where JSON text first breaks (a character offset), for a message naming line and column: V8's
 * own messages give a position for some errors only ("Unexpected token" has none). A small
 * RFC 8259 scanner, run only after JSON.parse has refused the text.
 */
export function jsonErrorOffset(text: string): number {
  let i = 0;
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++; };
  const fail = (): never => { throw i; };
  const value = (): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++; ws();
      if (text[i] === '}') { i++; return; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail();
        string(); ws();
        if (text[i] !== ':') fail();
        i++; value(); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return; }
        fail();
      }
    }
    if (c === '[') {
      i++; ws();
      if (text[i] === ']') { i++; return; }
      for (;;) {
        value(); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return; }
        fail();
      }
    }
    if (c === '"') return string();
    for (const lit of ['true', 'false', 'null']) if (text.startsWith(lit, i)) { i += lit.length; return; }
    const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) fail();
    i += m![0].length;
  };
  const string = (): void => {
    i++;
    while (i < text.length) {
      const c = text[i]!;
      if (c === '"') { i++; return; }
      if (c < ' ') fail();
      if (c === '\\') {
        i++;
        if (text[i] === 'u') { if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail(); i += 5; continue; }
        if (!'"\\/bfnrt'.includes(text[i] ?? 'x')) fail();
      }
      i++;
    }
    fail();
  };
  try {
    value(); ws();
    if (i < text.length) fail();
  } catch (e) {
    if (typeof e === 'number') return e;
    // Nested deeper than our stack (JSON.parse has its own limit): say where the scan got to.
    if (e instanceof RangeError) return i;
    throw e;
  }
  return i;
}

/** The text as JSON; refused naming the line and column where it breaks (never quoting it). */
function parseJson(file: string, text: string, where = ''): unknown {
  try {
    return JSON.parse(text);
  } catch {
    const at = Math.min(jsonErrorOffset(text), text.length);
    const before = text.slice(0, at);
    const line = before.split('\n').length;
    const column = at - before.lastIndexOf('\n');
    throw bad(file, where, at >= text.length ? `not valid JSON: it ends early (line ${line}, column ${column})` : `not valid JSON at line ${line}, column ${column}`);
  }
}

function toEvent(file: string, at: string, raw: unknown): TrailEvent {
  const parsed = trailEvent.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    const field = i.path.map(String).join('.');
    throw bad(file, `${at}${field ? `.${field}` : ''}`, i.message);
  }
  const e = parsed.data;
  const u = e.userIdentity;
  return {
    file, at, eventTime: e.eventTime, eventSource: e.eventSource, eventName: e.eventName, eventID: e.eventID ?? null, awsRegion: e.awsRegion ?? null,
    accessKeyId: u?.accessKeyId || null, arn: u?.arn ?? null, roleSessionName: roleSessionNameOf(u?.arn),
    sourceIdentity: u?.sessionContext?.sourceIdentity || e.sourceIdentity || null,
  };
}

/** The events of one file; a file that is not one of the two formats is refused naming the file, and the line or the field. */
export function readTrailFile(file: string): TrailEvent[] {
  let bytes: Buffer;
  try {
    if (statSync(file).isDirectory()) throw bad(file, '', 'is a directory', 'give the log files themselves, e.g. $(find DIR -name \'*.json.gz\')');
    bytes = readFileSync(file);
  } catch (e) {
    if (e instanceof BrokerError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new BrokerError('not_found', `${file}: no such file`);
    throw new BrokerError('invalid_request', `${file}: cannot be read (${code ?? (e as Error).message})`);
  }
  // gzip's magic bytes 1f 8b (RFC 1952 §2.3.1): trail files come as .json.gz; a renamed one still reads.
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes);
    } catch (e) {
      throw bad(file, '', `not a valid gzip file (${(e as Error).message})`);
    }
  }
  const doc = parseJson(file, bytes.toString('utf8').replace(/^\uFEFF/, ''));
  if (doc && typeof doc === 'object' && !Array.isArray(doc) && Array.isArray((doc as { Records?: unknown }).Records)) {
    return ((doc as { Records: unknown[] }).Records).map((r, i) => toEvent(file, `Records[${i}]`, r));
  }
  if (doc && typeof doc === 'object' && !Array.isArray(doc) && Array.isArray((doc as { Events?: unknown }).Events)) {
    return ((doc as { Events: unknown[] }).Events).map((ev, i) => {
      const at = `Events[${i}].CloudTrailEvent`;
      const inner = (ev as { CloudTrailEvent?: unknown } | null)?.CloudTrailEvent;
      if (typeof inner !== 'string') throw bad(file, at, 'must be a string (the event as JSON, as lookup-events returns it)');
      return toEvent(file, at, parseJson(file, inner, at));
    });
  }
  throw bad(file, '', 'is neither a CloudTrail log file ({"Records": […]}) nor lookup-events output ({"Events": […]})');
}

export type TrailLink = 'accessKeyId' | 'roleSessionName' | 'sourceIdentity';

/** The facts of a session an event is annotated with. */
export interface SessionFacts {
  sessionId: string;
  developer: string;
  agent: string;
  template: string;
  templateVersion: string | null;
  params: Record<string, string>;
  reason: string;
}

export interface JoinedEvent {
  event: TrailEvent;
  link: TrailLink;
  /** The human: the session's developer (the SourceIdentity of its credentials). */
  developer: string;
  /** The session; null when the SourceIdentity alone leaves several of the developer's sessions (see candidates). */
  session: SessionFacts | null;
  /** With a SourceIdentity link: the developer's sessions alive at the event's time. */
  candidates: string[];
}

export interface TrailJoin {
  joined: JoinedEvent[];
  /** Events no task session accounts for: keys the broker never issued (or not in this store), other principals. */
  foreign: TrailEvent[];
}

/** The agent in force at a time: the start's, or the latest change before it. */
function agentAt(c: PrincipalChainView, time: string): string {
  let agent = c.agent;
  for (const ch of c.agentChanges) if (ch.at <= time) agent = ch.agent;
  return agent;
}

function facts(c: PrincipalChainView, time: string): SessionFacts {
  return { sessionId: c.sessionId, developer: c.developer, agent: agentAt(c, time), template: c.template, templateVersion: c.templateVersion, params: c.params, reason: c.reason };
}

/** Where the join gets chains from: by AccessKeyIds, by role session names, by developer in a window (audit/principal-chain.ts, via the service or a store file). */
export interface ChainLookup {
  byAccessKeyIds(ids: string[]): Promise<PrincipalChainView[]>;
  byRoleSessionNames(names: string[]): Promise<PrincipalChainView[]>;
  byDeveloper(developer: string, since: string, until: string): Promise<PrincipalChainView[]>;
}

const norm = (t: string) => new Date(Date.parse(t)).toISOString();

/** Annotates each event with the session behind it, strongest link first; the rest are listed apart. */
export async function joinTrail(events: TrailEvent[], lookup: ChainLookup): Promise<TrailJoin> {
  const keys = [...new Set(events.map((e) => e.accessKeyId).filter((k): k is string => k !== null))];
  const byKey = new Map<string, PrincipalChainView>();
  for (const c of keys.length ? await lookup.byAccessKeyIds(keys) : []) for (const k of c.credentials) byKey.set(k.accessKeyId, c);
  const names = [...new Set(events.filter((e) => !(e.accessKeyId && byKey.has(e.accessKeyId))).map((e) => e.roleSessionName).filter((n): n is string => n !== null))];
  const byName = new Map<string, PrincipalChainView>();
  for (const c of names.length ? await lookup.byRoleSessionNames(names) : []) if (c.roleSessionName) byName.set(c.roleSessionName, c);

  const joined: JoinedEvent[] = [];
  const foreign: TrailEvent[] = [];
  const bySource = new Map<string, TrailEvent[]>();
  const order = new Map<TrailEvent, number>(events.map((e, i) => [e, i]));
  for (const e of events) {
    const c = (e.accessKeyId ? byKey.get(e.accessKeyId) : undefined);
    if (c) { joined.push({ event: e, link: 'accessKeyId', developer: c.developer, session: facts(c, norm(e.eventTime)), candidates: [] }); continue; }
    const n = e.roleSessionName ? byName.get(e.roleSessionName) : undefined;
    if (n) { joined.push({ event: e, link: 'roleSessionName', developer: n.developer, session: facts(n, norm(e.eventTime)), candidates: [] }); continue; }
    if (e.sourceIdentity) { bySource.set(e.sourceIdentity, [...(bySource.get(e.sourceIdentity) ?? []), e]); continue; }
    foreign.push(e);
  }
  for (const [developer, list] of bySource) {
    const times = list.map((e) => norm(e.eventTime)).sort();
    const chains = await lookup.byDeveloper(developer, times[0]!, times.at(-1)!);
    for (const e of list) {
      const t = norm(e.eventTime);
      const alive = chains.filter((c) => c.startedAt <= t && lastMoment(c) >= t);
      if (alive.length === 0) { foreign.push(e); continue; }
      joined.push({ event: e, link: 'sourceIdentity', developer, session: alive.length === 1 ? facts(alive[0]!, t) : null, candidates: alive.map((c) => c.sessionId) });
    }
  }
  const byOrder = (a: TrailEvent, b: TrailEvent) => (a.eventTime < b.eventTime ? -1 : a.eventTime > b.eventTime ? 1 : order.get(a)! - order.get(b)!);
  joined.sort((a, b) => byOrder(a.event, b.event));
  foreign.sort(byOrder);
  return { joined, foreign };
}
