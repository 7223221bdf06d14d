/**
 * `broker configure claude` on real files in a temp HOME and project: Claude Code's settings written
 * in place (other keys, their order and the file's layout kept), idempotent to the byte, a dry run
 * that only prints the diff, a broken file refused and left alone, stdio MCP servers wrapped in
 * `broker exec` and unwrapped without ever wrapping twice. The commands it writes are run for real
 * against a daemon in test/claude-code.test.ts. Template and region are given, so no daemon is asked.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { unwrapped } from '../broker/claude-settings.js';
import { EXIT_CODES } from '../broker/errors.js';
import { parseJson, setJsonValue } from '../broker/json-edit.js';
import { makeTestHome, run, type RunResult } from './peers/cli.js';
import { BROKER_BIN } from './peers/paths.js';

type Settings = { env: Record<string, string>; awsAuthRefresh: string; awsCredentialExport: string } & Record<string, unknown>;

/** A settings file as a person keeps it: 4-space indent, keys in their order, a nested object on one line. */
const USER_SETTINGS = [
  '{',
  '    "model": "opus",',
  '    "permissions": {"allow": ["Bash(npm test)"], "deny": ["Read(./.env)"]},',
  '    "env": {',
  '        "CLAUDE_CODE_ENABLE_TELEMETRY": "1"',
  '    },',
  '    "hooks": {}',
  '}',
  '',
].join('\n');

const MCP = `{
  "mcpServers": {
    "aws-docs": {
      "command": "uvx",
      "args": ["awslabs.aws-documentation-mcp-server@latest"],
      "env": { "FASTMCP_LOG_LEVEL": "ERROR" }
    },
    "remote": { "type": "http", "url": "https://mcp.example.com/mcp" }
  }
}
`;

function machine() {
  const m = makeTestHome('broker-claude-');
  const project = mkdtempSync(join(tmpdir(), 'broker-claude-project-'));
  const cli = (args: string[], env: Record<string, string> = {}): Promise<RunResult> =>
    run(process.execPath, [BROKER_BIN, ...args], { cwd: project, env: { ...process.env, ...m.env, CLAUDE_CONFIG_DIR: '', ...env } });
  return { ...m, project, cli, settings: join(m.home, '.claude', 'settings.json') };
}

const CONFIGURE = ['configure', 'claude', '--template', 'deploy-lambda', '--region', 'eu-west-1', '-p', 'function=checkout-api'];

