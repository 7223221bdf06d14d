/**
 * Where each audit sink (broker/sinks/) is in the audit log: the last `seq` it has received. The
 * audit log stays the source of truth; a sink is fed from it after the cursor and the cursor moves
 * only once the sink has taken the records, so delivery is at least once across restarts.
 */
export interface SinkCursor {
  sinkId: string;
  deliveredSeq: number;
  /** When the cursor last moved (ms); absent for a sink that has received nothing yet. */
  deliveredAt?: number | undefined;
}

export interface SinkCursorRepository {
  /** The sink's cursor; `deliveredSeq` 0 for a sink never fed. */
  get(sinkId: string): Promise<SinkCursor>;
  /** Moves the cursor to `seq` (never backwards). */
  advance(sinkId: string, seq: number, at: number): Promise<void>;
  /** The newest record's seq (0 for an empty log): the backlog of a sink is what lies after its cursor up to here. */
  head(): Promise<number>;
}
