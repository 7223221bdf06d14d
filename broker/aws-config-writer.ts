import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, copyFile, mkdir, open, readFile, realpath, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { upsertBrokerProfiles, type ProfileSpec } from './aws-config-file.js';
import { withConfigEditLock } from './config-edit-lock.js';
import { BrokerError } from './errors.js';
import { REGION_RE } from './limits/aws.js';

export interface ConfigureAwsOptions {
  templates: { name: string; region: string | null | undefined }[];
  configFile: string;
  dryRun: boolean;
  /**
   * How to run the broker, already quoted for credential_process (see `brokerCommand`); each profile
   * gets `<command> credential-process --task <template>`.
   */
  command: string;
}

export interface ConfigureAwsResult {
  configFile: string;
  /** Copy of the file as it was, written before it was changed. */
  backup?: string;
  added: string[];
  updated: string[];
  unchanged: string[];
  /** Unified diff of the change ('' when nothing changes). */
  diff: string;
  dryRun: boolean;
}

/**
 * Not the template-name rule (limits/names.ts), which every name given here already passed: the
 * writer's own guard for what it pastes into a `[profile …]` header and, unquoted, into the
 * credential_process command line. Letters, digits, `.`, `_`, `-`: nothing an INI parser or a shell
 * word splitter treats specially.
 */
const PROFILE_SAFE_NAME_RE = /^[A-Za-z0-9][\w.-]{0,127}$/;

/** `$AWS_CONFIG_FILE` (with `~` expanded, as botocore does) or `~/.aws/config`. */
export function defaultAwsConfigFile(env: NodeJS.ProcessEnv = process.env): string {
  const f = env.AWS_CONFIG_FILE;
  if (f) return resolve(f.replace(/^~(?=$|[/\\])/, homedir()));
  return join(homedir(), '.aws', 'config');
}

export function profileSpecs(templates: ConfigureAwsOptions['templates'], command: string): ProfileSpec[] {
  return templates.map((t) => {
    if (!PROFILE_SAFE_NAME_RE.test(t.name)) {
      throw new BrokerError('invalid_request', `template name "${t.name}" cannot be used as an AWS profile name`, { hint: 'template names are letters, digits, ".", "_" and "-"' });
    }
    if (t.region && !REGION_RE.test(t.region)) {
      throw new BrokerError('invalid_request', `region "${t.region}" of template ${t.name} is not an AWS region name`, { hint: 'e.g. us-east-1, eu-central-1' });
    }
    return {
      name: `broker-${t.name}`,
      settings: { credential_process: `${command} credential-process --task ${t.name}`, ...(t.region ? { region: t.region } : {}) },
    };
  });
}

/**
 * Adds or updates one `[profile broker-<template>]` per template in the AWS config file. A changed
 * existing file is first copied to `<file>.broker-backup-<timestamp>`, then replaced atomically
 * (temp file + rename, so a crash never leaves half a config); a new file is created 0600 (AWS advice:
 * keep the config file private) in a 0700 directory.
 *
 * Two editors at once (`broker configure aws` and the `broker exec`s that add their profile, started
 * together) must not lose each other's change, so the read-modify-write runs under a lock file beside
 * the config (config-edit-lock.ts). And the file is handled as bytes, not text: other profiles and
 * comments may hold bytes that are not UTF-8 (a Latin-1 comment); decoded and re-encoded they would
 * come back as U+FFFD. Read as latin1 (one char per byte), every byte round-trips exactly; what the
 * broker writes is UTF-8, turned into such chars the same way.
 */
export async function configureAws(opts: ConfigureAwsOptions): Promise<ConfigureAwsResult> {
  const specs = profileSpecs(opts.templates, opts.command).map((s) => ({
    name: s.name, settings: Object.fromEntries(Object.entries(s.settings).map(([k, v]) => [k, bytesOf(v)])),
  }));
  const configFile = resolve(opts.configFile);
  if (opts.dryRun) return (await plan(configFile, configFile, specs, opts.dryRun)).result;
  let target = configFile;
  try {
    // A symlinked config (dotfile managers) is updated where it points, not replaced by a file.
    target = await realpath(configFile);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fileError('read', configFile, e);
  }
  // Inside `broker exec` AWS_CONFIG_FILE is /dev/null (cli/exec-env.ts): the rename below would
  // replace the device itself with a file wherever /dev is writable (root in a container).
  const st = await stat(target).catch(() => undefined);
  if (st && !st.isFile()) {
    throw new BrokerError('invalid_config', `${configFile} is not a regular file`, {
      hint: 'inside broker exec there is no AWS config file (AWS_CONFIG_FILE=/dev/null): run this outside it, or pass --config-file',
    });
  }
  try {
    await mkdir(dirname(target), { recursive: true, mode: 0o700 });
  } catch (e) {
    throw fileError('write', configFile, e);
  }
  return withConfigEditLock(target, async () => {
    const { result, text, existing } = await plan(configFile, target, specs, false);
    if (text === undefined) return result;
    try {
      let mode = 0o600;
      if (existing) {
        mode = (await stat(target)).mode & 0o777;
        result.backup = await backUp(target, `${configFile}.broker-backup-${new Date().toISOString().replace(/[-:.]/g, '')}`, mode);
      }
      await writeAtomically(target, Buffer.from(text, 'latin1'), mode);
    } catch (e) {
      throw fileError('write', configFile, e);
    }
    return result;
  });
}

