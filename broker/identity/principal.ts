/** A verified developer, as the rest of the broker sees them. */
export interface Principal {
  /** Stable identity: the configured claim (email by default). Becomes SourceIdentity. */
  id: string;
  /** The IdP-verified email (`email_verified: true`), or '' when there is none: only it matches allowed.emails. */
  email: string;
  groups: string[];
}
