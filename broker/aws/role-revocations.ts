/**
 * The role's deny document for revoked task sessions, and the thin IAM client that writes it.
 *
 * STS credentials cannot be recalled; what AWS offers is a Deny in the role's own policy, evaluated
 * on every request the credentials make (IAM User Guide, "Disabling permissions for temporary
 * security credentials"). Every credential the broker issues carries the session tag
 * `broker:session` and the developer as SourceIdentity (templates/render.ts), which AWS exposes as
 * `aws:PrincipalTag/broker:session` and `aws:SourceIdentity` (IAM User Guide, "AWS global condition
 * context keys"), so one inline policy can deny exactly the revoked sessions. Tag keys may contain
 * `:` (STS `Tag.Key`: `[\p{L}\p{Z}\p{N}_.:/=+\-@]+`), and the condition key is `aws:PrincipalTag/`
 * followed by the key as written.
 */
import { DeleteRolePolicyCommand, GetRolePolicyCommand, PutRolePolicyCommand, type IAMClient } from '@aws-sdk/client-iam';
import { BrokerError } from '../errors.js';
import { MAX_ROLE_INLINE_POLICY_CHARS } from '../limits/aws.js';
import type { RoleDeny, RoleDenyPolicies, RoleDenyWrite } from '../sessions/session-revocations.js';
import { BROKER_TAG_SESSION } from '../templates/render.js';
import { sendBounded } from './clients.js';
import { parsePolicyDocument } from './trust-check.js';

/** The inline role policy the broker owns; nothing else on the role is read or changed. */
export const REVOCATION_POLICY_NAME = 'broker-revoked-sessions';

export const SESSION_CONDITION_KEY = `aws:PrincipalTag/${BROKER_TAG_SESSION}`;

/** Per IAM call, the SDK's retries included; the writer retries with its own back-off after that. */
const IAM_TIMEOUT_MS = 15_000;

interface Statement {
  Sid: string;
  Effect: 'Deny';
  Action: '*';
  Resource: '*';
  Condition: Record<string, Record<string, string | string[]>>;
}

function denyAll(sid: string, condition: Statement['Condition']): Statement {
  return { Sid: sid, Effect: 'Deny', Action: '*', Resource: '*', Condition: condition };
}

/**
 * The document for a role's revocations, or null when there is nothing to deny. Deterministic
 * (sorted, de-duplicated), so the same revocations always give the same document.
 *
 * `issuedBefore` is the role-wide fallback: the statement IAM's own "Revoke active sessions" writes
 * (policy `AWSRevokeOlderSessions`: Deny `*` on `*` with `DateLessThan` `aws:TokenIssueTime`; IAM
 * User Guide, "Revoke IAM role temporary security credentials",
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_revoke-sessions.html).
 */
export function revocationDocument(deny: RoleDeny): Record<string, unknown> | null {
  const statements: Statement[] = [];
  const sorted = (xs: string[]) => [...new Set(xs)].sort();
  if (deny.sessionIds.length) statements.push(denyAll('BrokerRevokedSessions', { StringEquals: { [SESSION_CONDITION_KEY]: sorted(deny.sessionIds) } }));
  if (deny.sourceIdentities.length) statements.push(denyAll('BrokerRevokedDevelopers', { StringEquals: { 'aws:SourceIdentity': sorted(deny.sourceIdentities) } }));
  if (deny.issuedBefore !== undefined) {
    statements.push(denyAll('BrokerRevokeOlderSessions', { DateLessThan: { 'aws:TokenIssueTime': isoSeconds(deny.issuedBefore) } }));
  }
  return statements.length ? { Version: '2012-10-17', Statement: statements } : null;
}

