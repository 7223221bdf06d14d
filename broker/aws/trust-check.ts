import { GetOpenIDConnectProviderCommand, GetRoleCommand, type IAMClient, type Role } from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, type STSClient } from '@aws-sdk/client-sts';
import { formatDuration } from '../duration.js';
import { BrokerError } from '../errors.js';
import { sendBounded } from './clients.js';
import { DEFAULT_ROLE_MAX_SESSION_SECONDS, MAX_DURATION_SECONDS, ROLE_ARN_RE, ROLE_CHAINING_MAX_SECONDS } from '../limits/aws.js';
import { STS_AUDIENCE, webIdentitySubject } from '../identity/web-identity-tokens.js';
import type { AwsVia } from '../sessions/aws-credential-issuer.js';

/**
 * Checks, before any developer hits an AccessDenied, that each template's role lets the broker call
 * AssumeRole with session tags and a source identity, for as long as the template asks.
 *
 * The trust policy is evaluated here rather than with @cloud-copilot/iam-simulate: that package is
 * AGPL-3.0 (this project is Apache-2.0), and the subset needed — one principal, three actions, no
 * resource — is small. Conditions are not evaluated; they are reported as notes.
 */

export type TrustCheck = 'assume' | 'tag-session' | 'set-source-identity' | 'max-session-duration' | 'role'
  // aws.via web-identity: the role trusts the broker's IAM OIDC provider (README, "A broker without AWS keys").
  | 'web-identity' | 'audience' | 'subject' | 'oidc-provider';

export interface TrustProblem {
  check: TrustCheck;
  message: string;
  /** What to change, with the exact trust-policy statement or command where there is one. */
  hint: string;
}

export interface TrustFinding {
  template: string;
  roleArn: string;
  ok: boolean;
  problems: TrustProblem[];
  /** Things that may matter but were not evaluated (conditions, identity-side permissions). */
  notes: string[];
}

export interface RoleToCheck {
  template: string;
  roleArn: string;
  /** The DurationSeconds the broker will ask AssumeRole for (the template's credential lifetime). */
  durationSeconds: number;
  /** How the broker gets the credentials (the template's aws.via, else the service's); absent: assume-role. */
  via?: AwsVia | undefined;
}

/**
 * What the broker needs from the trust policy: session tags need `sts:TagSession` (IAM User Guide,
 * "Passing session tags in AWS STS"), a source identity `sts:SetSourceIdentity` (IAM User Guide,
 * "Monitor and control actions taken with assumed roles").
 */
export const REQUIRED_ACTIONS = [
  { check: 'assume', action: 'sts:AssumeRole' },
  { check: 'tag-session', action: 'sts:TagSession' },
  { check: 'set-source-identity', action: 'sts:SetSourceIdentity' },
] as const satisfies readonly { check: TrustCheck; action: string }[];

/**
 * What a web-identity role must allow the broker's OIDC provider: AssumeRoleWithWebIdentity, and
 * the tags and source identity its token carries (IAM User Guide, "Passing session tags using
 * AssumeRoleWithWebIdentity"; "Monitor and control actions taken with assumed roles").
 */
export const WEB_IDENTITY_ACTIONS = [
  { check: 'web-identity', action: 'sts:AssumeRoleWithWebIdentity' },
  { check: 'tag-session', action: 'sts:TagSession' },
  { check: 'set-source-identity', action: 'sts:SetSourceIdentity' },
] as const satisfies readonly { check: TrustCheck; action: string }[];

/**
 * The IAM OIDC provider for an issuer URL: its ARN is `oidc-provider/` + the URL without its scheme
 * (IAM User Guide, "Create an OpenID Connect (OIDC) identity provider in IAM"), and that same string
 * prefixes its condition keys (`<id>:aud`, `<id>:sub`; IAM User Guide, "Available keys for AWS OIDC
 * federation").
 */
export function oidcProviderFor(issuer: string, account: string, partition = 'aws'): { id: string; arn: string } {
  const u = new URL(issuer);
  const id = `${u.host}${u.pathname === '/' ? '' : u.pathname.replace(/\/$/, '')}`;
  return { id, arn: `arn:${partition}:iam::${account}:oidc-provider/${id}` };
}

