import type { DatabaseSync } from 'node:sqlite';

/**
 * The SQLite schema, created if missing, and the columns added since each table first shipped, so
 * a store written by an older broker opens unchanged and gains them (ALTER TABLE ADD COLUMN adds no
 * rows, so the audit log's append-only triggers are not involved).
 */
/**
 * The audit table's append-only guards. They stop accidents and careless tools, not an attacker
 * with write access to the file (one statement drops them): `broker audit verify` reports a missing
 * or changed one, and the hash chain with its signed checkpoints is what detects the edits.
 */
export const AUDIT_TRIGGERS = {
  audit_no_update: `CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;`,
  audit_no_delete: `CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;`,
} as const;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS task_sessions (
  id TEXT PRIMARY KEY,
  developer TEXT NOT NULL,
  template TEXT NOT NULL,
  params TEXT NOT NULL,
  reason TEXT NOT NULL,
  agent TEXT NOT NULL,
  role_session_name TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  ended_at INTEGER,
  end_reason TEXT,
  template_version TEXT
);
CREATE INDEX IF NOT EXISTS task_sessions_developer ON task_sessions (developer, ended_at, expires_at);
-- A template's open sessions and recent starts, for its limits (templates/schema.ts, limits).
CREATE INDEX IF NOT EXISTS task_sessions_template ON task_sessions (template, created_at);
-- The open sessions, counted at every metrics scrape: a partial index keeps that cheap however many have ended.
CREATE INDEX IF NOT EXISTS task_sessions_open ON task_sessions (expires_at) WHERE ended_at IS NULL;
-- Every template version loaded (store/template-versions.ts): a session's version, found again after a reload.
CREATE TABLE IF NOT EXISTS template_versions (
  name TEXT NOT NULL,
  version TEXT NOT NULL,
  definition TEXT NOT NULL,
  file TEXT NOT NULL,
  first_loaded_at INTEGER NOT NULL,
  PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  event TEXT NOT NULL,
  decision TEXT NOT NULL,
  developer TEXT,
  template TEXT,
  session_id TEXT,
  reason TEXT,
  access_key_id TEXT,
  role_session_name TEXT,
  expiration TEXT,
  detail TEXT,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  vault_accessor TEXT,
  hash_version INTEGER NOT NULL DEFAULT 1
);
-- The audit log is append-only: the database itself refuses edits, not just our code (AUDIT_TRIGGERS).
${Object.values(AUDIT_TRIGGERS).join('\n')}
-- The checkpoints (and accepted breaks) from the end, for the start-up check and the checkpointer.
CREATE INDEX IF NOT EXISTS audit_event ON audit (event, seq);
-- Vault tokens by accessor (a handle to look up and revoke a token, not the token), so every token
-- of a session can be revoked when it ends, and a failed revocation is retried until it succeeds.
CREATE TABLE IF NOT EXISTS vault_tokens (
  accessor TEXT PRIMARY KEY,
  session_id TEXT NOT NULL REFERENCES task_sessions (id),
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  revoked_at INTEGER,
  revoke_attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  last_attempt_at INTEGER,
  dead_by INTEGER,
  lapsed_at INTEGER
);
CREATE INDEX IF NOT EXISTS vault_tokens_session ON vault_tokens (session_id, revoked_at);
-- The records of one session (what was issued under it), for the sweep of starts that never completed.
CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id, event, decision);
-- Logins as refresh-token families (store/refresh-token-families.ts): rotation with reuse detection.
-- Tokens by jti only, never the tokens.
CREATE TABLE IF NOT EXISTS refresh_token_families (
  id TEXT PRIMARY KEY,
  developer TEXT NOT NULL,
  email TEXT NOT NULL,
  groups TEXT NOT NULL,
  jkt TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  revoked_at INTEGER,
  revoke_reason TEXT,
  generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_token_families_developer ON refresh_token_families (developer, revoked_at);
CREATE INDEX IF NOT EXISTS refresh_token_families_expires ON refresh_token_families (expires_at);
CREATE TABLE IF NOT EXISTS refresh_tokens (
  jti TEXT PRIMARY KEY,
  family_id TEXT NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
  generation INTEGER NOT NULL,
  issued_at INTEGER NOT NULL,
  spent_at INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family_id);
-- ID tokens accepted once (store/seen-id-tokens.ts), by digest, until they expire.
CREATE TABLE IF NOT EXISTS seen_id_tokens (
  key TEXT PRIMARY KEY,
  until INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_id_tokens_until ON seen_id_tokens (until);
-- Start requests waiting for humans (store/start-requests.ts), and the decisions taken on them.
CREATE TABLE IF NOT EXISTS start_requests (
  id TEXT PRIMARY KEY,
  requester TEXT NOT NULL,
  template TEXT NOT NULL,
  params TEXT NOT NULL,
  reason TEXT NOT NULL,
  agent TEXT NOT NULL,
  ttl_seconds INTEGER,
  break_glass INTEGER NOT NULL,
  mode TEXT NOT NULL,
  max_age_seconds INTEGER NOT NULL,
  approvals INTEGER NOT NULL,
  approvers TEXT NOT NULL,
  digest TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  session_id TEXT,
  template_version TEXT
);
CREATE INDEX IF NOT EXISTS start_requests_requester ON start_requests (requester, status);
CREATE INDEX IF NOT EXISTS start_requests_status ON start_requests (status, expires_at);
CREATE TABLE IF NOT EXISTS start_request_decisions (
  request_id TEXT NOT NULL REFERENCES start_requests (id),
  seq INTEGER NOT NULL,
  by TEXT NOT NULL,
  decision TEXT NOT NULL,
  reason TEXT NOT NULL,
  auth_time INTEGER NOT NULL,
  at INTEGER NOT NULL,
  via TEXT NOT NULL,
  PRIMARY KEY (request_id, seq)
);
-- Freezes (store/freezes.ts): scope '*' is every template.
CREATE TABLE IF NOT EXISTS freezes (
  scope TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  frozen_by TEXT NOT NULL,
  at INTEGER NOT NULL
);
-- Revoked sessions per template role (store/session-revocations.ts): what the role's deny document
-- must say. A row goes once every credential it targets has expired (until).
CREATE TABLE IF NOT EXISTS session_revocations (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  role_arn TEXT NOT NULL,
  kind TEXT NOT NULL,
  value TEXT NOT NULL,
  until INTEGER NOT NULL,
  revoked_at INTEGER NOT NULL,
  revoked_by TEXT NOT NULL,
  reason TEXT NOT NULL,
  applied_at INTEGER,
  covered_at INTEGER,
  UNIQUE (role_arn, kind, value)
);
CREATE INDEX IF NOT EXISTS session_revocations_until ON session_revocations (until);
CREATE TABLE IF NOT EXISTS role_revocation_documents (
  role_arn TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  applied_version INTEGER NOT NULL DEFAULT 0,
  applied_at INTEGER,
  fallback_before INTEGER,
  fallback_until INTEGER,
  fallback_at INTEGER,
  fallback_covered INTEGER
);
`;

/** Columns added after their table first shipped: `table`, then `name TYPE`. */
const COLUMNS_ADDED: readonly [table: string, column: string][] = [
  // Stores created before Vault support.
  ['audit', 'vault_accessor TEXT'],
  // Stores created before seq was hashed: their records stay version 1 (store/audit-chain.ts).
  ['audit', 'hash_version INTEGER NOT NULL DEFAULT 1'],
  // Stores created before failed revocations were retried in order and given up past dead-by.
  ['vault_tokens', 'last_attempt_at INTEGER'],
  ['vault_tokens', 'dead_by INTEGER'],
  ['vault_tokens', 'lapsed_at INTEGER'],
  // Stores created before admins could end sessions (broker admin end): who ended it.
  ['task_sessions', 'ended_by TEXT'],
  // Stores created before templates were reloaded at run time (a session keeps its template version).
  ['task_sessions', 'template_version TEXT'],
  ['start_requests', 'template_version TEXT'],
];

/**
 * Indexes on columns added later (so created after them): the audit log read by what an incident
 * names (broker audit show, GET /v1/admin/audit; store/audit-search.ts). Partial, so the many
 * records without a key or accessor cost nothing. CREATE INDEX adds no row: the triggers stay out.
 */
const INDEXES = `
CREATE INDEX IF NOT EXISTS audit_access_key ON audit (access_key_id) WHERE access_key_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_vault_accessor ON audit (vault_accessor) WHERE vault_accessor IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_event ON audit (event, decision, seq);
`;

/**
 * Stores created before audit sinks (broker/sinks/): how far each sink has been fed, one row per
 * sink id, so delivery resumes after a restart. A cursor is delivery state, not a decision: it has
 * no audit record and no trigger, and deleting a row only makes that sink receive the log again.
 */
const AUDIT_SINK_CURSORS = `
CREATE TABLE IF NOT EXISTS audit_sink_cursors (
  sink_id TEXT PRIMARY KEY,
  delivered_seq INTEGER NOT NULL,
  delivered_at INTEGER NOT NULL
);
`;

export function migrate(db: DatabaseSync): void {
  db.exec(SCHEMA);
  for (const [table, column] of COLUMNS_ADDED) {
    const have = new Set((db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).map((c) => c.name));
    if (!have.has(column.split(' ')[0]!)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column}`);
  }
  db.exec(INDEXES);
  db.exec(AUDIT_SINK_CURSORS);
}
