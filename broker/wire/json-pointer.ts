import type { z } from 'zod';
import type { ErrorDetail } from '../errors.js';

/**
 * RFC 6901 JSON pointer for a zod issue path, so a 400 names exactly where the body was wrong. The
 * whole document is the empty string (RFC 6901 §5: "" points at the root; "/" would name the key "").
 */
export function jsonPointer(path: readonly PropertyKey[]): string {
  return path.map((p) => `/${String(p).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
}

/**
 * One detail per problem of a request body. An unknown key is reported at its own pointer
 * (`/badKey`, "unknown field"), not at the object that holds it, so the caller sees which one to
 * remove; zod reports all of an object's unknown keys in one issue at the object's path.
 */
export function bodyIssueDetails(error: z.ZodError): ErrorDetail[] {
  return error.issues.flatMap((i) => i.code === 'unrecognized_keys'
    ? i.keys.map((k) => ({ path: jsonPointer([...i.path, k]), message: 'unknown field' }))
    : [{ path: jsonPointer(i.path), message: i.message }]);
}

/**
 * Where an answer first differs from its contract and how (zod's message names the expected type or
 * format), never what it holds: a received document may carry credentials.
 */
export function firstIssue(error: z.ZodError): string {
  const first = error.issues[0];
  if (!first) return 'it does not match';
  const pointer = jsonPointer(first.path);
  return `${pointer ? `at ${pointer}: ` : ''}${first.message}`;
}
