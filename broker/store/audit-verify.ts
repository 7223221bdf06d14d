/**
 * Verification of the audit log, for every backend: the hash chain (audit-chain.ts) record by record,
 * the signed checkpoints in it and any copy of them kept off the host, the store's own evidence of
 * records written (its sequence counter) and its append-only guard (triggers).
 *
 * The chain proves that nothing changed since a point someone trusts; the checkpoints are those
 * points, signed with the audit key, so recomputing the chain after an edit or dropping its tail is
 * caught up to the last checkpoint that is out of the attacker's reach (off the host).
 */
import { hash } from 'node:crypto';
import { compactVerify, decodeProtectedHeader, importJWK, type CryptoKey, type JWK } from 'jose';
import { BrokerError } from '../errors.js';
import { GENESIS_HASH } from './audit-chain.js';

/** The JWS `typ` of a checkpoint (RFC 7515 §4.1.9), so no other ES256 object of ours passes as one. */
export const CHECKPOINT_TYP = 'broker-audit-checkpoint+json';
export const CHECKPOINT_EVENT = 'audit.checkpoint';
export const BROKEN_ACCEPTED_EVENT = 'audit.broken';

/** What a checkpoint signs: the last record it covers (`seq`, its `head` hash), when, and how many records up to it. */
export interface CheckpointPayload { seq: number; head: string; at: string; count: number }

/**
 * One stored record as the chain sees it, in the store's column order:
 * seq, at, event, decision, developer, template, session_id, reason, access_key_id,
 * role_session_name, expiration, detail (JSON text), vault_accessor, prev_hash, hash, hash_version.
 */
export type ChainRow = [
  number, string, string, string, string | null, string | null, string | null, string | null, string | null,
  string | null, string | null, string | null, string | null, string, string, number | null,
];

/** What the verifier reads from a store. */
/**
 * A record as a fast source gives it: seq, the canonical text as the store encoded it (with the
 * stored prev_hash), stored prev_hash, stored hash, event, detail (checkpoints only), hash version.
 * Only an optimisation: a record whose text does not hash to its stored hash is checked again from
 * its fields (ChainRow) with this module's own encoding before anything is reported.
 */
export type CanonicalRow = [number, string, string, string, string, string | null, number | null];

export interface ChainSource {
  /** Records with seq > afterSeq, in seq order. */
  rows(afterSeq: number, throughSeq?: number): Iterable<ChainRow>;
  /** The same records with their canonical text encoded by the store itself, when it can (SQLite's json_array). */
  canonicalRows?(afterSeq: number, throughSeq?: number): Iterable<CanonicalRow>;
  /** One record. */
  row(seq: number): ChainRow | undefined;
  /** The stored hash of one record (verified records only are asked for), for a checkpoint far behind. */
  storedHashAt(seq: number): string | undefined;
  /** The seq of the record with this stored hash, to tell a moved record from an edited one. */
  seqOfHash(hash: string): number | undefined;
  /** The highest seq the store ever handed out (SQLite's sqlite_sequence), if it keeps one. */
  sequenceMax(): number | undefined;
  /** The append-only guards that are missing or changed (empty when all are in place). */
  missingGuards(): string[];
  /** The last checkpoint record and the last accepted-break record, for the start-up check. */
  lastOf(event: string): ChainRow | undefined;
  /** How many records there are with seq <= this one. */
  countThrough(seq: number): number;
}

export type ProblemKind =
  | 'edited' | 'missing' | 'reordered' | 'truncated' | 'rewritten'
  | 'bad_signature' | 'unknown_kid' | 'bad_checkpoint' | 'triggers_missing';

export interface AuditProblem {
  kind: ProblemKind;
  /** The first record concerned (null: the store as a whole, e.g. its triggers). */
  seq: number | null;
  /** For `rewritten`: the last record the mismatch may lie in. */
  through?: number;
  message: string;
}

export interface VerifyReport {
  ok: boolean;
  /** Records checked, and the seq range. */
  records: number;
  firstSeq: number | null;
  lastSeq: number | null;
  checkpoints: { inStore: number; offHost: number; verified: number; kids: string[] };
  /** The first bad record by seq (null when none). */
  firstBad: AuditProblem | null;
  problems: AuditProblem[];
}

