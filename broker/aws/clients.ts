import { IAMClient } from '@aws-sdk/client-iam';
import { STSClient } from '@aws-sdk/client-sts';

export interface AwsClientOptions {
  region: string;
  /** Endpoint override (moto in tests, a VPC/private endpoint in production). */
  endpoint?: string | undefined;
  /** Told of every call the client makes: its operation (`AssumeRole`), whether it succeeded, and how long it took, retries included. */
  observe?: CallObserver | undefined;
}

export type CallObserver = (operation: string, ok: boolean, seconds: number) => void;

/**
 * Times every command sent through the client at the SDK's `initialize` step, the outermost one
 * (AWS SDK for JavaScript v3 developer guide, "Middleware stack"), so the figure covers signing,
 * the SDK's retries and the wait for the answer. The operation is the command's name without its
 * `Command` suffix: a closed set, the service's API.
 */
function observed<C extends { middlewareStack: STSClient['middlewareStack'] | IAMClient['middlewareStack'] }>(client: C, observe: CallObserver | undefined): C {
  if (!observe) return client;
  (client.middlewareStack as STSClient['middlewareStack']).add((next, context) => async (args) => {
    const operation = (context.commandName ?? 'Unknown').replace(/Command$/, '');
    const start = performance.now();
    try {
      const out = await next(args);
      observe(operation, true, (performance.now() - start) / 1000);
      return out;
    } catch (e) {
      observe(operation, false, (performance.now() - start) / 1000);
      throw e;
    }
  }, { step: 'initialize', name: 'brokerCallObserver' });
  return client;
}

/**
 * Thin factories: credentials come from the SDK's standard chain (env, shared config, SSO, web
 * identity, container/instance metadata), so the broker holds no AWS keys of its own in its config.
 */
export function makeStsClient(o: AwsClientOptions): STSClient {
  return observed(new STSClient({ region: o.region, ...(o.endpoint ? { endpoint: o.endpoint } : {}) }), o.observe);
}

/**
 * An STS client that never looks for AWS credentials, for AssumeRoleWithWebIdentity: an unsigned
 * call (STS API Reference, AssumeRoleWithWebIdentity: "does not require the use of AWS security
 * credentials"; the SDK's auth scheme for it is `smithy.api#noAuth`). The credential provider is
 * never asked; if it were, it fails rather than reaching for the SDK's default chain.
 */
export function makeUnsignedStsClient(o: AwsClientOptions): STSClient {
  return observed(new STSClient({
    region: o.region,
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    credentials: async () => { throw new Error('AssumeRoleWithWebIdentity is unsigned; no AWS credentials are used'); },
  }), o.observe);
}

export function makeIamClient(o: AwsClientOptions): IAMClient {
  return observed(new IAMClient({ region: o.region, ...(o.endpoint ? { endpoint: o.endpoint } : {}) }), o.observe);
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
