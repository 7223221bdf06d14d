/**
 * The broker service's HTTP API, written once: zod schemas for every request body (parsed by the
 * service, broker/server/app.ts) and every response body (built by the service, typed by these
 * schemas; validated by the client where it receives them, broker/client/api.ts). Types are
 * inferred from the schemas, never written twice.
 *
 * Requests are strict (an unknown field is an error at its RFC 6901 pointer: the caller learns which
 * one to remove). Responses are deliberately tolerant in one way: `z.object` drops fields this client
 * does not know, so a newer service can add fields without breaking an older CLI. Fields that older
 * services did not send are optional, each saying since when.
 */
import { z } from 'zod';
import type { ErrorDetail } from '../errors.js';
import { MAX_ID_TOKEN_CHARS } from '../limits/aws.js';
import {
  AGENT_NAME_RE, AGENT_NAME_RULE, DEFAULT_AGENT_NAME, MAX_AGENT_NAME_CHARS, MAX_PARAM_VALUE_CHARS, MAX_REASON_CHARS, PARAM_NAME_RE,
  parseSessionTtl, SESSION_TTL_RANGE_MESSAGE, TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE,
} from '../limits/names.js';

/**
 * The time format of every timestamp in the API: RFC 3339 in UTC (§5.6 `date-time` with `Z`), as
 * `Date.prototype.toISOString` writes it. Also the `Expiration` of the credential_process document,
 * which cli/credential-process.cts checks with a literal copy of this pattern (test/wire-contract.test.ts).
 */
export const RFC3339_UTC_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z$/;
export const timestamp = z.string().regex(RFC3339_UTC_RE, 'must be an RFC 3339 UTC time');
const nonEmpty = z.string().min(1);
const count = z.number().int().nonnegative();

/** Our own bound on a refresh token (an ES256 JWT of a few hundred bytes). */
export const MAX_REFRESH_TOKEN_CHARS = 8_000;

// ---- request bodies ---------------------------------------------------------------------------

/**
 * The largest request body the service reads (our own bound): the largest body, an ID token of up
 * to 20,000 chars, fits three times over. Larger ones are refused with 413 `payload_too_large`.
 */
export const MAX_REQUEST_BODY_BYTES = 64 * 1024;

/** Printable text without control characters (they would garble logs and terminals). */
const printable = (max: number) => z.string().max(max).regex(/^[^\p{Cc}]*$/u, 'must not contain control characters');

// Becomes the broker:agent session tag, so it must fit STS's tag value charset and length.
const agentName = z.string().min(1).max(MAX_AGENT_NAME_CHARS).regex(AGENT_NAME_RE, `must use only ${AGENT_NAME_RULE}`);

/** Start request ids: `req_` and 26 chars of lower-case base32 (128 random bits). */
export const REQUEST_ID_RE = /^req_[a-z2-7]{26}$/;

/** `POST /v1/sessions`: start a task session. */
export const startSessionRequest = z.strictObject({
  template: z.string().regex(TEMPLATE_NAME_RE, `must be a template name (${TEMPLATE_NAME_RULE})`),
  params: z.record(z.string().regex(PARAM_NAME_RE, 'invalid parameter name'), z.string().max(MAX_PARAM_VALUE_CHARS)).default({}),
  reason: printable(MAX_REASON_CHARS).default(''),
  // The one rule shared with `broker policy explain` (limits/names.ts).
  ttl: z.union([z.string(), z.number()]).optional().transform((v, ctx) => {
    if (v === undefined) return undefined;
    const s = parseSessionTtl(v);
    if (s === undefined) {
      ctx.addIssue({ code: 'custom', message: SESSION_TTL_RANGE_MESSAGE });
      return z.NEVER;
    }
    return s;
  }),
  agent: agentName.default(DEFAULT_AGENT_NAME),
  /**
   * The start request a human confirmed (or approvers approved) for exactly this template,
   * parameters and ttl: the session starts now, its clock from this moment. Without it, a template
   * that needs confirmation answers 401 `confirmation_required` with a new pending request.
   */
  confirmedRequest: z.string().regex(REQUEST_ID_RE, 'must be a start request id').optional(),
  /** Start a template that needs approvers without them (its `confirm.breakGlass: true`); a reason is required, the requester still confirms. */
  breakGlass: z.boolean().optional(),
});
/** What a client sends (ttl as written, e.g. `2h`); the service parses it to seconds. */
export type StartSessionRequest = z.input<typeof startSessionRequest>;

/**
 * `POST /v1/requests/:id/confirmations`: confirm (the requester), approve or deny (an approver; the
 * requester may deny their own) from a terminal. The service starts an OAuth device authorization
 * (RFC 8628) at the IdP with `max_age` from the template, keeps the device code itself, and records
 * the decision once the person named by the resulting ID token has logged in.
 */
