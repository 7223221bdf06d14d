/**
 * The principal chain behind an AccessKeyId and CloudTrail joined to task sessions, on real peers:
 * moto as STS/IAM, the test IdP (device confirmations too), a real `broker server` with
 * `admins: {groups: [admins]}` and `confirm.default: self`, two developer machines each with its own
 * gnome-keyring and daemon (alice, a developer; carol, an admin), the compiled CLI. The keys in the
 * CloudTrail files are the ones moto issued in this run; the records follow the CloudTrail User
 * Guide ("CloudTrail record contents", "CloudTrail userIdentity element").
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { EXIT_CODES } from '../broker/errors.js';
import { apiCaller } from './peers/broker-service.js';
import { broker, deviceLogin, makeTestHome, type RunResult, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, POLICIES_DIR } from './peers/paths.js';
import { startStack, type Stack } from './peers/stack.js';

function policies(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'broker-audit-')), 'policies');
  mkdirSync(dir);
  for (const n of ['deploy-lambda', 'read-cloudwatch-logs']) copyFileSync(join(POLICIES_DIR, `${n}.yaml`), join(dir, `${n}.yaml`));
  return dir;
}

/** A CloudTrail management event as AWS writes one (CloudTrail User Guide, "CloudTrail record contents"). */
function trailEvent(o: { time: string; name?: string; accessKeyId: string; arn: string; sourceIdentity?: string; id: string }): Record<string, unknown> {
  const role = o.arn.split('/')[1]!;
  return {
    eventVersion: '1.09',
    userIdentity: {
      type: 'AssumedRole', principalId: `AROAEXAMPLE:${o.arn.split('/')[2]}`, arn: o.arn, accountId: '123456789012', accessKeyId: o.accessKeyId,
      sessionContext: {
        sessionIssuer: { type: 'Role', principalId: 'AROAEXAMPLE', arn: `arn:aws:iam::123456789012:role/${role}`, accountId: '123456789012', userName: role },
        attributes: { creationDate: o.time, mfaAuthenticated: 'false' },
        ...(o.sourceIdentity ? { sourceIdentity: o.sourceIdentity } : {}),
      },
    },
    eventTime: o.time, eventSource: 'lambda.amazonaws.com', eventName: o.name ?? 'GetFunction', awsRegion: 'eu-west-1',
    sourceIPAddress: '192.0.2.10', userAgent: 'aws-cli/2', requestParameters: { functionName: 'chain-me' }, responseElements: null,
    requestID: o.id, eventID: o.id, readOnly: true, eventType: 'AwsApiCall', managementEvent: true, recipientAccountId: '123456789012',
  };
}

const isoSec = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

