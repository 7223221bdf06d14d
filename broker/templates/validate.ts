/**
 * The checks a template needs beyond its shape (schema.ts): AWS's limits on durations, session tags
 * and session policies, IAM action names, placeholders; Vault policy and role names, token TTLs and
 * metadata. Every problem is reported, each with the field it is in and what to do, so an admin
 * fixes a template in one pass.
 */
import { basename } from 'node:path';
import { formatDuration } from '../duration.js';
import {
  MAX_DURATION_SECONDS, MAX_POLICY_ARNS, MAX_SESSION_POLICY_CHARS, MAX_SESSION_TAGS, MAX_TRANSITIVE_TAG_KEYS,
  MIN_DURATION_SECONDS, POLICY_ARN_RE, POLICY_CHARSET_RE, RESERVED_TAG_PREFIX, ROLE_ARN_RE, TAG_KEY_RE, TAG_VALUE_RE,
} from '../limits/aws.js';
import {
  BROKER_VAULT_METADATA_KEYS, DEFAULT_POLICY, DEFAULT_VAULT_TTL_SECONDS, MAX_VAULT_METADATA_PAIRS,
  MAX_VAULT_METADATA_VALUE_CHARS, MIN_VAULT_TTL_SECONDS, ROOT_POLICY, VAULT_METADATA_KEY_RE, VAULT_POLICY_NAME_RE,
  VAULT_ROLE_NAME_RE,
} from '../limits/vault.js';
import { checkActionName } from './iam-actions.js';
import { templateVersion } from './version.js';
import { probeParameter, probeRisk } from './param-probes.js';
import { BROKER_TAG_KEYS, classifyPlaceholder, PLACEHOLDER_RE, renderPolicy, SESSION_ID_LENGTH, sessionPolicyChars } from './render.js';
import {
  DEFAULT_CREDENTIAL_LIFETIME_SECONDS, type AwsGrant, type PolicyStatement, type RawTemplate, type RawVaultGrant,
  type TaskTemplate, type TemplateConfirm, type TemplateParameter, type VaultGrant,
} from './schema.js';

export interface TemplateProblem {
  file: string;
  /** Field path inside the file, e.g. `aws.policy.Statement[1].Action[0]`; '' for the whole file. */
  path: string;
  message: string;
  hint?: string;
}

type Segment = string | number;

/** `['aws', 'tags', 'cost center', 0]` → `aws.tags["cost center"][0]`. */
export function fieldPath(segments: readonly PropertyKey[]): string {
  return segments.map((s, i) => {
    if (typeof s === 'number') return `[${s}]`;
    const k = String(s);
    if (/^[A-Za-z_$][\w$]*$/.test(k)) return i === 0 ? k : `.${k}`;
    return `[${JSON.stringify(k)}]`;
  }).join('');
}

/** The one stated version with policy variables; the 2008 grammar would treat `${…}` literally. */
const POLICY_VERSION = '2012-10-17';
/** The developer's identity is a SourceIdentity: at most 64 chars (STS AssumeRole). */
const MAX_DEVELOPER_CHARS = 64;

const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

