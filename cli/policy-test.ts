import type { Command } from 'commander';
import { BrokerError, EXIT_NO, EXIT_OK } from '../broker/errors.js';
import { buildAssumeRoleRequest, newSessionId, SESSION_ID_RE } from '../broker/templates/render.js';
import type { TaskTemplate } from '../broker/templates/schema.js';
import { evaluateSessionPolicy, type SessionPolicyDecision } from '../broker/templates/simulate.js';
import { action, collectParam, printJson } from './output.js';
import { asCliError, findTemplate } from './policy-lookup.js';

/*
 * Exit codes: 0 allowed, 1 denied; when the question cannot be answered (unknown or broken
 * template, a bad parameter, action, resource or option, no evaluator), the error's code, which is
 * never 0 or 1 (README "Exit codes"): a script can tell "denied" from "asked wrongly".
 */

/** Said with every answer: what this offline evaluation does not see. */
export const SCOPE_NOTE = 'this evaluates the session policy alone: AWS also intersects it with the role\'s identity policies, its permission boundary, SCPs, RCPs and the resource\'s own policy, which this offline check does not see; "allowed" means only that the session policy does not stop the request';

interface Options {
  as: string;
  param?: Record<string, string>;
  action: string;
  resource: string;
  context?: Record<string, string | string[]>;
  session?: string;
  agent: string;
  dir: string;
  json?: boolean;
}

export function register(policy: Command): void {
  policy
    .command('test')
    .description("evaluate a template's rendered session policy, offline, for one action on one resource: prints allowed or denied and the statement that decided; exit 0 allowed, 1 denied, 2 or more when it cannot answer (see README \"Exit codes\")")
    .argument('<template>', 'task template name')
    .requiredOption('--as <email>', 'the developer, whose identity fills ${developer} (whether they may start the task: broker policy explain)')
    .option('--param <name=value>', 'a template parameter (repeatable)', collectParam, {})
    .requiredOption('--action <service:Action>', 'one IAM action, e.g. s3:GetObject (no wildcards)')
    .requiredOption('--resource <arn>', 'one resource ARN, e.g. arn:aws:s3:::bucket/key, or * for an action that takes no resource')
    .option('--context <key=value>', 'a request condition key, e.g. s3:prefix=builds/ (repeatable; the same key twice makes a list)', collectContext, {})
    .option('--session <id>', 'the task session id for ${session} (10 chars of a-z and 2-7; default: a random sample)')
    .option('--agent <name>', 'agent name for the broker:agent tag', 'unspecified')
    .option('--dir <dir>', 'directory of task templates', 'policies')
    .option('--json', 'print the decision as JSON on stdout')
    .action(action(async (name: string, opts: Options) => {
      const answer = await test(name, opts);
      if (opts.json) printJson(answer);
      else process.stdout.write(text(answer));
      process.exitCode = answer.decision === 'allowed' ? EXIT_OK : EXIT_NO;
    }));
}

interface Answer extends SessionPolicyDecision {
  template: string;
  file: string;
  action: string;
  resource: string;
  sessionId: string;
  decidedBy: (SessionPolicyDecision['decidedBy'][number] & { path: string })[];
  scope: string;
}

async function test(name: string, opts: Options): Promise<Answer> {
  const t = findTemplate(opts.dir, name);
  if (!t.aws) {
    throw new BrokerError('invalid_request', `task template "${t.name}" grants no AWS credentials: there is no session policy to test`, {
      hint: 'its Vault token request is shown by: broker policy explain',
    });
  }
  const sessionId = opts.session ?? newSessionId();
  if (!SESSION_ID_RE.test(sessionId)) {
    throw new BrokerError('invalid_request', `--session "${sessionId}" is not a task session id`, { hint: '10 chars of a-z and 2-7, e.g. abcdefgh23' });
  }
  let request;
  try {
    request = buildAssumeRoleRequest(t, { developer: opts.as, sessionId, agent: opts.agent, params: opts.param ?? {} }, t.credentialLifetimeSeconds);
  } catch (e) {
    throw asCliError(e);
  }
  const decision = await evaluateSessionPolicy(request, { action: opts.action, resource: opts.resource, context: opts.context ?? {} });
  return {
    template: t.name,
    file: t.file,
    action: opts.action,
    resource: opts.resource,
    sessionId,
    ...decision,
    decidedBy: decision.decidedBy.map((s) => ({ ...s, path: statementPath(t, s.index) })),
    scope: SCOPE_NOTE,
  };
}

function statementPath(t: TaskTemplate, index: number): string {
  return Array.isArray(t.aws?.policy.Statement) ? `aws.policy.Statement[${index}]` : 'aws.policy.Statement';
}

/** `--context k=v`, repeatable; a key given twice becomes a list (multi-valued keys such as aws:TagKeys). */
function collectContext(value: string, previous: Record<string, string | string[]> = {}): Record<string, string | string[]> {
  const eq = value.indexOf('=');
  const key = eq > 0 ? value.slice(0, eq) : '';
  if (!/^[A-Za-z0-9-]+:[^=]+$/.test(key)) {
    throw new BrokerError('invalid_request', `--context "${value}" is not of the form service:key=value`, { hint: 'e.g. --context s3:prefix=builds/' });
  }
  const v = value.slice(eq + 1);
  const had = previous[key];
  return { ...previous, [key]: had === undefined ? v : [...(Array.isArray(had) ? had : [had]), v] };
}

function text(a: Answer): string {
  const what = `${a.action} on ${a.resource}`;
  const by = a.decidedBy.map((s) => `${s.path}${s.sid ? ` (Sid ${s.sid})` : ''}`).join(', ');
  const lines = [
    a.result === 'Allowed' ? `allowed: ${what}` : `denied: ${what}`,
    a.result === 'Allowed' ? `  allowed by ${by} of ${a.template} (${a.file})`
      : a.result === 'ExplicitlyDenied' ? `  denied by ${by} (an explicit Deny) of ${a.template} (${a.file})`
        : `  no statement of ${a.template} (${a.file}) allows it (an implicit deny)`,
    `  as ${a.principal} (session ${a.sessionId})`,
  ];
  if (a.missingConditionKeys.length) {
    lines.push(`  note: a statement that names this action and resource conditions on ${a.missingConditionKeys.join(', ')}, not given: evaluated as absent (give it with --context KEY=VALUE)`);
  }
  if (a.ignoredContextKeys.length) lines.push(`  note: ${a.ignoredContextKeys.join(', ')} do not apply to ${a.action}, and were ignored`);
  lines.push(`  scope: ${a.scope}`);
  return `${lines.join('\n')}\n`;
}
