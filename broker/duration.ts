import { z } from 'zod';

const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86400 } as const;
const DURATION_RE = /^(\d+)(s|m|h|d)?$/;
const COMPOUND_RE = /^(?:\d+[smhd])+$/;

/**
 * Parses `900`, `900s`, `15m`, `1h`, `1h30m`, `1d` into whole seconds. Returns undefined for anything
 * else so callers can report where the bad value was.
 */
export function parseDuration(input: string | number): number | undefined {
  if (typeof input === 'number') return Number.isInteger(input) && input >= 0 ? input : undefined;
  const s = input.trim();
  const simple = DURATION_RE.exec(s);
  if (simple) return Number(simple[1]) * UNIT_SECONDS[(simple[2] ?? 's') as keyof typeof UNIT_SECONDS];
  if (!COMPOUND_RE.test(s)) return undefined;
  let total = 0;
  for (const m of s.matchAll(/(\d+)([smhd])/g)) total += Number(m[1]) * UNIT_SECONDS[m[2] as keyof typeof UNIT_SECONDS];
  return total;
}

export function formatDuration(seconds: number): string {
  if (seconds <= 0) return '0s';
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return [h ? `${h}h` : '', m ? `${m}m` : '', s && !h ? `${s}s` : ''].join('') || '0s';
}

/** zod schema: a duration string or number, transformed to seconds. */
export const durationSchema = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseDuration(v);
  if (n === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${String(v)}" is not a duration; use e.g. 900, 15m, 1h, 1h30m` });
    return z.NEVER;
  }
  return n;
});