export function validateTemplate(raw: RawTemplate, file: string): { template?: TaskTemplate; problems: TemplateProblem[] } {
  const problems: TemplateProblem[] = [];
  const add = (path: Segment[], message: string, hint?: string) => {
    problems.push({ file, path: fieldPath(path), message, ...(hint ? { hint } : {}) });
  };

  const expected = basename(file).replace(/\.ya?ml$/, '');
  if (raw.name !== expected) {
    add(['name'], `is "${raw.name}" but the file is ${basename(file)}`, `rename one of them: the name must equal the file name without .yaml ("${expected}")`);
  }
  if (raw.allowed.groups.length === 0 && raw.allowed.emails.length === 0) {
    add(['allowed'], 'nobody may start this task', 'list IdP groups in allowed.groups and/or emails in allowed.emails');
  }

  // Durations: STS AssumeRole DurationSeconds is 900..43200 s; a session shorter than one credential
  // or a credential outliving its session makes no sense.
  const maxSession = raw.session.maxDuration;
  const lifetime = raw.session.credentialLifetime ?? Math.min(DEFAULT_CREDENTIAL_LIFETIME_SECONDS, maxSession);
  const range = `between ${formatDuration(MIN_DURATION_SECONDS)} (${MIN_DURATION_SECONDS} s) and ${formatDuration(MAX_DURATION_SECONDS)} (${MAX_DURATION_SECONDS} s)`;
  for (const [key, seconds] of [['maxDuration', maxSession], ['credentialLifetime', lifetime]] as const) {
    if (seconds < MIN_DURATION_SECONDS || seconds > MAX_DURATION_SECONDS) {
      add(['session', key], `is ${formatDuration(seconds)} (${seconds} s); it must be ${range}`, 'the bounds of STS AssumeRole DurationSeconds');
    }
  }
  if (lifetime > maxSession) {
    add(['session', 'credentialLifetime'], `(${formatDuration(lifetime)}) is longer than session.maxDuration (${formatDuration(maxSession)})`,
      'a credential cannot outlive its task session: shorten credentialLifetime or raise maxDuration');
  }

  const parameters: TemplateParameter[] = [];
  for (const [name, p] of Object.entries(raw.parameters)) {
    try {
      // Compiled alone first: an unbalanced `)` would otherwise escape the anchoring group below.
      new RegExp(p.pattern);
    } catch (e) {
      add(['parameters', name, 'pattern'], `does not compile: ${(e as Error).message}`, 'write a JavaScript regular expression; it is anchored for you as ^(?:pattern)$');
      continue;
    }
    const param: TemplateParameter = {
      name, description: p.description, pattern: p.pattern, maxLength: p.maxLength, allowWildcards: p.allowWildcards, regex: new RegExp(`^(?:${p.pattern})$`),
    };
    parameters.push(param);
    checkProbes(param, add);
  }

  let aws: AwsGrant | undefined;
  let vault: VaultGrant | undefined;
  if (!raw.aws && !raw.vault) {
    add(['aws'], 'is missing, and so is vault: this template grants nothing',
      'add an aws section (roleArn, region, policy; docs/templates.md) and/or a vault section (policies; docs/vault.md)');
  }
  if (raw.aws) {
    aws = raw.aws;
    checkAws(aws, raw, add);
  } else if (raw.session.credentialLifetime !== undefined) {
    // A field never silently does nothing: without aws there is no AWS credential to time.
    add(['session', 'credentialLifetime'], 'applies to AWS credentials, and this template grants none',
      'remove it; the lifetime of a Vault token is vault.ttl (and vault.explicitMaxTtl)');
  }
  if (raw.vault) vault = checkVault(raw.vault, maxSession, add);
  const confirm = checkConfirm(raw.confirm, add);
  const { startsPerDay, startsPerDeveloperPerDay } = raw.limits;
  if (startsPerDay !== undefined && startsPerDeveloperPerDay !== undefined && startsPerDeveloperPerDay > startsPerDay) {
    // A field never silently does nothing: one developer can never reach it.
    add(['limits', 'startsPerDeveloperPerDay'], `(${startsPerDeveloperPerDay}) is more than limits.startsPerDay (${startsPerDay})`, 'lower it to at most startsPerDay, or remove it');
  }

  if (problems.length) return { problems };
  return {
    problems,
    template: {
      name: raw.name,
      description: raw.description,
      allowed: { groups: raw.allowed.groups, emails: raw.allowed.emails.map((e) => e.toLowerCase()) },
      maxSessionSeconds: maxSession,
      credentialLifetimeSeconds: lifetime,
      parameters,
      aws,
      vault,
      confirm,
      limits: { ...raw.limits },
      version: templateVersion(raw),
      file,
    },
  };
}

/** The longest a request may wait for its humans, and the oldest IdP login a decision may rest on. */
const MAX_CONFIRM_TIMEOUT_SECONDS = 7 * 86_400;
const MAX_CONFIRM_MAX_AGE_SECONDS = 86_400;