/** The audit public keys by kid (JWKs; private parts are dropped). */
export class AuditKeySet {
  private constructor(private readonly keys: Map<string, CryptoKey>) {}

  static async of(jwks: JWK[], where = 'keys'): Promise<AuditKeySet> {
    const keys = new Map<string, CryptoKey>();
    for (const [i, jwk] of jwks.entries()) {
      if (!jwk.kid || jwk.kty !== 'EC' || jwk.crv !== 'P-256' || !jwk.x || !jwk.y) {
        throw new BrokerError('invalid_request', `${where}: key ${i} is not an EC P-256 JWK with a "kid"`, {
          hint: 'use the JWKS the service serves at /.well-known/audit-jwks.json',
        });
      }
      const { d: _d, ...pub } = jwk;
      keys.set(jwk.kid, (await importJWK({ ...pub, alg: 'ES256' }, 'ES256')) as CryptoKey);
    }
    return new AuditKeySet(keys);
  }

  get size(): number { return this.keys.size; }
  kids(): string[] { return [...this.keys.keys()]; }
  get(kid: string): CryptoKey | undefined { return this.keys.get(kid); }
}

export type Checked = { ok: true; payload: CheckpointPayload; kid: string } | { ok: false; kind: 'bad_signature' | 'unknown_kid' | 'bad_checkpoint'; why: string };

export async function checkJws(jws: string, keys: AuditKeySet): Promise<Checked> {
  let kid: unknown;
  let typ: unknown;
  try { ({ kid, typ } = decodeProtectedHeader(jws)); } catch { return { ok: false, kind: 'bad_checkpoint', why: 'its JWS is not a compact JWS' }; }
  if (typ !== CHECKPOINT_TYP) return { ok: false, kind: 'bad_checkpoint', why: `its JWS has typ ${JSON.stringify(typ)}, not ${CHECKPOINT_TYP}` };
  const key = typeof kid === 'string' ? keys.get(kid) : undefined;
  if (!key) return { ok: false, kind: 'unknown_kid', why: `it is signed with key ${JSON.stringify(kid)}, which is not among the audit keys given (${keys.kids().join(', ') || 'none'})` };
  let bytes: Uint8Array;
  try { ({ payload: bytes } = await compactVerify(jws, key, { algorithms: ['ES256'] })); } catch {
    return { ok: false, kind: 'bad_signature', why: `its signature does not verify with key ${kid as string}` };
  }
  let p: Partial<CheckpointPayload>;
  try { p = JSON.parse(new TextDecoder().decode(bytes)) as Partial<CheckpointPayload>; } catch { return { ok: false, kind: 'bad_checkpoint', why: 'its signed payload is not JSON' }; }
  if (!Number.isSafeInteger(p.seq) || (p.seq as number) < 0 || typeof p.head !== 'string' || typeof p.at !== 'string' || !Number.isSafeInteger(p.count)) {
    return { ok: false, kind: 'bad_checkpoint', why: 'its signed payload is not {seq, head, at, count}' };
  }
  return { ok: true, payload: p as CheckpointPayload, kid: kid as string };
}

/** An off-host checkpoint: a compact JWS, from an exported audit record (`seq` then is that record's) or a bare line. */
export interface OffHostCheckpoint { jws: string; recordSeq: number | undefined; line: number }

/**
 * Off-host checkpoints from JSON lines: one audit record per line as AuditRecord serializes (lines
 * that are not `audit.checkpoint` records are skipped), or bare compact JWS lines.
 */
export function parseCheckpointLines(text: string, source: string): OffHostCheckpoint[] {
  const out: OffHostCheckpoint[] = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line) continue;
    if (/^[\w-]+\.[\w-]+\.[\w-]+$/.test(line)) { out.push({ jws: line, recordSeq: undefined, line: i + 1 }); continue; }
    let r: { event?: unknown; seq?: unknown; detail?: { jws?: unknown } };
    try { r = JSON.parse(line) as typeof r; } catch {
      throw new BrokerError('invalid_request', `${source}:${i + 1}: neither a JSON audit record nor a compact JWS`, {
        hint: 'give the JSON lines an audit sink wrote, or one compact JWS per line',
      });
    }
    if (r?.event !== CHECKPOINT_EVENT) continue;
    if (typeof r.detail?.jws !== 'string') throw new BrokerError('invalid_request', `${source}:${i + 1}: an audit.checkpoint record without detail.jws`);
    out.push({ jws: r.detail.jws, recordSeq: typeof r.seq === 'number' ? r.seq : undefined, line: i + 1 });
  }
  return out;
}

