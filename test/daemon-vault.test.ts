/**
 * Vault tokens on the developer's side, on real peers: OpenBao set up by deploy/vault/setup.sh, the
 * broker service (a `broker server` process with a non-root Vault token), the daemon with a private
 * gnome-keyring, and the real `bao` CLI as the agent's Vault client, both inside `broker exec`
 * (VAULT_TOKEN) and through the token helper.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { broker, deviceLogin, makeTestHome, run, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { createRole } from './peers/moto.js';
import { BAO, startOpenBao, writeKvSecret, type OpenBao } from './peers/openbao.js';
import { FIXTURES_DIR, POLICIES_DIR, REPO_ROOT, VENV_BIN } from './peers/paths.js';
import { filesContaining, filesWithTokensFrom } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

const TEMPLATES: Record<string, string> = {
  'vault-short': `
name: vault-short
description: a one-minute token the daemon must keep renewing
allowed: { groups: [developers] }
session: { maxDuration: 1h }
vault: { policies: [db-migrate-read], ttl: 1m, explicitMaxTtl: 1h }
`,
};

describe('Vault tokens through the daemon, exec and the token helper', () => {
  let bao: OpenBao;
  let stack: Stack;
  let keyring: TestKeyring;
  let m: TestHome;
  let env: Record<string, string>;
  const secrets = new Set<string>();
  /** Accessors of the task tokens in `secrets`: every token the service issued must be among them. */
  const seenAccessors = new Set<string>();

  const lookup = (accessor: string) => bao.api('POST', 'auth/token/lookup-accessor', { accessor });
  const vaultToken = async (task: string) => {
    const r = await broker(['vault-token', '--task', task, '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const v = JSON.parse(r.stdout) as { token: string; accessor: string; address: string };
    secrets.add(v.token);
    seenAccessors.add(v.accessor);
    return v;
  };
  /** The `bao` CLI as an agent would run it: nothing but what the environment gives it. */
  const baoEnv = (extra: Record<string, string> = {}) => {
    const e: Record<string, string> = { ...env, ...extra };
    // The OpenBao CLI reads BAO_ADDR/BAO_TOKEN first: give both names the same value.
    e.BAO_ADDR = e.VAULT_ADDR ?? '';
    e.BAO_TOKEN = e.VAULT_TOKEN ?? '';
    return e;
  };

  before(async () => {
    bao = await startOpenBao();
    secrets.add(bao.rootToken);
    const setup = await run('bash', [join(REPO_ROOT, 'deploy', 'vault', 'setup.sh')], { env: { ...bao.cliEnv(bao.rootToken), VAULT_CLI: BAO }, timeoutMs: 60_000 });
    assert.equal(setup.code, 0, setup.stderr);
    await writeKvSecret(bao, 'db-migrate/checkout-api', { password: 'pw-checkout-1234' });
    await writeKvSecret(bao, 'other/payroll', { key: 'not-for-agents' });
    const t = await bao.api('POST', 'auth/token/create-orphan', { policies: ['broker'], ttl: '4h', renewable: true });
    assert.equal(t.status, 200, JSON.stringify(t.body));
    secrets.add(t.body.auth.client_token);

    const policies = mkdtempSync(join(tmpdir(), 'broker-vault-policies-'));
    for (const [name, yaml] of Object.entries(TEMPLATES)) writeFileSync(join(policies, `${name}.yaml`), yaml);
    copyFileSync(join(POLICIES_DIR, 'db-migrate.yaml'), join(policies, 'db-migrate.yaml'));
    copyFileSync(join(FIXTURES_DIR, 'migrate-and-deploy.yaml'), join(policies, 'migrate-and-deploy.yaml'));
    stack = await startStack({
      policiesDir: policies,
      env: { TEST_BROKER_VAULT_TOKEN: t.body.auth.client_token },
      extra: { vault: { address: bao.url, tokenRole: 'broker-tasks', token: { env: 'TEST_BROKER_VAULT_TOKEN' }, allowInsecureHttp: true } },
    });
    await createRole(stack.moto.url, 'broker-migrate-deploy', JSON.stringify({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
    }), 43200);
    keyring = await startKeyring();
    m = makeTestHome();
    env = { ...m.env, ...keyring.env };
    const login = await deviceLogin(stack.svc.url, env, stack.idp, 'alice@example.com');
    assert.equal(login.code, 0, login.stderr);
  });
  after(async () => {
    await m?.stop();
    await keyring?.stop();
    await stack?.stop();
    await bao?.destroy();
  });

  it('broker task holds the token in the daemon; vault-token prints it, never task', async () => {
    const task = await broker(['task', 'db-migrate', '--json'], env);
    assert.equal(task.code, 0, task.stderr);
    const started = JSON.parse(task.stdout) as { vaultAccessor: string; accessKeyId?: string };
    assert.equal(started.accessKeyId, undefined, 'a Vault-only task has no AWS credentials');
    const v = await vaultToken('db-migrate');
    assert.ok(!task.stdout.includes(v.token) && !task.stderr.includes(v.token), 'broker task never shows the token');
    assert.equal(v.accessor, started.vaultAccessor, 'the token the service issued with the session, from memory');
    const l = await lookup(v.accessor);
    assert.equal(l.status, 200, JSON.stringify(l.body));
    assert.ok(l.body.data.policies.includes('db-migrate-read'));
    assert.equal(l.body.data.meta.task, 'db-migrate');
    assert.equal(l.body.data.meta.developer, 'alice@example.com');
    const plain = await broker(['vault-token', '--task', 'db-migrate'], env);
    assert.equal(plain.stdout, v.token, 'just the token on stdout, for VAULT_TOKEN=$(broker vault-token …)');
  });

  it('works as the bao CLI\'s token helper (get; store refused; erase a no-op)', async () => {
    const helper = join(REPO_ROOT, 'bin', 'vault-token-helper');
    const config = join(m.home, 'bao.hcl');
    writeFileSync(config, `token_helper = "${helper}"\n`);
    const kv = await run(BAO, ['kv', 'get', '-mount=secret', '-field=password', 'db-migrate/checkout-api'],
      { env: { ...process.env, ...baoEnv({ VAULT_ADDR: bao.url, BAO_ADDR: bao.url, VAULT_CONFIG_PATH: config, BAO_CONFIG_PATH: config, BROKER_TASK: 'db-migrate' }) } });
    assert.equal(kv.code, 0, kv.stderr);
    assert.equal(kv.stdout.trim(), 'pw-checkout-1234');
    // Without BROKER_TASK: the one active session that grants a token.
    const get = await run(helper, ['get'], { env: { ...process.env, ...env } });
    assert.equal(get.code, 0, get.stderr);
    assert.equal(get.stdout, (await vaultToken('db-migrate')).token);
    const store = await run(helper, ['store'], { env: { ...process.env, ...env }, input: 'hvs.something' });
    assert.equal(store.code, EXIT_CODES.invalid_request);
    assert.match(store.stderr, /does not store Vault tokens/);
    assert.equal((await run(helper, ['erase'], { env: { ...process.env, ...env } })).code, 0);
  });

  it('broker exec gives the bao CLI the task token (not an inherited one): allowed read works, others are denied', async () => {
    const inherited = { VAULT_TOKEN: bao.rootToken, BAO_TOKEN: bao.rootToken, VAULT_ADDR: 'http://127.0.0.1:1', BAO_ADDR: 'http://127.0.0.1:1' };
    const ok = await broker(['exec', 'db-migrate', '--', BAO, 'kv', 'get', '-mount=secret', '-field=password', 'db-migrate/checkout-api'], { ...env, ...inherited });
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout.trim(), 'pw-checkout-1234');
    const denied = await broker(['exec', 'db-migrate', '--', BAO, 'kv', 'get', '-mount=secret', 'other/payroll'], { ...env, ...inherited });
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /permission denied/);
    const self = await broker(['exec', 'db-migrate', '--', BAO, 'token', 'lookup', '-format=json'], { ...env, ...inherited });
    assert.equal(self.code, 0, self.stderr);
    const data = (JSON.parse(self.stdout) as { data: { id: string; accessor: string; policies: string[]; meta: Record<string, string> } }).data;
    // The token exec minted for the agent (ensure → agent recorded → fresh token): scanned for too.
    secrets.add(data.id);
    seenAccessors.add(data.accessor);
    assert.ok(!data.policies.includes('root'), 'the inherited root token was replaced');
    assert.equal(data.meta.agent, 'bao', 'a token issued for the agent exec named');
  });

  it('one session with AWS and Vault: exec gets both; ending it ends both', async () => {
    const script = `${join(VENV_BIN, 'aws')} sts get-caller-identity --endpoint-url ${stack.moto.url} --query Arn --output text && ${BAO} kv get -mount=secret -field=password db-migrate/checkout-api`;
    const r = await broker(['exec', 'migrate-and-deploy', '--', 'sh', '-c', script], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /assumed-role\/broker-migrate-deploy\/alice@example\.com\.migrate-and-deploy\./);
    assert.match(r.stdout, /pw-checkout-1234/);
    const v = await vaultToken('migrate-and-deploy');
    const end = await broker(['end', 'migrate-and-deploy'], env);
    assert.equal(end.code, 0, end.stderr);
    assert.notEqual((await lookup(v.accessor)).status, 200, 'the token is revoked');
    const after = await run(BAO, ['kv', 'get', '-mount=secret', 'db-migrate/checkout-api'], { env: { ...process.env, ...baoEnv({ VAULT_ADDR: bao.url, VAULT_TOKEN: v.token }) } });
    assert.notEqual(after.code, 0);
    assert.match(after.stderr, /permission denied/);
    const cp = await broker(['credential-process', '--task', 'migrate-and-deploy'], env);
    assert.equal(cp.code, EXIT_CODES.not_found);
    assert.match(cp.stderr, /no active "migrate-and-deploy" task session/);
    const vt = await broker(['vault-token', '--task', 'migrate-and-deploy'], env);
    assert.equal(vt.code, EXIT_CODES.not_found);
    assert.equal(vt.stdout, '');
  });

  it('renews a token in place before its TTL ends, so an agent holding it keeps working', async () => {
    const task = await broker(['task', 'vault-short'], env);
    assert.equal(task.code, 0, task.stderr);
    const v = await vaultToken('vault-short');
    const issuedAt = Date.now();
    // The daemon renews when a third of the minute is left, on its own (no request needed).
    await new Promise((r) => setTimeout(r, 70_000));
    assert.ok(Date.now() - issuedAt > 65_000, 'past the token\'s original one-minute TTL');
    const l = await lookup(v.accessor);
    assert.equal(l.status, 200, `the token is still alive: ${JSON.stringify(l.body)}`);
    assert.ok(l.body.data.ttl > 10 && l.body.data.ttl <= 60, `renewed by the template's TTL, not to the session's end (ttl ${l.body.data.ttl})`);
    const kv = await run(BAO, ['kv', 'get', '-mount=secret', '-field=password', 'db-migrate/checkout-api'], { env: { ...process.env, ...baoEnv({ VAULT_ADDR: bao.url, VAULT_TOKEN: v.token }) } });
    assert.equal(kv.code, 0, kv.stderr);
    assert.equal((await vaultToken('vault-short')).token, v.token, 'the same token, renewed');
  });

  it('no Vault token on disk or in any log', () => {
    // The scan covers every task token the service issued in this file, not only the first ones.
    const db = new DatabaseSync(stack.svc.dbPath, { readOnly: true });
    const issued = (db.prepare(`SELECT vault_accessor FROM audit WHERE event IN ('vault.issue', 'vault.reissue') AND decision = 'issued'`).all() as { vault_accessor: string }[])
      .map((r) => r.vault_accessor);
    db.close();
    assert.ok(issued.length >= 4, `${issued.length} tokens issued`);
    assert.deepEqual(issued.filter((a) => !seenAccessors.has(a)), [], 'every issued token was captured for the scan');
    assert.deepEqual(filesContaining([m.home, m.runtimeDir, tmpdir(), stack.svc.dir], [...secrets]), []);
    assert.deepEqual(filesWithTokensFrom([m.home, m.runtimeDir, tmpdir(), stack.svc.dir], stack.svc.url), [], 'no token the broker signed');
  });
});
