import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, test } from 'node:test';
import { STSClient } from '@aws-sdk/client-sts';
import { MANAGED_MARKER, quoteCommandWord, upsertBrokerProfiles } from '../broker/aws-config-file.js';
import { configureAws, unifiedDiff } from '../broker/aws-config-writer.js';
import { tryInstanceLock } from '../broker/daemon/instance-lock.js';
import { broker, run } from './peers/cli.js';
import { BROKER_BIN, REPO_ROOT, VENV_BIN } from './peers/paths.js';

const CMD = '/usr/bin/node /opt/broker/bin/broker.cjs';
const spec = (t: string, region?: string) => ({
  name: `broker-${t}`,
  settings: { credential_process: `${CMD} credential-process --task ${t}`, ...(region ? { region } : {}) },
});

/** A config file with everything the broker must leave alone: CRLF, comments, nested blocks, no final newline. */
const USER_FILE = [
  '# my AWS config',
  '; semicolon comment',
  '[default]',
  'region = eu-west-1',
  'output=json',
  '',
  '[profile dev]  ',
  'role_arn = arn:aws:iam::111111111111:role/dev',
  'source_profile = default',
  's3 =',
  '    max_concurrent_requests = 20',
  '    addressing_style = path',
  '',
  '[sso-session corp]',
  'sso_start_url: https://corp.awsapps.com/start',
  '# trailing comment, no newline after it',
].join('\r\n');

describe('upsertBrokerProfiles', () => {
  test('adding keeps every existing byte, and new lines follow the file\'s CRLF', () => {
    const r = upsertBrokerProfiles(USER_FILE, [spec('a', 'us-east-1'), spec('b')]);
    assert.equal(r.changed, true);
    assert.deepEqual([r.added, r.updated], [['broker-a', 'broker-b'], []]);
    assert.ok(r.text.startsWith(`${USER_FILE}\r\n`), 'original bytes are a prefix of the result');
    assert.equal(r.text.slice(USER_FILE.length), [
      '', '',
      MANAGED_MARKER, '[profile broker-a]', `credential_process = ${CMD} credential-process --task a`, 'region = us-east-1', '',
      MANAGED_MARKER, '[profile broker-b]', `credential_process = ${CMD} credential-process --task b`, '',
    ].join('\r\n'));
    assert.doesNotMatch(r.text.replace(/\r\n/g, ''), /\n/, 'no bare LF in a CRLF file');
  });

  test('running twice changes nothing the second time', () => {
    const once = upsertBrokerProfiles(USER_FILE, [spec('a', 'us-east-1'), spec('b')]);
    const twice = upsertBrokerProfiles(once.text, [spec('a', 'us-east-1'), spec('b')]);
    assert.deepEqual(twice, { text: once.text, changed: false, added: [], updated: [] });
  });

  test('an empty file gets just our sections, LF', () => {
    const r = upsertBrokerProfiles('', [spec('a')]);
    assert.equal(r.text, `${MANAGED_MARKER}\n[profile broker-a]\ncredential_process = ${CMD} credential-process --task a\n`);
  });

  test('updates our keys in place, keeping unknown keys, nested blocks, comments and other sections', () => {
    const before = [
      '[profile other]',
      'region = us-west-2',
      '',
      MANAGED_MARKER,
      '[ profile   broker-a ]',
      'output = json',
      'credential_process = /old/broker credential-process --task a',
      '  # indented comment',
      's3 =',
      '  region = not-ours',
      'region = eu-west-1',
      '',
      '# comment before the next section',
      '[profile z]',
      'region = ap-south-1',
      '',
    ].join('\n');
    const r = upsertBrokerProfiles(before, [spec('a', 'us-east-1')]);
    assert.deepEqual([r.added, r.updated], [[], ['broker-a']]);
    const expected = before
      .replace('credential_process = /old/broker credential-process --task a', `credential_process = ${CMD} credential-process --task a`)
      .replace('region = eu-west-1', 'region = us-east-1');
    assert.equal(r.text, expected);
    assert.equal(upsertBrokerProfiles(r.text, [spec('a', 'us-east-1')]).changed, false);
  });

  test('a missing key is added after the section\'s last key; the marker is added above an unmarked section', () => {
    const before = '[profile broker-a]\r\ncredential_process = old\r\n\r\n# next\r\n[profile z]\r\nregion = x\r\n';
    const r = upsertBrokerProfiles(before, [spec('a', 'us-east-1')]);
    assert.equal(r.text, `${MANAGED_MARKER}\r\n[profile broker-a]\r\ncredential_process = ${CMD} credential-process --task a\r\nregion = us-east-1\r\n\r\n# next\r\n[profile z]\r\nregion = x\r\n`);
  });

  test('an old value spread over continuation lines is replaced whole; a last line without newline stays so', () => {
    const before = `${MANAGED_MARKER}\n[profile broker-a]\ncredential_process = ${CMD} credential-process --task a\n  b\nregion = eu-west-1`;
    const r = upsertBrokerProfiles(before, [spec('a', 'us-east-2')]);
    assert.equal(r.text, `${MANAGED_MARKER}\n[profile broker-a]\ncredential_process = ${CMD} credential-process --task a\nregion = us-east-2`);
  });

  test('[broker-a] (no "profile" prefix, which the AWS config ignores) is not taken for our profile', () => {
    const r = upsertBrokerProfiles('[broker-a]\nregion = x\n', [spec('a')]);
    assert.deepEqual(r.added, ['broker-a']);
    assert.ok(r.text.startsWith('[broker-a]\nregion = x\n'));
  });

  test('values that cannot be one INI line are refused', () => {
    assert.throws(() => upsertBrokerProfiles('', [{ name: 'broker-a', settings: { region: 'x\n[profile evil]' } }]), TypeError);
    assert.throws(() => upsertBrokerProfiles('', [{ name: 'broker-a]', settings: {} }]), TypeError);
  });
});