const hash2 = (r: ChainRow, prev: string, seq: number) => hash('sha256', JSON.stringify([
  2, seq, prev, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
]), 'hex');
const hash1 = (r: ChainRow, prev: string) => hash('sha256', JSON.stringify([
  prev, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], ...(r[12] ? [r[12]] : []),
]), 'hex');
const rowHash = (r: ChainRow, prev: string, seq: number) => ((r[15] ?? 1) === 1 ? hash1(r, prev) : hash2(r, prev, seq));

/** How far a moved v2 record is looked for (only when a record fails). */
const MOVE_WINDOW = 1000;
/** Recent hashes kept in memory for the checkpoints that follow them. */
const RING = 1 << 14;

export interface StoreCheckpoint { recordSeq: number; detail: string | null; head: string | undefined; countAt: number | undefined; checked: Promise<Checked> }
export interface Anchor { seq: number; head: string; count: number; matched: boolean; via: string }

export interface WalkStart { afterSeq: number; prev: string; count: number; sawV2: boolean }
const FROM_GENESIS: WalkStart = { afterSeq: 0, prev: GENESIS_HASH, count: 0, sawV2: false };

/** What a walk of the chain found: the first chain problem (it stops there), checkpoints met, off-host comparisons. */
export interface OffHostAnchor { seq: number; head: string; count: number; via: string }
export interface Walk { records: number; firstSeq: number | null; lastSeq: number; problem: AuditProblem | undefined; checkpoints: StoreCheckpoint[]; anchors: Anchor[] }

/** Rows between yields of the walk: signatures started meanwhile are checked on the thread pool while the walk goes on. */
const YIELD_EVERY = 4096;

function checkStored(detail: string | null, keys: AuditKeySet): Promise<Checked> {
  let jws: unknown;
  try { jws = (JSON.parse(detail ?? 'null') as { jws?: unknown } | null)?.jws; } catch { /* below */ }
  return typeof jws === 'string' ? checkJws(jws, keys) : Promise.resolve({ ok: false, kind: 'bad_checkpoint', why: 'its detail has no jws' });
}

/** A walk of the chain from `start` through `throughSeq` (default: the end). */
export type Walker = (start: WalkStart, offHost: OffHostAnchor[], keys: AuditKeySet, skip: number | undefined) => Promise<Walk>;