describe('broker configure claude: the settings file', () => {
  it('sets the AWS keys, keeps every other key and the file\'s layout, backs the file up once, and a second run changes no byte', async () => {
    const m = machine();
    mkdirSync(join(m.home, '.claude'));
    writeFileSync(m.settings, USER_SETTINGS);
    chmodSync(m.settings, 0o640);
    const r = await m.cli(CONFIGURE);
    assert.equal(r.code, 0, r.stderr);
    const text = readFileSync(m.settings, 'utf8');
    const s = JSON.parse(text) as Settings;
    // Every line of the person's file is still there, in order (only "env" gained members).
    const kept = USER_SETTINGS.split('\n').filter((l) => l && !l.includes('CLAUDE_CODE_ENABLE_TELEMETRY'));
    let at = 0;
    for (const line of kept) {
      const i = text.indexOf(line, at);
      assert.ok(i >= at, `kept in order: ${line}`);
      at = i + line.length;
    }
    assert.equal(s.model, 'opus');
    assert.deepEqual(s.permissions, { allow: ['Bash(npm test)'], deny: ['Read(./.env)'] });
    assert.deepEqual(s.hooks, {});
    assert.equal(s.env.CLAUDE_CODE_ENABLE_TELEMETRY, '1');
    assert.deepEqual(Object.keys(s).slice(0, 4), ['model', 'permissions', 'env', 'hooks'], 'key order kept, new keys last');
    assert.match(text, /\n {8}"AWS_PROFILE": "broker-deploy-lambda"/, 'new members indented like their siblings');
    // What the broker sets.
    assert.equal(s.env.AWS_PROFILE, 'broker-deploy-lambda');
    assert.equal(s.env.AWS_REGION, 'eu-west-1');
    assert.equal(s.env.CLAUDE_CODE_SUBPROCESS_ENV_SCRUB, '1');
    assert.match(s.awsAuthRefresh, /^\S+ \S+broker\.cjs task deploy-lambda --ensure --agent claude-code --param function=checkout-api$/);
    assert.match(s.awsCredentialExport, /^\S+ \S+broker\.cjs credentials export --task deploy-lambda --format claude$/);
    assert.ok(s.awsAuthRefresh.startsWith(`${process.execPath} `), 'absolute node: works without PATH');
    assert.equal(statSync(m.settings).mode & 0o777, 0o640, 'mode kept');
    assert.equal(readFileSync(`${m.settings}.broker-backup`, 'utf8'), USER_SETTINGS, 'the file as it was');
    // And the AWS profile AWS_PROFILE names.
    assert.match(readFileSync(m.env.AWS_CONFIG_FILE!, 'utf8'), /\[profile broker-deploy-lambda\][^[]*credential_process = .*credential-process --task deploy-lambda/);

    const again = await m.cli(CONFIGURE);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(readFileSync(m.settings, 'utf8'), text, 'second run: byte-identical');
    assert.match(again.stdout, /settings\.json: up to date/);

    // Edited by hand, then configured again: the backup stays the first one.
    writeFileSync(m.settings, text.replace('"opus"', '"sonnet"').replace('broker-deploy-lambda', 'mine'));
    assert.equal((await m.cli(CONFIGURE)).code, 0);
    assert.equal(readFileSync(`${m.settings}.broker-backup`, 'utf8'), USER_SETTINGS, 'backed up once');
    assert.equal((JSON.parse(readFileSync(m.settings, 'utf8')) as Settings).model, 'sonnet');
    assert.deepEqual(readdirSync(join(m.home, '.claude')).sort(), ['settings.json', 'settings.json.broker-backup'], 'no temp or lock file left');
  });

  it('creates a missing file 0600 in a 0700 directory; honours CLAUDE_CONFIG_DIR', async () => {
    const m = machine();
    const r = await m.cli(CONFIGURE);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(m.settings).mode & 0o777, 0o600);
    assert.equal(statSync(join(m.home, '.claude')).mode & 0o777, 0o700);
    assert.ok(!existsSync(`${m.settings}.broker-backup`), 'nothing to back up');
    const dir = join(m.home, 'claude-config');
    assert.equal((await m.cli(CONFIGURE, { CLAUDE_CONFIG_DIR: dir })).code, 0);
    assert.equal((JSON.parse(readFileSync(join(dir, 'settings.json'), 'utf8')) as Settings).env.AWS_PROFILE, 'broker-deploy-lambda');
  });

  it('--dry-run prints a unified diff on stdout and writes nothing', async () => {
    const m = machine();
    mkdirSync(join(m.home, '.claude'));
    writeFileSync(m.settings, USER_SETTINGS);
    const r = await m.cli([...CONFIGURE, '--dry-run']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.startsWith(`--- ${m.settings}\n+++ ${m.settings}\n@@ `), r.stdout);
    assert.match(r.stdout, /^\+ {4}"awsAuthRefresh": ".*task deploy-lambda --ensure/m);
    assert.match(r.stdout, /^-\s+"CLAUDE_CODE_ENABLE_TELEMETRY": "1"$/m);
    assert.match(r.stdout, /^\+\s+"CLAUDE_CODE_SUBPROCESS_ENV_SCRUB": "1",?$/m);
    assert.match(r.stdout, /^\+\[profile broker-deploy-lambda\]/m, 'and the AWS profile it would add');
    assert.match(r.stderr, /dry run, nothing written/);
    assert.equal(readFileSync(m.settings, 'utf8'), USER_SETTINGS);
    assert.ok(!existsSync(`${m.settings}.broker-backup`));
    assert.ok(!existsSync(m.env.AWS_CONFIG_FILE!));
  });

  it('refuses a settings file that is not valid JSON (exit 3, file and position named) and leaves it alone', async () => {
    const m = machine();
    mkdirSync(join(m.home, '.claude'));
    const broken = '{\n  "model": "opus",\n  // a comment\n}\n';
    writeFileSync(m.settings, broken);
    const r = await m.cli(CONFIGURE);
    assert.equal(r.code, EXIT_CODES.invalid_config, r.stderr);
    assert.ok(r.stderr.includes(`${m.settings}:3:3: unexpected "/"`), r.stderr);
    assert.match(r.stderr, /is not valid JSON: nothing was written/);
    assert.equal(r.stdout, '');
    assert.equal(readFileSync(m.settings, 'utf8'), broken);
    assert.deepEqual(readdirSync(join(m.home, '.claude')), ['settings.json'], 'no backup, temp or lock file');
    // A key the broker must add to that is not an object.
    writeFileSync(m.settings, '{"env": "nope"}');
    const shape = await m.cli(CONFIGURE);
    assert.equal(shape.code, EXIT_CODES.invalid_config);
    assert.match(shape.stderr, /settings\.json: env is not a JSON object/);
    assert.equal(readFileSync(m.settings, 'utf8'), '{"env": "nope"}');
  });

  it('--project writes .claude/settings.json with `broker` on PATH (the file is shared), and refuses --user with it', async () => {
    const m = machine();
    const r = await m.cli([...CONFIGURE, '--project']);
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(readFileSync(join(m.project, '.claude', 'settings.json'), 'utf8')) as Settings;
    assert.equal(s.awsCredentialExport, 'broker credentials export --task deploy-lambda --format claude');
    assert.equal(s.awsAuthRefresh, 'broker task deploy-lambda --ensure --agent claude-code --param function=checkout-api');
    assert.ok(!existsSync(m.settings), 'the user file untouched');
    const both = await m.cli([...CONFIGURE, '--project', '--user']);
    assert.equal(both.code, EXIT_CODES.invalid_request);
  });
});

describe('broker configure claude --mcp', () => {
  it('wraps a stdio server in broker exec, keeps its env and the other servers, never wraps twice, and unwraps', async () => {
    const m = machine();
    const mcpFile = join(m.project, '.mcp.json');
    writeFileSync(mcpFile, MCP);
    const wrap = await m.cli([...CONFIGURE, '--project', '--mcp', 'aws-docs=deploy-lambda']);
    assert.equal(wrap.code, 0, wrap.stderr);
    const wrapped = readFileSync(mcpFile, 'utf8');
    const servers = (JSON.parse(wrapped) as { mcpServers: Record<string, Record<string, unknown>> }).mcpServers;
    assert.deepEqual(servers['aws-docs'], {
      command: 'broker',
      args: ['exec', 'deploy-lambda', '--agent', 'mcp-aws-docs', '--', 'uvx', 'awslabs.aws-documentation-mcp-server@latest'],
      env: { FASTMCP_LOG_LEVEL: 'ERROR' },
    });
    assert.deepEqual(servers.remote, { type: 'http', url: 'https://mcp.example.com/mcp' });
    assert.ok(wrapped.includes('"env": { "FASTMCP_LOG_LEVEL": "ERROR" }'), 'untouched members keep their bytes');

    assert.equal((await m.cli([...CONFIGURE, '--project', '--mcp', 'aws-docs=deploy-lambda'])).code, 0);
    assert.equal(readFileSync(mcpFile, 'utf8'), wrapped, 'wrapping again changes no byte');
    // Another template: re-wrapped from the original command, not wrapped around the wrapper.
    assert.equal((await m.cli([...CONFIGURE, '--project', '--mcp', 'aws-docs=s3-artifacts'])).code, 0);
    const other = (JSON.parse(readFileSync(mcpFile, 'utf8')) as { mcpServers: Record<string, { args: string[] }> }).mcpServers['aws-docs']!;
    assert.deepEqual(other.args, ['exec', 's3-artifacts', '--agent', 'mcp-aws-docs', '--', 'uvx', 'awslabs.aws-documentation-mcp-server@latest']);

    const unwrap = await m.cli([...CONFIGURE, '--project', '--unwrap-mcp', 'aws-docs']);
    assert.equal(unwrap.code, 0, unwrap.stderr);
    const plain = readFileSync(mcpFile, 'utf8');
    assert.deepEqual(JSON.parse(plain), JSON.parse(MCP), 'back to what it was');
    assert.equal((await m.cli([...CONFIGURE, '--project', '--unwrap-mcp', 'aws-docs'])).code, 0);
    assert.equal(readFileSync(mcpFile, 'utf8'), plain, 'unwrapping again changes no byte');
  });

  it('the user scope wraps with this machine\'s node and broker; an http server and an unknown one are refused, the file unchanged', async () => {
    const m = machine();
    const mcpFile = join(m.project, '.mcp.json');
    writeFileSync(mcpFile, MCP);
    assert.equal((await m.cli([...CONFIGURE, '--mcp', 'aws-docs=deploy-lambda'])).code, 0);
    const s = (JSON.parse(readFileSync(mcpFile, 'utf8')) as { mcpServers: Record<string, { command: string; args: string[] }> }).mcpServers['aws-docs']!;
    assert.equal(s.command, process.execPath);
    assert.deepEqual(s.args.slice(1, 3), ['exec', 'deploy-lambda']);
    assert.deepEqual(unwrapped(s.command, s.args), { command: 'uvx', args: ['awslabs.aws-documentation-mcp-server@latest'], template: 'deploy-lambda' });
    const before = readFileSync(mcpFile, 'utf8');
    const http = await m.cli([...CONFIGURE, '--mcp', 'remote=deploy-lambda']);
    assert.equal(http.code, EXIT_CODES.invalid_request);
    assert.match(http.stderr, /mcpServers\.remote is a "http" server, not a stdio one/);
    const unknown = await m.cli([...CONFIGURE, '--mcp', 'nope=deploy-lambda']);
    assert.equal(unknown.code, EXIT_CODES.not_found);
    assert.match(unknown.stderr, /has no MCP server "nope"\n {2}hint: its servers: aws-docs, remote/);
    assert.equal((await m.cli([...CONFIGURE, '--mcp', 'aws-docs']).then((r) => r.code)), EXIT_CODES.invalid_request, 'NAME=TEMPLATE');
    assert.equal(readFileSync(mcpFile, 'utf8'), before);
  });
});

describe('JSON edits', () => {
  it('insert into empty, one-line and nested objects as the document is laid out; CRLF kept; strict RFC 8259', () => {
    assert.equal(setJsonValue('{}', ['env', 'A'], '1'), '{\n  "env": {\n    "A": "1"\n  }\n}');
    assert.equal(setJsonValue('{"a": 1}', ['b'], [1, 2]), '{"a": 1, "b": [1,2]}');
    assert.equal(setJsonValue('{\r\n\t"a": 1\r\n}\r\n', ['b'], { c: true }), '{\r\n\t"a": 1,\r\n\t"b": {\r\n\t\t"c": true\r\n\t}\r\n}\r\n');
    assert.equal(setJsonValue('{"a": {"x": 1,  "y": 2}}', ['a', 'y'], 3), '{"a": {"x": 1,  "y": 3}}');
    const same = '{ "a" : [ 1 , 2 ] }';
    assert.equal(setJsonValue(same, ['a'], [1, 2]), same, 'an equal value is left as written');
    for (const bad of ['{"a": 1,}', '[1,]', '{"a": 01}', "{'a': 1}", '{"a": 1} x', '', '{"a": "\u0001"}', 'NaN']) {
      assert.throws(() => parseJson(bad), { name: 'Error' }, bad);
    }
    for (const good of ['{"a": -1.5e3, "b": [true, false, null], "c": "\\u00e9\\n"}', ' [] ', '"x"']) assert.doesNotThrow(() => parseJson(good), good);
  });
});