export const startConfirmationRequest = z.strictObject({
  decision: z.enum(['confirm', 'approve', 'deny']),
  reason: printable(MAX_REASON_CHARS).default(''),
});

/**
 * `POST /requests/:id/decision`: the request page's form (urlencoded, one value per field). The
 * CSRF token is checked before this schema (broker/server/web/index.ts).
 */
export const requestPageDecisionForm = z.strictObject({
  decision: z.enum(['confirm', 'approve', 'deny'], { error: 'must be confirm, approve or deny' }),
  reason: printable(MAX_REASON_CHARS).default(''),
  csrf: z.string().min(1).max(200),
});

/** `PATCH /v1/sessions/:id`: the agent working under the session. */
export const updateSessionRequest = z.strictObject({ agent: agentName });

/** `POST /v1/auth/token`: an IdP ID token for broker tokens (with a DPoP proof in the `DPoP` header for a refresh token). */
export const idTokenRequest = z.strictObject({ id_token: z.string().min(1).max(MAX_ID_TOKEN_CHARS) });

/** `POST /v1/auth/refresh`: a refresh token (with a DPoP proof by the key it is bound to) for an access token and the next refresh token. */
export const refreshRequest = z.strictObject({ refresh_token: z.string().min(1).max(MAX_REFRESH_TOKEN_CHARS) });

/** `POST /v1/auth/logout`: any refresh token of a login (with a DPoP proof by its key); the login is revoked (RFC 7009-like). */
export const logoutRequest = z.strictObject({ refresh_token: z.string().min(1).max(MAX_REFRESH_TOKEN_CHARS) });

// ---- response bodies --------------------------------------------------------------------------

/** One problem of a request: where (a JSON pointer, or a CLI flag) and what. */
export const errorDetail = z.object({ path: z.string().optional(), message: z.string(), hint: z.string().optional() }) satisfies z.ZodType<ErrorDetail>;

/**
 * Every error answer: `{code, message, hint?, details?}` (BrokerError.toJSON), with the code's
 * HTTP status (broker/errors.ts ERROR_CODES: e.g. 400 `invalid_request`, 413 `payload_too_large` for
 * a body over MAX_REQUEST_BODY_BYTES). `code` is any string here, deliberately: a newer service may
 * have codes this CLI does not know (it treats them as `upstream_error`, keeping the message).
 */
export const errorBody = z.object({ code: z.string(), message: z.string(), hint: z.string().optional(), details: z.array(errorDetail).optional() });
export type ErrorBody = z.infer<typeof errorBody>;

/** `GET /healthz`. */
export const healthResponse = z.object({ ok: z.literal(true) });

/** `GET /v1/login-config`: what `broker login` needs for the device flow with the IdP. */
export const loginConfigResponse = z.object({ issuer: z.string(), clientId: z.string(), scopes: z.string(), allowInsecureHttp: z.boolean() });
export type LoginConfig = z.infer<typeof loginConfigResponse>;

/**
 * The login a refresh token belongs to (a refresh-token family on the service): its id, how many
 * times its token has been rotated (`generation`: a client holding two copies keeps the higher), and
 * its fixed end, which no refresh extends.
 */
export const loginInfo = z.object({ id: nonEmpty, generation: count, expiresAt: timestamp });
export type LoginInfo = z.infer<typeof loginInfo>;

/**
 * `POST /v1/auth/token` (RFC 6749 §5.1 field names). `refresh_token` (and `login`) only when a DPoP
 * proof bound it to a key; `login` absent from services older than refresh-token rotation.
 */
export const authTokenResponse = z.object({
  access_token: nonEmpty, refresh_token: nonEmpty.optional(), token_type: z.literal('Bearer'), expires_in: z.number().int().positive(),
  developer: z.string(), groups: z.array(z.string()), login: loginInfo.optional(),
});

/**
 * `POST /v1/auth/refresh`: a new access token and the next refresh token; the one presented is
 * spent (RFC 9700 §4.14.2). `refresh_token` and `login` are absent from services older than
 * rotation (their refresh tokens were reusable).
 */
export const authRefreshResponse = z.object({
  access_token: nonEmpty, refresh_token: nonEmpty.optional(), token_type: z.literal('Bearer'), expires_in: z.number().int().positive(),
  developer: z.string(), login: loginInfo.optional(),
});

/** `POST /v1/auth/logout`: the login is revoked (`revoked` false: it already was). */
export const logoutResponse = z.object({ revoked: z.boolean(), login: z.object({ id: nonEmpty, expiresAt: timestamp }) });

/** `GET /v1/whoami`: the developer as the service sees them (identity/principal.ts). */
export const whoamiResponse = z.object({ id: z.string(), email: z.string(), groups: z.array(z.string()) });
export type Whoami = z.infer<typeof whoamiResponse>;

