/**
 * From a validated template and a task request to the exact STS AssumeRole input. Pure: no AWS call,
 * so the service and `broker policy explain` build the same request.
 */
import { randomBytes } from 'node:crypto';
import { BrokerError, type ErrorDetail } from '../errors.js';
import {
  MAX_DURATION_SECONDS, MAX_SESSION_POLICY_CHARS, MIN_DURATION_SECONDS, POLICY_CHARSET_RE, RESERVED_TAG_PREFIX,
  SOURCE_IDENTITY_RE, TAG_VALUE_RE,
} from '../limits/aws.js';
import { AGENT_NAME_RE, AGENT_NAME_RULE } from '../limits/names.js';
import { jsonPointer } from '../wire/json-pointer.js';
import type { PolicyDocument, TaskTemplate, TemplateParameter } from './schema.js';

export { isAllowed } from './access.js';

/** The session tags the broker sets on every AssumeRole; templates may not redefine them. */
export const BROKER_TAG_DEVELOPER = 'broker:developer';
export const BROKER_TAG_TASK = 'broker:task';
export const BROKER_TAG_SESSION = 'broker:session';
export const BROKER_TAG_AGENT = 'broker:agent';
export const BROKER_TAG_KEYS = [BROKER_TAG_DEVELOPER, BROKER_TAG_TASK, BROKER_TAG_SESSION, BROKER_TAG_AGENT] as const;

/** 10 chars of RFC 4648 base32 (lower case): 50 random bits, short enough for a RoleSessionName. */
export const SESSION_ID_LENGTH = 10;
export const SESSION_ID_RE = /^[a-z2-7]{10}$/;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

export function newSessionId(): string {
  // 256 is a multiple of 32, so `byte & 31` is uniform.
  return [...randomBytes(SESSION_ID_LENGTH)].map((b) => BASE32[b & 31]).join('');
}

/**
 * `${developer}`, `${session}`, `${param.NAME}`. Anything else of the form `${x:y}` (or `${*}`,
 * `${?}`, `${$}`) is an IAM policy variable such as `${aws:username}` and is left for IAM.
 */
export const PLACEHOLDER_RE = /\$\{([^}]*)\}/g;

export type Placeholder = { kind: 'developer' | 'session' | 'iam' } | { kind: 'param'; name: string } | { kind: 'unknown' };

export function classifyPlaceholder(inner: string): Placeholder {
  if (inner === 'developer' || inner === 'session') return { kind: inner };
  if (inner.startsWith('param.')) return { kind: 'param', name: inner.slice('param.'.length) };
  if (inner.includes(':') || inner === '*' || inner === '?' || inner === '$') return { kind: 'iam' };
  return { kind: 'unknown' };
}

export interface PolicyValues { developer: string; session: string; params: Record<string, string> }

/**
 * Substitutes placeholders inside the *string values* of the parsed document, then serialises it
 * minified. Values are never pasted into JSON text, so a `"` in a value stays inside its string.
 * One pass: a value that itself contains `${…}` is not expanded again.
 */
export function renderPolicy(policy: PolicyDocument, values: PolicyValues): string {
  const substitute = (s: string) => s.replace(PLACEHOLDER_RE, (whole, inner: string) => {
    const p = classifyPlaceholder(inner);
    if (p.kind === 'developer') return values.developer;
    if (p.kind === 'session') return values.session;
    if (p.kind === 'param' && Object.hasOwn(values.params, p.name)) return values.params[p.name]!;
    if (p.kind === 'iam') return whole;
    // validate.ts rejects these at load; reaching here is a programming error.
    throw new TypeError(`unresolved placeholder ${whole}`);
  });
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return substitute(v);
    if (Array.isArray(v)) return v.map(walk);
    if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)]));
    return v;
  };
  return JSON.stringify(walk(policy));
}