function checkConfirm(c: RawTemplate['confirm'], add: Add): TemplateConfirm {
  const none: TemplateConfirm = { mode: undefined, maxAgeSeconds: undefined, timeoutSeconds: undefined, approvers: { groups: [], emails: [] }, approvals: 0, breakGlass: false };
  if (!c) return none;
  const approvers = { groups: c.approvers?.groups ?? [], emails: (c.approvers?.emails ?? []).map((e) => e.toLowerCase()) };
  const listed = approvers.groups.length + approvers.emails.length > 0;
  if (c.mode === 'approvers' && !listed) {
    add(['confirm', 'approvers'], 'is required for mode approvers: nobody could approve', 'list IdP groups in confirm.approvers.groups and/or emails in confirm.approvers.emails');
  }
  if (c.mode !== 'approvers' && c.approvers !== undefined) {
    add(['confirm', 'approvers'], `applies to mode approvers only, and mode is ${c.mode ?? 'the service default'}`, 'set confirm.mode: approvers, or remove approvers');
  }
  if (c.approvals !== undefined && c.approvals < 1) add(['confirm', 'approvals'], `is ${c.approvals}; it must be at least 1`, 'for no approver use mode self (or none)');
  if (c.approvals !== undefined && c.mode !== 'approvers') add(['confirm', 'approvals'], 'applies to mode approvers only', 'set confirm.mode: approvers, or remove approvals');
  if (c.approvals !== undefined && c.approvals > 10) add(['confirm', 'approvals'], `is ${c.approvals}; at most 10`);
  if (c.breakGlass && c.mode !== 'approvers') add(['confirm', 'breakGlass'], 'applies to mode approvers only (it starts without approvers)', 'set confirm.mode: approvers, or remove breakGlass');
  if (c.mode === 'none' && (c.maxAge !== undefined || c.timeout !== undefined)) add(['confirm'], 'maxAge and timeout do nothing with mode none', 'remove them, or choose mode self');
  if (c.maxAge !== undefined && c.maxAge > MAX_CONFIRM_MAX_AGE_SECONDS) add(['confirm', 'maxAge'], `is ${formatDuration(c.maxAge)}; at most 1d`, 'a confirmation proves a human now: e.g. 5m, or 0 for a fresh login');
  if (c.timeout !== undefined && (c.timeout < 60 || c.timeout > MAX_CONFIRM_TIMEOUT_SECONDS)) add(['confirm', 'timeout'], `is ${formatDuration(c.timeout)}; it must be between 1m and 7d`);
  return {
    mode: c.mode, maxAgeSeconds: c.maxAge, timeoutSeconds: c.timeout, approvers,
    approvals: c.mode === 'approvers' ? (c.approvals ?? 1) : 0, breakGlass: c.breakGlass,
  };
}

type Add = (path: Segment[], message: string, hint?: string) => void;

/**
 * A parameter whose pattern admits a value that can widen the grant (param-probes.ts says which
 * values, and why each is dangerous) is refused, naming the values it accepted.
 */
function checkProbes(p: TemplateParameter, add: Add): void {
  const accepted = probeParameter(p);
  if (accepted.length === 0) return;
  // The first value of each risk: enough to act on, and a message stays one line.
  const firsts = accepted.filter((a, i) => accepted.findIndex((b) => probeRisk(b) === probeRisk(a)) === i);
  const shown = firsts.map((a) => `${a.kind === 'length' ? 'a long value' : JSON.stringify(a.value)} (${probeRisk(a)})`);
  const optIn = accepted.some((a) => a.kind === 'wildcard' || a.kind === 'variable');
  const fix = 'tighten the pattern to the characters a name needs, e.g. [A-Za-z0-9_-]+: never empty, no * ? $ { }, no .. or lone / segment';
  const list = shown.length > 1 ? `${shown.slice(0, -1).join(', ')} and ${shown.at(-1)}` : shown[0];
  add(['parameters', p.name, 'pattern'], `accepts ${list}: a value could widen the grant`,
    optIn ? `${fix}; to let developers pass IAM wildcards on purpose, set parameters.${p.name}.allowWildcards: true (see its risk in docs/templates.md)` : fix);
}