/** One template the developer may start, as `broker templates` shows it. */
export const templateSummary = z.object({
  name: z.string(),
  description: z.string(),
  region: z.string().nullable(),
  /** What a session of it grants; absent from services older than Vault support (AWS only). */
  grants: z.array(z.enum(['aws', 'vault'])).optional(),
  parameters: z.record(z.string(), z.object({ description: z.string(), pattern: z.string(), maxLength: z.number().int() })),
  maxSessionSeconds: z.number().int(),
  credentialLifetimeSeconds: z.number().int(),
  /** The version in force, which a session started now records; absent from services older than template reloads. */
  version: z.string().optional(),
});
export type TemplateSummary = z.infer<typeof templateSummary>;
/** `GET /v1/templates`. */
export const templatesResponse = z.object({ templates: z.array(templateSummary) });

/** A task session (never a secret in it). */
export const sessionView = z.object({
  id: z.string(),
  template: z.string(),
  /**
   * The version of the template the session started under and keeps until it ends (a content hash,
   * docs/templates.md "Versions"); null for sessions started before versions were recorded. Absent
   * from services older than template reloads.
   */
  templateVersion: z.string().nullable().optional(),
  params: z.record(z.string(), z.string()),
  reason: z.string(),
  agent: z.string(),
  roleSessionName: z.string(),
  /** The template's AWS region, or null when it grants no AWS credentials. */
  region: z.string().nullable(),
  /**
   * Where the session's Vault tokens are valid (for renewal), or null when it grants none. Absent
   * from services older than Vault support.
   */
  vault: z.object({ address: z.string(), namespace: z.string().nullable(), policies: z.array(z.string()) }).nullable().optional(),
  createdAt: timestamp,
  expiresAt: timestamp,
});
export type SessionView = z.infer<typeof sessionView>;
/** `GET /v1/sessions`: the developer's active sessions. */
export const sessionsResponse = z.object({ sessions: z.array(sessionView) });

/**
 * AWS credentials as the credential_process document (AWS SDKs and Tools Reference Guide, "Process
 * credential provider": `Version` 1, the three keys, `Expiration` so clients refresh; botocore also
 * reads `AccountId`). The service sends them in this form and the daemon hands them on as they are.
 */
export const processCredentials = z.object({
  Version: z.literal(1),
  AccessKeyId: nonEmpty,
  SecretAccessKey: nonEmpty,
  SessionToken: nonEmpty,
  Expiration: timestamp,
  AccountId: z.string().optional(),
});
export type ProcessCredentials = z.infer<typeof processCredentials>;

/**
 * The `vault` object of `POST /v1/sessions` (when the template grants a Vault token) and of
 * `POST /v1/sessions/:id/vault-token`. `token` is a secret: kept in memory; renewed in place
 * (client/vault-renew.ts), a fresh one asked for when that fails.
 */
export const vaultTokenGrant = z.object({
  token: nonEmpty,
  /** Identifies the token in Vault's audit log and the broker's; safe to log. */
  accessor: nonEmpty,
  /** As Vault granted them (`token_policies`). */
  policies: z.array(z.string()),
  ttlSeconds: count,
  /** When the token expires unless renewed. */
  expiresAt: timestamp,
  /** Its explicit max TTL, never after the session's end. */
  maxExpiresAt: timestamp,
  renewable: z.boolean(),
  /** 0: unlimited; every request with the token (renewal included) uses one. */
  numUses: count,
  address: z.string(),
  namespace: z.string().optional(),
});
export type VaultTokenGrant = z.infer<typeof vaultTokenGrant>;

/** `POST /v1/sessions` (201): the session and what its template grants. */
export const startSessionResponse = z.object({ session: sessionView, credentials: processCredentials.optional(), vault: vaultTokenGrant.optional() });
export type StartSessionResponse = z.infer<typeof startSessionResponse>;

/** `POST /v1/sessions/:id/credentials`: fresh AWS credentials under an active session. */
export const reissueCredentialsResponse = z.object({ session: sessionView, credentials: processCredentials });
export type ReissueCredentialsResponse = z.infer<typeof reissueCredentialsResponse>;

/** `POST /v1/sessions/:id/vault-token`: a fresh Vault token under an active session. */
export const vaultTokenResponse = z.object({ session: sessionView, vault: vaultTokenGrant });
export type VaultTokenResponse = z.infer<typeof vaultTokenResponse>;

/** `PATCH /v1/sessions/:id`. */
export const updateSessionResponse = z.object({ session: sessionView });

/** What became of one Vault token of an ended session. */
export const revocationResult = z.object({
  accessor: z.string(),
  revoked: z.boolean(),
  /** Why it failed (Vault's message; no secret). The service retries. */
  error: z.string().optional(),
  /** Not revoked, and no longer retried: the token is past the latest Vault can keep it alive. */
  lapsed: z.literal(true).optional(),
});

