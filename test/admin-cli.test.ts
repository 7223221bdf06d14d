/**
 * The control plane from the terminal, on real peers: moto as STS behind a recording proxy, the
 * test IdP, a real `broker server` with `admins: {groups: [admins]}`, two developer machines each
 * with its own gnome-keyring and daemon (alice, a developer; carol, an admin), the compiled CLI and
 * the AWS CLI through credential_process. The daemon's status check runs every 2 s here
 * (BROKER_STATUS_CHECK_SECONDS; 60 s by default): an admin's end, freeze or offboarding reaches
 * alice's `aws` commands within that interval, with the admin's reason.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import type { AuditRecord } from '../broker/store/audit-event.js';
import { SqliteStore } from '../broker/store/sqlite/sqlite-store.js';
import { broker, deviceLogin, makeTestHome, run, type RunResult, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { VENV_BIN } from './peers/paths.js';
import { filesContaining } from './peers/secret-scan.js';
import { startStack, type Stack } from './peers/stack.js';

/** The daemon's status-check interval in this file, seconds. */
const CHECK_SECONDS = 2;

describe('broker admin: see and stop task sessions; the developer\'s side learns within the check interval', () => {
  let stack: Stack;
  const keyrings: TestKeyring[] = [];
  const homes: TestHome[] = [];
  let alice: Record<string, string>;
  let carol: Record<string, string>;
  const audit = async (): Promise<AuditRecord[]> => {
    const s = new SqliteStore(stack.svc.dbPath);
    try { return await s.auditLog.records(0, 100_000); } finally { await s.close(); }
  };
  const aws = (env: Record<string, string>) => run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', stack.moto.url, '--output', 'json'],
    { env: { ...process.env, ...env } });
  const ok = (r: RunResult, what: string) => assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  /** Polls `aws` until it fails; how long that took (ms) and its last result. */
  const untilAwsFails = async (env: Record<string, string>, limitMs: number): Promise<{ ms: number; r: RunResult }> => {
    const t0 = Date.now();
    for (;;) {
      const r = await aws(env);
      if (r.code !== 0) return { ms: Date.now() - t0, r };
      if (Date.now() - t0 > limitMs) throw new Error(`aws still works after ${limitMs} ms`);
      await new Promise((res) => setTimeout(res, 200));
    }
  };
  const startTask = async (fn: string): Promise<{ session: { id: string }; accessKeyId: string }> => {
    const r = await broker(['task', 'deploy-lambda', '--param', `function=${fn}`, '--reason', `fix ${fn}`, '--agent', 'claude-code', '--json'], alice);
    ok(r, 'broker task');
    return JSON.parse(r.stdout) as { session: { id: string }; accessKeyId: string };
  };

  before(async () => {
    // No directory watch: the reload test's file writes are taken by broker admin reload alone.
    stack = await startStack({ extra: { admins: { groups: ['admins'] }, policiesWatch: false } });
    for (const [who, extra] of [['alice', { BROKER_STATUS_CHECK_SECONDS: String(CHECK_SECONDS) }], ['carol', {}]] as const) {
      const keyring = await startKeyring();
      const home = makeTestHome(`broker-${who}-`);
      keyrings.push(keyring);
      homes.push(home);
      const env = { ...home.env, ...keyring.env, ...extra };
      const login = await deviceLogin(stack.svc.url, env, stack.idp, `${who}@example.com`);
      assert.equal(login.code, 0, login.stderr);
      if (who === 'alice') alice = env;
      else carol = env;
    }
    ok(await broker(['configure', 'aws'], alice), 'configure aws');
  });
  after(async () => {
    for (const h of homes) await h.stop();
    for (const k of keyrings) await k.stop();
    await stack?.stop();
  });

  it('admin sessions: alice\'s sessions with agent, params, reason, time left and AccessKeyIds; filters; --json; a non-admin gets exit 5', async () => {
    const t = await startTask('list-me');
    const j = await broker(['admin', 'sessions', '--developer', 'alice@example.com', '--active', '--json'], carol);
    ok(j, 'admin sessions --json');
    const sessions = (JSON.parse(j.stdout) as { sessions: any[] }).sessions;
    assert.deepEqual(sessions.map((s) => s.id), [t.session.id]);
    assert.equal(sessions[0].agent, 'claude-code');
    assert.deepEqual(sessions[0].params, { function: 'list-me' });
    assert.equal(sessions[0].reason, 'fix list-me');
    assert.ok(sessions[0].timeLeftSeconds > 0);
    assert.deepEqual(sessions[0].credentials.map((c: any) => c.accessKeyId), [t.accessKeyId]);
    const text = await broker(['admin', 'sessions', '--template', 'deploy-lambda', '--since', '24h'], carol);
    ok(text, 'admin sessions');
    assert.match(sessions[0].templateVersion, /^[0-9a-f]{12}$/, 'the template version it runs under');
    for (const shown of [t.session.id, 'alice@example.com', 'deploy-lambda function=list-me', `version ${sessions[0].templateVersion}`, 'agent claude-code', '"fix list-me"', t.accessKeyId]) {
      assert.ok(text.stdout.includes(shown), `shows ${shown}:\n${text.stdout}`);
    }
    assert.match(text.stdout, /active \d+h\d*m? left/);
    const none = await broker(['admin', 'sessions', '--agent', 'aider', '--json'], carol);
    assert.deepEqual(JSON.parse(none.stdout), { sessions: [] });
    const both = await broker(['admin', 'sessions', '--active', '--since', '1h'], carol);
    assert.equal(both.code, EXIT_CODES.invalid_request);
    const denied = await broker(['admin', 'sessions', '--json'], alice);
    assert.equal(denied.code, EXIT_CODES.forbidden, denied.stderr);
    assert.equal(JSON.parse(denied.stdout).error.code, 'forbidden');
    assert.match(denied.stderr, /only administrators may use the admin API/);
    const refused = (await audit()).filter((a) => a.event === 'admin.access' && a.decision === 'denied' && a.developer === 'alice@example.com');
    assert.ok(refused.length >= 1, 'the refusal is audited');
    ok(await broker(['end', 'deploy-lambda'], alice), 'end');
  });

  it('admin end <id>: reason required; alice\'s aws fails within the check interval with "ended by an administrator: <reason>"', async () => {
    const t = await startTask('end-me');
    ok(await aws(alice), 'aws before');
    const noReason = await broker(['admin', 'end', t.session.id], carol);
    assert.equal(noReason.code, EXIT_CODES.invalid_request, 'commander: --reason is required');
    const blank = await broker(['admin', 'end', t.session.id, '--reason', ' ', '--json'], carol);
    assert.equal(blank.code, EXIT_CODES.invalid_request, blank.stderr);
    ok(await aws(alice), 'nothing ended without a reason');
    const end = await broker(['admin', 'end', t.session.id, '--reason', 'laptop stolen'], carol);
    ok(end, 'admin end');
    assert.equal(end.stdout, `Ended deploy-lambda ${t.session.id} of alice@example.com\n`);
    assert.match(end.stderr, /a deny for 1 session\(s\) was requested on their roles; IAM applies it within seconds to minutes/);
    const { ms, r } = await untilAwsFails(alice, CHECK_SECONDS * 1000 * 3 + 5000);
    assert.match(r.stderr, /ended by an administrator: laptop stolen/, r.stderr);
    assert.ok(ms <= CHECK_SECONDS * 1000 + 3000, `learned within the interval: ${ms} ms`);
    const cp = await broker(['credential-process', '--task', 'deploy-lambda'], alice);
    assert.equal(cp.code, EXIT_CODES.conflict, cp.stderr);
    assert.equal(cp.stdout, '');
    assert.equal(cp.stderr, 'broker credential-process: the "deploy-lambda" task session was ended by an administrator: laptop stolen (ask your administrator before starting it again)\n');
    const one = await broker(['admin', 'session', t.session.id, '--json'], carol);
    ok(one, 'admin session');
    const view = JSON.parse(one.stdout) as { session: any; history: any[] };
    assert.equal(view.session.endedBy, 'carol@example.com');
    const endRecord = view.history.find((h) => h.event === 'session.end');
    assert.equal(endRecord.detail.admin, 'carol@example.com');
    assert.equal(endRecord.reason, 'laptop stolen');
    const textView = await broker(['admin', 'session', t.session.id], carol);
    assert.match(textView.stdout, /session\.end ended by carol@example\.com {2}"laptop stolen"/);
  });

  it('admin end --developer / --template, and a new task start works again afterwards', async () => {
    const t1 = await startTask('by-dev');
    const byDev = await broker(['admin', 'end', '--developer', 'alice@example.com', '--reason', 'rotating', '--json'], carol);
    ok(byDev, 'end --developer');
    assert.deepEqual((JSON.parse(byDev.stdout) as { ended: any[] }).ended.map((e) => e.session.id), [t1.session.id]);
    const t2 = await startTask('by-template');
    ok(await aws(alice), 'a new start is served (the withdrawal was for the old session)');
    const byTpl = await broker(['admin', 'end', '--template', 'deploy-lambda', '--reason', 'role under review', '--json'], carol);
    ok(byTpl, 'end --template');
    assert.deepEqual((JSON.parse(byTpl.stdout) as { ended: any[] }).ended.map((e) => e.session.id), [t2.session.id]);
    const { r } = await untilAwsFails(alice, CHECK_SECONDS * 1000 * 3 + 5000);
    assert.match(r.stderr, /ended by an administrator: role under review/);
    const two = await broker(['admin', 'end', t2.session.id, '--developer', 'alice@example.com', '--reason', 'x'], carol);
    assert.equal(two.code, EXIT_CODES.invalid_request, 'one selector');
  });

  it('freeze refuses start and re-issue with the admin\'s reason (exit 14); held credentials stop within the interval; unfreeze restores', async () => {
    await startTask('frozen');
    ok(await aws(alice), 'aws before');
    const f = await broker(['admin', 'freeze', '--template', 'deploy-lambda', '--reason', 'incident 42'], carol);
    ok(f, 'freeze');
    assert.equal(f.stdout, 'Frozen deploy-lambda: incident 42\n');
    const { r } = await untilAwsFails(alice, CHECK_SECONDS * 1000 * 3 + 5000);
    assert.match(r.stderr, /"deploy-lambda" is frozen by an administrator: incident 42/);
    const cp = await broker(['credential-process', '--task', 'deploy-lambda'], alice);
    assert.equal(cp.code, EXIT_CODES.frozen, cp.stderr);
    const start = await broker(['task', 's3-artifacts', '--param', 'prefix=app', '--reason', 'r', '--agent', 'claude-code'], alice);
    ok(start, 'another template still starts');
    ok(await broker(['end', 's3-artifacts'], alice), 'end s3');
    ok(await broker(['end', 'deploy-lambda'], alice), 'end deploy');
    const refused = await broker(['task', 'deploy-lambda', '--param', 'function=new', '--reason', 'r', '--agent', 'claude-code'], alice);
    assert.equal(refused.code, EXIT_CODES.frozen, refused.stderr);
    assert.match(refused.stderr, /"deploy-lambda" is frozen by an administrator: incident 42/);
    const list = await broker(['admin', 'freezes', '--json'], carol);
    assert.deepEqual((JSON.parse(list.stdout) as { freezes: any[] }).freezes.map((x) => [x.scope, x.by, x.reason]), [['deploy-lambda', 'carol@example.com', 'incident 42']]);
    const noScope = await broker(['admin', 'unfreeze', '--reason', 'x'], carol);
    assert.equal(noScope.code, EXIT_CODES.invalid_request);
    const u = await broker(['admin', 'unfreeze', '--template', 'deploy-lambda', '--reason', 'incident over'], carol);
    ok(u, 'unfreeze');
    await startTask('thawed');
    ok(await aws(alice), 'served again');
    // While frozen with a session held: re-issue refused, then served again after the unfreeze.
    ok(await broker(['admin', 'freeze', '--all', '--reason', 'kill switch'], carol), 'freeze --all');
    const held = await untilAwsFails(alice, CHECK_SECONDS * 1000 * 3 + 5000);
    assert.match(held.r.stderr, /every task template is frozen by an administrator: kill switch/);
    ok(await broker(['admin', 'unfreeze', '--all', '--reason', 'all clear'], carol), 'unfreeze --all');
    await new Promise((res) => setTimeout(res, CHECK_SECONDS * 1000 + 200));
    ok(await aws(alice), 'the same session is served again once unfrozen');
    const records = (await audit()).filter((a) => a.event === 'admin.freeze' || a.event === 'admin.unfreeze');
    assert.ok(records.every((a) => a.detail?.admin === 'carol@example.com' && a.reason), 'audited with the admin and the reason');
    ok(await broker(['end', 'deploy-lambda'], alice), 'end');
  });

  it('admin reload: refused to a non-admin (exit 5); a broken template is not taken (exit 3, file and field named); fixed, it is in force at once; audited with the admin and the reason', async () => {
    const file = join(stack.svc.policiesDir, 'reload-probe.yaml');
    const good = readFileSync(join(stack.svc.policiesDir, 'read-cloudwatch-logs.yaml'), 'utf8').replace(/^name: read-cloudwatch-logs$/m, 'name: reload-probe');
    assert.match(good, /^name: reload-probe$/m);
    writeFileSync(file, good.replace("Version: '2012-10-17'", "Version: '2008-10-17'").replace('Version: 2012-10-17', "Version: '2008-10-17'"));
    const denied = await broker(['admin', 'reload', '--reason', 'not mine to do'], alice);
    assert.equal(denied.code, EXIT_CODES.forbidden, denied.stderr);
    const bad = await broker(['admin', 'reload', '--reason', 'add the probe'], carol);
    assert.equal(bad.code, EXIT_CODES.invalid_template, bad.stderr);
    assert.match(bad.stdout, /reload-probe\.yaml:aws\.policy\.Version: /);
    assert.match(bad.stdout, /Not reloaded: 1 problem\(s\); the templates in force stay/);
    const listed = async () => (JSON.parse((await broker(['templates', '--json'], alice)).stdout) as { templates: { name: string }[] }).templates.map((t) => t.name);
    assert.ok(!(await listed()).includes('reload-probe'), 'the broken set was not taken');
    writeFileSync(file, good);
    const fixed = await broker(['admin', 'reload', '--reason', 'add the probe', '--json'], carol);
    ok(fixed, 'reload');
    const r = JSON.parse(fixed.stdout) as { ok: boolean; added: { name: string; version: string }[]; problems: unknown[] };
    assert.equal(r.ok, true);
    assert.deepEqual(r.added.map((a) => a.name), ['reload-probe']);
    assert.ok((await listed()).includes('reload-probe'), 'in force without a restart');
    const records = (await audit()).filter((a) => a.event === 'policy.reload');
    assert.deepEqual(records.map((a) => [a.decision, a.detail?.trigger, a.detail?.by, a.reason]), [
      ['failed', 'admin', 'carol@example.com', 'add the probe'],
      ['updated', 'admin', 'carol@example.com', 'add the probe'],
    ]);
    const refused = (await audit()).filter((a) => a.event === 'admin.access' && a.decision === 'denied' && String(a.detail?.route ?? a.reason ?? '').includes('/v1/admin/reload'));
    assert.equal(refused.length, 1, 'the non-admin\'s try is audited');
    // admin status names the version now in force.
    const status = await broker(['admin', 'status'], carol);
    ok(status, 'admin status');
    assert.match(status.stdout, new RegExp(`reload-probe@${r.added[0]!.version}`));
    assert.match(status.stdout, /^Revocations: all accepted by IAM\.$/m);
    assert.equal((await broker(['admin', 'status'], alice)).code, EXIT_CODES.forbidden);
  });

  it('offboard: her sessions end, her login is revoked (her daemon cannot refresh), her aws fails within the interval', async () => {
    const t = await startTask('offboard-me');
    ok(await aws(alice), 'aws before');
    const cp = await broker(['credential-process', '--task', 'deploy-lambda'], alice);
    ok(cp, 'credential-process');
    const creds = JSON.parse(cp.stdout) as { SecretAccessKey: string; SessionToken: string };
    const off = await broker(['admin', 'offboard', 'alice@example.com', '--reason', 'left the company', '--json'], carol);
    ok(off, 'offboard');
    const r = JSON.parse(off.stdout) as { ended: any[]; loginsRevoked: number };
    assert.deepEqual(r.ended.map((e) => e.session.id), [t.session.id]);
    assert.ok(r.loginsRevoked >= 1, `${r.loginsRevoked} logins revoked`);
    const failed = await untilAwsFails(alice, CHECK_SECONDS * 1000 * 3 + 5000);
    assert.notEqual(failed.r.code, 0);
    const who = await broker(['whoami'], alice);
    assert.equal(who.code, EXIT_CODES.unauthenticated, who.stderr);
    assert.match(who.stderr, /this login was revoked \(left the company\)/);
    const start = await broker(['task', 'deploy-lambda', '--param', 'function=again', '--reason', 'r', '--agent', 'claude-code'], alice);
    assert.equal(start.code, EXIT_CODES.unauthenticated, start.stderr);
    const records = await audit();
    const revoke = records.find((a) => a.event === 'login.revoke' && a.developer === 'alice@example.com' && a.reason === 'left the company');
    assert.equal(revoke?.detail?.by, 'carol@example.com');
    assert.equal(records.filter((a) => a.event === 'admin.offboard').at(-1)?.detail?.admin, 'carol@example.com');
    // No secret of hers in the service's files (SQLite, log) or /tmp.
    assert.deepEqual(filesContaining([stack.svc.dir, tmpdir()], [creds.SecretAccessKey, creds.SessionToken]), []);
  });
});
