import { AssumeRoleCommand, type STSClient } from '@aws-sdk/client-sts';
import { BrokerError } from '../errors.js';
import type { AwsCredentialIssuer, AwsCredentials } from '../sessions/aws-credential-issuer.js';
import type { AssumeRoleRequest } from '../templates/render.js';
import { sendBounded } from './clients.js';

/** The task-session domain's AWS credentials, from STS AssumeRole with the broker's own AWS credentials. */
export class StsCredentialIssuer implements AwsCredentialIssuer {
  /** `timeoutMs` bounds one AssumeRole, the SDK's retries included (aws.requestTimeoutMs). */
  constructor(private readonly sts: STSClient, private readonly timeoutMs: number) {}

  issue(request: AssumeRoleRequest): Promise<AwsCredentials> {
    return assumeRole(this.sts, request, this.timeoutMs);
  }
}

/** STS error names worth a specific hint (AWS STS API Reference, AssumeRole, "Errors", and "Common Errors"). */
const HINTS: Record<string, string> = {
  AccessDenied: "the role's trust policy must let the broker's principal call sts:AssumeRole, sts:TagSession and sts:SetSourceIdentity; run: broker policy check --aws",
  MalformedPolicyDocument: 'the rendered session policy was rejected; run: broker policy explain <template>',
  PackedPolicyTooLarge: 'session policy plus tags exceed the packed size limit; shorten the policy or drop tags',
  RegionDisabled: 'activate STS in this region (IAM console, account settings) or use another region',
  ExpiredToken: "the broker service's own AWS credentials have expired",
  ValidationError: 'the AssumeRole request broke an STS limit; run: broker policy validate',
};

const THROTTLE = new Set(['Throttling', 'ThrottlingException', 'RequestLimitExceeded', 'TooManyRequestsException']);

/** For AssumeRoleWithWebIdentity, the hints that differ (the role trusts the broker's OIDC provider, not its principal). */
const WEB_IDENTITY_HINTS: Record<string, string> = {
  AccessDenied: "the role's trust policy must let the broker's OIDC provider (Principal.Federated) call sts:AssumeRoleWithWebIdentity, sts:TagSession and sts:SetSourceIdentity with aud sts.amazonaws.com; run: broker policy check --aws --issuer <publicUrl>",
  InvalidIdentityToken: "AWS could not verify the broker's token: the IAM OIDC provider's URL must be the broker's publicUrl, its audience sts.amazonaws.com, and AWS must reach <publicUrl>/.well-known/openid-configuration over https",
  IDPCommunicationError: 'AWS could not fetch the broker\'s OIDC discovery document or keys: the publicUrl must be reachable from the internet over https',
  ExpiredToken: "the broker's web-identity token expired before STS saw it: check the broker host's clock",
};

/** Wraps STS errors with STS's own name and message (they never carry our secrets). */
export function wrapStsError(e: unknown, operation: 'AssumeRole' | 'AssumeRoleWithWebIdentity' = 'AssumeRole'): BrokerError {
  const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const name = err.name ?? 'Error';
  if (err.$metadata?.httpStatusCode === undefined) {
    return new BrokerError('upstream_unavailable', `STS is unreachable: ${err.message ?? name}`, { cause: e, hint: 'check aws.stsEndpoint / network' });
  }
  if (THROTTLE.has(name)) return new BrokerError('upstream_unavailable', `STS throttled the request (${name}); retry shortly`, { cause: e });
  const short = name.replace(/Exception$/, '');
  const hint = (operation === 'AssumeRoleWithWebIdentity' ? WEB_IDENTITY_HINTS[short] : undefined) ?? HINTS[short];
  return new BrokerError('upstream_error', `STS ${operation} failed: ${name}: ${err.message ?? ''}`.trim(), { cause: e, ...(hint ? { hint } : {}) });
}

/**
 * One AssumeRole, bounded by `timeoutMs` over all of the SDK's own retries: the SDK has no request
 * timeout by default, and a hung STS must become a clear error before the client's own timeout.
 */
export async function assumeRole(sts: STSClient, input: AssumeRoleRequest, timeoutMs: number): Promise<AwsCredentials> {
  let out;
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    out = await sendBounded((o) => sts.send(new AssumeRoleCommand(input), o), signal);
  } catch (e) {
    if (signal.aborted) {
      throw new BrokerError('upstream_unavailable', `STS did not answer AssumeRole within ${timeoutMs / 1000}s`, { cause: e, hint: 'check aws.stsEndpoint / network (aws.requestTimeoutMs sets this bound)' });
    }
    throw wrapStsError(e);
  }
  const c = out.Credentials;
  if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
    throw new BrokerError('upstream_error', 'STS AssumeRole returned no credentials');
  }
  const arn = out.AssumedRoleUser?.Arn;
  return {
    accessKeyId: c.AccessKeyId,
    secretAccessKey: c.SecretAccessKey,
    sessionToken: c.SessionToken,
    expiration: c.Expiration,
    accountId: arn?.split(':')[4],
    assumedRoleArn: arn,
  };
}