/** `DELETE /v1/sessions/:id`: the ended session; `vaultTokens` absent from services older than Vault support. */
/**
 * `awsRevocation`: whether the session's issued AWS credentials are being denied in its role's
 * policy (`scheduled`: recorded, written in the background; docs/revocation.md).
 */
export const endSessionResponse = z.object({
  ended: sessionView, vaultTokens: z.array(revocationResult).optional(),
  awsRevocation: z.enum(['scheduled', 'off', 'failed']).optional(),
});
export type EndSessionResponse = z.infer<typeof endSessionResponse>;

// ---- start requests (human confirmation of a task start) ---------------------------------------

/** What confirms a start: the requester's fresh IdP login (`self`), that and approvers, or nothing. */
export const confirmMode = z.enum(['none', 'self', 'approvers']);
export type ConfirmMode = z.infer<typeof confirmMode>;

/** One human decision on a request, as recorded (never a token). */
export const requestDecisionView = z.object({
  by: z.string(),
  decision: z.enum(['confirm', 'approve', 'deny']),
  reason: z.string(),
  /** When the person logged in at the IdP for it (`auth_time`). */
  authTime: timestamp,
  at: timestamp,
  via: z.enum(['page', 'device']),
});

/**
 * A start request: a task start waiting for humans. `status` pending → started (its session is
 * `sessionId`), or denied, expired, cancelled. `url` is the page where it is confirmed or approved.
 */
export const startRequestView = z.object({
  id: z.string(),
  status: z.enum(['pending', 'confirmed', 'started', 'denied', 'expired', 'cancelled']),
  requester: z.string(),
  template: z.string(),
  params: z.record(z.string(), z.string()),
  reason: z.string(),
  agent: z.string(),
  /** The session length asked for, in seconds (null: the template's maximum). */
  ttlSeconds: z.number().int().positive().nullable(),
  breakGlass: z.boolean(),
  confirm: z.object({
    mode: confirmMode,
    /** Seconds since the IdP login a decision may be (0: a login for this decision). */
    maxAgeSeconds: count,
    /** Approvals needed from people other than the requester (0 for `self`). */
    approvals: count,
  }),
  /** What is still missing, for people: e.g. "your confirmation", "1 more approval (group sre)". */
  waitingFor: z.array(z.string()),
  decisions: z.array(requestDecisionView),
  createdAt: timestamp,
  expiresAt: timestamp,
  /** The session it started, once `started`. */
  sessionId: z.string().nullable(),
  url: z.string(),
});
export type StartRequestView = z.infer<typeof startRequestView>;

/**
 * `POST /v1/sessions` for a template that needs a human: 401 with `WWW-Authenticate: Bearer
 * error="insufficient_user_authentication", max_age=N` (RFC 9470 §3) for `self`, 202 for
 * `approvers`; the body is the error body with code `confirmation_required` and the new request.
 */
export const confirmationRequiredBody = errorBody.extend({ code: z.literal('confirmation_required'), request: startRequestView });
export type ConfirmationRequiredBody = z.infer<typeof confirmationRequiredBody>;

/** `GET /v1/requests/:id`, `DELETE /v1/requests/:id` (cancel, the requester). */
export const startRequestResponse = z.object({ request: startRequestView });
/** `GET /v1/requests?for=me|approver`: the caller's own pending requests, or those they may approve. */
export const startRequestsResponse = z.object({ requests: z.array(startRequestView) });

/**
 * `POST /v1/requests/:id/confirmations` (201): the device authorization to finish at the IdP
 * (RFC 8628 §3.2 field names); poll `GET /v1/requests/:id/confirmations/:confirmation` every
 * `interval` seconds.
 */
export const deviceConfirmationResponse = z.object({
  confirmation: z.object({
    id: z.string(),
    user_code: z.string(),
    verification_uri: z.string(),
    verification_uri_complete: z.string().optional(),
    expires_in: z.number().int().positive(),
    interval: z.number().int().positive(),
  }),
  request: startRequestView,
});

/** `GET /v1/requests/:id/confirmations/:confirmation`: pending until the IdP login is done; then the request as it now stands. */
export const confirmationStatusResponse = z.object({
  status: z.enum(['pending', 'done', 'denied', 'expired']),
  request: startRequestView,
});

/** A response body as the service builds it: what the client's schema accepts. */
export type Body<S extends z.ZodType> = z.input<S>;

// ---- the developer's session state (the daemon's periodic check) -----------------------------

/**
 * `GET /v1/sessions/:id`: where one of the caller's sessions stands, ended or not. The daemon asks
 * at least once a minute while it holds credentials for it, and drops them when it is no longer
 * `active` or is `frozen` (README, "Admin's guide").
 */
