import type { SeenIdTokens } from '../seen-id-tokens.js';
import type { SqliteDatabase } from './database.js';

/** Accepted ID tokens by digest (`seen_id_tokens`), until they expire. */
export class SqliteSeenIdTokens implements SeenIdTokens {
  private readonly stmts;

  constructor(private readonly sql: SqliteDatabase) {
    const q = (s: string) => sql.prepare(s);
    this.stmts = {
      // A row past its `until` is as good as absent: it is taken over, not counted as a replay.
      claim: q(`INSERT INTO seen_id_tokens (key, until) VALUES (?, ?)
        ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE seen_id_tokens.until < ?`),
      prune: q('DELETE FROM seen_id_tokens WHERE until < ?'),
    };
  }

  async remember(key: string, until: number): Promise<boolean> {
    return this.sql.write('the use of an ID token', () => this.stmts.claim.run(key, until, this.sql.now()).changes > 0, { audit: false });
  }

  async prune(now: number): Promise<number> {
    return this.sql.write('ID token pruning', () => Number(this.stmts.prune.run(now).changes), { audit: false });
  }
}
