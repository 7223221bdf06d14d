import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Every file under `roots` (recursively, regular files up to 50 MB) that contains any of `secrets`
 * (text, or raw bytes such as a private key's DER encoding).
 */
export function filesContaining(roots: string[], secrets: readonly (string | Buffer)[]): string[] {
  const needles = secrets.filter((s) => s.length >= 8).map((s) => (typeof s === 'string' ? Buffer.from(s) : s));
  const hits: string[] = [];
  walkFiles(roots, (path, buf) => {
    if (needles.some((n) => buf.includes(n))) hits.push(path);
  });
  return hits;
}

/** Calls `visit` with every regular file under `roots` up to 50 MB (skipping installed dependencies). */
function walkFiles(roots: string[], visit: (path: string, content: Buffer) => void): void {
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
      visit(p, buf);
    }
  };
  for (const r of roots) walk(r);
}

const JWT = /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}/g;

/**
 * Every file under `roots` holding a JWT that `issuer` signed. The broker's access tokens are never
 * seen by the tests (the daemon fetches them from the service), so instead of looking for known
 * values this looks for any token of the broker's shape: a leaked access, refresh or Vault-login
 * token would be found whichever it is.
 */
export function filesWithTokensFrom(roots: string[], issuer: string): string[] {
  const hits = new Set<string>();
  walkFiles(roots, (path, buf) => {
    for (const m of buf.toString('latin1').matchAll(JWT)) {
      try {
        const payload = JSON.parse(Buffer.from(m[0].split('.')[1]!, 'base64url').toString('utf8')) as { iss?: unknown };
        if (payload.iss === issuer) hits.add(path);
      } catch { /* JWT-shaped but not a JWT */ }
    }
  });
  return [...hits];
}
