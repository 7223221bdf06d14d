/**
 * Where the task-session domain gets AWS credentials: an interface, so the domain holds no AWS SDK
 * client. Two implementations, chosen per template by `aws.via` (wired in broker/server/start.ts):
 * STS AssumeRole with the broker's own AWS credentials (broker/aws/sts-issuer.ts), and
 * AssumeRoleWithWebIdentity with a token the broker signs, so that it holds no AWS keys at all
 * (broker/aws/web-identity-issuer.ts).
 */
import type { AssumeRoleRequest } from '../templates/render.js';

/** Temporary AWS credentials. `secretAccessKey` and `sessionToken` are secrets: memory only, never logged or stored. */
export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: Date;
  /** From the assumed-role ARN; botocore reads AccountId from credential_process output. */
  accountId?: string | undefined;
  assumedRoleArn?: string | undefined;
}

/** How a template's credentials are obtained: `aws.via` of the template, else the service's `aws.via`. */
export type AwsVia = 'assume-role' | 'web-identity';
export const AWS_VIAS = ['assume-role', 'web-identity'] as const satisfies readonly AwsVia[];

/** What the request is for, beyond the STS parameters: the web-identity token's subject needs it. */
export interface IssueTarget {
  via: AwsVia;
  template: string;
  sessionId: string;
}

export interface AwsCredentialIssuer {
  /**
   * Credentials for exactly this request (role, session name, source identity, tags, session policy,
   * duration). Fails with a BrokerError: `upstream_unavailable` when AWS cannot be reached or did
   * not answer in time, `upstream_error` with AWS's own error name and message otherwise.
   */
  issue(request: AssumeRoleRequest, target: IssueTarget): Promise<AwsCredentials>;
}