function checkAws(aws: AwsGrant, raw: RawTemplate, add: Add): void {
  const roleProblem = checkRoleArn(aws.roleArn);
  if (roleProblem) add(['aws', 'roleArn'], roleProblem, 'e.g. arn:aws:iam::123456789012:role/broker-deploy-lambda');

  // PolicyArns: at most 10 managed policies (STS AssumeRole).
  if (aws.managedPolicyArns.length > MAX_POLICY_ARNS) {
    add(['aws', 'managedPolicyArns'], `lists ${aws.managedPolicyArns.length} policies; STS allows at most ${MAX_POLICY_ARNS}`, 'merge some into the session policy or into fewer managed policies');
  }
  aws.managedPolicyArns.forEach((arn, i) => {
    if (!POLICY_ARN_RE.test(arn)) {
      add(['aws', 'managedPolicyArns', i], `"${arn}" is not an IAM managed policy ARN`, 'e.g. arn:aws:iam::aws:policy/ReadOnlyAccess or arn:aws:iam::123456789012:policy/NAME');
    }
  });

  checkTags(aws, add);
  checkPolicy(aws, raw, add);
}

/**
 * The Vault section: policy and role names Vault will take as written, TTLs a task session can
 * contain, and metadata that does not overwrite the broker's own. Returns the normalized grant
 * (durations in seconds, defaults applied).
 */
