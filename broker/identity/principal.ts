/** A verified developer, as the rest of the broker sees them. */
export interface Principal {
  /** Stable identity: the configured claim (email by default). Becomes SourceIdentity. */
  id: string;
  email: string;
  groups: string[];
}
