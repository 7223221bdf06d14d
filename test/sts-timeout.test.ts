/**
 * AssumeRole is bounded as a whole: also when what hangs is the resolution of the broker's own AWS
 * credentials (a web-identity, SSO or process provider that never answers), which the SDK's abort
 * signal does not reach. No STS is needed: the call never gets that far.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { STSClient } from '@aws-sdk/client-sts';
import { assumeRole } from '../broker/aws/sts-issuer.js';
import { BrokerError } from '../broker/errors.js';

describe('AssumeRole time bound', () => {
  // A regression would hang: the test's own timeout turns that into a failure.
  it('a credential provider that never answers: a clear upstream_unavailable within the bound', { timeout: 10_000 }, async () => {
    let asked = 0;
    const sts = new STSClient({
      region: 'us-east-1', endpoint: 'http://127.0.0.1:9',
      credentials: () => { asked++; return new Promise(() => {}); },
    });
    const t0 = performance.now();
    await assert.rejects(
      assumeRole(sts, {
        RoleArn: 'arn:aws:iam::123456789012:role/r', RoleSessionName: 'alice.task.session01', SourceIdentity: 'alice', Tags: [], Policy: '{}', DurationSeconds: 900,
      }, 300),
      (e: unknown) => e instanceof BrokerError && e.code === 'upstream_unavailable' && /STS did not answer AssumeRole within 0\.3s/.test(e.message),
    );
    const elapsed = performance.now() - t0;
    assert.equal(asked, 1, 'the hang was in the credential provider');
    assert.ok(elapsed < 3000, `gave up after ${elapsed.toFixed(0)} ms`);
    sts.destroy();
  });
});