/** Per AWS call, the SDK's retries and credential resolution included: a check must end. */
const CHECK_TIMEOUT_MS = 15_000;

/** The ARN the broker's AWS credentials belong to, as STS sees them. */
export async function resolveBrokerPrincipal(sts: STSClient): Promise<string> {
  try {
    const out = await sendBounded((o) => sts.send(new GetCallerIdentityCommand({}), o), AbortSignal.timeout(CHECK_TIMEOUT_MS));
    if (!out.Arn) throw new Error('GetCallerIdentity returned no Arn');
    return out.Arn;
  } catch (e) {
    throw awsError('STS GetCallerIdentity', e, 'the broker needs AWS credentials from the standard SDK chain (AWS_PROFILE, env, instance/container role)');
  }
}

// ---------------------------------------------------------------------------------------------
// The broker's principal, and how it appears in trust policies
// ---------------------------------------------------------------------------------------------

export interface BrokerPrincipal {
  arn: string;
  partition: string;
  account: string;
  /** Set when the broker runs as a role session (`arn:aws:sts::ACCT:assumed-role/R/s`). */
  roleName?: string;
}

const PRINCIPAL_ARN_RE = /^arn:(aws[a-z-]*):(iam|sts)::(\d{12}):(.+)$/;

export function parsePrincipalArn(arn: string): BrokerPrincipal {
  const m = PRINCIPAL_ARN_RE.exec(arn);
  if (!m) throw new TypeError(`not an IAM/STS principal ARN: ${arn}`);
  const [, partition, service, account, rest] = m as unknown as [string, string, string, string, string];
  const assumed = service === 'sts' ? /^assumed-role\/([^/]+)\/[^/]+$/.exec(rest) : null;
  return { arn, partition, account, ...(assumed ? { roleName: assumed[1]! } : {}) };
}

/**
 * The principal to write into a trust policy: a role session is named by its role's ARN (AWS does
 * not accept wildcards in Principal, and session names change). The session ARN carries no role path;
 * a role with a path needs it added.
 */
export function trustPrincipalFor(brokerPrincipalArn: string): string {
  const p = parsePrincipalArn(brokerPrincipalArn);
  return p.roleName ? `arn:${p.partition}:iam::${p.account}:role/${p.roleName}` : p.arn;
}

type PrincipalMatch = 'exact' | 'account' | 'anyone' | false;

/** Does one `Principal.AWS` entry name the broker? (IAM User Guide, "AWS JSON policy elements: Principal".) */
function matchPrincipal(entry: string, p: BrokerPrincipal): PrincipalMatch {
  if (entry === '*') return 'anyone';
  if (entry === p.arn) return 'exact';
  // A bare account id is the account principal, as is its root ARN: it delegates to the account's
  // own IAM policies.
  if (entry === p.account || entry === `arn:${p.partition}:iam::${p.account}:root`) return 'account';
  if (p.roleName) {
    // A role session matches its role's ARN, whatever path the role has.
    const m = /^arn:([a-z-]+):iam::(\d{12}):role\/(?:.*\/)?([^/]+)$/.exec(entry);
    if (m && m[1] === p.partition && m[2] === p.account && m[3] === p.roleName) return 'exact';
  }
  return false;
}

/** Every form under which the broker must be listed for a `Deny` + `NotPrincipal` to spare it. */
function notPrincipalExcludes(entries: string[], p: BrokerPrincipal): boolean {
  const listed = (pred: (e: string) => boolean) => entries.some(pred);
  // IAM User Guide, "NotPrincipal": with Deny, the principal's account must be listed too, and for a
  // role session both the session ARN and the role ARN.
  const account = listed((e) => e === p.account || e === `arn:${p.partition}:iam::${p.account}:root`);
  if (p.arn.endsWith(':root')) return account;
  const self = listed((e) => e === p.arn);
  const role = !p.roleName || listed((e) => e !== p.arn && matchPrincipal(e, p) === 'exact');
  return account && self && role;
}