function checkVault(v: RawVaultGrant, maxSession: number, add: Add): VaultGrant {
  const seen = new Set<string>();
  v.policies.forEach((name, i) => {
    const path = ['vault', 'policies', i];
    if (name === ROOT_POLICY) {
      add(path, 'the root policy is never put on a task token', 'write a policy with only the paths the task needs (deploy/vault/ has an example)');
    } else if (name === DEFAULT_POLICY) {
      add(path, '"default" is added by Vault to every token unless vault.noDefaultPolicy is true', 'remove it from the list');
    } else if (!VAULT_POLICY_NAME_RE.test(name)) {
      const lower = name.trim().toLowerCase();
      add(path, `"${name}" is not a Vault policy name the broker accepts (1-128 chars of a-z, 0-9, _ . -; starting and ending with a letter or digit)`,
        lower !== name && VAULT_POLICY_NAME_RE.test(lower) ? `Vault lower-cases policy names: write "${lower}"`
          : name.includes(',') ? 'one policy per list entry: Vault splits names on commas' : 'use the name as `bao policy list` shows it');
    }
    if (seen.has(name)) add(path, `"${name}" is listed twice`, 'keep one');
    seen.add(name);
  });

  if (v.tokenRole !== undefined && !VAULT_ROLE_NAME_RE.test(v.tokenRole)) {
    add(['vault', 'tokenRole'], `"${v.tokenRole}" is not a Vault token role name`, 'letters, digits, _ - and ., starting and ending with a letter, digit or _ (the token store\'s role_name pattern)');
  }

  // The daemon keeps a renewable token alive with `auth/token/renew-self`, which Vault's `default`
  // policy grants (`path "auth/token/renew-self" { capabilities = ["update"] }`). Without it Vault
  // answers 403, so the daemon fetches a new token every two thirds of the TTL and the token an agent
  // got from `broker exec` dies at its ttl: "renewable" would promise what Vault refuses. The broker
  // cannot read what a Vault policy grants, so a policy of the template's own granting renew-self
  // cannot be seen here and is not counted on.
  if (v.noDefaultPolicy && v.renewable) {
    add(['vault', 'noDefaultPolicy'], 'is true and the token is renewable (vault.renewable defaults to true), but without Vault\'s "default" policy a token cannot renew itself (auth/token/renew-self): the daemon would fetch a new token every two thirds of its ttl, and the token an agent holds from broker exec would die at its ttl',
      'set vault.renewable: false (the daemon then replaces the token instead of renewing it), or remove noDefaultPolicy (the default policy grants auth/token/renew-self). A policy of your own granting update on auth/token/renew-self would work in Vault, but the broker cannot see what your policies grant: see "noDefaultPolicy" in docs/vault.md');
  }

  // Token TTLs: neither may outlast the task session, so a token dies with its task even if revoking
  // it at the end fails. (Vault caps renewals of role tokens by the role's token_explicit_max_ttl,
  // not the token's own: the daemon renews within the session, and docs/vault.md says why the role
  // needs one.)
  const explicitMax = v.explicitMaxTtl ?? maxSession;
  const ttl = v.ttl ?? Math.min(DEFAULT_VAULT_TTL_SECONDS, explicitMax);
  for (const [key, seconds, given] of [['ttl', ttl, v.ttl], ['explicitMaxTtl', explicitMax, v.explicitMaxTtl]] as const) {
    if (given === undefined) continue;
    if (seconds < MIN_VAULT_TTL_SECONDS) {
      add(['vault', key], `is ${formatDuration(seconds)} (${seconds} s); the broker needs at least ${formatDuration(MIN_VAULT_TTL_SECONDS)}`,
        'a token the agent cannot use before it must be replaced is a mistake; e.g. 15m');
    } else if (seconds > maxSession) {
      add(['vault', key], `(${formatDuration(seconds)}) is longer than session.maxDuration (${formatDuration(maxSession)})`,
        'a Vault token cannot outlive its task session: shorten it or raise session.maxDuration');
    }
  }
  if (v.ttl !== undefined && v.explicitMaxTtl !== undefined && v.ttl > v.explicitMaxTtl) {
    add(['vault', 'ttl'], `(${formatDuration(v.ttl)}) is longer than vault.explicitMaxTtl (${formatDuration(v.explicitMaxTtl)})`,
      'Vault would cap it; make ttl at most explicitMaxTtl');
  }

  const pairs = Object.entries(v.metadata);
  for (const [key, value] of pairs) {
    const path = ['vault', 'metadata', key];
    if (BROKER_VAULT_METADATA_KEYS.some((k) => k === key.toLowerCase())) {
      add(path, `"${key}" is set by the broker on every token (${BROKER_VAULT_METADATA_KEYS.join(', ')})`, 'choose another key');
    } else if (!VAULT_METADATA_KEY_RE.test(key)) {
      add(path, `metadata key "${key}" is not 1-128 chars of letters, digits and _ . -`, 'e.g. team or cost-center');
    }
    if (value.length > MAX_VAULT_METADATA_VALUE_CHARS || /\p{Cc}/u.test(value)) {
      add(path, `metadata value for "${key}" is not at most ${MAX_VAULT_METADATA_VALUE_CHARS} printable chars`, 'it is shown in Vault\'s audit log; keep it short');
    }
  }
  const total = BROKER_VAULT_METADATA_KEYS.length + pairs.length;
  if (total > MAX_VAULT_METADATA_PAIRS) {
    add(['vault', 'metadata'], `${total} metadata pairs (${BROKER_VAULT_METADATA_KEYS.length} set by the broker + ${pairs.length} here); the broker allows ${MAX_VAULT_METADATA_PAIRS}`,
      `keep at most ${MAX_VAULT_METADATA_PAIRS - BROKER_VAULT_METADATA_KEYS.length} here`);
  }

  return {
    policies: v.policies, ttlSeconds: ttl, explicitMaxTtlSeconds: explicitMax, numUses: v.numUses, tokenRole: v.tokenRole,
    metadata: v.metadata, renewable: v.renewable, noDefaultPolicy: v.noDefaultPolicy,
  };
}

function checkRoleArn(arn: string): string | undefined {
  if (ROLE_ARN_RE.test(arn)) return undefined;
  const parts = arn.split(':');
  if (parts.length < 6 || parts[0] !== 'arn' || !/^aws[a-z-]*$/.test(parts[1]!) || parts[2] !== 'iam') return `"${arn}" is not an IAM role ARN`;
  if (parts[3] !== '') return `"${arn}" has a region ("${parts[3]}"); IAM ARNs have none`;
  if (!/^\d{12}$/.test(parts[4]!)) return `the account "${parts[4]}" in "${arn}" is not a 12-digit AWS account ID`;
  if (!parts.slice(5).join(':').startsWith('role/')) return `"${arn}" names no role (expected role/NAME after the account)`;
  return `the role name in "${arn}" has characters IAM does not allow (letters, digits and _+=,.@-/)`;
}

