/**
 * Single flight per key: while a call for a key is under way, later callers share its promise
 * instead of starting another (100 concurrent credential_process calls → one upstream request).
 */
export class SingleFlight<K, V> {
  private readonly pending = new Map<K, Promise<V>>();

  /** Is a call for this key under way (so a caller now would share it)? */
  isPending(key: K): boolean {
    return this.pending.has(key);
  }

  run(key: K, fn: () => Promise<V>): Promise<V> {
    let p = this.pending.get(key);
    if (!p) {
      p = fn().finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    return p;
  }
}