// ---------------------------------------------------------------------------------------------
// Trust policy evaluation (pure)
// ---------------------------------------------------------------------------------------------

interface Statement {
  Sid?: unknown;
  Effect?: unknown;
  Principal?: unknown;
  NotPrincipal?: unknown;
  Action?: unknown;
  NotAction?: unknown;
  Condition?: unknown;
}

export interface TrustDecision {
  decision: 'allowed' | 'denied' | 'not-allowed';
  /** Label of the deciding statement (`Sid`, or `Statement[i]`). */
  statement?: string;
  /** How the broker was matched by the allowing statement. */
  matchedAs?: Exclude<PrincipalMatch, false>;
  notes: string[];
}

/** AWS returns AssumeRolePolicyDocument URL-encoded (IAM API reference, GetRole). */
export function parsePolicyDocument(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return JSON.parse(decodeURIComponent(raw));
  }
}

function list(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** IAM action matching: case-insensitive, `*` and `?` wildcards. */
function actionMatches(pattern: string, action: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`, 'i').test(action);
}

/** Principal: `"*"` or `{ "AWS": … }`; only the AWS key can name the broker (Service/Federated cannot). */
function principalEntries(v: unknown): string[] {
  if (v === '*') return ['*'];
  if (v && typeof v === 'object' && !Array.isArray(v)) return list((v as Record<string, unknown>).AWS);
  return [];
}

function statementsOf(doc: unknown): Statement[] {
  const s = (doc as { Statement?: unknown } | null)?.Statement;
  if (Array.isArray(s)) return s.filter((x): x is Statement => !!x && typeof x === 'object');
  if (s && typeof s === 'object') return [s as Statement];
  throw new TypeError('trust policy has no Statement');
}

/**
 * Decides whether `brokerPrincipalArn` may call `action` under this trust policy. An explicit Deny
 * wins over any Allow (IAM policy evaluation logic); statements with conditions count, with a note,
 * since their keys (tags, source identity, external id…) are only known at request time.
 */
export function evaluateTrustPolicy(doc: unknown, brokerPrincipalArn: string, action: string): TrustDecision {
  const p = parsePrincipalArn(brokerPrincipalArn);
  const notes: string[] = [];
  let allow: { statement: string; matchedAs: Exclude<PrincipalMatch, false>; conditional: boolean } | undefined;
  /** Unconditional beats conditional; naming the broker itself beats naming its account or anyone. */
  const rank = (a: { matchedAs: PrincipalMatch; conditional: boolean }) => (a.conditional ? 0 : 2) + (a.matchedAs === 'exact' ? 1 : 0);
  let deny: string | undefined;

  statementsOf(doc).forEach((st, i) => {
    const label = statementLabel(st, i);
    if (!statementActionApplies(st, action)) return;
    const conditional = !!st.Condition && typeof st.Condition === 'object' && Object.keys(st.Condition).length > 0;

    let matched: PrincipalMatch;
    if (st.NotPrincipal !== undefined) {
      if (st.Effect !== 'Deny') {
        notes.push(`statement ${label} uses NotPrincipal with Allow, which this check does not evaluate (AWS advises against it)`);
        return;
      }
      const entries = principalEntries(st.NotPrincipal);
      matched = notPrincipalExcludes(entries, p) ? false : 'exact';
      if (matched && entries.some((e) => matchPrincipal(e, p))) {
        notes.push(`statement ${label} lists the broker in NotPrincipal but not all of its forms (account root${p.roleName ? ', role ARN and session ARN' : ' and its own ARN'}), so AWS may still deny it`);
      }
    } else {
      const entries = principalEntries(st.Principal);
      matched = entries.reduce<PrincipalMatch>((best, e) => {
        const m = matchPrincipal(e, p);
        return best === 'exact' ? best : m === 'exact' ? m : best || m;
      }, false);
    }
    if (!matched) return;

    if (st.Effect === 'Deny') {
      if (conditional) notes.push(`statement ${label} may deny ${action} (has conditions, not evaluated)`);
      else deny ??= label;
    } else if (st.Effect === 'Allow') {
      const candidate = { statement: label, matchedAs: matched, conditional };
      if (!allow || rank(candidate) > rank(allow)) allow = candidate;
    }
  });

  if (deny) return { decision: 'denied', statement: deny, notes };
  if (allow) {
    if (allow.conditional) notes.push(`statement ${allow.statement} allows ${action} only under conditions (has conditions, not evaluated)`);
    return { decision: 'allowed', statement: allow.statement, matchedAs: allow.matchedAs, notes };
  }
  return { decision: 'not-allowed', notes };
}

/** A statement's Condition block, as operator → key → values. */
export type ConditionBlock = Record<string, Record<string, unknown>>;

/** How a problem names a statement: its Sid, or its place in the document. */
function statementLabel(st: { Sid?: unknown }, i: number): string {
  return typeof st.Sid === 'string' && st.Sid ? `"${st.Sid}"` : `Statement[${i}]`;
}

/** Whether the statement's Action (or NotAction) covers the action, wildcards as IAM matches them. */
function statementActionApplies(st: { Action?: unknown; NotAction?: unknown }, action: string): boolean {
  return st.NotAction !== undefined
    ? !list(st.NotAction).some((a) => actionMatches(a, action))
    : list(st.Action).some((a) => actionMatches(a, action));
}

/**
 * Whether the OIDC provider `providerArn` may call `action` under this trust policy: it must be named
 * in `Principal.Federated` (exactly: IAM takes no wildcard there). An explicit unconditional Deny
 * wins; the allowing statement's conditions are returned, for the audience and subject checks.
 */
export function evaluateFederatedTrust(doc: unknown, providerArn: string, action: string): TrustDecision & { condition?: ConditionBlock } {
  const notes: string[] = [];
  let allow: { statement: string; condition: ConditionBlock | undefined } | undefined;
  let deny: string | undefined;
  statementsOf(doc).forEach((st, i) => {
    const label = statementLabel(st, i);
    if (!statementActionApplies(st, action)) return;
    const p = st.Principal;
    const named = p === '*' || (!!p && typeof p === 'object' && !Array.isArray(p) && list((p as Record<string, unknown>).Federated).includes(providerArn));
    if (!named) return;
    if (p === '*' && st.Effect === 'Allow') notes.push(`statement ${label} allows ${action} to any principal ("*"); name ${providerArn} in Principal.Federated instead`);
    const condition = st.Condition && typeof st.Condition === 'object' && Object.keys(st.Condition).length ? st.Condition as ConditionBlock : undefined;
    if (st.Effect === 'Deny') {
      if (condition) notes.push(`statement ${label} may deny ${action} (has conditions, not evaluated)`);
      else deny ??= label;
    } else if (st.Effect === 'Allow' && !allow) {
      allow = { statement: label, condition };
    }
  });
  if (deny) return { decision: 'denied', statement: deny, notes };
  if (allow) return { decision: 'allowed', statement: allow.statement, ...(allow.condition ? { condition: allow.condition } : {}), notes };
  return { decision: 'not-allowed', notes };
}

/** IAM string condition matching: `StringLike` takes `*` and `?`; both are case-sensitive. */
function conditionMatches(operator: string, pattern: string, value: string): boolean {
  if (!/like$/i.test(operator)) return pattern === value;
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`).test(value);
}

