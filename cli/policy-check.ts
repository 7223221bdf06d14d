import type { Command } from 'commander';
import { makeIamClient, makeStsClient } from '../broker/aws/clients.js';
import { checkRevocationAccess, type RevocationAccessFinding } from '../broker/aws/revocation-check.js';
import { checkRoleTrust, resolveBrokerPrincipal, type TrustFinding } from '../broker/aws/trust-check.js';
import { BrokerError, EXIT_NO } from '../broker/errors.js';
import { brokerUrlProblem } from '../broker/limits/urls.js';
import type { AwsVia } from '../broker/sessions/aws-credential-issuer.js';
import { loadTemplatesOrThrow } from '../broker/templates/load.js';
import type { TaskTemplate } from '../broker/templates/schema.js';
import { action, out, printJson } from './output.js';

interface Options { aws?: boolean; dir: string; region?: string; endpointUrl?: string; json?: boolean; issuer?: string; via: string }

export function register(policy: Command): void {
  policy
    .command('check')
    .description("check the cloud side of each template: with --aws, that its IAM role trusts the broker for sts:AssumeRole, sts:TagSession and sts:SetSourceIdentity (with aws.via web-identity: its OIDC provider, for sts:AssumeRoleWithWebIdentity, with aud sts.amazonaws.com), that its MaxSessionDuration covers the template's credential lifetime, and that the broker can write the broker-revoked-sessions deny on it")
    .option('--aws', 'check the IAM roles (reads them with your AWS credentials: iam:GetRole, iam:GetRolePolicy, iam:SimulatePrincipalPolicy, sts:GetCallerIdentity)')
    .option('--dir <dir>', 'directory of task templates', 'policies')
    .option('--region <region>', 'AWS region for STS and IAM (default: $AWS_REGION, else us-east-1)')
    .option('--endpoint-url <url>', 'STS and IAM endpoint override (a private endpoint, or moto in tests)')
    .option('--issuer <url>', "the broker's publicUrl, its OIDC issuer: needed for templates that use aws.via web-identity, whose roles must trust its IAM OIDC provider")
    .option('--via <via>', "the service's aws.via, for templates that name none: assume-role or web-identity", 'assume-role')
    .option('--json', 'print {brokerPrincipalArn, findings} as JSON on stdout')
    .action(action(async (opts: Options) => {
      if (!opts.aws) {
        throw new BrokerError('invalid_request', 'policy check needs a target: --aws', {
          hint: `broker policy check --aws --dir ${opts.dir} reads each template's IAM role with your AWS credentials and reports missing trust (sts:AssumeRole, sts:TagSession, sts:SetSourceIdentity) or a too short MaxSessionDuration`,
        });
      }
      if (opts.via !== 'assume-role' && opts.via !== 'web-identity') {
        throw new BrokerError('invalid_request', `--via must be assume-role or web-identity (got ${JSON.stringify(opts.via)})`, { hint: "give the service's aws.via setting" });
      }
      const defaultVia: AwsVia = opts.via;
      const templates = loadTemplatesOrThrow(opts.dir);
      const viaOf = (t: TaskTemplate): AwsVia => t.aws?.via ?? defaultVia;
      const web = [...templates.values()].filter((t) => t.aws && viaOf(t) === 'web-identity').map((t) => t.name);
      if (web.length && !opts.issuer) {
        throw new BrokerError('invalid_request', `templates use aws.via web-identity (${web.join(', ')}): give --issuer`, {
          hint: "their roles trust the broker's IAM OIDC provider, named after its issuer: --issuer <the service's publicUrl>, e.g. --issuer https://broker.example.com",
        });
      }
      const issuerProblem = opts.issuer ? brokerUrlProblem(opts.issuer) : undefined;
      if (issuerProblem) throw new BrokerError('invalid_request', `--issuer ${issuerProblem.problem}`, { hint: issuerProblem.fix });
      const region = opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
      const sts = makeStsClient({ region, endpoint: opts.endpointUrl });
      const iam = makeIamClient({ region, endpoint: opts.endpointUrl });
      try {
        const brokerPrincipalArn = await resolveBrokerPrincipal(sts);
        const all = [...templates.values()];
        const roles = all.flatMap((t) => (t.aws ? [{ template: t.name, roleArn: t.aws.roleArn, durationSeconds: t.credentialLifetimeSeconds, via: viaOf(t) }] : []));
        const findings = await checkRoleTrust({ iam, brokerPrincipalArn, roles, issuer: opts.issuer?.replace(/\/$/, '') });
        const revocation = await checkRevocationAccess({ iam, brokerPrincipalArn, roles });
        if (opts.json) printJson({ brokerPrincipalArn, findings, revocation });
        else {
          report(brokerPrincipalArn, findings, all.filter((t) => !t.aws).map((t) => t.name));
          reportRevocation(revocation);
        }
        // Roles that need changes are the answer, not a failure of the command: exit 1.
        if (findings.some((f) => !f.ok) || revocation.some((f) => !f.ok)) process.exitCode = EXIT_NO;
      } finally {
        sts.destroy();
        iam.destroy();
      }
    }));
}

function report(brokerPrincipalArn: string, findings: TrustFinding[], withoutAws: string[]): void {
  out(`broker principal: ${brokerPrincipalArn}`);
  for (const f of findings) {
    out(`${f.ok ? 'ok  ' : 'FAIL'} ${f.template}  ${f.roleArn}`);
    for (const p of f.problems) {
      out(`     [${p.check}] ${p.message}`);
      out(`       fix: ${p.hint}`);
    }
    for (const n of f.notes) out(`     note: ${n}`);
  }
  if (withoutAws.length) out(`no aws section (not checked): ${withoutAws.join(', ')}`);
  const bad = findings.filter((f) => !f.ok).length;
  out(bad ? `${bad} of ${findings.length} template role(s) need changes` : `all ${findings.length} template role(s) trust the broker`);
}

/** Says how each role was checked: a simulated verdict, a read only, or nothing. */
function reportRevocation(findings: RevocationAccessFinding[]): void {
  if (!findings.length) return;
  out('revocation deny (broker-revoked-sessions):');
  for (const f of findings) {
    const label = !f.ok ? 'FAIL' : f.method === 'simulated' ? 'ok  ' : 'part';
    out(`${label} ${f.roleArn}  (${f.templates.join(', ')}; checked: ${f.method})`);
    for (const p of f.problems) {
      out(`     [${p.action}] ${p.message}`);
      out(`       fix: ${p.hint}`);
    }
    for (const n of f.notes) out(`     note: ${n}`);
  }
}