/**
 * Session tags (STS AssumeRole Tags): at most 50 including the broker's own 4; keys 1-128 and values
 * 0-256 chars of [\p{L}\p{Z}\p{N}_.:/=+\-@]; keys compare case-insensitively; `aws:` is reserved.
 * TransitiveTagKeys: at most 50, each one of the session's tag keys.
 */
function checkTags(aws: AwsGrant, add: Add): void {
  const seen = new Map<string, string>();
  for (const [key, value] of Object.entries(aws.tags)) {
    const path = ['aws', 'tags', key];
    const lower = key.toLowerCase();
    if (!TAG_KEY_RE.test(key)) add(path, `tag key "${key}" is not 1-128 chars of letters, digits, spaces and _.:/=+-@`, 'STS session tag key charset');
    if (RESERVED_TAG_PREFIX.test(key)) add(path, `tag key "${key}" uses the aws: prefix, which AWS reserves`, 'choose another key, e.g. without the aws: prefix');
    else if (lower.startsWith('broker:')) {
      add(path, `tag key "${key}" uses the broker: prefix, reserved for the broker's own tags (${BROKER_TAG_KEYS.join(', ')})`, 'the broker sets these itself; choose another key');
    }
    const dup = seen.get(lower);
    if (dup !== undefined) add(path, `tag key "${key}" repeats "${dup}": STS compares tag keys case-insensitively`, 'keep one of them');
    seen.set(lower, key);
    if (!TAG_VALUE_RE.test(value)) add(path, `tag value for "${key}" is not at most 256 chars of letters, digits, spaces and _.:/=+-@`, 'STS session tag value charset');
  }
  const total = BROKER_TAG_KEYS.length + seen.size;
  if (total > MAX_SESSION_TAGS) {
    add(['aws', 'tags'], `${total} session tags (${BROKER_TAG_KEYS.length} set by the broker + ${seen.size} here); STS allows ${MAX_SESSION_TAGS}`, `keep at most ${MAX_SESSION_TAGS - BROKER_TAG_KEYS.length} tags here`);
  }
  if (aws.transitiveTagKeys.length > MAX_TRANSITIVE_TAG_KEYS) {
    add(['aws', 'transitiveTagKeys'], `lists ${aws.transitiveTagKeys.length} keys; STS allows ${MAX_TRANSITIVE_TAG_KEYS}`, 'keep only keys that must survive role chaining');
  }
  const tagKeys = [...BROKER_TAG_KEYS, ...Object.keys(aws.tags)];
  aws.transitiveTagKeys.forEach((key, i) => {
    if (!tagKeys.some((k) => k.toLowerCase() === key.toLowerCase())) {
      add(['aws', 'transitiveTagKeys', i], `"${key}" is not a session tag key`, `transitive keys must be among the session's tags: ${tagKeys.join(', ')}`);
    }
  });
}