export async function walkChain(src: ChainSource, start: WalkStart, offHost: OffHostAnchor[], keys: AuditKeySet, skip: number | undefined, throughSeq = Number.MAX_SAFE_INTEGER): Promise<Walk> {
  let expected = start.afterSeq + 1;
  let prev = start.prev;
  let count = start.count;
  let sawV2 = start.sawV2;
  let firstSeq: number | null = null;
  const ring: string[] = new Array<string>(RING);
  const checkpoints: StoreCheckpoint[] = [];
  const anchors: Anchor[] = [];
  let oi = 0;
  while (oi < offHost.length && offHost[oi]!.seq <= start.afterSeq) oi++;
  // Before the start, the stored hash: the start is trusted (a checkpoint's head, or a segment the caller verifies).
  const hashAt = (s: number, at: number): string | undefined => (s > start.afterSeq && at - s < RING ? ring[s & (RING - 1)] : src.storedHashAt(s));
  let problem: AuditProblem | undefined;
  const fast = src.canonicalRows !== undefined;
  const rows: Iterable<ChainRow | CanonicalRow> = src.canonicalRows ? src.canonicalRows(start.afterSeq, throughSeq) : src.rows(start.afterSeq, throughSeq);
  for (const x of rows) {
    const seq = x[0];
    firstSeq ??= seq;
    if (seq !== expected) {
      problem = { kind: 'missing', seq: expected, message: seq === expected + 1 ? `record ${expected} is missing (the chain goes from ${expected - 1} to ${seq})` : `records ${expected}–${seq - 1} are missing (the chain goes from ${expected - 1} to ${seq})` };
      break;
    }
    const v = (fast ? (x as CanonicalRow)[6] : (x as ChainRow)[15]) ?? 1;
    if (v !== 1 && v !== 2) { problem = { kind: 'edited', seq, message: `record ${seq} names hash version ${v}, which does not exist` }; break; }
    if (v === 1 && sawV2) { problem = { kind: 'edited', seq, message: `record ${seq} claims the old hash version 1 after records of version 2 (a downgrade is an edit)` }; break; }
    let h: string;
    let event: string;
    let detail: string | null;
    if (fast) {
      const f = x as CanonicalRow;
      event = f[4];
      detail = f[5];
      // The stored prev_hash is in the text: equal to the running one, the text hashes as the chain's would.
      if (f[2] !== prev || (h = hash('sha256', f[1], 'hex')) !== f[3]) {
        const r = src.row(seq)!;
        h = rowHash(r, prev, seq);
        if (h !== r[14]) { problem = diagnose(src, r, prev, start.afterSeq + 1); break; }
      }
    } else {
      const r = x as ChainRow;
      event = r[2];
      detail = r[11];
      h = v === 1 ? hash1(r, prev) : hash2(r, prev, seq);
      if (h !== r[14]) { problem = diagnose(src, r, prev, start.afterSeq + 1); break; }
    }
    if (v === 2) sawV2 = true;
    ring[seq & (RING - 1)] = h;
    count++;
    if (event === CHECKPOINT_EVENT) {
      const covered = coveredSeq(detail);
      const ok = covered !== undefined && covered < seq;
      if (seq !== skip) {
        const checked = checkStored(detail, keys);
        checked.catch(() => undefined);
        checkpoints.push({ recordSeq: seq, detail, head: ok ? hashAt(covered, seq) : undefined, countAt: ok && covered > start.afterSeq ? count - (seq - covered) : undefined, checked });
      }
    }
    while (oi < offHost.length && offHost[oi]!.seq === seq) {
      const o = offHost[oi++]!;
      anchors.push({ seq, head: o.head, count: o.count, matched: o.head === h && o.count === count, via: o.via });
    }
    prev = h;
    expected++;
    if ((seq & (YIELD_EVERY - 1)) === 0 && checkpoints.length) await new Promise<void>((r) => setImmediate(r));
  }
  return { records: count - start.count, firstSeq, lastSeq: expected - 1, problem, checkpoints, anchors };
}

function coveredSeq(detail: string | null): number | undefined {
  try {
    const s = (JSON.parse(detail ?? 'null') as { seq?: unknown } | null)?.seq;
    return Number.isSafeInteger(s) ? (s as number) : undefined;
  } catch { return undefined; }
}

/** Why a record failed: moved, or its predecessor changed with its hash recomputed, or edited itself. */
function diagnose(src: ChainSource, r: ChainRow, prev: string, startSeq: number): AuditProblem {
  const seq = r[0];
  const storedPrev = r[13];
  const v = r[15] ?? 1;
  if (rowHash(r, storedPrev, seq) === r[14]) {
    // Intact in itself; what it follows is not what it was written after.
    const p = src.seqOfHash(storedPrev);
    if (p !== undefined && p !== seq - 1) return { kind: 'reordered', seq, message: `record ${seq} was written after the record now at seq ${p}, not after record ${seq - 1} (records were moved)` };
    if (seq > startSeq && storedPrev !== prev) return { kind: 'edited', seq: seq - 1, message: `record ${seq - 1} was changed and its hash recomputed: record ${seq} was written after a record with another hash` };
    return { kind: 'edited', seq, message: `record ${seq} names a previous hash that is not record ${seq - 1}'s` };
  }
  if (v === 2) {
    for (let d = 1; d <= MOVE_WINDOW; d++) {
      for (const s of [seq - d, seq + d]) {
        if (s >= 1 && hash2(r, storedPrev, s) === r[14]) return { kind: 'reordered', seq, message: `record ${seq} was written as seq ${s} (records were moved)` };
      }
    }
  }
  return { kind: 'edited', seq, message: `record ${seq} does not match its hash: a field of it was changed` };
}

