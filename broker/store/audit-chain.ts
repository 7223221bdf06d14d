/**
 * The audit log's hash chain, the same for every backend: each record's hash covers the previous
 * record's hash and the record's own fields in a fixed order, so editing, removing or reordering a
 * record breaks the chain from there on (AuditLog.verify says where).
 */
import { createHash } from 'node:crypto';
import type { AuditEvent } from './audit-event.js';

/** The `prev_hash` of the first record. */
export const GENESIS_HASH = '0'.repeat(64);

/**
 * Canonical form of a record for the hash chain: fixed field order, no whitespace ambiguity. Fields
 * added later (the Vault accessor) are appended only when set, so records written before they
 * existed keep their hashes and an old log still verifies.
 */
export function recordHash(prevHash: string, at: string, e: AuditEvent): string {
  const canonical = JSON.stringify([
    prevHash, at, e.event, e.decision, e.developer ?? null, e.template ?? null, e.sessionId ?? null,
    e.reason ?? null, e.accessKeyId ?? null, e.roleSessionName ?? null, e.expiration ?? null,
    e.detail ? JSON.stringify(e.detail) : null,
    ...(e.vaultAccessor ? [e.vaultAccessor] : []),
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}