/** STS counts the plaintext of `Policy` and of the `PolicyArns` together (AssumeRole, 2,048 chars). */
export function sessionPolicyChars(policyJson: string, policyArns: readonly string[]): number {
  return policyArns.reduce((n, arn) => n + arn.length, policyJson.length);
}

const pointer = (name: string) => jsonPointer(['params', name]);

/**
 * Why one value of a parameter is refused, or undefined if it is accepted. Length first (so an
 * admin's regex never runs on long input), then the Policy charset (the value lands in the session
 * policy), then the pattern. The one check for task requests and for the probes `broker policy
 * validate` runs against every pattern at load (validate.ts).
 */
export function paramValueProblem(p: TemplateParameter, v: string): string | undefined {
  if (v.length > p.maxLength) return `is ${v.length} chars; at most ${p.maxLength} allowed`;
  if (!POLICY_CHARSET_RE.test(v)) return 'contains characters a session policy cannot hold (allowed: tab, newline, U+0020-U+00FF)';
  if (!p.regex.test(v)) return `does not match the pattern ${p.regex.source}`;
  return undefined;
}

/**
 * Checks a task request's parameters against the template: every declared parameter is required,
 * no others are accepted; each value goes through paramValueProblem.
 * Throws invalid_request listing every problem, by JSON pointer into the request body.
 */
export function validateParams(t: TaskTemplate, params: Record<string, string>): Record<string, string> {
  const details: ErrorDetail[] = [];
  const declared = new Map(t.parameters.map((p) => [p.name, p]));
  const takes = declared.size ? `${t.name} takes: ${[...declared.keys()].join(', ')}` : `${t.name} takes no parameters`;
  for (const key of Object.keys(params)) {
    if (!declared.has(key)) details.push({ path: pointer(key), message: `unknown parameter "${key}"`, hint: takes });
  }
  const out: Record<string, string> = {};
  for (const p of t.parameters) {
    const v: unknown = Object.hasOwn(params, p.name) ? params[p.name] : undefined;
    const hint = p.description ? `${p.name}: ${p.description}` : undefined;
    const problem = (message: string, h = hint) => details.push({ path: pointer(p.name), message, ...(h ? { hint: h } : {}) });
    if (v === undefined) problem('missing required parameter', `give it with --param ${p.name}=<value>${hint ? ` (${hint})` : ''}`);
    else if (typeof v !== 'string') problem('must be a string');
    else {
      const refused = paramValueProblem(p, v);
      if (refused) problem(refused);
      else out[p.name] = v;
    }
  }
  if (details.length) {
    throw new BrokerError('invalid_request', `invalid parameters for task template "${t.name}"`, { details });
  }
  return out;
}

/**
 * RoleSessionName: 2-64 chars of [\w+=,.@-] (STS AssumeRole); it shows in the assumed-role ARN and
 * in CloudTrail, so it reads `developer.task.sessionid`. Other characters become `-`; the developer
 * part is shortened to fit, the session id is always kept whole (it is what identifies the session).
 */
export function roleSessionName(developer: string, task: string, sessionId: string): string {
  const clean = (s: string) => s.replace(/[^\w+=,.@-]/g, '-');
  const id = clean(sessionId);
  if (id.length < 2 || id.length > 32) throw new TypeError(`session id must be 2-32 chars, got ${id.length}`);
  const taskPart = clean(task).slice(0, 40);
  const room = 64 - id.length - taskPart.length - 2;
  return [clean(developer).slice(0, room), taskPart, id].filter((s) => s !== '').join('.');
}

export interface AssumeRoleContext {
  /** The developer's identity: SourceIdentity, `broker:developer` tag and `${developer}`. */
  developer: string;
  sessionId: string;
  /** Which agent the task is for (`broker:agent` tag). */
  agent: string;
  params: Record<string, string>;
}

/**
 * The AssumeRole request, with STS's own parameter names (STS API Reference, AssumeRole), so it is
 * sent as built and `broker policy explain` shows exactly what AWS is asked.
 */
