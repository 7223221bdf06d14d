import { AssumeRoleWithWebIdentityCommand, type STSClient } from '@aws-sdk/client-sts';
import { BrokerError } from '../errors.js';
import type { WebIdentityTokens } from '../identity/web-identity-tokens.js';
import type { AwsCredentialIssuer, AwsCredentials, AwsVia, IssueTarget } from '../sessions/aws-credential-issuer.js';
import type { AssumeRoleRequest } from '../templates/render.js';
import { sendBounded } from './clients.js';
import { wrapStsError } from './sts-issuer.js';

/**
 * The task-session domain's AWS credentials from STS AssumeRoleWithWebIdentity, with a JWT the broker
 * signs for each issuance: no AWS credentials of the broker's own, so no role chaining and its 1 h
 * cap. The request is the one AssumeRole would get (Policy, PolicyArns, DurationSeconds,
 * RoleSessionName); tags and SourceIdentity, which this call takes no parameter for, travel in the
 * token's claims (web-identity-tokens.ts).
 */
export class WebIdentityCredentialIssuer implements AwsCredentialIssuer {
  constructor(private readonly sts: STSClient, private readonly tokens: WebIdentityTokens, private readonly timeoutMs: number) {}

  async issue(request: AssumeRoleRequest, target: IssueTarget): Promise<AwsCredentials> {
    const token = await this.tokens.sign({
      template: target.template, sessionId: target.sessionId, sourceIdentity: request.SourceIdentity,
      tags: request.Tags, transitiveTagKeys: request.TransitiveTagKeys ?? [],
    });
    const signal = AbortSignal.timeout(this.timeoutMs);
    let out;
    try {
      out = await sendBounded((o) => this.sts.send(new AssumeRoleWithWebIdentityCommand({
        RoleArn: request.RoleArn,
        RoleSessionName: request.RoleSessionName,
        WebIdentityToken: token,
        Policy: request.Policy,
        ...(request.PolicyArns ? { PolicyArns: request.PolicyArns } : {}),
        DurationSeconds: request.DurationSeconds,
      }), o), signal);
    } catch (e) {
      if (signal.aborted) {
        throw new BrokerError('upstream_unavailable', `STS did not answer AssumeRoleWithWebIdentity within ${this.timeoutMs / 1000}s`, { cause: e, hint: 'check aws.stsEndpoint / network (aws.requestTimeoutMs sets this bound)' });
      }
      throw wrapStsError(e, 'AssumeRoleWithWebIdentity');
    }
    const c = out.Credentials;
    if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
      throw new BrokerError('upstream_error', 'STS AssumeRoleWithWebIdentity returned no credentials');
    }
    const arn = out.AssumedRoleUser?.Arn;
    return {
      accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.SessionToken, expiration: c.Expiration,
      accountId: arn?.split(':')[4], assumedRoleArn: arn,
    };
  }
}

/** Sends each request to the issuer of its `via`; a via the service has no issuer for is a configuration error. */
export class RoutedCredentialIssuer implements AwsCredentialIssuer {
  constructor(private readonly issuers: Partial<Record<AwsVia, AwsCredentialIssuer>>) {}

  issue(request: AssumeRoleRequest, target: IssueTarget): Promise<AwsCredentials> {
    const issuer = this.issuers[target.via];
    if (!issuer) {
      return Promise.reject(new BrokerError('invalid_config', `task template "${target.template}" uses aws.via ${target.via}, which this service is not set up for`, {
        hint: 'an admin sets aws.webIdentity.signingKeys in the service configuration (README, "A broker without AWS keys"), or sets the template\'s aws.via to assume-role',
      }));
    }
    return issuer.issue(request, target);
  }
}
