/**
 * A template's version: the first 12 hex digits of the SHA-256 of its parsed form (schema.ts's
 * output, defaults filled in) as canonical JSON (object keys sorted; list order kept, it can matter).
 * So layout, comments, key order, quoting and defaults written out do not change it; any change to a
 * value does. 48 bits: distinct versions of one template name collide with odds of about n²/2^49.
 */
import { createHash } from 'node:crypto';
import type { RawTemplate } from './schema.js';

export const TEMPLATE_VERSION_RE = /^[0-9a-f]{12}$/;

export function templateVersion(raw: RawTemplate): string {
  return createHash('sha256').update(canonicalJson(raw)).digest('hex').slice(0, 12);
}

export function canonicalJson(v: unknown): string {
  if (v === undefined) return 'null';
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
}
