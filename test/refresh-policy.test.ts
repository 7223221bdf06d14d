/** The daemon's timing rules on their own (the fake-clock tests run them end to end). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelay, canHandOut, handOutFloor, refreshAt } from '../broker/daemon/refresh-policy.js';
import { namePattern, scrubEnvironment } from '../cli/exec-env.js';

const MIN = 60_000;
const held = (lifetimeMin: number) => ({ issuedAt: 0, expiresAt: lifetimeMin * MIN });
const FAR = 100 * 3600_000;

describe('refresh policy', () => {
  it('refreshes when a third of the lifetime is left, or earlier to stay above the 15-minute floor', () => {
    assert.equal(refreshAt(held(60), FAR), 40 * MIN, '1 h: at 20 min left');
    assert.equal(refreshAt(held(30), FAR), 13 * MIN, '30 min: at 17 min left (15 + 2 to get it done)');
    assert.equal(refreshAt(held(720), FAR), 480 * MIN, '12 h: at 4 h left');
  });
  it('for the shortest credentials the floor is two thirds of the lifetime, and there is no refresh loop', () => {
    assert.equal(handOutFloor(held(15)), 10 * MIN);
    assert.equal(refreshAt(held(15), FAR), 3 * MIN, '15 min: at 12 min left');
    assert.ok(refreshAt({ issuedAt: 0, expiresAt: 2 * MIN }, FAR) >= MIN, 'never younger than a minute');
  });
  it('no refresh for credentials that outlive the task session; they may be handed out to the end', () => {
    assert.equal(refreshAt(held(60), 50 * MIN), Number.POSITIVE_INFINITY);
    assert.equal(canHandOut(held(60), 50 * MIN, 55 * MIN), true);
  });
  it('hands out only above the floor, and never expired ones', () => {
    assert.equal(canHandOut(held(60), FAR, 44 * MIN), true);
    assert.equal(canHandOut(held(60), FAR, 46 * MIN), false);
    assert.equal(canHandOut(held(60), 50 * MIN, 60 * MIN), false, 'expired');
  });
  it('backs off exponentially with full jitter, within bounds', () => {
    assert.equal(backoffDelay(0, () => 0.999), 999);
    assert.equal(backoffDelay(3, () => 0.5), 4000);
    assert.equal(backoffDelay(50, () => 0.999), 59_940, 'capped at a minute');
    assert.equal(backoffDelay(5, () => 0), 250, 'never a busy loop');
  });
});

describe('broker exec environment', () => {
  it('removes credentials and matching names, keeps the rest', () => {
    const { env, removed } = scrubEnvironment({ AWS_SECRET_ACCESS_KEY: 'x', BAO_TOKEN: 'y', GITHUB_TOKEN: 'z', OPENAI_API_KEY: 'k', PATH: '/bin' }, ['GITHUB_*', '*_API_KEY']);
    assert.deepEqual(env, { PATH: '/bin' });
    assert.deepEqual(removed, ['AWS_SECRET_ACCESS_KEY', 'BAO_TOKEN', 'GITHUB_TOKEN', 'OPENAI_API_KEY']);
  });
  it('removes every credential variable the AWS SDKs read (botocore, JS v3, Go v2, Java), and keeps what is no credential', () => {
    const sdkCredentials = [
      'AWS_ACCESS_KEY_ID', 'AWS_ACCESS_KEY', 'AWS_SECRET_ACCESS_KEY', 'AWS_SECRET_KEY', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN',
      'AWS_CREDENTIAL_EXPIRATION', 'AWS_PROFILE', 'AWS_DEFAULT_PROFILE',
      'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_ROLE_ARN', 'AWS_ROLE_SESSION_NAME',
      'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN', 'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
      'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CREDENTIAL_PROFILES_FILE', 'AWS_CREDENTIAL_FILE', 'BOTO_CONFIG', 'AWS_LOGIN_CACHE_DIRECTORY',
      'AWS_BEARER_TOKEN_BEDROCK', 'AWS_BEARER_TOKEN_SOME_SERVICE',
    ];
    const kept = { AWS_CONFIG_FILE: '/home/a/.aws/config', AWS_REGION: 'eu-west-1', AWS_ACCOUNT_ID: '111111111111', HOME: '/home/a' };
    const { env, removed } = scrubEnvironment({ ...Object.fromEntries(sdkCredentials.map((k) => [k, 'x'])), ...kept }, []);
    assert.deepEqual(env, kept);
    assert.deepEqual(removed, [...sdkCredentials].sort());
  });
  it('patterns match whole names and refuse anything but a name pattern', () => {
    assert.ok(!namePattern('TOKEN').test('GITHUB_TOKEN'));
    assert.throws(() => namePattern('.*'), /not an environment variable name pattern/);
  });
});
