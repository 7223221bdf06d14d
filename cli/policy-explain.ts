import type { Command } from 'commander';
import { formatDuration } from '../broker/duration.js';
import { BrokerError } from '../broker/errors.js';
import { MAX_SESSION_POLICY_CHARS } from '../broker/limits/aws.js';
import { parseSessionTtl, SESSION_TTL_RANGE_MESSAGE } from '../broker/limits/names.js';
import { isAllowed } from '../broker/templates/access.js';
import { plannedDurations } from '../broker/templates/durations.js';
import { buildAssumeRoleRequest, newSessionId, sessionPolicyChars, type AssumeRoleRequest } from '../broker/templates/render.js';
import { buildVaultTokenRequest, type VaultTokenRequest } from '../broker/templates/vault-token-request.js';
import { action, collectParam, printJson } from './output.js';
import { asCliError, findTemplate } from './policy-lookup.js';

interface Options {
  as: string;
  groups?: string;
  param?: Record<string, string>;
  agent: string;
  ttl?: string;
  dir: string;
  json?: boolean;
}

export function register(policy: Command): void {
  policy
    .command('explain')
    .description('show the exact STS AssumeRole request (role, session name, tags, rendered policy, duration) and Vault token request a task would make, without calling AWS or Vault, and whether a person may start it')
    .argument('<template>', 'task template name')
    .requiredOption('--as <email>', 'the developer, as the IdP identifies them')
    .option('--groups <list>', 'their IdP groups, comma-separated', '')
    .option('--param <name=value>', 'a template parameter (repeatable)', collectParam, {})
    .option('--agent <name>', 'agent name for the broker:agent tag', 'unspecified')
    .option('--ttl <duration>', "requested task-session length, as for broker task --ttl, e.g. 30m (default: the template's maxDuration)")
    .option('--dir <dir>', 'directory of task templates', 'policies')
    .option('--json', 'print the explanation as JSON on stdout')
    .action(action((name: string, opts: Options) => {
      const t = findTemplate(opts.dir, name);
      const groups = (opts.groups ?? '').split(',').map((g) => g.trim()).filter(Boolean);
      const allowed = isAllowed(t, { email: opts.as, groups });
      const duration = plannedDurations(t, requestedTtl(opts.ttl));
      const sessionId = newSessionId();
      let request: AssumeRoleRequest | undefined;
      let vaultRequest: VaultTokenRequest | undefined;
      try {
        if (t.aws) request = buildAssumeRoleRequest(t, { developer: opts.as, sessionId, agent: opts.agent, params: opts.param ?? {} }, duration.credentialSeconds);
        if (t.vault) {
          const now = Date.now();
          vaultRequest = buildVaultTokenRequest(t, { developer: opts.as, sessionId, agent: opts.agent, sessionExpiresAt: now + duration.sessionSeconds * 1000, now }, SERVICE_ROLE);
        }
      } catch (e) {
        throw asCliError(e);
      }
      const explanation = {
        template: t.name,
        file: t.file,
        description: t.description,
        principal: { email: opts.as, groups },
        allowed,
        allowedBy: t.allowed,
        sampleSessionId: sessionId,
        region: t.aws?.region ?? null,
        sessionSeconds: duration.sessionSeconds,
        // Offline, without the service's config: what the template leaves to it stays null.
        confirm: {
          mode: t.confirm.mode ?? null, maxAgeSeconds: t.confirm.maxAgeSeconds ?? null, timeoutSeconds: t.confirm.timeoutSeconds ?? null,
          approvers: t.confirm.approvers, approvals: t.confirm.approvals, breakGlass: t.confirm.breakGlass,
        },
        ...(request ? {
          duration: { seconds: request.DurationSeconds, rule: duration.rule },
          policyChars: sessionPolicyChars(request.Policy, t.aws?.managedPolicyArns ?? []),
          policyCharLimit: MAX_SESSION_POLICY_CHARS,
          request,
          // Offline: a template without aws.via takes the service's (assume-role unless configured).
          ...(t.aws?.via ? { via: t.aws.via } : {}),
        } : {}),
        ...(vaultRequest ? { vaultRequest } : {}),
      };
      if (opts.json) printJson(explanation);
      else process.stdout.write(text(explanation));
    }));
}

/** Shown for templates without vault.tokenRole: the role comes from the service's configuration. */
const SERVICE_ROLE = '<vault.tokenRole of the service>';

/**
 * `--ttl` is checked as the service checks the API's `ttl` (templates/durations.ts): what the
 * service would refuse with a 400 is refused here too, never explained as if it worked.
 */
function requestedTtl(ttl: string | undefined): number | undefined {
  if (ttl === undefined) return undefined;
  const s = parseSessionTtl(ttl);
  if (s === undefined) {
    throw new BrokerError('invalid_request', `--ttl "${ttl}" is not a task-session length the service accepts`, {
      details: [{ path: '--ttl', message: SESSION_TTL_RANGE_MESSAGE }],
    });
  }
  return s;
}