function checkPolicy(aws: AwsGrant, raw: RawTemplate, add: Add): void {
  const base: Segment[] = ['aws', 'policy'];
  const policy = aws.policy;
  if (policy.Version !== POLICY_VERSION) {
    add([...base, 'Version'], `is "${policy.Version}"`, `use "${POLICY_VERSION}": older versions do not support policy variables`);
  }
  const statements: [PolicyStatement, Segment[]][] = Array.isArray(policy.Statement)
    ? policy.Statement.map((s, i) => [s, [...base, 'Statement', i]])
    : [[policy.Statement, [...base, 'Statement']]];
  for (const [s, path] of statements) checkStatement(s, path, aws.allowBroadWildcard, add);

  // Placeholders and the Policy charset (U+0009, U+000A, U+000D, U+0020-U+00FF; STS AssumeRole).
  const declared = Object.keys(raw.parameters);
  let placeholdersOk = true;
  const walk = (v: unknown, path: Segment[]): void => {
    if (typeof v === 'string') {
      if (!POLICY_CHARSET_RE.test(v)) add(path, `contains characters a session policy cannot hold: ${outside(v)}`, 'STS accepts tab, newline and U+0020-U+00FF only');
      for (const m of v.matchAll(PLACEHOLDER_RE)) {
        const p = classifyPlaceholder(m[1]!);
        if (p.kind === 'unknown') {
          placeholdersOk = false;
          add(path, `unknown placeholder ${m[0]}`, 'placeholders are ${developer}, ${session} and ${param.NAME}; IAM policy variables have a prefix, e.g. ${aws:username}');
        } else if (p.kind === 'param' && !declared.includes(p.name)) {
          placeholdersOk = false;
          add(path, `placeholder ${m[0]} names no declared parameter`, declared.length ? `declared parameters: ${declared.join(', ')}` : 'declare it under parameters');
        }
      }
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, [...path, i]));
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (!POLICY_CHARSET_RE.test(k)) add([...path, k], `the key contains characters a session policy cannot hold: ${outside(k)}`, 'STS accepts tab, newline and U+0020-U+00FF only');
        const inKey = [...k.matchAll(PLACEHOLDER_RE)].find((m) => classifyPlaceholder(m[1]!).kind !== 'iam');
        if (inKey) {
          placeholdersOk = false;
          add([...path, k], `placeholder ${inKey[0]} in a key is not substituted`, 'placeholders work in string values only');
        }
        walk(x, [...path, k]);
      }
    }
  };
  walk(policy, base);

  // Size with the worst case: every parameter at its maxLength, the longest developer identity.
  // 'x' needs no JSON escaping; values that would (a `"`) are re-checked when a request is built.
  if (placeholdersOk) {
    const params = Object.fromEntries(Object.entries(raw.parameters).map(([n, p]) => [n, 'x'.repeat(p.maxLength)]));
    const rendered = renderPolicy(policy, { developer: 'x'.repeat(MAX_DEVELOPER_CHARS), session: 'x'.repeat(SESSION_ID_LENGTH), params });
    const chars = sessionPolicyChars(rendered, aws.managedPolicyArns);
    if (chars > MAX_SESSION_POLICY_CHARS) {
      add(base, `can reach ${chars} chars (rendered minified with maximum-length parameters, plus managed policy ARNs); STS allows ${MAX_SESSION_POLICY_CHARS}`,
        "lower the parameters' maxLength, merge statements, use action wildcards (e.g. logs:Get*), or move permissions into a managed policy (only its ARN counts)");
    }
  }
}

function outside(s: string): string {
  const bad = [...new Set([...s].filter((c) => !POLICY_CHARSET_RE.test(c)))];
  return bad.slice(0, 5).map((c) => `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`).join(', ');
}

