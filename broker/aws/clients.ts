import { IAMClient } from '@aws-sdk/client-iam';
import { STSClient } from '@aws-sdk/client-sts';

export interface AwsClientOptions {
  region: string;
  /** Endpoint override (moto in tests, a VPC/private endpoint in production). */
  endpoint?: string | undefined;
}

/**
 * Thin factories: credentials come from the SDK's standard chain (env, shared config, SSO, web
 * identity, container/instance metadata), so the broker holds no AWS keys of its own in its config.
 */
export function makeStsClient(o: AwsClientOptions): STSClient {
  return new STSClient({ region: o.region, ...(o.endpoint ? { endpoint: o.endpoint } : {}) });
}

export function makeIamClient(o: AwsClientOptions): IAMClient {
  return new IAMClient({ region: o.region, ...(o.endpoint ? { endpoint: o.endpoint } : {}) });
}