/** `2026-12-03T08:40:01Z`: the form the IAM console writes (whole seconds, UTC). */
function isoSeconds(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** What IAM counts against the inline role policy quota: the characters, whitespace excluded. */
export function policyChars(document: string): number {
  return document.replace(/\s/g, '').length;
}

function awsFailure(what: string, e: unknown): BrokerError {
  const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  if (err.name === 'TimeoutError' || err.name === 'AbortError') {
    return new BrokerError('upstream_unavailable', `IAM ${what}: no answer within ${IAM_TIMEOUT_MS / 1000}s`, { cause: e, hint: 'check aws.iamEndpoint / network' });
  }
  if (err.$metadata?.httpStatusCode === undefined) {
    return new BrokerError('upstream_unavailable', `IAM ${what}: unreachable: ${err.message ?? String(e)}`, { cause: e, hint: 'check aws.iamEndpoint / network' });
  }
  const hint = /AccessDenied/.test(err.name ?? '')
    ? `the broker needs iam:GetRolePolicy, iam:PutRolePolicy and iam:DeleteRolePolicy on the role (deploy/iam/broker-revocation-policy.json); run: broker policy check --aws`
    : /NoSuchEntity/.test(err.name ?? '') ? 'the role does not exist (yet); the broker retries' : 'the broker retries with back-off';
  return new BrokerError('upstream_error', `IAM ${what} failed: ${err.name ?? 'Error'}: ${err.message ?? ''}`.trim(), { cause: e, hint });
}

const isNoSuchEntity = (e: unknown) => /^NoSuchEntity/.test((e as { name?: string }).name ?? '');

function roleNameOf(roleArn: string): string {
  return roleArn.slice(roleArn.lastIndexOf('/') + 1);
}

/** Writes and reads the role's `broker-revoked-sessions` policy with the broker's own AWS credentials. */
export class IamRoleDenyPolicies implements RoleDenyPolicies {
  constructor(private readonly iam: IAMClient, private readonly limitChars = MAX_ROLE_INLINE_POLICY_CHARS) {}

  async apply(roleArn: string, deny: RoleDeny): Promise<RoleDenyWrite> {
    const doc = revocationDocument(deny);
    const RoleName = roleNameOf(roleArn);
    if (!doc) {
      try {
        await this.send('DeleteRolePolicy', (o) => this.iam.send(new DeleteRolePolicyCommand({ RoleName, PolicyName: REVOCATION_POLICY_NAME }), o));
      } catch (e) {
        // Already gone is the state wanted; a missing role has no policy to remove either.
        if (!isNoSuchEntity((e as { cause?: unknown }).cause)) throw e;
      }
      return { outcome: 'deleted', chars: 0 };
    }
    const text = JSON.stringify(doc);
    const chars = policyChars(text);
    // Checked before writing: IAM refuses a larger one (LimitExceeded), and moto does not check.
    // The quota covers all of the role's inline policies together; others are not read here, so
    // IAM's own LimitExceeded is also taken as "too large" below.
    if (chars > this.limitChars) return { outcome: 'too-large', chars };
    try {
      await this.send('PutRolePolicy', (o) => this.iam.send(new PutRolePolicyCommand({ RoleName, PolicyName: REVOCATION_POLICY_NAME, PolicyDocument: text }), o));
    } catch (e) {
      if (/^LimitExceeded/.test(((e as { cause?: { name?: string } }).cause)?.name ?? '')) return { outcome: 'too-large', chars };
      throw e;
    }
    return { outcome: 'written', chars };
  }

  /** The stored document (parsed), or null when the role has none. */
  async read(roleArn: string): Promise<unknown> {
    try {
      const out = await this.send('GetRolePolicy', (o) => this.iam.send(new GetRolePolicyCommand({ RoleName: roleNameOf(roleArn), PolicyName: REVOCATION_POLICY_NAME }), o));
      return out.PolicyDocument ? parsePolicyDocument(out.PolicyDocument) : null;
    } catch (e) {
      if (isNoSuchEntity((e as { cause?: unknown }).cause)) return null;
      throw e;
    }
  }

  private async send<T>(what: string, fn: (o: { abortSignal: AbortSignal }) => Promise<T>): Promise<T> {
    try {
      return await sendBounded(fn, AbortSignal.timeout(IAM_TIMEOUT_MS));
    } catch (e) {
      throw awsFailure(what, e);
    }
  }
}
