/**
 * The audit log's hash chain, the same for every backend: each record's hash covers the previous
 * record's hash and the record's own fields, so editing, removing or reordering a record breaks the
 * chain from there on. A chain alone is unkeyed: whoever can write the store can recompute it, which
 * is what the signed checkpoints (broker/audit/checkpoints.ts) are for.
 *
 * Two hash versions live in one chain, per record (the store's `hash_version` column):
 * - v1, records written before seq was hashed: the fields below without seq, the Vault accessor only
 *   when set. Kept so that an existing store verifies unchanged, with no re-chaining (a re-chain
 *   would rewrite every old hash, which is exactly what tampering looks like).
 * - v2, every record written since: the version, seq and every field, each at a fixed position.
 * Once a v2 record is in the chain, a later v1 record is refused (a downgrade is an edit).
 */
import { hash } from 'node:crypto';
import type { AuditEvent } from './audit-event.js';

/** The `prev_hash` of the first record. */
export const GENESIS_HASH = '0'.repeat(64);

/** The version new records are hashed with. */
export const HASH_VERSION = 2;

/** A record's fields as stored: `detail` is the stored JSON text (JSON.stringify of the detail object), or null. */
export interface ChainFields {
  at: string;
  event: string;
  decision: string;
  developer: string | null;
  template: string | null;
  sessionId: string | null;
  reason: string | null;
  accessKeyId: string | null;
  roleSessionName: string | null;
  expiration: string | null;
  detail: string | null;
  vaultAccessor: string | null;
}

export function chainFields(at: string, e: AuditEvent): ChainFields {
  return {
    at, event: e.event, decision: e.decision, developer: e.developer ?? null, template: e.template ?? null,
    sessionId: e.sessionId ?? null, reason: e.reason ?? null, accessKeyId: e.accessKeyId ?? null,
    roleSessionName: e.roleSessionName ?? null, expiration: e.expiration ?? null,
    detail: e.detail ? JSON.stringify(e.detail) : null, vaultAccessor: e.vaultAccessor ?? null,
  };
}

/**
 * v2, the canonical encoding: the UTF-8 bytes of the JSON text (RFC 8259) of one array, as
 * JSON.stringify writes it (no whitespace, strings escaped the one way it escapes them):
 * `[2, seq, prevHash, at, event, decision, developer, template, sessionId, reason, accessKeyId,
 * roleSessionName, expiration, detail, vaultAccessor]`, absent fields `null`, `detail` the stored
 * JSON text as a string; hashed with SHA-256, hex.
 */
export function recordHashV2(prevHash: string, seq: number, f: ChainFields): string {
  return hash('sha256', JSON.stringify([
    2, seq, prevHash, f.at, f.event, f.decision, f.developer, f.template, f.sessionId, f.reason,
    f.accessKeyId, f.roleSessionName, f.expiration, f.detail, f.vaultAccessor,
  ]), 'hex');
}

/** v1 (records from before seq was hashed): no version, no seq, the accessor only when set. */
export function recordHashV1(prevHash: string, f: ChainFields): string {
  return hash('sha256', JSON.stringify([
    prevHash, f.at, f.event, f.decision, f.developer, f.template, f.sessionId, f.reason,
    f.accessKeyId, f.roleSessionName, f.expiration, f.detail,
    ...(f.vaultAccessor ? [f.vaultAccessor] : []),
  ]), 'hex');
}

export function recordHash(version: number, prevHash: string, seq: number, f: ChainFields): string {
  return version === 1 ? recordHashV1(prevHash, f) : recordHashV2(prevHash, seq, f);
}