/** The values a condition block tests `key` with (`StringEquals`, `StringLike`, their ForAnyValue forms), by operator. */
function conditionValues(c: ConditionBlock | undefined, key: string): { operator: string; values: string[] }[] {
  if (!c) return [];
  const out: { operator: string; values: string[] }[] = [];
  for (const [operator, keys] of Object.entries(c)) {
    if (!/^(ForAnyValue:)?String(Equals|Like)$/i.test(operator) || !keys || typeof keys !== 'object') continue;
    for (const [k, v] of Object.entries(keys)) if (k.toLowerCase() === key.toLowerCase()) out.push({ operator, values: list(v) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The check against IAM
// ---------------------------------------------------------------------------------------------

function statementToAdd(principal: string, actions: string[]): string {
  return JSON.stringify({ Effect: 'Allow', Principal: { AWS: principal }, Action: actions.length === 1 ? actions[0] : actions });
}

function roleNameOf(roleArn: string): string {
  return roleArn.slice(roleArn.lastIndexOf('/') + 1);
}

function awsError(what: string, e: unknown, hint: string): BrokerError {
  const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  if (err.name === 'TimeoutError' || err.name === 'AbortError') {
    return new BrokerError('upstream_unavailable', `${what}: AWS did not answer within ${CHECK_TIMEOUT_MS / 1000}s`, { cause: e, hint: 'check the network, and the endpoint override if one is set' });
  }
  if (err.$metadata?.httpStatusCode === undefined) {
    return new BrokerError('upstream_unavailable', `${what}: AWS is unreachable: ${err.message ?? String(e)}`, { cause: e, hint: 'check the network, and the endpoint override if one is set' });
  }
  return new BrokerError('upstream_error', `${what} failed: ${err.name ?? 'Error'}: ${err.message ?? ''}`.trim(), { cause: e, hint });
}

/**
 * Checks one role; the IAM lookups of several templates sharing a role are shared. Roles of
 * web-identity templates are checked against the IAM OIDC provider of `issuer` (the broker's
 * publicUrl), which must then be given.
 */
export async function checkRoleTrust(opts: { iam: IAMClient; brokerPrincipalArn: string; roles: RoleToCheck[]; issuer?: string | undefined }): Promise<TrustFinding[]> {
  const broker = parsePrincipalArn(opts.brokerPrincipalArn);
  const principal = trustPrincipalFor(opts.brokerPrincipalArn);
  const lookups = new Map<string, Promise<Role | TrustProblem>>();
  const providers = new Map<string, Promise<TrustProblem | undefined>>();
  const findings: TrustFinding[] = [];
  for (const r of opts.roles) {
    const web = r.via === 'web-identity';
    if (web && !opts.issuer) throw new TypeError(`template ${r.template} uses web identity: the broker's issuer URL is needed`);
    const roleAccount = r.roleArn.split(':')[4] ?? broker.account;
    const provider = web ? oidcProviderFor(opts.issuer!, roleAccount, broker.partition) : undefined;
    const statement = provider ? webIdentityStatement(provider, r.template) : statementToAdd(principal, REQUIRED_ACTIONS.map((a) => a.action));
    const key = `${r.via ?? 'assume-role'} ${r.roleArn}`;
    let lookup = lookups.get(key);
    if (!lookup) lookups.set(key, (lookup = getRole(opts.iam, r.roleArn, broker, principal, statement)));
    const role = await lookup;
    const problems: TrustProblem[] = [];
    const notes: string[] = [];
    if ('check' in role) {
      problems.push(role);
    } else if (provider) {
      checkWebIdentityTrust(role, provider, r.template, problems, notes);
      checkDuration(role, r, undefined, problems);
      let p = providers.get(provider.arn);
      if (!p) providers.set(provider.arn, (p = checkOidcProvider(opts.iam, provider, opts.issuer!, broker.account)));
      const providerProblem = await p;
      if (providerProblem) problems.push(providerProblem);
    } else {
      checkTrustPolicy(role, principal, opts.brokerPrincipalArn, problems, notes);
      checkDuration(role, r, broker, problems);
      if (broker.account !== r.roleArn.split(':')[4]) {
        notes.push(`cross-account role: the broker's own IAM policy must also allow ${REQUIRED_ACTIONS.map((a) => a.action).join(', ')} on ${r.roleArn} (not checked)`);
      }
    }
    findings.push({ template: r.template, roleArn: r.roleArn, ok: problems.length === 0, problems, notes: [...new Set(notes)] });
  }
  return findings;
}

/** The trust statement a web-identity template's role needs (deploy/iam/web-identity-trust-policy.json). */
function webIdentityStatement(provider: { id: string; arn: string }, template: string): string {
  return JSON.stringify({
    Effect: 'Allow', Principal: { Federated: provider.arn }, Action: WEB_IDENTITY_ACTIONS.map((a) => a.action),
    Condition: { StringEquals: { [`${provider.id}:aud`]: STS_AUDIENCE }, StringLike: { [`${provider.id}:sub`]: webIdentitySubject(template, '*') } },
  });
}

function checkWebIdentityTrust(role: Role, provider: { id: string; arn: string }, template: string, problems: TrustProblem[], notes: string[]): void {
  let decisions: { check: TrustCheck; action: string; d: ReturnType<typeof evaluateFederatedTrust> }[];
  try {
    const doc = parsePolicyDocument(role.AssumeRolePolicyDocument!);
    decisions = WEB_IDENTITY_ACTIONS.map((a) => ({ ...a, d: evaluateFederatedTrust(doc, provider.arn, a.action) }));
  } catch (e) {
    problems.push({ check: 'role', message: `cannot read the trust policy of ${role.RoleName}: ${(e as Error).message}`, hint: `inspect it: aws iam get-role --role-name ${role.RoleName}` });
    return;
  }
  const fix = `add this statement to the trust policy of ${role.RoleName}: ${webIdentityStatement(provider, template)}`;
  for (const { check, action, d } of decisions) {
    notes.push(...d.notes);
    if (d.decision === 'denied') {
      problems.push({ check, message: `trust policy of ${role.RoleName} explicitly denies ${action} to the OIDC provider ${provider.arn} in statement ${d.statement}`, hint: `remove or narrow statement ${d.statement} (an explicit Deny overrides every Allow)` });
    } else if (d.decision === 'not-allowed') {
      problems.push({ check, message: `trust policy of ${role.RoleName} does not allow the broker's OIDC provider (${provider.arn}) to call ${action}`, hint: fix });
    }
  }
  const assume = decisions[0]!.d;
  if (assume.decision !== 'allowed') return;
  // The audience: an IAM OIDC provider accepts any of its client IDs, so the role itself should say
  // which one (IAM User Guide, "Create a role for OpenID Connect federation": a condition on aud).
  const aud = conditionValues(assume.condition, `${provider.id}:aud`);
  if (!aud.length) {
    problems.push({ check: 'audience', message: `trust policy of ${role.RoleName} allows ${provider.arn} without a condition on ${provider.id}:aud`, hint: `add "Condition": {"StringEquals": {"${provider.id}:aud": "${STS_AUDIENCE}"}} to statement ${assume.statement}` });
  } else if (!aud.every((c) => c.values.some((v) => conditionMatches(c.operator, v, STS_AUDIENCE)))) {
    problems.push({ check: 'audience', message: `trust policy of ${role.RoleName} requires ${provider.id}:aud to be ${aud.flatMap((c) => c.values).join(', ')}, but the broker's tokens carry aud ${STS_AUDIENCE}`, hint: `set the condition to "StringEquals": {"${provider.id}:aud": "${STS_AUDIENCE}"}` });
  }
  // The subject names the template (web-identity-tokens.ts): a condition on it keeps other templates' tokens out.
  const sub = conditionValues(assume.condition, `${provider.id}:sub`);
  const sample = webIdentitySubject(template, 'abcdefghij');
  if (!sub.length) {
    notes.push(`trust policy of ${role.RoleName} accepts tokens for any template of this broker; add "StringLike": {"${provider.id}:sub": "${webIdentitySubject(template, '*')}"} so only ${template}'s tokens assume it`);
  } else if (!sub.every((c) => c.values.some((v) => conditionMatches(c.operator, v, sample)))) {
    problems.push({ check: 'subject', message: `trust policy of ${role.RoleName} requires ${provider.id}:sub to be ${sub.flatMap((c) => c.values).join(', ')}, which template ${template}'s tokens (sub ${webIdentitySubject(template, '<session>')}) never are`, hint: `set it to "StringLike": {"${provider.id}:sub": "${webIdentitySubject(template, '*')}"}` });
  }
}

/** That the IAM OIDC provider exists and lists the audience STS checks tokens against. */
async function checkOidcProvider(iam: IAMClient, provider: { id: string; arn: string }, issuer: string, callerAccount: string): Promise<TrustProblem | undefined> {
  const create = `aws iam create-open-id-connect-provider --url ${issuer} --client-id-list ${STS_AUDIENCE} (deploy/iam/README.md)`;
  if (provider.arn.split(':')[4] !== callerAccount) return undefined; // another account's IAM: the role check above said so
  try {
    const out = await sendBounded((o) => iam.send(new GetOpenIDConnectProviderCommand({ OpenIDConnectProviderArn: provider.arn }), o), AbortSignal.timeout(CHECK_TIMEOUT_MS));
    if (!(out.ClientIDList ?? []).includes(STS_AUDIENCE)) {
      return { check: 'oidc-provider', message: `the IAM OIDC provider ${provider.arn} does not list the audience ${STS_AUDIENCE}`, hint: `aws iam add-client-id-to-open-id-connect-provider --open-id-connect-provider-arn ${provider.arn} --client-id ${STS_AUDIENCE}` };
    }
    return undefined;
  } catch (e) {
    const err = e as { name?: string; message?: string };
    if (err.name === 'NoSuchEntity' || err.name === 'NoSuchEntityException') {
      return { check: 'oidc-provider', message: `there is no IAM OIDC provider for ${issuer} (${provider.arn})`, hint: create };
    }
    if (err.name === 'AccessDenied' || err.name === 'AccessDeniedException') {
      return { check: 'oidc-provider', message: `not allowed to read the IAM OIDC provider ${provider.arn}: ${err.message ?? 'AccessDenied'}`, hint: 'allow iam:GetOpenIDConnectProvider, or run the check with credentials that can read it' };
    }
    throw awsError(`IAM GetOpenIDConnectProvider ${provider.arn}`, e, 'check the IAM endpoint and your AWS credentials');
  }
}

/** `statement`: the trust statement the role needs, for the hints. */
async function getRole(iam: IAMClient, roleArn: string, broker: BrokerPrincipal, principal: string, statement: string): Promise<Role | TrustProblem> {
  const account = roleArn.split(':')[4];
  if (!ROLE_ARN_RE.test(roleArn)) {
    return { check: 'role', message: `"${roleArn}" is not an IAM role ARN`, hint: 'set aws.roleArn to arn:aws:iam::<account>:role/<name> in the template' };
  }
  if (account !== broker.account) {
    // IAM reads roles only in the caller's own account (GetRole takes a name, not an ARN).
    return {
      check: 'role',
      message: `role is in account ${account} but the broker's credentials are in ${broker.account}, so its trust policy cannot be read from here`,
      hint: `run the check with credentials of account ${account}, or verify by hand that the trust policy of ${roleArn} contains ${statement}`,
    };
  }
  const name = roleNameOf(roleArn);
  const path = roleArn.slice(roleArn.indexOf(':role/') + 5, roleArn.lastIndexOf('/') + 1);
  let role: Role | undefined;
  try {
    role = (await sendBounded((o) => iam.send(new GetRoleCommand({ RoleName: name }), o), AbortSignal.timeout(CHECK_TIMEOUT_MS))).Role;
  } catch (e) {
    const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    if (err.name === 'NoSuchEntity' || err.name === 'NoSuchEntityException') {
      return {
        check: 'role',
        message: `role ${name} does not exist in account ${account}`,
        hint: `create it: aws iam create-role --role-name ${name}${path === '/' ? '' : ` --path ${path}`} --assume-role-policy-document '{"Version":"2012-10-17","Statement":[${statement}]}' (or fix aws.roleArn in the template)`,
      };
    }
    if (err.name === 'AccessDenied' || err.name === 'AccessDeniedException') {
      return {
        check: 'role',
        message: `not allowed to read role ${name}: ${err.message ?? 'AccessDenied'}`,
        hint: `allow iam:GetRole on ${roleArn} to ${principal}, or run the check with credentials that can read it`,
      };
    }
    throw awsError(`IAM GetRole ${name}`, e, 'check the IAM endpoint and the broker\'s AWS credentials');
  }
  if (!role?.AssumeRolePolicyDocument) {
    return { check: 'role', message: `IAM returned role ${name} without a trust policy`, hint: 'inspect it: aws iam get-role --role-name ' + name };
  }
  if (role.Arn !== roleArn) {
    return { check: 'role', message: `the template names ${roleArn} but the role called ${name} is ${role.Arn}`, hint: `set aws.roleArn to ${role.Arn} in the template` };
  }
  return role;
}

function checkTrustPolicy(role: Role, principal: string, brokerArn: string, problems: TrustProblem[], notes: string[]): void {
  let doc: unknown;
  let decisions: { check: TrustCheck; action: string; d: TrustDecision }[];
  try {
    doc = parsePolicyDocument(role.AssumeRolePolicyDocument!);
    decisions = REQUIRED_ACTIONS.map((a) => ({ ...a, d: evaluateTrustPolicy(doc, brokerArn, a.action) }));
  } catch (e) {
    problems.push({ check: 'role', message: `cannot read the trust policy of ${role.RoleName}: ${(e as Error).message}`, hint: `inspect it: aws iam get-role --role-name ${role.RoleName}` });
    return;
  }
  const missing = decisions.filter((x) => x.d.decision === 'not-allowed').map((x) => x.action);
  const viaAccount = decisions.filter((x) => x.d.decision === 'allowed' && x.d.matchedAs === 'account').map((x) => x.action);
  if (viaAccount.length) {
    notes.push(`trust policy of ${role.RoleName} trusts the whole account for ${viaAccount.join(', ')}: the broker's own IAM policy must also allow them on this role (not checked)`);
  }
  for (const { check, action, d } of decisions) {
    notes.push(...d.notes);
    if (d.decision === 'denied') {
      problems.push({
        check,
        message: `trust policy of ${role.RoleName} explicitly denies ${action} to the broker (${brokerArn}) in statement ${d.statement}`,
        hint: `remove or narrow statement ${d.statement} so it no longer applies to ${principal} for ${action} (an explicit Deny overrides every Allow)`,
      });
    } else if (d.decision === 'not-allowed') {
      problems.push({
        check,
        message: `trust policy of ${role.RoleName} does not allow the broker (${brokerArn}) to call ${action}`,
        hint: `add this statement to the trust policy of ${role.RoleName}: ${statementToAdd(principal, missing)}`,
      });
    } else if (d.matchedAs === 'anyone') {
      notes.push(`trust policy of ${role.RoleName} allows ${action} to any AWS principal ("*"); name ${principal} instead`);
    }
  }
}

/** `broker` undefined: web identity, which is not role chaining, so no 1 h cap. */
function checkDuration(role: Role, r: RoleToCheck, broker: BrokerPrincipal | undefined, problems: TrustProblem[]): void {
  const max = role.MaxSessionDuration ?? DEFAULT_ROLE_MAX_SESSION_SECONDS;
  const want = r.durationSeconds;
  if (broker?.roleName && want > ROLE_CHAINING_MAX_SECONDS) {
    problems.push({
      check: 'max-session-duration',
      message: `the broker runs as a role session (${broker.arn}), and AWS caps role-chained sessions at ${formatDuration(ROLE_CHAINING_MAX_SECONDS)}, but template ${r.template} asks for ${formatDuration(want)}`,
      hint: `set session.credentialLifetime to ${formatDuration(ROLE_CHAINING_MAX_SECONDS)} or less in template ${r.template} (the daemon refreshes credentials before they expire)`,
    });
  }
  if (want > max) {
    problems.push({
      check: 'max-session-duration',
      message: `role ${role.RoleName} allows sessions of at most ${formatDuration(max)} (MaxSessionDuration ${max}) but template ${r.template} asks for ${formatDuration(want)} (${want} s)`,
      hint: want <= MAX_DURATION_SECONDS
        ? `aws iam update-role --role-name ${role.RoleName} --max-session-duration ${want}, or lower session.credentialLifetime in template ${r.template}`
        : `lower session.credentialLifetime in template ${r.template} to ${formatDuration(MAX_DURATION_SECONDS)} or less (the AWS maximum)`,
    });
  }
}
