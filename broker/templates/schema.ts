/**
 * The shape of a task template (`policies/<name>.yaml`): what zod checks at load. Limits that need
 * more than one field or AWS/Vault knowledge (durations, tags, policy size, IAM action names, Vault
 * policy names …) are in validate.ts. The field reference for admins is docs/templates.md.
 */
import { z } from 'zod';
import { durationSchema } from '../duration.js';
import { REGION_RE } from '../limits/aws.js';
import { MAX_PARAM_LENGTH, PARAM_NAME_RE, TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../limits/names.js';

const stringOrList = z.union([z.string(), z.array(z.string()).min(1)], {
  error: 'expected a string or a non-empty list of strings',
});
const conditionValue = z.union([z.string(), z.number(), z.boolean()], { error: 'condition values are strings, numbers or booleans' });

/** One statement of an IAM JSON policy (IAM User Guide, "IAM JSON policy element reference"). */
const statementSchema = z.strictObject({
  Sid: z.string().regex(/^[A-Za-z0-9]*$/, 'Sid must be letters and digits only').optional(),
  Effect: z.enum(['Allow', 'Deny'], { error: 'Effect must be "Allow" or "Deny"' }),
  Action: stringOrList.optional(),
  NotAction: stringOrList.optional(),
  Resource: stringOrList.optional(),
  NotResource: stringOrList.optional(),
  Condition: z.record(z.string(), z.record(z.string(), z.union([conditionValue, z.array(conditionValue)], { error: 'expected a value or a list of values (strings, numbers, booleans)' }))).optional(),
});

/** A session policy: no Principal (it is the session's own), like any identity policy. */
const policySchema = z.strictObject({
  Version: z.string(),
  Id: z.string().optional(),
  Statement: z.union([statementSchema, z.array(statementSchema).min(1)], {
    error: 'Statement must be a statement or a non-empty list of statements',
  }),
});

const parameterSchema = z.strictObject({
  description: z.string().max(256).optional(),
  pattern: z.string().min(1).max(1024),
  maxLength: z.number().int().min(1).max(MAX_PARAM_LENGTH, `must be at most ${MAX_PARAM_LENGTH}: the broker's bound on a parameter value`),
  // Lets the pattern accept IAM wildcards and policy-variable syntax, so a developer can widen the
  // grant on purpose (validate.ts, probeParameter). Off unless the admin writes it.
  allowWildcards: z.boolean().default(false),
});

const awsSchema = z.strictObject({
  roleArn: z.string(),
  region: z.string().regex(REGION_RE, 'must be an AWS region such as eu-west-1'),
  policy: policySchema,
  managedPolicyArns: z.array(z.string()).default([]),
  tags: z.record(z.string(), z.string()).default({}),
  transitiveTagKeys: z.array(z.string()).default([]),
  allowBroadWildcard: z.boolean().default(false),
  // How the broker gets the credentials (README, "A broker without AWS keys"); absent: the
  // service's aws.via.
  via: z.enum(['assume-role', 'web-identity'], { error: 'must be assume-role or web-identity' }).optional(),
  // A developer's own `broker end` also denies the session's issued credentials in the role's
  // policy (docs/revocation.md); an admin's end always does.
  revokeOnEnd: z.boolean().default(true),
});

/**
 * A Vault/OpenBao token per task session (`auth/token/create/:role_name`). Names and bounds are
 * checked in validate.ts; the reference is docs/vault.md.
 */
const vaultSchema = z.strictObject({
  policies: z.array(z.string()).min(1, 'list at least one Vault policy: a token with only "default" grants nothing'),
  ttl: durationSchema.optional(),
  explicitMaxTtl: durationSchema.optional(),
  numUses: z.number().int().min(0, 'must be 0 (unlimited) or more').default(0),
  tokenRole: z.string().optional(),
  metadata: z.record(z.string(), z.string()).default({}),
  renewable: z.boolean().default(true),
  noDefaultPolicy: z.boolean().default(false),
});

/**
 * Who confirms a start of the template (docs/templates.md, "confirm"): the requester's fresh IdP
 * login (`self`), that and approvers (`approvers`), or nobody (`none`). Absent fields take the
 * service's `confirm` defaults; cross-field rules are in validate.ts.
 */
const confirmSchema = z.strictObject({
  mode: z.enum(['none', 'self', 'approvers'], { error: 'mode must be none, self or approvers' }).optional(),
  maxAge: durationSchema.optional(),
  timeout: durationSchema.optional(),
  approvers: z.strictObject({
    groups: z.array(z.string().min(1)).default([]),
    emails: z.array(z.string().regex(/^[^@\s]+@[^@\s]+$/, 'must be an email address')).default([]),
  }).optional(),
  approvals: z.number().int().optional(),
  breakGlass: z.boolean().default(false),
});

/**
 * Limits an admin sets per template (docs/templates.md, "Limits"), beside the service's
 * per-developer `limits.maxActiveSessions`. Counted in the store, so every service process sharing
 * it counts the same sessions. Each absent: no such limit.
 */
const limitsSchema = z.strictObject({
  /** Open sessions of the template, all developers together (409 when reached). */
  concurrentSessions: z.number().int().min(1, 'must be at least 1 (to stop starts, remove the template)').optional(),
  /** Starts of the template in the last 24 hours, all developers together (429 when reached). */
  startsPerDay: z.number().int().min(1, 'must be at least 1 (to stop starts, remove the template)').optional(),
  /** Starts of the template in the last 24 hours by one developer (429 when reached). */
  startsPerDeveloperPerDay: z.number().int().min(1, 'must be at least 1 (to stop starts, remove the template)').optional(),
});

export const templateSchema = z.strictObject({
  name: z.string().regex(TEMPLATE_NAME_RE, `must be a template name (${TEMPLATE_NAME_RULE})`),
  description: z.string().min(1).max(256),
  allowed: z.strictObject({
    groups: z.array(z.string().min(1)).default([]),
    emails: z.array(z.string().regex(/^[^@\s]+@[^@\s]+$/, 'must be an email address')).default([]),
  }),
  session: z.strictObject({
    maxDuration: durationSchema,
    credentialLifetime: durationSchema.optional(),
  }),
  parameters: z.record(z.string().regex(PARAM_NAME_RE), parameterSchema).default({}),
  // Each optional: a template grants AWS credentials, a Vault token, or both; validate.ts requires one.
  aws: awsSchema.optional(),
  vault: vaultSchema.optional(),
  confirm: confirmSchema.optional(),
  limits: limitsSchema.default({}),
});

export type RawTemplate = z.output<typeof templateSchema>;
export type RawVaultGrant = z.output<typeof vaultSchema>;
export type PolicyDocument = z.output<typeof policySchema>;
export type PolicyStatement = z.output<typeof statementSchema>;

export interface TemplateParameter {
  name: string;
  description: string | undefined;
  /** As written by the admin. */
  pattern: string;
  /** `^(?:pattern)$`: a value must match as a whole. */
  regex: RegExp;
  maxLength: number;
  /** The pattern may accept `*`, `?` and `${`…`}`: a value may widen the grant, on purpose. */
  allowWildcards: boolean;
}

export interface AwsGrant {
  roleArn: string;
  region: string;
  /** With `${developer}`, `${session}`, `${param.NAME}` placeholders still in its string values. */
  policy: PolicyDocument;
  managedPolicyArns: string[];
  tags: Record<string, string>;
  transitiveTagKeys: string[];
  allowBroadWildcard: boolean;
  /** `broker end` adds the session to the role's deny policy (sessions/session-revocations.ts). */
  revokeOnEnd: boolean;
  /** AssumeRole with the broker's AWS credentials, or AssumeRoleWithWebIdentity with its own token; undefined: the service's aws.via. */
  via?: 'assume-role' | 'web-identity' | undefined;
}

export interface VaultGrant {
  /** Vault policy names, as listed (Vault adds `default` unless noDefaultPolicy). */
  policies: string[];
  ttlSeconds: number;
  /** The longest a token may live; every token is further capped by the time left in its session. */
  explicitMaxTtlSeconds: number;
  /** 0: unlimited. */
  numUses: number;
  /** Overrides the service's `vault.tokenRole`. */
  tokenRole: string | undefined;
  /** Extra token metadata, after the broker's own developer/task/session/agent. */
  metadata: Record<string, string>;
  renewable: boolean;
  noDefaultPolicy: boolean;
}

/** A template after load and validation: durations in seconds, patterns compiled, defaults applied. */
export interface TaskTemplate {
  name: string;
  description: string;
  /** Emails are lower-cased (compared case-insensitively); groups are exact IdP group names. */
  allowed: { groups: string[]; emails: string[] };
  maxSessionSeconds: number;
  credentialLifetimeSeconds: number;
  /** In declaration order; every declared parameter is required. */
  parameters: TemplateParameter[];
  aws?: AwsGrant | undefined;
  vault?: VaultGrant | undefined;
  /** Who confirms a start; `mode`, `maxAgeSeconds`, `timeoutSeconds` undefined: the service's `confirm` defaults. */
  confirm: TemplateConfirm;
  /** Per-template limits; an absent one is no limit. */
  limits: TemplateLimits;
  /**
   * A content hash of the parsed template (templates/version.ts): equal for files that differ only in
   * layout, comments, key order or defaults written out. A session records the version it started under.
   */
  version: string;
  /** The file it was loaded from. */
  file: string;
}

export interface TemplateLimits {
  concurrentSessions?: number | undefined;
  startsPerDay?: number | undefined;
  startsPerDeveloperPerDay?: number | undefined;
}

export interface TemplateConfirm {
  mode: 'none' | 'self' | 'approvers' | undefined;
  maxAgeSeconds: number | undefined;
  timeoutSeconds: number | undefined;
  /** Emails lower-cased; empty unless mode approvers. */
  approvers: { groups: string[]; emails: string[] };
  /** Distinct approvers needed (never the requester); 0 unless mode approvers. */
  approvals: number;
  breakGlass: boolean;
}

/** The template's confirm rule with the service's defaults filled in. */
export interface ConfirmRule {
  mode: 'none' | 'self' | 'approvers';
  maxAgeSeconds: number;
  timeoutSeconds: number;
  approvers: { groups: string[]; emails: string[] };
  approvals: number;
  breakGlass: boolean;
}

export interface ConfirmDefaults { mode: 'none' | 'self' | 'approvers'; maxAgeSeconds: number; timeoutSeconds: number }

export function confirmRule(t: TaskTemplate, d: ConfirmDefaults): ConfirmRule {
  const c = t.confirm;
  // A service default of `approvers` has no approvers list to use: such templates need their own.
  const mode = c.mode ?? (d.mode === 'approvers' && c.approvers.groups.length + c.approvers.emails.length === 0 ? 'self' : d.mode);
  return {
    mode, maxAgeSeconds: c.maxAgeSeconds ?? d.maxAgeSeconds, timeoutSeconds: c.timeoutSeconds ?? d.timeoutSeconds,
    approvers: c.approvers, approvals: mode === 'approvers' ? Math.max(1, c.approvals) : 0, breakGlass: mode === 'approvers' && c.breakGlass,
  };
}

/** Default credential lifetime: STS's own AssumeRole default (3600 s), capped by maxDuration. */
export const DEFAULT_CREDENTIAL_LIFETIME_SECONDS = 3600;