export const sessionStateResponse = z.object({
  session: sessionView,
  state: z.enum(['active', 'ended', 'expired']),
  endedAt: timestamp.nullable(),
  endReason: z.string().nullable(),
  /** Ended by an administrator (`endReason` is the administrator's reason). */
  endedByAdmin: z.boolean(),
  /** A freeze covering the session's template: nothing is issued under it meanwhile. */
  frozen: z.object({ scope: z.string(), reason: z.string() }).nullable(),
});
export type SessionStateResponse = z.infer<typeof sessionStateResponse>;

// ---- the control plane (`/v1/admin/*`, `broker admin …`) ---------------------------------------

/** Every admin action says why: the reason is audited with the admin's identity. */
export const adminReason = printable(MAX_REASON_CHARS).refine((s) => s.trim().length > 0, 'must say why (the reason is audited with your identity)');
const templateName = z.string().regex(TEMPLATE_NAME_RE, `must be a template name (${TEMPLATE_NAME_RULE})`);
/** A developer as the service knows them: the identity claim (the email by default). */
const developerId = z.string().min(1).max(320).regex(/^[^\p{Cc}\s]+$/u, 'must be a developer identity (e.g. an email), without spaces');
/** Session ids: `ts_` and random characters (templates/render.ts newSessionId); bounded here. */
const sessionId = z.string().min(1).max(100).regex(/^[A-Za-z0-9_-]+$/, 'must be a task session id');

/** `POST /v1/admin/sessions/end`: end sessions by id, or every active one of a developer or of a template. */
export const adminEndRequest = z.strictObject({
  sessions: z.array(sessionId).min(1).max(500).optional(),
  developer: developerId.optional(),
  template: templateName.optional(),
  reason: adminReason,
}).refine((b) => [b.sessions, b.developer, b.template].filter((x) => x !== undefined).length === 1, {
  message: 'give exactly one of sessions, developer, template', path: ['sessions'],
});

/** `POST /v1/admin/offboard`: end everything a developer holds. */
export const adminOffboardRequest = z.strictObject({ developer: developerId, reason: adminReason });

const freezeScope = {
  template: templateName.optional(),
  all: z.literal(true).optional(),
};
const oneScope = <T extends { template?: string | undefined; all?: true | undefined }>(b: T) => (b.template === undefined) !== (b.all === undefined);
const scopeMessage = { message: 'give exactly one of template, all', path: ['template'] };

/** `POST /v1/admin/freeze`: refuse starts and re-issues of a template (or all); `revoke` also ends what is out there. */
export const adminFreezeRequest = z.strictObject({ ...freezeScope, reason: adminReason, revoke: z.boolean().default(false) }).refine(oneScope, scopeMessage);
/** `POST /v1/admin/unfreeze`. */
export const adminUnfreezeRequest = z.strictObject({ ...freezeScope, reason: adminReason }).refine(oneScope, scopeMessage);

/** `POST /v1/admin/reload`: read policiesDir again now (as the directory watch and SIGHUP do). */
export const adminReloadRequest = z.strictObject({ reason: adminReason });

/** A session as an admin sees it: whose, where it stands, who confirmed it, and what was issued under it (never a secret). */
export const adminSessionView = sessionView.extend({
  developer: z.string(),
  state: z.enum(['active', 'ended', 'expired']),
  endedAt: timestamp.nullable(),
  endReason: z.string().nullable(),
  /** The administrator who ended it, if one did. */
  endedBy: z.string().nullable(),
  /** Seconds until its end (0 once ended or expired). */
  timeLeftSeconds: count,
  /** The start request humans confirmed for it (null: a template that needs no confirmation). */
  startRequest: z.object({ id: z.string(), confirmedBy: z.array(z.string()), approvedBy: z.array(z.string()), breakGlass: z.boolean() }).nullable(),
  /** AWS credentials issued under it, by AccessKeyId (the key CloudTrail names). */
  credentials: z.array(z.object({ accessKeyId: z.string(), expiration: z.string().nullable(), issuedAt: timestamp })),
  /** Its Vault tokens, by accessor. */
  vaultTokens: z.array(z.object({ accessor: z.string(), revoked: z.boolean() })),
});
export type AdminSessionView = z.infer<typeof adminSessionView>;

/** `GET /v1/admin/sessions?developer=&template=&agent=&active=1&since=24h`. */
export const adminSessionsResponse = z.object({ sessions: z.array(adminSessionView) });

