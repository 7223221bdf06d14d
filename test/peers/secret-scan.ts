import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Every file under `roots` (recursively, regular files up to 50 MB) that contains any of `secrets`
 * (text, or raw bytes such as a private key's DER encoding).
 */
export function filesContaining(roots: string[], secrets: readonly (string | Buffer)[]): string[] {
  const needles = secrets.filter((s) => s.length >= 8).map((s) => (typeof s === 'string' ? Buffer.from(s) : s));
  const hits: string[] = [];
  const walk = (p: string) => {
    let st;
    try { st = lstatSync(p); } catch { return; }
    if (st.isDirectory()) {
      let entries: string[] = [];
      try { entries = readdirSync(p); } catch { return; }
      for (const e of entries) if (e !== 'node_modules' && e !== '.peers') walk(join(p, e));
    } else if (st.isFile() && st.size < 50 * 1024 * 1024) {
      let buf: Buffer;
      try { buf = readFileSync(p); } catch { return; }
      if (needles.some((n) => buf.includes(n))) hits.push(p);
    }
  };
  for (const r of roots) walk(r);
  return hits;
}