export interface VerifyOptions {
  /** Needed when there are checkpoints; without keys their signatures cannot be checked. */
  keys: AuditKeySet | undefined;
  offHost?: OffHostCheckpoint[];
  /** Where to start (the start-up check starts at the last checkpoint); default the genesis. */
  start?: WalkStart;
  /** The record seq of a checkpoint already checked (the start-up check's anchor): not checked again. */
  anchorRecord?: number;
  /** Walks the chain in another way (in parallel, sqlite/audit-parallel.ts); default one walk here. */
  walker?: Walker;
}

/** Verifies a store's audit log: the first bad record by seq, and every problem found. */
export async function verifyAuditLog(src: ChainSource, o: VerifyOptions): Promise<VerifyReport> {
  const problems: AuditProblem[] = [];
  for (const g of src.missingGuards()) problems.push({ kind: 'triggers_missing', seq: null, message: `the append-only trigger ${g} is missing or changed, so the store no longer refuses edits` });
  const keys = o.keys ?? await AuditKeySet.of([]);
  const kids = new Set<string>();
  // Off-host copies: checked first, then compared as the chain is walked.
  const offHost: OffHostAnchor[] = [];
  for (const c of o.offHost ?? []) {
    const r = await checkJws(c.jws, keys);
    const at = c.recordSeq ?? (r.ok ? r.payload.seq : null);
    if (!r.ok) { problems.push({ kind: r.kind, seq: at, message: `the off-host checkpoint on line ${c.line}${c.recordSeq ? ` (record ${c.recordSeq})` : ''} is not valid: ${r.why}` }); continue; }
    kids.add(r.kid);
    offHost.push({ seq: r.payload.seq, head: r.payload.head, count: r.payload.count, via: `the off-host checkpoint on line ${c.line}` });
  }
  offHost.sort((a, b) => a.seq - b.seq);
  const start = o.start ?? FROM_GENESIS;
  const w = await (o.walker ?? ((s, off, k, skip) => walkChain(src, s, off, k, skip)))(start, offHost, keys, o.anchorRecord);
  if (w.problem) problems.push(w.problem);
  const anchors = [...w.anchors];
  // Checkpoint signatures: started during the walk, checked on the thread pool meanwhile.
  const results = await Promise.all(w.checkpoints.map((c) => c.checked));
  for (const [i, c] of w.checkpoints.entries()) {
    const r = results[i]!;
    if (!r.ok) { problems.push({ kind: r.kind, seq: c.recordSeq, message: `checkpoint record ${c.recordSeq} is not valid: ${r.why}` }); continue; }
    kids.add(r.kid);
    const d = JSON.parse(c.detail!) as Partial<CheckpointPayload>;
    const p = r.payload;
    if (p.seq >= c.recordSeq) {
      // A checkpoint signs only what was before it: records before it were removed and the rest renumbered.
      anchors.push({ seq: c.recordSeq, head: p.head, count: p.count, matched: false, via: `the checkpoint now at seq ${c.recordSeq}, which signed record ${p.seq} (records before it were removed or renumbered)` });
      continue;
    }
    if (d.seq !== p.seq || d.head !== p.head || d.count !== p.count) {
      problems.push({ kind: 'bad_checkpoint', seq: c.recordSeq, message: `checkpoint record ${c.recordSeq} says seq ${d.seq} head ${String(d.head).slice(0, 12)}…, its signature says seq ${p.seq} head ${p.head.slice(0, 12)}…` });
      continue;
    }
    if (c.head === undefined) continue;
    anchors.push({ seq: p.seq, head: p.head, count: p.count, matched: c.head === p.head && (c.countAt === undefined || c.countAt === p.count), via: `the checkpoint at seq ${c.recordSeq}` });
  }
  // A signed head that the chain does not reach: recomputed after an edit, somewhere after the last one that matched.
  anchors.sort((a, b) => a.seq - b.seq);
  let lastGood = start.afterSeq;
  for (const a of anchors) {
    if (a.matched) { lastGood = Math.max(lastGood, a.seq); continue; }
    problems.push({ kind: 'rewritten', seq: lastGood + 1, through: a.seq, message: `the chain up to record ${a.seq} does not match ${a.via}: a record in ${lastGood + 1}–${a.seq} was changed, removed or added and the later hashes recomputed` });
    break;
  }
  if (!w.problem) {
    const last = w.lastSeq;
    const counter = src.sequenceMax();
    const beyond = offHost.filter((c) => c.seq > last).at(-1);
    if (beyond) problems.push({ kind: 'truncated', seq: last + 1, message: `the log ends at record ${last}, but ${beyond.via} covers records up to ${beyond.seq}: the tail was removed` });
    else if (counter !== undefined && counter > last) problems.push({ kind: 'truncated', seq: last + 1, message: `the log ends at record ${last}, but the store handed out seq numbers up to ${counter}: the tail was removed` });
  }
  problems.sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
  const firstBad = problems.find((p) => p.seq !== null) ?? null;
  return {
    ok: problems.length === 0, records: w.records, firstSeq: w.firstSeq, lastSeq: w.firstSeq === null ? (start.afterSeq || null) : w.lastSeq,
    checkpoints: { inStore: w.checkpoints.length, offHost: (o.offHost ?? []).length, verified: results.filter((r) => r?.ok).length, kids: [...kids].sort() },
    firstBad, problems,
  };
}

