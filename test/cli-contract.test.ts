/**
 * The CLI's contract with scripts, run compiled as users run it: exit codes derived from the error
 * code by one table (the README's, compared here), credential_process exiting by the same table,
 * `--json` failures as a JSON document on stdout, `--version` from the installed package.json, and
 * `broker exec`'s own failures kept apart from its command's (125). Commands that need the service
 * are covered on real peers in e2e-aws-cli, daemon and daemon-clock.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EXEC_EXIT, EXIT_CODES, EXIT_NO, EXIT_OK, ERROR_CODES, type ErrorCode } from '../broker/errors.js';
import { broker, makeTestHome, run, type TestHome } from './peers/cli.js';
import { startKeyring, type TestKeyring } from './peers/keyring.js';
import { BROKER_BIN, REPO_ROOT } from './peers/paths.js';

/** The rows of README's "Exit codes" table: exit status → the error codes it lists (in backticks). */
function readmeExitTable(): Map<number, string[]> {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const section = /^### Exit codes\n([\s\S]*?)(?=^#)/m.exec(readme)?.[1];
  assert.ok(section, 'README has an "Exit codes" section');
  const rows = new Map<number, string[]>();
  for (const line of section.split('\n')) {
    const m = /^\|\s*(\d+)\s*\|([^|]*)\|/.exec(line);
    if (!m) continue;
    assert.ok(!rows.has(Number(m[1])), `exit ${m[1]} has one row`);
    rows.set(Number(m[1]), [...m[2]!.matchAll(/`([a-z_]+)`/g)].map((x) => x[1]!).sort());
  }
  return rows;
}

describe('exit codes', () => {
  it('every error code has one, codes share one only as README\'s table groups them, and the table is the code\'s', () => {
    const codes = Object.keys(ERROR_CODES).sort();
    assert.deepEqual(Object.keys(EXIT_CODES).sort(), codes, 'an exit status for every error code, and no other');
    const byExit = new Map<number, string[]>();
    for (const code of codes) {
      const exit = EXIT_CODES[code as ErrorCode];
      // Never success or "no" (1), never exec's 125–127 or a shell's 128+n for a signal.
      assert.ok(Number.isInteger(exit) && exit >= 2 && exit < 125, `${code}: ${exit}`);
      byExit.set(exit, [...(byExit.get(exit) ?? []), code]);
    }
    const readme = readmeExitTable();
    const documented = new Map([...readme].filter(([, c]) => c.length > 0));
    assert.deepEqual(new Map([...byExit].map(([e, c]) => [e, c.sort()])), documented, 'README\'s rows with error codes are the table in broker/exit-codes.cts');
    const others = [...readme].filter(([, c]) => c.length === 0).map(([e]) => e).sort((a, b) => a - b);
    assert.deepEqual(others, [EXIT_OK, EXIT_NO, EXEC_EXIT.failed, EXEC_EXIT.cannotRun, EXEC_EXIT.notFound], 'and the statuses that are no error code\'s');
  });

  it('commander\'s usage errors exit 2 like invalid_request; --help and --version exit 0', async () => {
    for (const args of [['nope'], ['task'], ['status', '--bogus'], ['policy', 'explain', 'x'], ['policy'], ['end', 'a', 'b']]) {
      const r = await broker(args, {});
      assert.equal(r.code, EXIT_CODES.invalid_request, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '', `${args.join(' ')}: without --json nothing on stdout`);
      assert.match(r.stderr, /error: |Usage: /);
    }
    for (const args of [['--help'], ['task', '--help'], ['--version']]) assert.equal((await broker(args, {})).code, 0, args.join(' '));
  });
});

describe('--json failures', () => {
  it('are {"error": {code, message, hint?, details?}} on stdout and nothing else there, with the exit status of the code', async () => {
    const bad = await broker(['task', 'deploy-lambda', '--param', 'nonsense', '--json'], {});
    assert.equal(bad.code, EXIT_CODES.invalid_request);
    assert.deepEqual(JSON.parse(bad.stdout), { error: { code: 'invalid_request', message: '--param "nonsense" is not of the form name=value', hint: 'e.g. --param function=checkout-api' } });
    assert.match(bad.stderr, /^broker: --param "nonsense" is not of the form name=value\n {2}hint: /, 'the person still gets the report on stderr');
    // Commander's own parse errors, when --json is on the command line.
    const missing = await broker(['task', '--json'], {});
    assert.equal(missing.code, EXIT_CODES.invalid_request);
    assert.deepEqual(JSON.parse(missing.stdout), { error: { code: 'invalid_request', message: "missing required argument 'template'", hint: 'see: broker task --help' } });
    const unknown = await broker(['daemon', 'status', '--json', '--bogus'], {});
    assert.equal(unknown.code, EXIT_CODES.invalid_request);
    assert.equal((JSON.parse(unknown.stdout) as { error: { message: string } }).error.message, "unknown option '--bogus'");
  });
});

