/** The decisions the broker records. Every one is written before the caller sees the result. */
export type AuditEventName =
  | 'login'
  | 'token.refresh'
  /** A login (refresh-token family) revoked: by `broker logout`, by reuse detection, by an admin. */
  | 'login.revoke'
  | 'session.start'
  | 'session.update'
  | 'credentials.issue'
  | 'credentials.reissue'
  | 'session.end'
  /** A session's STS credentials revoked by a deny in its role's policy: `pending` when recorded, `revoked` when IAM accepted it. */
  | 'session.revoke'
  /** The role-wide aws:TokenIssueTime deny, written when the revoked sessions no longer fit the role's policy. */
  | 'revocation.fallback'
  | 'vault.issue'
  | 'vault.reissue'
  | 'vault.revoke'
  /** Start requests (README, "Confirmation"): made, decided by a human, expired, cancelled, broken glass. */
  | 'request.create'
  | 'request.confirm'
  | 'request.approve'
  | 'request.deny'
  | 'request.expire'
  | 'request.cancel'
  | 'request.break_glass'
  /**
   * The control plane (broker/admin/): an admin route refused to a non-admin (`denied`), an admin
   * reading sessions (`allowed`), ending sessions, offboarding a developer, freezing and unfreezing.
   * The admin's identity is `detail.admin`; `developer` is whom the action is about, when one.
   */
  | 'admin.access'
  | 'admin.view'
  | 'admin.end'
  | 'admin.offboard'
  | 'admin.freeze'
  | 'admin.unfreeze'
  /** The task templates reloaded (templates/catalog.ts): `updated` with the versions before and after, or `failed` with the problems. */
  | 'policy.reload'
  /**
   * A signed checkpoint of the chain (`signed`): detail `{jws, seq, head, count}`, the JWS (ES256,
   * the audit key's kid) over `{seq, head, at, count}` of the last record it covers. Exported with
   * every other record, so each sink carries a copy off the host.
   */
  | 'audit.checkpoint'
  /** The service started on a broken chain because it was told to (`broker server --accept-broken-audit`): what was broken. */
  | 'audit.broken';

/** `expired`: a Vault token the broker could not revoke, given up once it is past the latest it can live. */
export type AuditDecision = 'allowed' | 'denied' | 'issued' | 'failed' | 'ended' | 'updated' | 'revoked' | 'expired'
  | 'pending' | 'confirmed' | 'approved' | 'cancelled' | 'frozen' | 'unfrozen' | 'signed';

/**
 * What an audit record may hold. Deliberately no field for a secret: AccessKeyId and the role session
 * name are what tie CloudTrail events back to a task session, and a Vault token's accessor what ties
 * Vault's audit log to it; the secret key, session token and Vault token are never passed to the store.
 */
export interface AuditEvent {
  event: AuditEventName;
  decision: AuditDecision;
  developer?: string | undefined;
  template?: string | undefined;
  sessionId?: string | undefined;
  /** Why: the denial reason, the developer's stated reason, or why a session ended. */
  reason?: string | undefined;
  accessKeyId?: string | undefined;
  roleSessionName?: string | undefined;
  expiration?: string | undefined;
  /** A Vault token's accessor (not the token): lookup and revocation handle, shown in Vault's audit log. */
  vaultAccessor?: string | undefined;
  detail?: Record<string, unknown> | undefined;
}

export interface AuditRecord extends AuditEvent {
  seq: number;
  at: string;
  hash: string;
}
