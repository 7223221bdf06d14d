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

/**
 * `client.send(command)` bounded by `signal`. The SDK sets no request timeout by default; the signal
 * reaches its HTTP handler and retry loop but not the resolution of the broker's own credentials
 * (web identity, SSO, a credential process), which can hang too, so a race bounds the whole call.
 */
export function sendBounded<T>(send: (opts: { abortSignal: AbortSignal }) => Promise<T>, signal: AbortSignal): Promise<T> {
  const deadline = new Promise<never>((_, reject) => {
    if (signal.aborted) reject(signal.reason as Error);
    signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
  });
  return Promise.race([send({ abortSignal: signal }), deadline]);
}