describe('--version', () => {
  it('is the version in the package.json of wherever the package is installed', async () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await broker(['--version'], {});
    assert.equal(r.stdout, `${pkg.version}\n`);
    // An installed copy with another version: read at run time, not built in.
    const root = mkdtempSync(join(tmpdir(), 'broker-installed-'));
    try {
      cpSync(join(REPO_ROOT, 'bin'), join(root, 'bin'), { recursive: true });
      for (const d of ['cli', 'broker']) cpSync(join(REPO_ROOT, 'dist', d), join(root, 'dist', d), { recursive: true });
      symlinkSync(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
      writeFileSync(join(root, 'package.json'), JSON.stringify({ ...pkg, version: '9.8.7-installed' }));
      const installed = await run(process.execPath, [join(root, 'bin', 'broker.cjs'), '--version']);
      assert.equal(installed.code, 0, installed.stderr);
      assert.equal(installed.stdout, '9.8.7-installed\n');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('credential_process exit codes', () => {
  let m: TestHome;
  let server: Server;
  /** The answer the fake daemon gives to the next request. */
  let answer: unknown;

  before(async () => {
    m = makeTestHome('broker-cp-exit-');
    // Something on the daemon's socket that answers as the daemon does: one JSON line per request.
    const dir = join(m.runtimeDir, 'agent-credential-broker');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    server = createServer((conn) => {
      conn.on('error', () => {});
      conn.on('data', () => conn.end(`${JSON.stringify(answer)}\n`));
    });
    await new Promise<void>((r) => server.listen(join(dir, 'daemon.sock'), r));
  });
  after(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(m.home, { recursive: true, force: true });
  });

  it('exits with the table\'s status for the error code in the daemon\'s answer, 2 for its usage errors', async () => {
    const cp = (args = ['--task', 'deploy-lambda']) => broker(['credential-process', ...args], m.env);
    for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
      answer = { ok: false, error: { code, message: `a ${code} failure`, hint: 'do something' } };
      const r = await cp();
      assert.equal(r.code, EXIT_CODES[code], code);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr, `broker credential-process: a ${code} failure (do something)\n`);
    }
    answer = { ok: false, error: { code: 'from_a_newer_daemon', message: 'x' } };
    assert.equal((await cp()).code, EXIT_CODES.internal, 'an unknown code is still a failure');
    answer = { ok: true, result: { Version: 1, AccessKeyId: 'ASIAEXAMPLE', Expiration: new Date().toISOString() } };
    assert.equal((await cp()).code, EXIT_CODES.upstream_error, 'incomplete credentials');
    answer = { ok: true, result: { Version: 1, AccessKeyId: 'ASIAEXAMPLE', SecretAccessKey: 's', SessionToken: 't', Expiration: new Date().toISOString() } };
    assert.equal((await cp()).code, 0, 'the control: a complete answer succeeds');
    for (const args of [[], ['--task'], ['--task', 'Bad_Name'], ['--task', 'x', '--extra']]) {
      const r = await cp(args);
      assert.equal(r.code, EXIT_CODES.invalid_request, args.join(' '));
      assert.equal(r.stderr.split('\n').length, 2, 'one line');
    }
  });
});

describe('broker exec before its command runs', () => {
  let keyring: TestKeyring;
  let m: TestHome;
  before(async () => {
    keyring = await startKeyring();
    m = makeTestHome('broker-exec-125-');
  });
  after(async () => {
    await broker(['daemon', 'stop'], { ...m.env, ...keyring.env });
    await keyring?.stop();
  });

  it('exits 125 for any failure of its own (not logged in, usage), never running the command; other commands exit by the code', async () => {
    const env = { ...m.env, ...keyring.env };
    const notLoggedIn = await broker(['exec', 'deploy-lambda', '--', 'sh', '-c', 'echo ran'], env);
    assert.equal(notLoggedIn.code, EXEC_EXIT.failed, notLoggedIn.stderr);
    assert.equal(notLoggedIn.stdout, '', 'the command did not run');
    assert.match(notLoggedIn.stderr, /^broker: no broker service configured|not logged in/m);
    for (const args of [['exec'], ['exec', 'deploy-lambda'], ['exec', '--bogus', 'deploy-lambda', 'sh'], ['exec', 'deploy-lambda', '--param', 'x', 'sh'], ['exec', 'deploy-lambda', '--bogus', 'sh']]) {
      const r = await broker(args, env);
      assert.equal(r.code, EXEC_EXIT.failed, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '');
    }
    // exec has no --json: one after the template is the command's, and no JSON is printed.
    const json = await broker(['exec', 'deploy-lambda', 'sh', '--json'], env);
    assert.equal(json.code, EXEC_EXIT.failed);
    assert.equal(json.stdout, '');
    // The same failure from another command has the code's own status, and --json its document.
    const whoami = await broker(['whoami', '--json'], env);
    assert.equal(whoami.code, EXIT_CODES.not_logged_in, whoami.stderr);
    assert.equal((JSON.parse(whoami.stdout) as { error: { code: string } }).error.code, 'not_logged_in');
    const status = await broker(['status', '--json'], env);
    assert.equal(status.code, EXIT_CODES.not_logged_in, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { error: { code: string } }).error.code, 'not_logged_in');
  });
});
