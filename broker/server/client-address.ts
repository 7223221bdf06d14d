import { getConnInfo } from '@hono/node-server/conninfo';
import type { Context } from 'hono';

/**
 * The address a request came from, for the per-address rate limit and the audit of anonymous
 * denials: the TCP peer; or, behind `trustedProxyHops` reverse proxies that each append the address
 * they saw to `X-Forwarded-For`, the entry the farthest trusted proxy appended (the N-th from the
 * right). Entries left of it are the client's own to write, so they are never used. With fewer
 * entries than trusted hops (a request that did not pass every proxy) the TCP peer stands.
 */
export function clientAddress(c: Context, trustedProxyHops: number): string {
  let peer = 'unknown';
  try {
    peer = getConnInfo(c).remote.address ?? 'unknown';
  } catch {
    // No Node socket behind the request (app.request() in a test): one shared key.
  }
  if (trustedProxyHops <= 0) return peer;
  const forwarded = (c.req.header('x-forwarded-for') ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (forwarded.length < trustedProxyHops) return peer;
  const entry = forwarded[forwarded.length - trustedProxyHops]!;
  // An address, not whatever text a misbehaving proxy passed on (it becomes an audit key).
  return /^[0-9A-Fa-f:.]{2,45}$/.test(entry) ? entry : peer;
}
