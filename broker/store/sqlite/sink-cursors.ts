import type { StatementSync } from 'node:sqlite';
import type { SinkCursor, SinkCursorRepository } from '../sink-cursors.js';
import type { SqliteDatabase } from './database.js';

/** The audit sinks' cursors in SQLite (`audit_sink_cursors`). */
export class SqliteSinkCursors implements SinkCursorRepository {
  private readonly select: StatementSync;
  private readonly upsert: StatementSync;
  private readonly maxSeq: StatementSync;

  constructor(sql: SqliteDatabase) {
    this.select = sql.prepare('SELECT delivered_seq, delivered_at FROM audit_sink_cursors WHERE sink_id = ?');
    // MAX(): a retried batch that was already delivered never moves the cursor back.
    this.upsert = sql.prepare(`INSERT INTO audit_sink_cursors (sink_id, delivered_seq, delivered_at) VALUES (?,?,?)
      ON CONFLICT (sink_id) DO UPDATE SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq), delivered_at = excluded.delivered_at`);
    this.maxSeq = sql.prepare('SELECT COALESCE(MAX(seq), 0) AS head FROM audit');
  }

  async get(sinkId: string): Promise<SinkCursor> {
    const r = this.select.get(sinkId) as { delivered_seq: number; delivered_at: number } | undefined;
    return r ? { sinkId, deliveredSeq: r.delivered_seq, deliveredAt: r.delivered_at } : { sinkId, deliveredSeq: 0 };
  }

  async advance(sinkId: string, seq: number, at: number): Promise<void> {
    // One statement, so its own transaction; not SqliteDatabase.write, whose failure means "nothing was issued".
    this.upsert.run(sinkId, seq, at);
  }

  async head(): Promise<number> {
    return (this.maxSeq.get() as { head: number }).head;
  }
}
