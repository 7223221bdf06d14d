/**
 * Evaluates a rendered session policy for one request, offline, with @cloud-copilot/iam-simulate:
 * would a credential issued with this policy be allowed `action` on `resource`? The session policy
 * alone decides here (the role's own policies are taken to allow everything), so "allowed" means
 * the session policy does not stop it; AWS further intersects it with the role's identity policies,
 * permission boundary, SCPs, RCPs and the resource's own policy, which this does not see.
 *
 * iam-simulate is AGPL-3.0 (this project is Apache-2.0), so it is not installed with the broker:
 * it is loaded on first use, and its absence is a clear error that says how to install it.
 */
import type * as IamSimulate from '@cloud-copilot/iam-simulate';
import { BrokerError } from '../errors.js';
import { ROLE_ARN_RE } from '../limits/aws.js';
import { checkActionName } from './iam-actions.js';
import type { AssumeRoleRequest } from './render.js';

export interface SimulatedRequest {
  /** One action, `service:Action`, no wildcards. */
  action: string;
  /** One resource ARN, or `*` for actions that take no resource. */
  resource: string;
  /** Request context keys (`s3:prefix`, `aws:SourceIp` …) besides those the session itself sets. */
  context: Record<string, string | string[]>;
}

export interface DecidingStatement {
  /** 0-based, as in the template's field paths (`aws.policy.Statement[1]`). */
  index: number;
  sid: string | undefined;
  effect: 'Allow' | 'Deny';
}

export interface SessionPolicyDecision {
  decision: 'allowed' | 'denied';
  /** iam-simulate's result: an explicit Deny, or no Allow at all. */
  result: 'Allowed' | 'ExplicitlyDenied' | 'ImplicitlyDenied';
  /** The Deny statements for an explicit deny, the Allow statements for an allow; none for an implicit deny. */
  decidedBy: DecidingStatement[];
  /** The assumed-role session ARN the request was evaluated as. */
  principal: string;
  /** Every context key the evaluation saw: the session's own (tags, SourceIdentity …) and the given ones. */
  context: Record<string, string | string[]>;
  /** Given context keys the evaluator dropped because they do not apply to this action. */
  ignoredContextKeys: string[];
  /** Condition keys of statements that matched the action and resource but were not in the context. */
  missingConditionKeys: string[];
}

/** The session's principal: `arn:aws:sts::ACCOUNT:assumed-role/ROLE-NAME/SESSION-NAME` (the role path is dropped). */
export function assumedRoleArn(roleArn: string, roleSessionName: string): string {
  if (!ROLE_ARN_RE.test(roleArn)) throw new TypeError(`not a role ARN: ${roleArn}`);
  const [, partition, , , account, resource] = roleArn.split(':') as [string, string, string, string, string, string];
  const roleName = resource.split('/').at(-1)!;
  return `arn:${partition}:sts::${account}:assumed-role/${roleName}/${roleSessionName}`;
}

/**
 * The context keys AWS sets for every request made with these credentials: the session tags as
 * `aws:PrincipalTag/KEY`, `aws:SourceIdentity`, the role as `aws:PrincipalArn` and its account
 * (IAM User Guide, "AWS global condition context keys").
 */
export function sessionContext(req: AssumeRoleRequest): Record<string, string> {
  const account = req.RoleArn.split(':')[4]!;
  return {
    'aws:PrincipalArn': req.RoleArn,
    'aws:PrincipalAccount': account,
    'aws:SourceIdentity': req.SourceIdentity,
    ...Object.fromEntries(req.Tags.map((t) => [`aws:PrincipalTag/${t.Key}`, t.Value ?? ''])),
  };
}

let simulator: typeof IamSimulate | undefined;

async function loadSimulator(): Promise<typeof IamSimulate> {
  if (simulator) return simulator;
  try {
    simulator = await import('@cloud-copilot/iam-simulate');
    return simulator;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw e;
    throw new BrokerError('invalid_config', 'the policy evaluator @cloud-copilot/iam-simulate is not installed', {
      hint: 'it is AGPL-3.0, so it does not come with the broker: install it beside the broker (npm install @cloud-copilot/iam-simulate, or npm install -g for a global broker)',
    });
  }
}