interface Explanation {
  template: string; file: string; description: string; principal: { email: string; groups: string[] }; allowed: boolean;
  allowedBy: { groups: string[]; emails: string[] }; sampleSessionId: string; region: string | null; sessionSeconds: number; confirm: ConfirmShown;
  duration?: { seconds: number; rule: string }; policyChars?: number; policyCharLimit?: number; request?: AssumeRoleRequest;
  via?: 'assume-role' | 'web-identity'; vaultRequest?: VaultTokenRequest;
}

interface ConfirmShown {
  mode: 'none' | 'self' | 'approvers' | null; maxAgeSeconds: number | null; timeoutSeconds: number | null;
  approvers: { groups: string[]; emails: string[] }; approvals: number; breakGlass: boolean;
}

/** Who confirms a start, in words (docs/templates.md, "confirm"); null: the service's `confirm` setting. */
function confirmText(c: ConfirmShown): string[] {
  const fresh = c.maxAgeSeconds === null ? "at most the service's confirm.maxAge old (default 5m)"
    : c.maxAgeSeconds === 0 ? 'a new login for the decision' : `at most ${formatDuration(c.maxAgeSeconds)} old`;
  const timeout = c.timeoutSeconds === null ? "the service's confirm.timeout (default 15m)" : formatDuration(c.timeoutSeconds);
  if (c.mode === 'none') return ['Confirm: none: starts at once, no human confirmation (still audited)'];
  const who = c.mode === 'approvers'
    ? `the requester's fresh IdP login and ${c.approvals} approval${c.approvals > 1 ? 's' : ''} by ${[...c.approvers.groups.map((g) => `group ${g}`), ...c.approvers.emails].join(', ')} (never the requester)`
    : c.mode === 'self' ? "the requester's fresh IdP login (step-up)" : "the service's confirm.default (self unless set: the requester's fresh IdP login)";
  return [
    `Confirm: ${c.mode ?? 'service default'}: ${who}`,
    `  IdP login: ${fresh}, made after the request; a request expires after ${timeout}`,
    `  break-glass: ${c.breakGlass ? 'allowed (--break-glass --reason: the requester\'s fresh login, no approver; notified and audited)' : 'not allowed'}`,
  ];
}

function text(x: Explanation): string {
  const who = `${x.principal.email} (groups: ${x.principal.groups.join(', ') || 'none'})`;
  const by = `allowed groups: ${x.allowedBy.groups.join(', ') || 'none'}; emails: ${x.allowedBy.emails.join(', ') || 'none'}`;
  const lines = [
    `${x.template} (${x.file}): ${x.description}`,
    `Access: ${who} ${x.allowed ? 'MAY' : 'may NOT'} start this task (${by})`,
    `Task session: ${formatDuration(x.sessionSeconds)} (${x.sessionSeconds} s)`,
    ...confirmText(x.confirm),
  ];
  const r = x.request;
  if (r && x.duration) {
    lines.push(
      '',
      x.via === 'web-identity'
        ? `AssumeRoleWithWebIdentity request (aws.via web-identity; not sent; sample session id ${x.sampleSessionId}); SourceIdentity, Tags and TransitiveTagKeys go in its token's claims:`
        : `AssumeRole request (not sent; sample session id ${x.sampleSessionId}):`,
      `  RoleArn:           ${r.RoleArn}`,
      `  Region:            ${x.region ?? '-'}`,
      `  RoleSessionName:   ${r.RoleSessionName}`,
      `  SourceIdentity:    ${r.SourceIdentity}`,
      `  DurationSeconds:   ${r.DurationSeconds} (${formatDuration(r.DurationSeconds)}) = ${x.duration.rule}`,
      '  Tags:',
      ...r.Tags.map((t) => `    ${t.Key} = ${t.Value}`),
      `  TransitiveTagKeys: ${r.TransitiveTagKeys?.join(', ') || '(none)'}`,
      `  PolicyArns:        ${r.PolicyArns?.map((p) => p.arn).join(', ') || '(none)'}`,
      `  Policy (${x.policyChars} of ${x.policyCharLimit} chars, minified, with PolicyArns):`,
      ...JSON.stringify(JSON.parse(r.Policy), null, 2).split('\n').map((l) => `    ${l}`),
    );
  }
  const v = x.vaultRequest;
  if (v) {
    lines.push(
      '',
      `Vault token request (not sent; sample session id ${x.sampleSessionId}):`,
      `  POST auth/token/create/${v.role}`,
      `  policies:          ${v.body.policies.join(', ')}${v.body.no_default_policy ? '' : ' (+ default, added by Vault)'}`,
      `  ttl:               ${v.body.ttl} (${formatDuration(v.ttlSeconds)})`,
      `  explicit_max_ttl:  ${v.body.explicit_max_ttl} (${formatDuration(v.explicitMaxTtlSeconds)}; at most the time left in the session)`,
      `  num_uses:          ${v.body.num_uses}${v.body.num_uses === 0 ? ' (unlimited)' : ''}`,
      `  renewable:         ${v.body.renewable}`,
      `  display_name:      ${v.body.display_name}`,
      '  meta:',
      ...Object.entries(v.body.meta).map(([k, val]) => `    ${k} = ${val}`),
    );
  }
  return `${lines.join('\n')}\n`;
}