export interface AssumeRoleRequest {
  RoleArn: string;
  RoleSessionName: string;
  SourceIdentity: string;
  Tags: { Key: string; Value: string }[];
  TransitiveTagKeys?: string[];
  Policy: string;
  PolicyArns?: { arn: string }[];
  DurationSeconds: number;
}

function shown(s: string): string {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}

export function buildAssumeRoleRequest(t: TaskTemplate, ctx: AssumeRoleContext, durationSeconds: number): AssumeRoleRequest {
  const aws = t.aws;
  if (!aws) throw new BrokerError('invalid_request', `task template "${t.name}" grants no AWS credentials`);
  if (!Number.isFinite(durationSeconds)) throw new TypeError('durationSeconds must be a finite number');
  // SourceIdentity: 2-64 chars of [\w+=,.@-], not starting with aws: (STS AssumeRole). The same
  // value is the broker:developer tag, whose charset has no comma (STS Tag.Value).
  if (!SOURCE_IDENTITY_RE.test(ctx.developer) || RESERVED_TAG_PREFIX.test(ctx.developer) || !TAG_VALUE_RE.test(ctx.developer)) {
    throw new BrokerError('forbidden', `the identity ${shown(ctx.developer)} cannot be an AWS SourceIdentity`, {
      hint: 'STS needs 2-64 chars of letters, digits and _+=.@- not starting with aws:; an admin can map a shorter IdP claim as the identity',
    });
  }
  if (!AGENT_NAME_RE.test(ctx.agent)) {
    throw new BrokerError('invalid_request', 'invalid agent name', {
      details: [{ path: '/agent', message: `must be ${AGENT_NAME_RULE}`, hint: 'e.g. claude-code' }],
    });
  }
  if (!TAG_VALUE_RE.test(ctx.sessionId)) throw new TypeError('session id must fit the STS tag value charset');
  const params = validateParams(t, ctx.params);
  const policy = renderPolicy(aws.policy, { developer: ctx.developer, session: ctx.sessionId, params });
  const chars = sessionPolicyChars(policy, aws.managedPolicyArns);
  // validateParams keeps values in the Policy charset; the template's own text was checked at load.
  if (!POLICY_CHARSET_RE.test(policy)) throw new TypeError('rendered policy outside the STS Policy charset');
  if (chars > MAX_SESSION_POLICY_CHARS) {
    throw new BrokerError('invalid_request', `the session policy of "${t.name}" would be ${chars} chars with these parameters; STS allows ${MAX_SESSION_POLICY_CHARS}`, {
      hint: 'use shorter parameter values, or ask an admin to lower the parameters\' maxLength (broker policy validate checks the worst case)',
    });
  }
  return {
    RoleArn: aws.roleArn,
    RoleSessionName: roleSessionName(ctx.developer, t.name, ctx.sessionId),
    SourceIdentity: ctx.developer,
    Tags: [
      { Key: BROKER_TAG_DEVELOPER, Value: ctx.developer },
      { Key: BROKER_TAG_TASK, Value: t.name },
      { Key: BROKER_TAG_SESSION, Value: ctx.sessionId },
      { Key: BROKER_TAG_AGENT, Value: ctx.agent },
      ...Object.entries(aws.tags).map(([Key, Value]) => ({ Key, Value })),
    ],
    ...(aws.transitiveTagKeys.length ? { TransitiveTagKeys: [...aws.transitiveTagKeys] } : {}),
    Policy: policy,
    ...(aws.managedPolicyArns.length ? { PolicyArns: aws.managedPolicyArns.map((arn) => ({ arn })) } : {}),
    // AssumeRole DurationSeconds: 900..43200 (the role's MaxSessionDuration may cap it lower).
    DurationSeconds: Math.min(MAX_DURATION_SECONDS, Math.max(MIN_DURATION_SECONDS, Math.floor(durationSeconds))),
  };
}