/** What the edit would do; `text` (latin1, see configureAws) is undefined when nothing changes. */
async function plan(configFile: string, target: string, specs: ProfileSpec[], dryRun: boolean): Promise<{ result: ConfigureAwsResult; text?: string; existing: boolean }> {
  let original = '';
  let existing = true;
  try {
    original = (await readFile(target)).toString('latin1');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fileError('read', configFile, e);
    existing = false;
  }
  const r = upsertBrokerProfiles(original, specs);
  const result: ConfigureAwsResult = {
    configFile,
    added: r.added,
    updated: r.updated,
    unchanged: specs.map((s) => s.name).filter((n) => !r.added.includes(n) && !r.updated.includes(n)),
    // For people: the lines' bytes shown as UTF-8 (what the file mostly is).
    diff: r.changed ? textOf(unifiedDiff(original, r.text, existing ? configFile : '/dev/null', configFile)) : '',
    dryRun,
  };
  return { result, existing, ...(r.changed ? { text: r.text } : {}) };
}

/** UTF-8 text as one char per byte (the latin1 view of its bytes), and back. */
const bytesOf = (s: string): string => Buffer.from(s, 'utf8').toString('latin1');
const textOf = (s: string): string => Buffer.from(s, 'latin1').toString('utf8');

/** Copies the file to `name` (or `name-2`, … if taken: two edits within a millisecond), never over an existing file. */
async function backUp(file: string, name: string, mode: number): Promise<string> {
  for (let n = 1; ; n++) {
    const backup = n === 1 ? name : `${name}-${n}`;
    try {
      await copyFile(file, backup, constants.COPYFILE_EXCL);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && n < 100) continue;
      throw e;
    }
    await chmod(backup, mode);
    return backup;
  }
}

export async function writeAtomically(file: string, bytes: Buffer, mode: number): Promise<void> {
  const tmp = `${file}.broker-tmp-${randomBytes(6).toString('hex')}`;
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await chmod(tmp, mode); // open's mode is filtered by the umask
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

function fileError(what: 'read' | 'write', file: string, e: unknown): BrokerError {
  const err = e as NodeJS.ErrnoException;
  return new BrokerError('invalid_config', `cannot ${what} ${file}: ${err.code ?? ''} ${err.message ?? ''}`.trim(), {
    cause: e,
    hint: 'pick another file with --config-file, or fix its permissions',
  });
}

/** A unified diff (3 lines of context) from a longest common subsequence of lines. */
export function unifiedDiff(a: string, b: string, fromName: string, toName: string): string {
  const x = a.split(/(?<=\n)/).filter((l) => l !== '');
  const y = b.split(/(?<=\n)/).filter((l) => l !== '');
  // lcs[i][j] = length of the LCS of x[i..] and y[j..]
  const lcs = Array.from({ length: x.length + 1 }, () => new Uint32Array(y.length + 1));
  for (let i = x.length - 1; i >= 0; i--) {
    for (let j = y.length - 1; j >= 0; j--) lcs[i]![j] = x[i] === y[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
  }
  type Op = { op: ' ' | '-' | '+'; line: string; a: number; b: number }; // a, b: lines of x, y before this one
  const ops: Op[] = [];
  for (let i = 0, j = 0; i < x.length || j < y.length; ) {
    if (i < x.length && j < y.length && x[i] === y[j]) ops.push({ op: ' ', line: x[i++]!, a: i - 1, b: j++ });
    else if (i < x.length && (j >= y.length || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) ops.push({ op: '-', line: x[i++]!, a: i - 1, b: j });
    else ops.push({ op: '+', line: y[j++]!, a: i, b: j - 1 });
  }
  const CONTEXT = 3;
  const changes = ops.flatMap((o, k) => (o.op === ' ' ? [] : [k]));
  const out: string[] = [];
  for (let c = 0; c < changes.length; ) {
    const first = changes[c]!;
    let last = first;
    while (c + 1 < changes.length && changes[c + 1]! - last <= 2 * CONTEXT + 1) last = changes[++c]!;
    c++;
    const hunk = ops.slice(Math.max(0, first - CONTEXT), Math.min(ops.length, last + CONTEXT + 1));
    const aLen = hunk.filter((o) => o.op !== '+').length;
    const bLen = hunk.filter((o) => o.op !== '-').length;
    // An empty side is numbered by the line before it (`-0,0` for a new file).
    out.push(`@@ -${hunk[0]!.a + (aLen ? 1 : 0)},${aLen} +${hunk[0]!.b + (bLen ? 1 : 0)},${bLen} @@\n`);
    for (const o of hunk) out.push(`${o.op}${o.line.endsWith('\n') ? o.line : `${o.line}\n\\ No newline at end of file\n`}`);
  }
  return out.length ? `--- ${fromName}\n+++ ${toName}\n${out.join('')}` : '';
}