/** One audit record as an admin reads it. */
export const auditRecordView = z.object({
  seq: count, at: timestamp, event: z.string(), decision: z.string(),
  developer: z.string().optional(), template: z.string().optional(), sessionId: z.string().optional(), reason: z.string().optional(),
  accessKeyId: z.string().optional(), roleSessionName: z.string().optional(), expiration: z.string().optional(), vaultAccessor: z.string().optional(),
  detail: z.record(z.string(), z.unknown()).optional(),
});

/** `GET /v1/admin/sessions/:id`: one session and its whole history from the audit log. */
export const adminSessionResponse = z.object({ session: adminSessionView, history: z.array(auditRecordView) });

/**
 * What became of the STS credentials already issued to ended sessions: they cannot be recalled,
 * only denied by the role (README, "Admin's guide"). `not_configured`: this service has no
 * revocation, so they keep working until they expire.
 */
export const stsRevocationView = z.object({
  status: z.enum(['requested', 'not_configured', 'failed', 'nothing_issued']),
  message: z.string(),
});

export const adminEndedSession = z.object({ session: adminSessionView, vaultTokens: z.array(revocationResult) });

/** `POST /v1/admin/sessions/end`. `alreadyEnded`: sessions named that had ended before (nothing done to them). */
export const adminEndResponse = z.object({ ended: z.array(adminEndedSession), alreadyEnded: z.array(z.string()), stsRevocation: stsRevocationView });
export type AdminEndResponse = z.infer<typeof adminEndResponse>;

/** `POST /v1/admin/offboard`. */
export const adminOffboardResponse = adminEndResponse.extend({ developer: z.string(), loginsRevoked: count, requestsCancelled: z.array(z.string()) });
export type AdminOffboardResponse = z.infer<typeof adminOffboardResponse>;

export const freezeView = z.object({ scope: z.string(), reason: z.string(), by: z.string(), at: timestamp });
/** `POST /v1/admin/freeze`: the freeze in force, and with `revoke` what it ended. */
export const adminFreezeResponse = adminEndResponse.extend({ freeze: freezeView });
export type AdminFreezeResponse = z.infer<typeof adminFreezeResponse>;
/** `POST /v1/admin/unfreeze`. */
export const adminUnfreezeResponse = z.object({ unfrozen: z.object({ scope: z.string() }), freezes: z.array(freezeView) });
const versions = z.record(z.string(), z.string());
/**
 * `POST /v1/admin/reload`, answered 200 either way: `ok` false means the set in force did not
 * change, and `problems` say which file and field is wrong and how to fix it (templates/catalog.ts).
 */
export const adminReloadResponse = z.object({
  ok: z.boolean(),
  before: versions,
  after: versions,
  added: z.array(z.object({ name: z.string(), version: z.string() })),
  removed: z.array(z.object({ name: z.string(), version: z.string() })),
  changed: z.array(z.object({ name: z.string(), from: z.string(), to: z.string() })),
  problems: z.array(z.object({ file: z.string(), path: z.string(), message: z.string(), hint: z.string().optional() })),
});
export type AdminReloadResponse = z.infer<typeof adminReloadResponse>;
/** `GET /v1/admin/freezes`. */
export const adminFreezesResponse = z.object({ freezes: z.array(freezeView) });

/**
 * A revocation admins must know about (sessions/session-revocations.ts): a role under the role-wide
 * `aws:TokenIssueTime` fallback, or denies IAM has not accepted for a minute or more.
 */
export const revocationWarningView = z.object({ roleArn: z.string(), kind: z.enum(['fallback', 'not-applied']), message: z.string(), since: timestamp });

/**
 * An audit sink's delivery (README "Export to a SIEM"): the last `seq` it took, how many records
 * it has yet to take, and, while it is failing, why.
 */
export const auditSinkView = z.object({
  id: z.string(),
  type: z.enum(['jsonl', 'stdout', 'otlp']),
  deliveredSeq: count,
  backlog: count,
  lastError: z.string().optional(),
  lastDeliveredAt: timestamp.optional(),
});

/** `GET /v1/admin/status`: what is in force, and what needs an admin's attention. */
export const adminStatusResponse = z.object({
  templates: z.array(z.object({ name: z.string(), version: z.string() })),
  activeSessions: count,
  freezes: z.array(freezeView),
  revocationWarnings: z.array(revocationWarningView),
  /** Absent from a service older than audit sinks. */
  auditSinks: z.array(auditSinkView).default([]),
});
export type AdminStatusResponse = z.infer<typeof adminStatusResponse>;

// ---- the audit log, read by what an incident names (`GET /v1/admin/audit`, `broker audit …`) ----

/** The most items one page of `GET /v1/admin/audit` holds (our own bound). */
export const MAX_AUDIT_PAGE = 1000;
/** The most values one list filter takes (e.g. the AccessKeyIds of a CloudTrail file, asked in batches). */
export const MAX_AUDIT_FILTER_VALUES = 100;