export async function evaluateSessionPolicy(req: AssumeRoleRequest, request: SimulatedRequest): Promise<SessionPolicyDecision> {
  checkAction(request.action);
  checkResource(request.resource);
  const sim = await loadSimulator();
  if (request.resource === '*') {
    const [service, name] = request.action.split(':') as [string, string];
    if (!(await sim.isWildcardOnlyAction(service.toLowerCase(), name))) {
      throw new BrokerError('invalid_request', `${request.action} acts on resources: name one instead of *`, {
        hint: 'e.g. arn:aws:s3:::bucket/key for s3:GetObject; the Service Authorization Reference lists each action\'s resource types',
      });
    }
  }
  const principal = assumedRoleArn(req.RoleArn, req.RoleSessionName);
  const context = { ...sessionContext(req), ...request.context };
  const account = req.RoleArn.split(':')[4]!;
  const resourceAccount = /^arn:[^:]*:[^:]*:[^:]*:(\d{12}):/.exec(request.resource)?.[1] ?? account;
  const result = await sim.runSimulation({
    request: { principal, action: request.action, resource: { resource: request.resource, accountId: resourceAccount }, contextVariables: context },
    sessionPolicy: JSON.parse(req.Policy),
    // The role's own policies are not known here: taken to allow everything, so the session policy decides.
    identityPolicies: [{ name: 'RoleAllowsEverything', policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] } }],
    serviceControlPolicies: [],
    resourceControlPolicies: [],
  }, {});
  if (result.resultType === 'error') throw simulationError(result.errors, request);
  const single = result.resultType === 'single' ? result.result : result.results[0];
  const session = single?.analysis.sessionAnalysis;
  if (!single || !session) throw new BrokerError('internal', 'the policy evaluator returned no analysis of the session policy');
  const overall = result.overallResult;
  const deciding = overall === 'ExplicitlyDenied' ? session.denyStatements : overall === 'Allowed' ? session.allowStatements : [];
  const missing = new Set<string>();
  for (const s of [...session.allowStatements, ...session.denyStatements, ...session.unmatchedStatements]) {
    if (!s.actionMatch || !s.resourceMatch) continue;
    for (const c of s.explain.conditions ?? []) if (c.failedBecauseMissing || c.matchedBecauseMissing) missing.add(c.conditionKeyValue);
  }
  return {
    decision: overall === 'Allowed' ? 'allowed' : 'denied',
    result: overall,
    decidedBy: deciding.map((s) => ({ index: s.statement.index() - 1, sid: s.statement.sid(), effect: s.statement.isAllow() ? 'Allow' : 'Deny' })),
    principal,
    context,
    ignoredContextKeys: (single.ignoredContextKeys ?? []).filter((k) => Object.keys(request.context).some((g) => g.toLowerCase() === k.toLowerCase())),
    missingConditionKeys: [...missing],
  };
}

/** One action, spelt as IAM knows it: a request has no wildcard action. */
function checkAction(action: string): void {
  if (/[*?]/.test(action)) {
    throw new BrokerError('invalid_request', `the action "${action}" has a wildcard; a request is one action`, { hint: 'e.g. --action s3:GetObject' });
  }
  const r = checkActionName(action);
  if (!r.ok) throw new BrokerError('invalid_request', r.message, r.hint ? { hint: r.hint } : {});
}

/**
 * One resource: an ARN, or `*` alone (what a request to an action without resource types names).
 * A pattern such as `arn:aws:s3:::bucket/*` would ask "is some matching resource allowed", which
 * is not what a credential is asked for.
 */
function checkResource(resource: string): void {
  if (resource === '*') return;
  if (!resource.startsWith('arn:')) {
    throw new BrokerError('invalid_request', `the resource "${resource}" is not an ARN`, { hint: 'e.g. arn:aws:s3:::bucket/key, or * for an action that takes no resource' });
  }
  if (/[*?]/.test(resource)) {
    throw new BrokerError('invalid_request', `the resource "${resource}" has a wildcard; a request names one resource`, { hint: 'name one object, function or log group, e.g. arn:aws:s3:::bucket/key' });
  }
}

function simulationError(errors: IamSimulate.SimulationErrors, request: SimulatedRequest): BrokerError {
  switch (errors.message) {
    case 'invalid.action':
      return new BrokerError('invalid_request', `"${request.action}" is not an IAM action`, { hint: 'write service:Action, e.g. s3:GetObject' });
    case 'no.resource.types':
      return new BrokerError('invalid_request', `${request.action} does not act on "${request.resource}"`, {
        hint: 'give an ARN of a resource type the action takes (the Service Authorization Reference lists them), e.g. arn:aws:s3:::bucket/key for s3:GetObject, or * for an action that takes no resource',
      });
    default: {
      const policyErrors = errors.sessionPolicyErrors?.map((e) => `${e.path}: ${e.message}`) ?? [];
      if (policyErrors.length) {
        return new BrokerError('invalid_template', 'the rendered session policy is not one the evaluator accepts', {
          details: policyErrors.map((message) => ({ message })),
        });
      }
      return new BrokerError('invalid_request', `the policy evaluator refused the request (${errors.message})`, {
        hint: 'check the --action, --resource and --context values',
      });
    }
  }
}