describe('quoteCommandWord', () => {
  test('quotes only when needed, and refuses what sh and shlex read differently', () => {
    assert.equal(quoteCommandWord('/usr/bin/node', 'linux'), '/usr/bin/node');
    assert.equal(quoteCommandWord('/home/a b/node', 'linux'), '"/home/a b/node"');
    assert.equal(quoteCommandWord('C:\\Program Files\\nodejs\\node.exe', 'win32'), '"C:\\Program Files\\nodejs\\node.exe"');
    assert.throws(() => quoteCommandWord('/tmp/$HOME/x', 'linux'), TypeError);
  });
});

describe('configureAws (files)', () => {
  const templates = [{ name: 'a', region: 'us-east-1' }, { name: 'b', region: null }];

  test('a new file is created 0600 in a new 0700 directory, with no backup', async () => {
    const home = mkdtempSync(join(tmpdir(), 'broker-cfg-'));
    const file = join(home, '.aws', 'config');
    const r = await configureAws({ templates, configFile: file, dryRun: false, command: CMD });
    assert.deepEqual([r.added, r.updated, r.unchanged, r.backup], [['broker-a', 'broker-b'], [], [], undefined]);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(join(home, '.aws')).mode & 0o777, 0o700);
    assert.match(r.diff, /^--- \/dev\/null\n\+\+\+ .*config\n@@ -0,0 \+1,\d+ @@\n\+# managed by broker\n/);
    const again = await configureAws({ templates, configFile: file, dryRun: false, command: CMD });
    assert.deepEqual([again.added, again.updated, again.unchanged, again.diff, again.backup], [[], [], ['broker-a', 'broker-b'], '', undefined]);
  });

  test('a dry run writes nothing and reports the diff', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-'));
    const file = join(dir, 'config');
    writeFileSync(file, USER_FILE);
    const r = await configureAws({ templates, configFile: file, dryRun: true, command: CMD });
    assert.equal(readFileSync(file, 'utf8'), USER_FILE);
    assert.deepEqual(readdirSync(dir), ['config']);
    assert.deepEqual(r.added, ['broker-a', 'broker-b']);
    assert.match(r.diff, /\+\[profile broker-a\]/);
    assert.equal(r.backup, undefined);
    assert.equal(await configureAws({ templates, configFile: join(dir, 'nope', 'config'), dryRun: true, command: CMD }).then(() => existsSync(join(dir, 'nope'))), false);
  });

  test('changing an existing file backs it up first and keeps its mode', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-'));
    const file = join(dir, 'config');
    writeFileSync(file, USER_FILE);
    chmodSync(file, 0o640);
    const r = await configureAws({ templates, configFile: file, dryRun: false, command: CMD });
    assert.ok(r.backup && r.backup.startsWith(`${file}.broker-backup-`), r.backup);
    assert.equal(readFileSync(r.backup, 'utf8'), USER_FILE);
    assert.ok(readFileSync(file, 'utf8').startsWith(USER_FILE));
    assert.equal(statSync(file).mode & 0o777, 0o640);
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('broker-tmp')), [], 'no temp file left');
  });

  test('a file that is not UTF-8 is rewritten byte for byte, except the broker\'s own sections', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-bytes-'));
    const file = join(dir, 'config');
    // A Latin-1 comment (0xE9), bytes that are no UTF-8 at all (0xFF 0xFE, a lone 0x80), valid
    // UTF-8 (é, €) and CRLF; and an old broker section to update in the middle.
    const bytes = (...parts: (string | number[])[]) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p))));
    const head = bytes('# caf', [0xe9], ' (latin-1)\r\n[profile dev]\r\nregion = eu-west-1\r\n# junk: ', [0xff, 0xfe, 0x80], '\r\n\r\n');
    const tail = bytes('\r\n[profile z]\r\n# utf-8: é €\r\nrole_arn = arn:aws:iam::111111111111:role/', [0xe9, 0x80], '\r\n');
    const oldSection = bytes(`${MANAGED_MARKER}\r\n[profile broker-a]\r\ncredential_process = /old/broker credential-process --task a\r\nregion = us-east-1\r\n`);
    writeFileSync(file, Buffer.concat([head, oldSection, tail]));
    // The broker's own line is UTF-8 (a path with é), whatever the rest of the file is.
    const command = '/opt/caf\u00e9/node /opt/broker.cjs';
    const r = await configureAws({ templates: [{ name: 'a', region: 'us-east-1' }, { name: 'b', region: null }], configFile: file, dryRun: false, command });
    assert.deepEqual([r.added, r.updated], [['broker-b'], ['broker-a']]);
    const newSection = bytes(`${MANAGED_MARKER}\r\n[profile broker-a]\r\ncredential_process = ${command} credential-process --task a\r\nregion = us-east-1\r\n`);
    const added = bytes(`\r\n${MANAGED_MARKER}\r\n[profile broker-b]\r\ncredential_process = ${command} credential-process --task b\r\n`);
    assert.deepEqual(readFileSync(file), Buffer.concat([head, newSection, tail, added]));
    assert.deepEqual(readFileSync(r.backup!), Buffer.concat([head, oldSection, tail]), 'the backup is the old file, byte for byte');
    assert.match(r.diff, /\+credential_process = \/opt\/café\/node/, 'the diff shows UTF-8 as text');
    const again = await configureAws({ templates: [{ name: 'a', region: 'us-east-1' }, { name: 'b', region: null }], configFile: file, dryRun: false, command });
    assert.deepEqual([again.added, again.updated, again.diff], [[], [], ''], 'and it is idempotent');
  });

  test('concurrent editors in separate processes lose none of each other\'s profiles', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-race-'));
    const file = join(dir, 'config');
    writeFileSync(file, USER_FILE);
    const writer = pathToFileURL(join(REPO_ROOT, 'dist', 'broker', 'aws-config-writer.js')).href;
    // Each waits for "go" on stdin after loading, so all edits start at the same moment.
    const script = `import(${JSON.stringify(writer)}).then((w) => { process.stdout.write('ready\\n'); process.stdin.once('data', async () => {
      await w.configureAws({ templates: [{ name: process.argv[1], region: 'us-east-1' }], configFile: ${JSON.stringify(file)}, dryRun: false, command: '/usr/bin/node /opt/broker.cjs' });
      process.stdout.write('done\\n'); process.exit(0); }); })`;
    const N = 8;
    const children = Array.from({ length: N }, (_, i) => spawn(process.execPath, ['--input-type=module', '-e', script, `t${i}`], { stdio: ['pipe', 'pipe', 'pipe'] }));
    const outputs = children.map((c) => {
      let out = '';
      let err = '';
      c.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      c.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      return { ready: new Promise<void>((r) => { c.stdout.on('data', () => { if (out.includes('ready')) r(); }); }), exited: new Promise<string>((r) => c.once('close', (code) => r(`${code} ${out} ${err}`))) };
    });
    await Promise.all(outputs.map((o) => o.ready));
    for (const c of children) c.stdin.end('go\n');
    for (const result of await Promise.all(outputs.map((o) => o.exited))) assert.match(result, /^0 ready\ndone/, result);
    const text = readFileSync(file, 'utf8');
    for (let i = 0; i < N; i++) assert.ok(text.includes(`[profile broker-t${i}]`), `profile broker-t${i} kept`);
    assert.ok(text.startsWith(USER_FILE));
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('broker-lock') || f.includes('broker-tmp')), [], 'no lock or temp file left');
    assert.equal(readdirSync(dir).filter((f) => f.includes('broker-backup')).length, N, 'one backup per edit');
  });

  test('the edit lock: one left by a dead process is taken over; a live holder is waited for', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-lock-'));
    const file = join(dir, 'config');
    const lock = `${file}.broker-lock`;
    // A pid that no longer exists: a child that has exited.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    writeFileSync(lock, `${dead} 55555555-5555-4555-8555-555555555555\n`);
    const t0 = Date.now();
    await configureAws({ templates: [{ name: 'a', region: null }], configFile: file, dryRun: false, command: CMD });
    assert.ok(Date.now() - t0 < 5_000, 'taken over at once');
    assert.ok(!existsSync(lock));

    const held = tryInstanceLock(lock);
    assert.ok(held.acquired);
    let finished = false;
    const edit = configureAws({ templates: [{ name: 'b', region: null }], configFile: file, dryRun: false, command: CMD }).then((r) => { finished = true; return r; });
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(finished, false, 'it waits while the lock is held');
    assert.ok(!readFileSync(file, 'utf8').includes('broker-b'));
    held.lock.release();
    assert.deepEqual((await edit).added, ['broker-b']);
  });

  test('unifiedDiff shows context around a change in the middle', () => {
    const a = 'l1\nl2\nl3\nl4\nl5\nl6\nl7\nl8\n';
    const d = unifiedDiff(a, a.replace('l5', 'L5'), 'x', 'y');
    assert.equal(d, '--- x\n+++ y\n@@ -2,7 +2,7 @@\n l2\n l3\n l4\n-l5\n+L5\n l6\n l7\n l8\n');
    assert.equal(unifiedDiff(a, a, 'x', 'y'), '');
  });
});