/**
 * A query parameter given once, or repeated for "any of these" (`?accessKeyId=A&accessKeyId=B`);
 * always a list after parsing.
 */
const anyOf = <T extends z.ZodType<string>>(s: T) => z.preprocess((v) => (Array.isArray(v) ? v : [v]),
  z.array(s).min(1).max(MAX_AUDIT_FILTER_VALUES, `at most ${MAX_AUDIT_FILTER_VALUES} values`));
const flag = z.enum(['1', 'true'], { error: 'must be 1 or true' }).transform(() => true);
/** An instant: RFC 3339 UTC, or a duration before the service's now (`24h`, `7d`; parsed by the route). */
const instant = z.string().max(40).regex(/^(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z|(?:\d+[smhd]?)+)$/, 'must be an RFC 3339 UTC time (2026-12-04T10:00:00Z) or a duration before now (24h, 7d)');
/** AWS AccessKeyId: 16 to 128 word characters (STS API Reference, Credentials). */
const accessKeyIdParam = z.string().regex(/^\w{16,128}$/, 'must be an AWS AccessKeyId (16 to 128 letters and digits, e.g. ASIA…)');
/** RoleSessionName: 2 to 64 of [\w+=,.@-] (STS AssumeRole). */
const roleSessionNameParam = z.string().regex(/^[\w+=,.@-]{2,64}$/, 'must be a role session name (2 to 64 of letters, digits, +=,.@_-)');

/**
 * `GET /v1/admin/audit`: the query, every parameter checked (a 400 names the parameter). `view`
 * `chains` (default): one principal chain per task session matching; `records`: the raw records
 * matching (`denied` and `latest` imply it); `chain`: every record as stored, for `broker audit
 * verify --server` (no filter). Paging by `seq`: pass the answer's `next` as `after` until it is
 * null. Filters narrow together (AND); a repeated one matches any of its values.
 */
export const adminAuditQuery = z.strictObject({
  view: z.enum(['chains', 'records', 'chain'], { error: 'must be chains, records or chain' }).optional(),
  after: z.string().regex(/^\d{1,15}$/, 'must be a record seq (a whole number)').transform(Number).optional(),
  limit: z.string().regex(/^\d{1,4}$/, `must be a whole number from 1 to ${MAX_AUDIT_PAGE}`).transform(Number)
    .refine((n) => n >= 1 && n <= MAX_AUDIT_PAGE, `must be a whole number from 1 to ${MAX_AUDIT_PAGE}`).optional(),
  accessKeyId: anyOf(accessKeyIdParam).optional(),
  roleSessionName: anyOf(roleSessionNameParam).optional(),
  session: anyOf(sessionId).optional(),
  developer: anyOf(developerId).optional(),
  agent: agentName.optional(),
  template: templateName.optional(),
  vaultAccessor: z.string().regex(/^[\w.-]{1,128}$/, 'must be a Vault token accessor').optional(),
  since: instant.optional(),
  until: instant.optional(),
  /** Only refusals (records with decision `denied`). */
  denied: flag.optional(),
  /** The last `limit` records (with `view=records`, no `after`): where `broker audit tail` starts. */
  latest: flag.optional(),
}).superRefine((q, ctx) => {
  if (q.view === 'chain') {
    // The chain is verified whole: a filtered part of it proves nothing.
    for (const k of Object.keys(q)) if (!['view', 'after', 'limit'].includes(k)) ctx.addIssue({ code: 'custom', path: [k], message: 'not with view=chain: the chain is the whole log (page it with after and limit)' });
    return;
  }
  const records = q.view === 'records' || q.denied === true || q.latest === true;
  if (q.view === 'chains' && (q.denied || q.latest)) ctx.addIssue({ code: 'custom', path: [q.denied ? 'denied' : 'latest'], message: 'lists records: leave out view=chains' });
  if (records && q.agent !== undefined) ctx.addIssue({ code: 'custom', path: ['agent'], message: 'selects sessions: not with view=records, denied or latest' });
  if (q.latest && q.after !== undefined) ctx.addIssue({ code: 'custom', path: ['latest'], message: 'give latest or after, not both' });
});
export type AdminAuditQuery = z.output<typeof adminAuditQuery>;

/** The problems of a query, each at its parameter's name (`limit`; `accessKeyId` for any of its values), for a 400. */
export function queryIssueDetails(error: z.ZodError): ErrorDetail[] {
  return error.issues.flatMap((i) => i.code === 'unrecognized_keys'
    ? i.keys.map((k) => ({ path: k, message: 'unknown parameter' }))
    : [{ path: String(i.path[0] ?? ''), message: typeof i.path[1] === 'number' && i.path[1] > 0 ? `value ${i.path[1] + 1}: ${i.message}` : i.message }]);
}