/**
 * The start-up check: from the last checkpoint (or the last accepted break, whichever is later) to
 * the end, not the whole chain. Without either, the whole chain. `trustUnknownAnchor`: the anchor may
 * be signed by a key no longer known (ephemeral keys die with the process); its head is used as is.
 */
export async function verifyTail(src: ChainSource, keys: AuditKeySet, o: { trustUnknownAnchor: boolean }): Promise<{ report: VerifyReport; from: number; anchorUnverified: boolean }> {
  let start = FROM_GENESIS;
  let anchorUnverified = false;
  const cp = src.lastOf(CHECKPOINT_EVENT);
  const accepted = src.lastOf(BROKEN_ACCEPTED_EVENT);
  const early: AuditProblem[] = [];
  if (cp) {
    let jws: unknown;
    try { jws = (JSON.parse(cp[11] ?? 'null') as { jws?: unknown } | null)?.jws; } catch { /* below */ }
    const r: Checked = typeof jws === 'string' ? await checkJws(jws, keys) : { ok: false, kind: 'bad_checkpoint', why: 'its detail has no jws' };
    let payload: CheckpointPayload | undefined;
    if (r.ok) payload = r.payload;
    else if (r.kind === 'unknown_kid' && o.trustUnknownAnchor) {
      const d = JSON.parse(cp[11]!) as CheckpointPayload;
      payload = d;
      anchorUnverified = true;
    } else early.push({ kind: r.kind, seq: cp[0], message: `checkpoint record ${cp[0]} is not valid: ${r.why}` });
    if (payload) {
      const stored = src.storedHashAt(payload.seq);
      if (stored !== payload.head) early.push({ kind: 'rewritten', seq: payload.seq, message: `record ${payload.seq} does not match the checkpoint at seq ${cp[0]}: the chain up to it was changed and recomputed` });
      else start = { afterSeq: payload.seq, prev: payload.head, count: payload.count, sawV2: true };
    }
  }
  if (accepted && accepted[0] - 1 > start.afterSeq && !early.length) {
    const before = src.storedHashAt(accepted[0] - 1);
    if (before === accepted[13]) start = { afterSeq: accepted[0] - 1, prev: accepted[13], count: src.countThrough(accepted[0] - 1), sawV2: (accepted[15] ?? 1) === 2 };
  }
  if (early.length) {
    const problems = [...early, ...src.missingGuards().map((g): AuditProblem => ({ kind: 'triggers_missing', seq: null, message: `the append-only trigger ${g} is missing or changed` }))];
    problems.sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
    return { report: { ok: false, records: 0, firstSeq: null, lastSeq: null, checkpoints: { inStore: 1, offHost: 0, verified: 0, kids: [] }, firstBad: early[0]!, problems }, from: 0, anchorUnverified };
  }
  // Counts before the anchor are not re-counted here: the anchor's signed count is taken as is.
  const report = await verifyAuditLog(src, { keys, start, ...(cp ? { anchorRecord: cp[0] } : {}) });
  return { report, from: start.afterSeq + 1, anchorUnverified };
}