describe('the written profile, read by real AWS clients', () => {
  const AWS = join(VENV_BIN, 'aws');
  const PYTHON = join(VENV_BIN, 'python');
  /** Environment with no AWS keys, so only the config file can supply credentials. */
  const cleanEnv = (configFile: string) => {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('AWS_') && v !== undefined) env[k] = v;
    return { ...env, AWS_CONFIG_FILE: configFile, AWS_SHARED_CREDENTIALS_FILE: '/dev/null', AWS_EC2_METADATA_DISABLED: 'true' };
  };

  /** A stand-in broker in a directory with a space, printing a credential_process document. */
  function fakeBroker(): { dir: string; command: string } {
    const dir = mkdtempSync(join(tmpdir(), 'broker cfg '));
    mkdirSync(join(dir, 'bin dir'));
    const script = join(dir, 'bin dir', 'broker.js');
    writeFileSync(script, [
      'const task = process.argv[process.argv.indexOf("--task") + 1];',
      'const ok = process.argv[2] === "credential-process";',
      'process.stdout.write(JSON.stringify({ Version: 1, AccessKeyId: ok ? "ASIA" + task.toUpperCase() : "BAD", SecretAccessKey: "s", SessionToken: "t",',
      '  Expiration: new Date(Date.now() + 3600e3).toISOString() }));',
    ].join('\n'));
    return { dir, command: `${quoteCommandWord(process.execPath)} ${quoteCommandWord(script)}` };
  }

  test('aws configure get returns exactly our command and region; other profiles still parse', async () => {
    const { dir, command } = fakeBroker();
    const file = join(dir, 'config');
    writeFileSync(file, USER_FILE);
    await configureAws({ templates: [{ name: 'x', region: 'us-west-2' }], configFile: file, dryRun: false, command });
    const env = cleanEnv(file);
    const cp = await run(AWS, ['configure', 'get', 'credential_process', '--profile', 'broker-x'], { env });
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(cp.stdout.trim(), `${command} credential-process --task x`);
    assert.match(command, /^\S+ "[^"]+ cfg [^"]+\/bin dir\/broker\.js"$/, 'the path with spaces is quoted');
    const region = await run(AWS, ['configure', 'get', 'region', '--profile', 'broker-x'], { env });
    assert.equal(region.stdout.trim(), 'us-west-2');
    const dev = await run(AWS, ['configure', 'get', 'role_arn', '--profile', 'dev'], { env });
    assert.equal(dev.stdout.trim(), 'arn:aws:iam::111111111111:role/dev');
  });

  test('botocore (shlex) and the JS SDK (sh -c) both run the quoted command and get its credentials', async () => {
    const { dir, command } = fakeBroker();
    const file = join(dir, 'config');
    await configureAws({ templates: [{ name: 'y', region: 'us-east-1' }], configFile: file, dryRun: false, command });
    const py = await run(PYTHON, ['-c', 'import botocore.session as s; print(s.Session(profile="broker-y").get_credentials().access_key)'], { env: cleanEnv(file) });
    assert.equal(py.code, 0, py.stderr);
    assert.equal(py.stdout.trim(), 'ASIAY');

    const saved = { ...process.env };
    try {
      for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
      Object.assign(process.env, { AWS_CONFIG_FILE: file, AWS_SHARED_CREDENTIALS_FILE: '/dev/null', AWS_EC2_METADATA_DISABLED: 'true' });
      const sts = new STSClient({ profile: 'broker-y', region: 'us-east-1' });
      const creds = await sts.config.credentials();
      sts.destroy();
      assert.equal(creds.accessKeyId, 'ASIAY');
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });

  test('broker configure aws writes the real broker command (node + bin/broker.cjs), and --dry-run only prints', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-cfg-cli-'));
    const file = join(dir, 'config');
    const dry = await broker(['configure', 'aws', '--templates', 'a,b', '--region', 'eu-west-1', '--config-file', file, '--dry-run'], {});
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^--- \/dev\/null/);
    assert.doesNotMatch(dry.stdout, /would add|dry run/, 'the diff alone on stdout: it can be piped');
    assert.match(dry.stderr, /^would add profile broker-a\nwould add profile broker-b\n.*: dry run, nothing written\n$/);
    assert.equal(existsSync(file), false);

    const r = await broker(['configure', 'aws', '--templates', 'a,b', '--region', 'eu-west-1', '--config-file', file, '--json'], {});
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout).added, ['broker-a', 'broker-b']);
    const cp = await run(AWS, ['configure', 'get', 'credential_process', '--profile', 'broker-b'], { env: cleanEnv(file) });
    assert.equal(cp.stdout.trim(), `${quoteCommandWord(process.execPath)} ${quoteCommandWord(BROKER_BIN)} credential-process --task b`);
  });
});