describe('broker audit: the principal chain behind an AccessKeyId, CloudTrail joined, the latest records', () => {
  let stack: Stack;
  const keyrings: TestKeyring[] = [];
  const homes: TestHome[] = [];
  let alice: Record<string, string>;
  let carol: Record<string, string>;
  let api: ReturnType<typeof apiCaller>;
  /** The confirmed deploy-lambda session (started through the API, confirmed at the IdP), re-issued, then ended by carol. */
  let a: { id: string; keys: string[]; startedAt: number; roleSessionName: string };
  /** The read-cloudwatch-logs session started by `broker task` (no confirmation). */
  let b: { id: string; key: string; startedAt: number };
  const ok = (r: RunResult, what: string) => assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  const json = (r: RunResult) => JSON.parse(r.stdout);

  before(async () => {
    stack = await startStack({ policiesDir: policies(), extra: { admins: { groups: ['admins'] }, confirm: { default: 'self', maxAge: '5m', timeout: '15m' } } });
    for (const who of ['alice', 'carol'] as const) {
      const keyring = await startKeyring();
      const home = makeTestHome(`broker-${who}-`);
      keyrings.push(keyring);
      homes.push(home);
      const env = { ...home.env, ...keyring.env };
      const login = await deviceLogin(stack.svc.url, env, stack.idp, `${who}@example.com`);
      assert.equal(login.code, 0, login.stderr);
      if (who === 'alice') alice = env;
      else carol = env;
    }
    api = apiCaller(stack.svc, stack.idp);
    // Session A: deploy-lambda needs alice's confirmation with a fresh IdP login (confirm.default self).
    const ask = { template: 'deploy-lambda', params: { function: 'chain-me' }, reason: 'fix chain-me timeout', agent: 'claude-code' };
    const pending = await api('POST', '/v1/sessions', 'alice@example.com', ask);
    assert.equal(pending.status, 401, JSON.stringify(pending.body));
    const request = pending.body.request.id as string;
    const started = await api('POST', `/v1/requests/${request}/confirmations`, 'alice@example.com', { decision: 'confirm', reason: 'yes, mine' });
    assert.equal(started.status, 201, JSON.stringify(started.body));
    await stack.idp.approveDevice(started.body.confirmation.user_code, 'alice@example.com');
    for (let i = 0; ; i++) {
      const r = await api('GET', `/v1/requests/${request}/confirmations/${started.body.confirmation.id}`, 'alice@example.com');
      if (r.status === 200 && r.body.status === 'done') break;
      assert.ok(i < 60, `confirmation never finished: ${JSON.stringify(r.body)}`);
      await new Promise((res) => setTimeout(res, 300));
    }
    const s = await api('POST', '/v1/sessions', 'alice@example.com', { ...ask, confirmedRequest: request });
    assert.equal(s.status, 201, JSON.stringify(s.body));
    const again = await api('POST', `/v1/sessions/${s.body.session.id}/credentials`, 'alice@example.com');
    assert.equal(again.status, 200, JSON.stringify(again.body));
    a = { id: s.body.session.id, keys: [s.body.credentials.AccessKeyId, again.body.credentials.AccessKeyId], startedAt: Date.parse(s.body.session.createdAt), roleSessionName: s.body.session.roleSessionName };
    assert.notEqual(a.keys[0], a.keys[1]);
    await new Promise((res) => setTimeout(res, 1100));
    // Session B: from alice's terminal, a template that needs no confirmation.
    const t = await broker(['task', 'read-cloudwatch-logs', '--param', 'logGroup=/aws/lambda/chain-me', '--reason', 'read the logs', '--agent', 'aider', '--json'], alice);
    ok(t, 'broker task');
    const tj = json(t);
    b = { id: tj.session.id, key: tj.accessKeyId, startedAt: Date.parse(tj.session.createdAt) };
    // A refusal: a parameter outside the template's pattern.
    const refused = await broker(['task', 'deploy-lambda', '--param', 'function=bad*name', '--reason', 'r', '--agent', 'claude-code'], alice);
    assert.equal(refused.code, EXIT_CODES.invalid_request, refused.stderr);
    ok(await broker(['admin', 'end', a.id, '--reason', 'incident 7: key seen outside'], carol), 'admin end');
  });
  after(async () => {
    for (const h of homes) await h.stop();
    for (const k of keyrings) await k.stop();
    await stack?.stop();
  });

  /** Carol's `audit show … --json` until the deny on A's role is in force (IAM is written in the background). */
  const chainOfA = async (): Promise<any> => {
    for (let i = 0; ; i++) {
      const r = await broker(['audit', 'show', '--access-key-id', a.keys[1]!, '--json'], carol);
      ok(r, 'audit show');
      const c = json(r).chains[0];
      if (c?.revocations[0]?.appliedAt) return c;
      assert.ok(i < 40, `revocation never applied: ${r.stdout}`);
      await new Promise((res) => setTimeout(res, 250));
    }
  };

  it('audit show --access-key-id: the human, agent, template and version, params, reason, who confirmed, every key, the end and who ended it', async () => {
    const c = await chainOfA();
    assert.equal(c.sessionId, a.id);
    assert.equal(c.developer, 'alice@example.com');
    assert.equal(c.sourceIdentity, 'alice@example.com');
    assert.equal(c.agent, 'claude-code');
    assert.equal(c.template, 'deploy-lambda');
    assert.match(c.templateVersion, /^[0-9a-f]{12}$/);
    assert.deepEqual(c.params, { function: 'chain-me' });
    assert.equal(c.reason, 'fix chain-me timeout');
    assert.equal(c.roleSessionName, a.roleSessionName);
    assert.deepEqual(c.confirmation.confirmedBy, ['alice@example.com']);
    assert.deepEqual(c.confirmation.approvedBy, []);
    assert.match(c.confirmation.request, /^req_/);
    assert.deepEqual(c.credentials.map((k: any) => [k.accessKeyId, k.reissue]), [[a.keys[0], false], [a.keys[1], true]]);
    for (const k of c.credentials) assert.ok(Date.parse(k.expiration) > Date.now(), 'expiry recorded');
    assert.equal(c.end.by, 'carol@example.com');
    assert.equal(c.end.byAdmin, true);
    assert.equal(c.end.reason, 'incident 7: key seen outside');
    assert.equal(c.revocations[0].requestedBy, 'carol@example.com');
    assert.match(c.revocations[0].roleArn, /role\/broker-deploy-lambda$/);
    // The first key finds the same session; the text block says the same.
    const first = await broker(['audit', 'show', '--access-key-id', a.keys[0]!, '--json'], carol);
    assert.deepEqual(json(first).chains.map((x: any) => x.sessionId), [a.id]);
    const text = await broker(['audit', 'show', '--access-key-id', a.keys[0]!], carol);
    ok(text, 'audit show');
    const row = (label: string, value: string) => `  ${label.padEnd(13)} ${value}`;
    for (const shown of [`task session ${a.id}`, row('human', 'alice@example.com (the AWS SourceIdentity of its credentials)'), row('agent', 'claude-code'),
      row('template', `deploy-lambda version ${c.templateVersion}`), row('parameters', 'function=chain-me'), row('reason', '"fix chain-me timeout"'),
      row('confirmation', `confirmed by alice@example.com (request ${c.confirmation.request})`), row('credential', a.keys[0]!), row('credential', a.keys[1]!),
      'by carol@example.com (admin): "incident 7: key seen outside"', row('revoked', `deny on ${c.revocations[0].roleArn}`)]) {
      assert.ok(text.stdout.includes(shown), `shows ${shown}:\n${text.stdout}`);
    }
    // The admin's read is audited (once per query).
    const tail = await broker(['audit', 'tail', '-n', '50', '--json'], carol);
    const views = tail.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.event === 'admin.view' && r.detail?.route === 'audit');
    assert.ok(views.some((r) => r.detail.admin === 'carol@example.com' && r.detail.filter.accessKeyId?.[0] === a.keys[0]), 'audited with the admin and the filter');
  });

  it('--db FILE reads the store file read-only and gives the same blocks as the server, for each filter', async () => {
    await chainOfA();
    for (const filter of [['--access-key-id', a.keys[0]!], ['--developer', 'alice@example.com'], ['--template', 'read-cloudwatch-logs'], ['--session', b.id], ['--agent', 'aider']]) {
      const server = await broker(['audit', 'show', ...filter, '--json'], carol);
      const db = await broker(['audit', 'show', ...filter, '--json', '--db', stack.svc.dbPath], carol);
      ok(server, `server ${filter.join(' ')}`);
      ok(db, `db ${filter.join(' ')}`);
      assert.deepEqual(json(db), json(server), filter.join(' '));
      if (filter[0] !== '--access-key-id' && filter[0] !== '--developer') continue;
      const serverText = await broker(['audit', 'show', ...filter], carol);
      const dbText = await broker(['audit', 'show', ...filter, '--db', stack.svc.dbPath], alice);
      assert.equal(dbText.stdout, serverText.stdout, `text ${filter.join(' ')}`);
    }
    // Read-only: a copy of the store from before the audit indexes existed is read, and left byte for byte as it was (no migration).
    const copyDir = mkdtempSync(join(tmpdir(), 'broker-store-copy-'));
    const copy = join(copyDir, 'old.db');
    const live = new DatabaseSync(stack.svc.dbPath, { readOnly: true });
    live.exec(`VACUUM INTO '${copy}'`);
    live.close();
    const old = new DatabaseSync(copy);
    old.exec('DROP INDEX audit_access_key; DROP INDEX audit_vault_accessor; DROP INDEX audit_event;');
    old.close();
    const digest = () => createHash('sha256').update(readFileSync(copy)).digest('hex');
    const before = digest();
    const fromCopy = await broker(['audit', 'show', '--access-key-id', a.keys[0]!, '--json', '--db', copy], alice);
    ok(fromCopy, 'audit show --db copy');
    assert.deepEqual(json(fromCopy), json(await broker(['audit', 'show', '--access-key-id', a.keys[0]!, '--json'], carol)));
    assert.equal(digest(), before, 'the file is unchanged');
    assert.deepEqual(readdirSync(copyDir), ['old.db'], 'no journal or WAL left beside it');
    assert.equal((await broker(['audit', 'show', '--session', a.id, '--db', join(tmpdir(), 'no-such-store.db')], carol)).code, EXIT_CODES.not_found);
    const notStore = join(mkdtempSync(join(tmpdir(), 'broker-notstore-')), 'x.db');
    writeFileSync(notStore, 'not sqlite');
    const bad = await broker(['audit', 'show', '--session', a.id, '--db', notStore], carol);
    assert.equal(bad.code, EXIT_CODES.invalid_request, bad.stderr);
    assert.match(bad.stderr, /x\.db cannot be read as a broker store/);
  });

  it('filters narrow: developer, template, agent, session, vault accessor, since/until; --denied lists refusals', async () => {
    const ids = async (...args: string[]) => {
      const r = await broker(['audit', 'show', ...args, '--json'], carol);
      ok(r, args.join(' '));
      return json(r).chains.map((c: any) => c.sessionId);
    };
    assert.deepEqual(await ids('--developer', 'alice@example.com'), [a.id, b.id]);
    assert.deepEqual(await ids('--template', 'deploy-lambda'), [a.id]);
    assert.deepEqual(await ids('--agent', 'aider'), [b.id]);
    assert.deepEqual(await ids('--agent', 'cursor'), []);
    assert.deepEqual(await ids('--session', b.id), [b.id]);
    assert.deepEqual(await ids('--vault-accessor', 'hvs.none'), []);
    assert.deepEqual(await ids('--developer', 'alice@example.com', '--since', '1h'), [a.id, b.id]);
    assert.deepEqual(await ids('--developer', 'alice@example.com', '--until', isoSec(a.startedAt - 60_000)), []);
    assert.deepEqual(await ids('--developer', 'alice@example.com', '--until', new Date(b.startedAt - 500).toISOString()), [a.id]);
    const none = await broker(['audit', 'show', '--template', 'deploy-lambda', '--agent', 'aider'], carol);
    assert.equal(none.stdout, 'No task session matched.\n');
    const denied = await broker(['audit', 'show', '--denied', '--developer', 'alice@example.com', '--json'], carol);
    ok(denied, '--denied');
    const refusals = json(denied).records;
    assert.ok(refusals.length >= 1 && refusals.every((r: any) => r.decision === 'denied' && r.developer === 'alice@example.com'), denied.stdout);
    assert.ok(refusals.some((r: any) => r.event === 'session.start' && r.template === 'deploy-lambda'), 'the bad parameter is there');
    const deniedText = await broker(['audit', 'show', '--denied', '--developer', 'alice@example.com'], carol);
    assert.match(deniedText.stdout, /session\.start denied {2}alice@example\.com {2}deploy-lambda/);
  });

  it('a non-admin gets exit 5 (audited); bad input exits 2 naming the field; the route answers 400 with the parameter', async () => {
    const denied = await broker(['audit', 'show', '--access-key-id', a.keys[0]!, '--json'], alice);
    assert.equal(denied.code, EXIT_CODES.forbidden, denied.stderr);
    assert.equal(json(denied).error.code, 'forbidden');
    assert.equal((await broker(['audit', 'tail'], alice)).code, EXIT_CODES.forbidden);
    for (const [args, field] of [
      [['--access-key-id', 'not a key'], 'accessKeyId'], [['--developer', 'alice@example.com', '--since', 'yesterday'], 'since'],
      [['--session', 'ts_x', '--until', '2026-13-45T00:00:00Z'], 'until'], [['--template', 'Bad_Name'], 'template'],
    ] as const) {
      for (const where of [[], ['--db', stack.svc.dbPath]]) {
        const r = await broker(['audit', 'show', ...args, ...where, '--json'], carol);
        assert.equal(r.code, EXIT_CODES.invalid_request, `${args.join(' ')} ${where.join(' ')}: ${r.stderr}`);
        assert.equal(json(r).error.details[0].path, field, r.stdout);
      }
    }
    assert.equal((await broker(['audit', 'show'], carol)).code, EXIT_CODES.invalid_request, 'something to show');
    assert.equal((await broker(['audit', 'show', '--session', a.id, '--server', '--db', stack.svc.dbPath], carol)).code, EXIT_CODES.invalid_request);
    for (const [q, path] of [['limit=0', 'limit'], ['limit=5000', 'limit'], ['bogus=1', 'bogus'], ['view=chains&denied=1', 'denied'], ['after=-1', 'after'], ['since=2026-12-04', 'since']]) {
      const r = await api('GET', `/v1/admin/audit?${q}`, 'carol@example.com');
      assert.equal(r.status, 400, `${q}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, 'invalid_request');
      assert.equal(r.body.details[0].path, path, q);
    }
    const two = await api('GET', `/v1/admin/audit?accessKeyId=${a.keys[0]}&accessKeyId=${b.key}`, 'carol@example.com');
    assert.equal(two.status, 200);
    assert.deepEqual(two.body.chains.map((c: any) => c.sessionId), [a.id, b.id], 'a repeated filter matches any of its values');
    // Paging by seq: one chain per page, `next` until null.
    const p1 = await api('GET', '/v1/admin/audit?developer=alice@example.com&limit=1', 'carol@example.com');
    assert.deepEqual(p1.body.chains.map((c: any) => c.sessionId), [a.id]);
    const p2 = await api('GET', `/v1/admin/audit?developer=alice@example.com&limit=1&after=${p1.body.next}`, 'carol@example.com');
    assert.deepEqual(p2.body.chains.map((c: any) => c.sessionId), [b.id]);
    const p3 = await api('GET', `/v1/admin/audit?developer=alice@example.com&limit=1&after=${p2.body.next}`, 'carol@example.com');
    assert.deepEqual([p3.body.chains, p3.body.next], [[], null]);
  });

  it('audit cloudtrail: keys issued in this run, a role-chained event linked by SourceIdentity alone, gzip and lookup-events files; a foreign key listed apart; --db the same', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-trail-'));
    const t = (ms: number) => isoSec(ms);
    const between = a.startedAt + Math.max(200, Math.floor((b.startedAt - a.startedAt) / 2));
    assert.ok(between < b.startedAt && between > a.startedAt);
    const plain = join(dir, '123456789012_CloudTrail_eu-west-1_20261204T1810Z_a.json');
    writeFileSync(plain, JSON.stringify({
      Records: [
        trailEvent({ time: t(a.startedAt + 2000), accessKeyId: a.keys[0]!, arn: `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${a.roleSessionName}`, sourceIdentity: 'alice@example.com', id: 'e1' }),
        trailEvent({ time: t(Date.now()), name: 'UpdateFunctionCode', accessKeyId: 'AKIAFOREIGNEXAMPLE01', arn: 'arn:aws:sts::123456789012:assumed-role/ci-deployer/ci-run-42', id: 'e2' }),
        // Role chaining: a key the broker never issued, a session name the chainer chose; only the SourceIdentity is alice's.
        trailEvent({ time: new Date(between).toISOString(), name: 'ListFunctions', accessKeyId: 'ASIACHAINEDEXAMPLE01', arn: 'arn:aws:sts::123456789012:assumed-role/other-team-role/chained', sourceIdentity: 'alice@example.com', id: 'e3' }),
      ],
    }, null, 2));
    const gz = join(dir, '123456789012_CloudTrail_eu-west-1_20261204T1815Z_b.json.gz');
    writeFileSync(gz, gzipSync(JSON.stringify({
      Records: [
        trailEvent({ time: t(Date.now()), name: 'FilterLogEvents', accessKeyId: b.key, arn: 'arn:aws:sts::123456789012:assumed-role/broker-read-cloudwatch-logs/x', sourceIdentity: 'alice@example.com', id: 'e4' }),
        // Both of alice's sessions alive: the SourceIdentity names her, not one session.
        trailEvent({ time: t(Date.now()), name: 'ListRoles', accessKeyId: 'ASIACHAINEDEXAMPLE02', arn: 'arn:aws:sts::123456789012:assumed-role/other-team-role/chained2', sourceIdentity: 'alice@example.com', id: 'e5' }),
      ],
    })));
    const lookup = join(dir, 'lookup-events.json');
    const inner = trailEvent({ time: t(a.startedAt + 3000), name: 'PublishVersion', accessKeyId: a.keys[1]!, arn: `arn:aws:sts::123456789012:assumed-role/broker-deploy-lambda/${a.roleSessionName}`, id: 'e6' });
    writeFileSync(lookup, JSON.stringify({ Events: [{ EventId: 'e6', EventName: 'PublishVersion', ReadOnly: 'false', AccessKeyId: a.keys[1], EventTime: inner.eventTime, EventSource: 'lambda.amazonaws.com', Username: a.roleSessionName, Resources: [], CloudTrailEvent: JSON.stringify(inner) }] }));

    const r = await broker(['audit', 'cloudtrail', plain, gz, lookup, '--json'], carol);
    ok(r, 'audit cloudtrail');
    const out = json(r);
    const byId = new Map(out.joined.map((j: any) => [j.event.eventID, j]));
    const e1: any = byId.get('e1');
    assert.equal(e1.link, 'accessKeyId');
    assert.deepEqual(e1.session, { sessionId: a.id, developer: 'alice@example.com', agent: 'claude-code', template: 'deploy-lambda', templateVersion: e1.session.templateVersion, params: { function: 'chain-me' }, reason: 'fix chain-me timeout' });
    const e3: any = byId.get('e3');
    assert.equal(e3.link, 'sourceIdentity', 'role-chained: linked by SourceIdentity alone');
    assert.equal(e3.session.sessionId, a.id, 'the one session of hers alive then');
    assert.equal(e3.developer, 'alice@example.com');
    const e4: any = byId.get('e4');
    assert.deepEqual([e4.link, e4.session.sessionId, e4.session.agent, e4.session.reason], ['accessKeyId', b.id, 'aider', 'read the logs']);
    const e5: any = byId.get('e5');
    assert.deepEqual([e5.link, e5.session, e5.candidates], ['sourceIdentity', null, [a.id, b.id]]);
    const e6: any = byId.get('e6');
    assert.deepEqual([e6.link, e6.session.sessionId, e6.event.file], ['accessKeyId', a.id, lookup]);
    assert.deepEqual(out.foreign.map((e: any) => [e.eventID, e.accessKeyId]), [['e2', 'AKIAFOREIGNEXAMPLE01']]);
    // The same join from the store file.
    const db = await broker(['audit', 'cloudtrail', plain, gz, lookup, '--json', '--db', stack.svc.dbPath], carol);
    ok(db, 'cloudtrail --db');
    assert.deepEqual(json(db), out);
    // The table.
    const text = await broker(['audit', 'cloudtrail', plain, gz, lookup], carol);
    ok(text, 'cloudtrail table');
    assert.match(text.stdout, /^6 event\(s\) in 3 file\(s\): 5 from task sessions, 1 not from the broker's credentials\.$/m);
    const row = text.stdout.split('\n').find((l) => l.includes('lambda:GetFunction'))!;
    for (const shown of [a.keys[0]!, 'alice@example.com', 'claude-code', 'deploy-lambda function=chain-me', '"fix chain-me timeout"', a.id, 'accessKeyId']) assert.ok(row.includes(shown), `${shown} in ${row}`);
    assert.match(text.stdout, /Not issued by the broker[^\n]*\n[^\n]*\n[^\n]*AKIAFOREIGNEXAMPLE01/);
  });

  it('audit cloudtrail refuses a bad file naming it and where (exit 2), a missing one with exit 6, never a stack', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-trail-bad-'));
    const cases: [string, string | Buffer, RegExp][] = [
      ['broken.json', '{"Records": [\n  {"eventTime": }\n]}', /broken\.json: not valid JSON at line 2, column 17/],
      ['no-time.json', JSON.stringify({ Records: [{ eventSource: 's3.amazonaws.com', eventName: 'GetObject' }] }), /no-time\.json: Records\[0\]\.eventTime: /],
      ['bad-gzip.json.gz', Buffer.from([0x1f, 0x8b, 1, 2, 3, 4, 5]), /bad-gzip\.json\.gz: not a valid gzip file/],
      ['lookup.json', JSON.stringify({ Events: [{ CloudTrailEvent: { not: 'a string' } }] }), /lookup\.json: Events\[0\]\.CloudTrailEvent: must be a string/],
      ['other.json', JSON.stringify({ items: [] }), /other\.json: is neither a CloudTrail log file/],
    ];
    for (const [name, content, message] of cases) {
      const f = join(dir, name);
      writeFileSync(f, content);
      const r = await broker(['audit', 'cloudtrail', f], carol);
      assert.equal(r.code, EXIT_CODES.invalid_request, `${name}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack');
      assert.equal(r.stdout, '');
    }
    const missing = await broker(['audit', 'cloudtrail', join(dir, 'nope.json')], carol);
    assert.equal(missing.code, EXIT_CODES.not_found, missing.stderr);
    assert.match(missing.stderr, /nope\.json: no such file/);
  });

  it('audit tail: the latest records one per line; -f prints new ones as they are written; no secret in any output', async () => {
    const cp = await broker(['credential-process', '--task', 'read-cloudwatch-logs'], alice);
    ok(cp, 'credential-process');
    const creds = JSON.parse(cp.stdout) as { SecretAccessKey: string; SessionToken: string };
    const last = await broker(['audit', 'tail', '-n', '3', '--json'], carol);
    ok(last, 'tail');
    const lines = last.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, 3);
    assert.ok(lines[0].seq < lines[1].seq && lines[1].seq < lines[2].seq, 'oldest first');
    const text = await broker(['audit', 'tail', '-n', '2'], carol);
    assert.equal(text.stdout.trim().split('\n').length, 2);
    assert.match(text.stdout, /^\d+ {2}\d{4}-\d\d-\d\dT[^ ]+Z {2}[a-z._]+ [a-z]+/m);

    const child = spawn(process.execPath, [BROKER_BIN, 'audit', 'tail', '-n', '0', '-f', '--interval', '0.5'], { env: { ...process.env, ...carol }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    try {
      await new Promise((res) => setTimeout(res, 1500));
      ok(await broker(['end', 'read-cloudwatch-logs'], alice), 'end');
      for (let i = 0; !stdout.includes(`session.end ended  alice@example.com  read-cloudwatch-logs  ${b.id}`); i++) {
        assert.ok(i < 60, `tail -f never showed the end:\n${stdout}`);
        await new Promise((res) => setTimeout(res, 250));
      }
    } finally {
      child.kill('SIGINT');
    }
    assert.equal(await exited, 0, 'Ctrl-C ends it cleanly');
    const everything = [
      stdout, last.stdout,
      (await broker(['audit', 'tail', '-n', '1000', '--json'], carol)).stdout,
      (await broker(['audit', 'show', '--developer', 'alice@example.com', '--json'], carol)).stdout,
      (await broker(['audit', 'show', '--developer', 'alice@example.com', '--db', stack.svc.dbPath], carol)).stdout,
    ].join('\n');
    for (const secret of [creds.SecretAccessKey, creds.SessionToken]) assert.equal(everything.includes(secret), false, 'no secret in any audit output');
    // Her own `broker end` is recorded as hers (detail.by), and the chain says so.
    const shown = JSON.parse((await broker(['audit', 'show', '--session', b.id, '--json'], carol)).stdout) as { chains: { end: { by: string | null; byAdmin: boolean } }[] };
    assert.deepEqual([shown.chains[0]!.end.by, shown.chains[0]!.end.byAdmin], ['alice@example.com', false]);
    const records = (await broker(['audit', 'tail', '-n', '1000', '--json'], carol)).stdout.trim().split('\n')
      .map((l) => JSON.parse(l) as { event: string; sessionId?: string; detail?: { by?: string } });
    const endRecord = records.find((r) => r.event === 'session.end' && r.sessionId === b.id);
    assert.equal(endRecord?.detail?.by, 'alice@example.com');
  });
});
