/**
 * ID tokens the service has accepted, so each is accepted once: a copy of one (a log, a CI job's
 * artifact, a proxy) cannot be exchanged again while it is still valid. In the store, not in memory,
 * so it survives a restart and several replicas on one store share it. Keyed by a digest of the
 * token's issuer and `jti`, or of the whole token when it has none: never the token itself.
 */
export interface SeenIdTokens {
  /**
   * Records `key` as used until `until` (ms; the token's `exp` plus the clock tolerance). True when
   * it was new, false when it had been recorded already (and is not past its `until`), atomically:
   * of two concurrent exchanges of one token, one gets true.
   */
  remember(key: string, until: number): Promise<boolean>;
  /** Forgets keys whose `until` is before `now`; how many. */
  prune(now: number): Promise<number>;
}