/**
 * The principal chain behind a task session, from its audit records alone (never a secret): the
 * human (the developer, who is the AWS SourceIdentity of every credential), the agent, the template
 * and version, parameters and reason, who confirmed or approved the start, every credential issued
 * (the AccessKeyId CloudTrail names), every Vault token (its accessor, which Vault's audit log
 * names), and how it ended and by whom. Built by broker/audit/principal-chain.ts.
 */
export const principalChainView = z.object({
  sessionId: z.string(),
  /** The seq of its `session.start` record: the paging cursor of chains. */
  startSeq: count,
  developer: z.string(),
  /** The SourceIdentity its AWS credentials carry (the developer); null when it granted none. */
  sourceIdentity: z.string().nullable(),
  /** The agent it started for. */
  agent: z.string(),
  /** Later changes of agent (`broker exec` names it), oldest first. */
  agentChanges: z.array(z.object({ at: timestamp, agent: z.string(), previous: z.string().nullable() })),
  template: z.string(),
  templateVersion: z.string().nullable(),
  params: z.record(z.string(), z.string()),
  reason: z.string(),
  roleSessionName: z.string().nullable(),
  startedAt: timestamp,
  /** When it was to end at the latest (start + its length). */
  endsAt: timestamp.nullable(),
  /** The start request humans decided on; null: the template needed no confirmation. */
  confirmation: z.object({ request: z.string(), confirmedBy: z.array(z.string()), approvedBy: z.array(z.string()), breakGlass: z.boolean() }).nullable(),
  credentials: z.array(z.object({
    accessKeyId: z.string(), issuedAt: timestamp, expiration: z.string().nullable(), reissue: z.boolean(), roleArn: z.string().nullable(),
  })),
  vaultTokens: z.array(z.object({
    accessor: z.string(), issuedAt: timestamp, expiration: z.string().nullable(),
    /** When the broker revoked it (null: not revoked, or not yet). */
    revokedAt: timestamp.nullable(),
  })),
  /** How it ended: `by` the administrator, the developer, or null (the service: expiry, a start that failed). */
  end: z.object({ at: timestamp, reason: z.string(), by: z.string().nullable(), byAdmin: z.boolean() }).nullable(),
  /** Denies of its AWS credentials on its role (docs/revocation.md): asked for, and when IAM took them. */
  revocations: z.array(z.object({
    roleArn: z.string().nullable(), requestedAt: timestamp, requestedBy: z.string().nullable(), reason: z.string(), appliedAt: z.string().nullable(),
  })),
});
export type PrincipalChainView = z.infer<typeof principalChainView>;

/**
 * One record exactly as the store holds it, for `broker audit verify --server` to recompute the chain
 * itself (broker/store/audit-chain.ts): every hashed field, null where the store has none (null and
 * "" hash differently), `detail` as the stored JSON text, the stored `prevHash`, `hash` and
 * `hashVersion` (null: a store from before the column, read as 1). Nothing is checked but the types:
 * a record an attacker edited into nonsense must still reach the verifier, which names it.
 */
const storedText = z.string().nullable();
export const chainRecordView = z.object({
  seq: z.number().int(), at: z.string(), event: z.string(), decision: z.string(), developer: storedText, template: storedText, sessionId: storedText,
  reason: storedText, accessKeyId: storedText, roleSessionName: storedText, expiration: storedText, detail: storedText, vaultAccessor: storedText,
  prevHash: z.string(), hash: z.string(), hashVersion: z.number().int().nullable(),
});
export type ChainRecordView = z.infer<typeof chainRecordView>;

/** `GET /.well-known/audit-jwks.json`: the audit keys' public JWKs (checked as keys by the verifier). */
export const auditJwksResponse = z.object({ keys: z.array(z.record(z.string(), z.unknown())).max(100) });

/**
 * What the store says of itself, on the first page of `view=chain` only: the highest seq it ever
 * handed out (SQLite's sqlite_sequence; null when it keeps none) and its append-only triggers that
 * are missing or changed. The service's word: a client cannot check either.
 */
export const chainStoreView = z.object({ sequenceMax: count.nullable(), missingTriggers: z.array(z.string()) });

/**
 * `GET /v1/admin/audit`: `chains` (view chains) or `records` (view records); the other is empty.
 * With `view=chain`, both are empty and `chain` holds the records as stored (`store` on the first page).
 * `next`: pass it as `after` for the next page; null when this page was the last. A page of chains
 * may hold fewer than `limit` (sessions outside since/until are dropped after the page is read).
 */
export const adminAuditResponse = z.object({
  chains: z.array(principalChainView),
  records: z.array(auditRecordView),
  chain: z.array(chainRecordView).optional(),
  store: chainStoreView.optional(),
  next: count.nullable(),
});
export type AdminAuditResponse = z.infer<typeof adminAuditResponse>;
