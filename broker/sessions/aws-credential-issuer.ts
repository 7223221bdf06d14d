/**
 * Where the task-session domain gets AWS credentials: an interface, so the domain holds no AWS SDK
 * client. Today's implementation is STS AssumeRole with the broker's own AWS credentials
 * (broker/aws/sts-issuer.ts, wired in broker/server/start.ts); AssumeRoleWithWebIdentity with a token
 * the broker signs, so that it holds no AWS keys at all, would be another.
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

export interface AwsCredentialIssuer {
  /**
   * Credentials for exactly this request (role, session name, source identity, tags, session policy,
   * duration). Fails with a BrokerError: `upstream_unavailable` when AWS cannot be reached or did
   * not answer in time, `upstream_error` with AWS's own error name and message otherwise.
   */
  issue(request: AssumeRoleRequest): Promise<AwsCredentials>;
}