function checkStatement(s: PolicyStatement, path: Segment[], allowBroadWildcard: boolean, add: Add): void {
  if ((s.Action === undefined) === (s.NotAction === undefined)) {
    add(path, 'needs exactly one of Action or NotAction', 'list the actions the task needs under Action');
  }
  if ((s.Resource === undefined) === (s.NotResource === undefined)) {
    add(path, 'needs exactly one of Resource or NotResource', 'list the resources (ARNs) the task may act on under Resource');
  }
  for (const key of ['Action', 'NotAction'] as const) {
    const value = s[key];
    list(value).forEach((action, i) => {
      const r = checkActionName(action);
      if (!r.ok) add(Array.isArray(value) ? [...path, key, i] : [...path, key], r.message, r.hint);
    });
  }
  for (const key of ['Resource', 'NotResource'] as const) {
    const value = s[key];
    list(value).forEach((resource, i) => {
      const problem = resourceArnProblem(resource);
      if (problem) add(Array.isArray(value) ? [...path, key, i] : [...path, key], problem, 'an ARN is arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE, e.g. arn:aws:s3:::bucket/* or arn:aws:lambda:eu-west-1:123456789012:function:NAME');
    });
  }
  // Every action on every resource, however it is spelt: Action "*" or NotAction (all but a few)
  // with Resource "*" or NotResource (all but a few). NotAction with Resource "*" is the classic way
  // round an Action "*" check (IAM User Guide, "NotAction": "allows everything except").
  if (s.Effect === 'Allow' && !allowBroadWildcard) {
    const actions = s.NotAction !== undefined ? 'NotAction' : list(s.Action).some((a) => a === '*' || a === '*:*') ? 'Action' : undefined;
    const resources = s.NotResource !== undefined ? 'NotResource' : list(s.Resource).some(isEveryResource) ? 'Resource' : undefined;
    if (actions && resources) {
      const how = actions === 'Action' && resources === 'Resource' ? '' : ` (${actions === 'NotAction' ? 'NotAction: every action but those listed' : 'Action "*"'}, ${resources === 'NotResource' ? 'NotResource: every resource but those listed' : 'on Resource "*"'})`;
      add([...path, actions], `allows every action on every resource${how}`,
        'list the actions and resources the task needs; if full access is really meant, set aws.allowBroadWildcard: true');
    }
  }
}

/** `*`, or an ARN of wildcards only (`arn:aws:*:*:*:*`, `arn:*:*`): matches every resource. */
function isEveryResource(r: string): boolean {
  return r === '*' || /^arn:(\*|aws[a-z-]*)(:\*)+$/.test(r);
}

/** A segment holding a placeholder is only known when the request is built: not judged here. */
const PLACEHOLDER_IN = /\$\{[^}]*\}/;
/** Segment patterns; IAM's wildcards (`*`, `?`) may stand in any of them. */
const ARN_PARTITION_RE = /^(aws[a-z-]*|[a-z*?-]*[*?][a-z*?-]*)$/;
const ARN_SERVICE_RE = /^[a-z0-9*?][a-z0-9*?-]*$/;
const ARN_REGION_RE = /^[a-z0-9*?-]*$/;
const ARN_ACCOUNT_RE = /^(|\d{12}|aws|(?=.*[*?])[0-9*?]{1,12})$/;

/**
 * A Resource that starts with `arn:` must be an ARN: arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE
 * (IAM User Guide, "Amazon Resource Names"; the resource part may hold more colons). A malformed one
 * matches nothing, so the task silently lacks the access it was written for. Segments with IAM
 * wildcards or a placeholder (`${param.x}`, `${aws:username}`) are accepted as they are: their value
 * is only known when the request is built.
 */
function resourceArnProblem(r: string): string | undefined {
  if (!r.startsWith('arn:')) return undefined;
  // `${aws:username}` has a colon of its own: placeholders are blanked out before splitting.
  const parts = r.replace(PLACEHOLDER_RE, '${}').split(':');
  if (parts.length < 6) return `"${r}" is not an ARN: it has ${parts.length - 1} colon(s), an ARN has at least 5 (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)`;
  const [, partition, service, region, account] = parts as [string, string, string, string, string];
  const resource = parts.slice(5).join(':');
  const known = (seg: string) => !PLACEHOLDER_IN.test(seg);
  if (known(partition) && !ARN_PARTITION_RE.test(partition)) return `the partition "${partition}" in "${r}" is not an AWS partition (aws, aws-cn, aws-us-gov, …)`;
  if (known(service) && !ARN_SERVICE_RE.test(service)) return `the service "${service}" in "${r}" is not an AWS service namespace (lower case, e.g. s3, lambda, logs)`;
  if (known(region) && !ARN_REGION_RE.test(region)) return `the region "${region}" in "${r}" is not an AWS region (e.g. eu-west-1, or empty for global services)`;
  if (known(account) && !ARN_ACCOUNT_RE.test(account)) return `the account "${account}" in "${r}" is not a 12-digit AWS account ID (or empty, or aws)`;
  if (resource === '') return `"${r}" names no resource after the account`;
  return undefined;
}
