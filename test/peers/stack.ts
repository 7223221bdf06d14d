import { startBrokerService, type BrokerService } from './broker-service.js';
import { startIdp, type TestIdp } from './idp.js';
import { createRole, startMoto, type Moto } from './moto.js';
import { startRecordingProxy, type RecordedRequest } from './recording-proxy.js';

/** Roles of the shipped templates (and test ones), trusted for the broker as `broker policy check` wants. */
export const TEST_ROLES = ['broker-deploy-lambda', 'broker-read-cloudwatch-logs', 'broker-s3-artifacts', 'broker-short-lived'];

const TRUST = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
});

/**
 * Everything a developer machine talks to: moto as STS/IAM behind a recording proxy, the test IdP
 * and the broker service (a real `broker server` process on SQLite). `env` (e.g. a fake clock) is
 * given to moto and the service.
 */
export interface Stack {
  moto: Moto;
  proxy: { url: string; requests: RecordedRequest[]; setTarget(url: string): void; stop(): Promise<void> };
  idp: TestIdp;
  svc: BrokerService;
  stop(): Promise<void>;
}

export async function startStack(opts: { env?: Record<string, string>; policiesDir?: string; extra?: Record<string, unknown> } = {}): Promise<Stack> {
  const moto = await startMoto({ env: opts.env ?? {} });
  const proxy = await startRecordingProxy(moto.url);
  const idp = await startIdp();
  for (const role of TEST_ROLES) await createRole(moto.url, role, TRUST, 43200);
  const svc = await startBrokerService({
    issuer: idp.issuer, stsEndpoint: proxy.url, iamEndpoint: moto.url,
    ...(opts.policiesDir ? { policiesDir: opts.policiesDir } : {}),
    ...(opts.env ? { env: opts.env } : {}),
    extra: { aws: { region: 'us-east-1', stsEndpoint: proxy.url, iamEndpoint: moto.url, checkTrustAtStartup: false }, ...opts.extra },
  });
  return {
    moto, proxy, idp, svc,
    stop: async () => {
      await svc.stop();
      await idp.stop();
      await proxy.stop();
      await moto.stop();
    },
  };
}
