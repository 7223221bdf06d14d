/**
 * `broker policy check --aws`, revocation part: can the broker write the `broker-revoked-sessions`
 * deny (broker/aws/role-revocations.ts) on each template role? It needs iam:GetRolePolicy,
 * iam:PutRolePolicy and iam:DeleteRolePolicy on the role (deploy/iam/broker-revocation-policy.json).
 *
 * First choice: IAM's policy simulator (iam:SimulatePrincipalPolicy) on the broker's own principal,
 * which evaluates its identity policies, permissions boundary and the organization's SCPs for the
 * three actions on the role, without writing anything. Where the simulator cannot be used (the
 * caller may not call it, the broker is an account root, or the endpoint does not implement it, as
 * moto does not), the check falls back to what can be tried without changing the role: reading the
 * policy with GetRolePolicy. Writes are then not verified, and the finding says so.
 */
import { GetRolePolicyCommand, SimulatePrincipalPolicyCommand, type IAMClient } from '@aws-sdk/client-iam';
import { sendBounded } from './clients.js';
import { REVOCATION_POLICY_NAME } from './role-revocations.js';
import { parsePrincipalArn, trustPrincipalFor } from './trust-check.js';

export const REVOCATION_ACTIONS = ['iam:GetRolePolicy', 'iam:PutRolePolicy', 'iam:DeleteRolePolicy'] as const;

export interface RevocationAccessFinding {
  roleArn: string;
  templates: string[];
  /**
   * `simulated`: the three actions evaluated by IAM's policy simulator; `read`: only GetRolePolicy
   * tried (writes not verified); `not-checked`: nothing could be tried from here.
   */
  method: 'simulated' | 'read' | 'not-checked';
  /** False only when a needed action is known to be refused. */
  ok: boolean;
  problems: { action: string; message: string; hint: string }[];
  notes: string[];
}

const TIMEOUT_MS = 15_000;

function grantHint(roleArn: string, actions: readonly string[]): string {
  return `allow ${actions.join(', ')} on ${roleArn} to the broker's principal (deploy/iam/broker-revocation-policy.json)`;
}

export async function checkRevocationAccess(opts: { iam: IAMClient; brokerPrincipalArn: string; roles: { template: string; roleArn: string }[] }): Promise<RevocationAccessFinding[]> {
  const byRole = new Map<string, string[]>();
  for (const r of opts.roles) byRole.set(r.roleArn, [...(byRole.get(r.roleArn) ?? []), r.template]);
  const broker = parsePrincipalArn(opts.brokerPrincipalArn);
  const out: RevocationAccessFinding[] = [];
  for (const [roleArn, templates] of byRole) {
    const f: RevocationAccessFinding = { roleArn, templates, method: 'not-checked', ok: true, problems: [], notes: [] };
    out.push(f);
    if (roleArn.split(':')[4] !== broker.account) {
      f.notes.push(`cross-account role: the broker writes the deny with its own credentials only in account ${broker.account}; not checked`);
      continue;
    }
    if (await simulate(opts.iam, opts.brokerPrincipalArn, roleArn, f)) continue;
    await tryRead(opts.iam, roleArn, f);
  }
  return out;
}

/** True when the simulator answered (and `f` holds its verdict). */
async function simulate(iam: IAMClient, brokerArn: string, roleArn: string, f: RevocationAccessFinding): Promise<boolean> {
  const source = trustPrincipalFor(brokerArn);
  if (source.endsWith(':root')) {
    f.notes.push('the broker runs as the account root, which the policy simulator cannot evaluate (and which should not run the broker)');
    return false;
  }
  try {
    const r = await sendBounded((o) => iam.send(new SimulatePrincipalPolicyCommand({
      PolicySourceArn: source, ActionNames: [...REVOCATION_ACTIONS], ResourceArns: [roleArn],
    }), o), AbortSignal.timeout(TIMEOUT_MS));
    const results = r.EvaluationResults ?? [];
    const refused = REVOCATION_ACTIONS.filter((a) => results.find((x) => x.EvalActionName?.toLowerCase() === a.toLowerCase())?.EvalDecision !== 'allowed');
    f.method = 'simulated';
    for (const a of refused) {
      const d = results.find((x) => x.EvalActionName?.toLowerCase() === a.toLowerCase())?.EvalDecision ?? 'no result';
      f.problems.push({ action: a, message: `${source} may not call ${a} on the role (policy simulator: ${d})`, hint: grantHint(roleArn, refused) });
    }
    f.ok = refused.length === 0;
    f.notes.push(`evaluated by IAM's policy simulator for ${source} (its identity policies, permissions boundary and SCPs; not the role's own policies)`);
    return true;
  } catch (e) {
    const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
    f.notes.push(`the IAM policy simulator could not be used (${err.name ?? 'Error'}${err.$metadata?.httpStatusCode ? `, HTTP ${err.$metadata.httpStatusCode}` : ''}); only reading the policy was tried`);
    return false;
  }
}

async function tryRead(iam: IAMClient, roleArn: string, f: RevocationAccessFinding): Promise<void> {
  const RoleName = roleArn.slice(roleArn.lastIndexOf('/') + 1);
  f.method = 'read';
  try {
    await sendBounded((o) => iam.send(new GetRolePolicyCommand({ RoleName, PolicyName: REVOCATION_POLICY_NAME }), o), AbortSignal.timeout(TIMEOUT_MS));
    f.notes.push(`iam:GetRolePolicy works (a ${REVOCATION_POLICY_NAME} policy is in place)`);
  } catch (e) {
    const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    if (/^NoSuchEntity/.test(err.name ?? '')) {
      // IAM answers NoSuchEntity after authorizing the call: the read is allowed (or the role is
      // missing, which the trust check above reports).
      f.notes.push(`iam:GetRolePolicy works (no ${REVOCATION_POLICY_NAME} policy yet)`);
    } else if (/AccessDenied/.test(err.name ?? '')) {
      f.ok = false;
      f.problems.push({ action: 'iam:GetRolePolicy', message: `not allowed to read the role's ${REVOCATION_POLICY_NAME} policy: ${err.message ?? err.name}`, hint: grantHint(roleArn, REVOCATION_ACTIONS) });
      return;
    } else {
      f.method = 'not-checked';
      f.notes.push(`iam:GetRolePolicy failed (${err.name ?? 'Error'}: ${err.message ?? ''}); nothing verified`);
      return;
    }
  }
  f.notes.push('iam:PutRolePolicy and iam:DeleteRolePolicy not verified: they cannot be tried without changing the role');
}
