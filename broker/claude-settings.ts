/**
 * Claude Code's settings file and project MCP file, edited for a task template (`broker configure
 * claude`). What is set, checked against Claude Code's published documentation (README, "Claude
 * Code", says which version of the pages):
 * - `awsAuthRefresh` and `awsCredentialExport` (https://code.claude.com/docs/en/amazon-bedrock,
 *   "Advanced credential configuration"): Claude Code runs them when its AWS credentials expire or
 *   Bedrock reports a credential error; the first's output is shown to the user, the second's is
 *   read silently as `{"Credentials": {AccessKeyId, SecretAccessKey, SessionToken}}`. The page's
 *   shape has no `Expiration`; without one Claude Code hangs when the keys expire
 *   (anthropics/claude-code#57823), so ours always carries it, as STS's own `Credentials` does.
 * - `env` (https://code.claude.com/docs/en/settings): variables for the Claude Code process and
 *   what it runs. AWS_REGION is required for Bedrock, which does not read it from ~/.aws/config
 *   (the Bedrock page); `CLAUDE_CODE_SUBPROCESS_ENV_SCRUB=1` strips Anthropic and cloud provider
 *   credentials from the environments of its subprocesses: Bash tool, hooks, stdio MCP servers
 *   (https://code.claude.com/docs/en/env-vars).
 * - The files: user `~/.claude/settings.json`, project `.claude/settings.json`; precedence managed >
 *   command line > `.claude/settings.local.json` > `.claude/settings.json` > user
 *   (https://code.claude.com/docs/en/settings, "Settings precedence"). Project MCP servers are in
 *   `.mcp.json` at the project root, `{"mcpServers": {name: {command, args, env}}}`
 *   (https://code.claude.com/docs/en/mcp, "Project scope").
 */
import { constants } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { unifiedDiff, writeAtomically } from './aws-config-writer.js';
import { withConfigEditLock } from './config-edit-lock.js';
import { BrokerError } from './errors.js';
import { AGENT_NAME_RE } from './limits/names.js';
import { JsonShapeError, JsonSyntaxError, memberOf, parseJson, setJsonValue, valueOf, type JsonNode } from './json-edit.js';

/** The agent name the settings' commands give the broker (the broker:agent session tag). */
export const CLAUDE_AGENT = 'claude-code';

export interface ClaudeSettingsSpec {
  /** How to run the broker, as shell words already quoted (brokerCommand, or `broker` for a shared file). */
  command: string;
  template: string;
  /** Template parameters for a start, already quoted words (`k=v`). */
  params: string[];
  region: string | null;
}

/** The settings the broker owns in Claude Code's file, as [path, value]. Every other key stays. */
export function claudeSettingsEdits(s: ClaudeSettingsSpec): [string[], string][] {
  const params = s.params.map((p) => ` --param ${p}`).join('');
  const edits: [string[], string][] = [
    // Reuses the template's active session or starts one (which may wait for a human: its prompt is
    // the output Claude Code shows).
    [['awsAuthRefresh'], `${s.command} task ${s.template} --ensure --agent ${CLAUDE_AGENT}${params}`],
    [['awsCredentialExport'], `${s.command} credentials export --task ${s.template} --format claude`],
    // The agent's AWS tools (CLI, SDKs) get the task through credential_process, refreshed by the daemon.
    [['env', 'AWS_PROFILE'], `broker-${s.template}`],
    // The JS SDK v2 reads ~/.aws/config (and so credential_process) only with this set.
    [['env', 'AWS_SDK_LOAD_CONFIG'], '1'],
    [['env', 'CLAUDE_CODE_SUBPROCESS_ENV_SCRUB'], '1'],
    [['env', 'BROKER_AGENT'], CLAUDE_AGENT],
  ];
  if (s.region) edits.push([['env', 'AWS_REGION'], s.region]);
  return edits;
}

export interface JsonEditResult {
  file: string;
  changed: boolean;
  /** Unified diff of the change ('' when nothing changes). */
  diff: string;
  /** The file as it was before the broker first changed it (made once, never overwritten). */
  backup?: string;
  dryRun: boolean;
}

/** A JSON file that does not parse, as the error that refuses to touch it. */
function syntaxError(file: string, e: JsonSyntaxError): BrokerError {
  return new BrokerError('invalid_config', `${file} is not valid JSON: nothing was written`, {
    details: [{ path: `${file}:${e.line}:${e.column}`, message: e.message }],
    hint: 'fix the file (Claude Code cannot read it either), then run the command again',
  });
}

function fileError(what: 'read' | 'write', file: string, e: unknown): BrokerError {
  const err = e as NodeJS.ErrnoException;
  return new BrokerError('invalid_config', `cannot ${what} ${file}: ${err.code ?? err.message}`, { cause: e, hint: 'check the file\'s permissions and its directory' });
}

/**
 * Applies `edit` (text → text, on the parsed file) to a JSON file: a missing or empty file starts as
 * `{}`; one that does not parse is refused (invalid_config naming file, line and column) and left
 * alone. A change is written atomically (temp file + rename, the file's mode kept; a new file
 * 0600), under the lock beside it; the file as it was is copied once to `<file>.broker-backup`,
 * which later runs leave alone. A symlinked file is changed where it points.
 */
export async function editJsonFile(file: string, edit: (text: string) => string, dryRun: boolean): Promise<JsonEditResult> {
  file = resolve(file);
  let target = file;
  try {
    target = await realpath(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fileError('read', file, e);
  }
  const plan = async () => {
    let original: string | undefined;
    try {
      original = await readFile(target, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fileError('read', file, e);
    }
    const base = original === undefined || original.trim() === '' ? '{}\n' : original;
    let next: string;
    try {
      next = edit(base);
    } catch (e) {
      if (e instanceof JsonSyntaxError) throw syntaxError(file, e);
      if (e instanceof JsonShapeError) {
        throw new BrokerError('invalid_config', `${file}: ${e.message}`, { hint: 'the broker only adds keys to objects; fix or remove that key, then run again' });
      }
      throw e;
    }
    const changed = next !== (original ?? '');
    return { original, next, changed, diff: changed ? unifiedDiff(original ?? '', next, original === undefined ? '/dev/null' : file, file) : '' };
  };
  if (dryRun) {
    const p = await plan();
    return { file, changed: p.changed, diff: p.diff, dryRun };
  }
  try {
    await mkdir(dirname(target), { recursive: true, mode: 0o700 });
  } catch (e) {
    throw fileError('write', file, e);
  }
  return withConfigEditLock(target, async () => {
    const p = await plan();
    const result: JsonEditResult = { file, changed: p.changed, diff: p.diff, dryRun };
    if (!p.changed) return result;
    try {
      let mode = 0o600;
      if (p.original !== undefined) {
        mode = (await stat(target)).mode & 0o777;
        const backup = `${file}.broker-backup`;
        try {
          await copyFile(target, backup, constants.COPYFILE_EXCL);
          await chmod(backup, mode);
          result.backup = backup;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
      }
      await writeAtomically(target, Buffer.from(p.next, 'utf8'), mode);
    } catch (e) {
      throw fileError('write', file, e);
    }
    return result;
  });
}

/** `text` with every edit applied (each leaves a value already equal as written). */
export function applyEdits(text: string, edits: [string[], unknown][]): string {
  return edits.reduce((t, [path, value]) => setJsonValue(t, path, value), text);
}

// ---- MCP servers ------------------------------------------------------------------------------

export interface McpWrap {
  server: string;
  /** The template to run it under; undefined: run it as it was before the broker wrapped it. */
  template?: string;
}

/** The command words that run the broker, as they appear unquoted in `.mcp.json`. */
export interface BrokerWords { command: string; args: string[] }

/**
 * A server command the broker wrapped: `<broker> exec <template> [exec options] -- <cmd> [args…]`,
 * whichever way the broker was named (absolute node + broker.cjs, or `broker` on PATH). Undefined
 * when it is not one.
 */
export function unwrapped(command: string, args: string[]): { command: string; args: string[]; template: string } | undefined {
  let at: number;
  if (basename(command) === 'broker') at = 0;
  else if (args[0] !== undefined && /^broker(\.cjs)?$/.test(basename(args[0]))) at = 1;
  else return undefined;
  if (args[at] !== 'exec') return undefined;
  const template = args[at + 1];
  const dashes = args.indexOf('--', at + 2);
  if (template === undefined || dashes < 0 || args[dashes + 1] === undefined) return undefined;
  return { command: args[dashes + 1]!, args: args.slice(dashes + 2), template };
}

/**
 * `.mcp.json` with each named stdio server set to run under `broker exec <template> --` (or, with no
 * template, back as it was). The server's env and other keys stay; a server already wrapped for
 * the template is left byte for byte, one wrapped for another template is re-wrapped from its
 * original command, so running twice never wraps twice.
 */
export function wrapMcpServers(text: string, wraps: McpWrap[], broker: BrokerWords, file: string): string {
  for (const w of wraps) {
    const root = parseJson(text);
    const servers = memberOf(root, 'mcpServers')?.value;
    const names = servers?.kind === 'object' ? servers.members.map((m) => m.key) : [];
    const node: JsonNode | undefined = servers ? memberOf(servers, w.server)?.value : undefined;
    if (!node) {
      throw new BrokerError('not_found', `${file} has no MCP server "${w.server}"`, {
        hint: names.length ? `its servers: ${names.join(', ')}` : 'add the server with: claude mcp add --scope project …',
      });
    }
    const server = valueOf(node) as Record<string, unknown>;
    const where = `${file}: mcpServers.${w.server}`;
    if (typeof server !== 'object' || server === null || Array.isArray(server)) throw new BrokerError('invalid_config', `${where} is not an object`);
    if (server.type !== undefined && server.type !== 'stdio') {
      throw new BrokerError('invalid_request', `${where} is a "${String(server.type)}" server, not a stdio one`, {
        hint: 'only a server Claude Code starts as a local process can run under broker exec',
      });
    }
    const args = server.args ?? [];
    if (typeof server.command !== 'string' || !Array.isArray(args) || !args.every((a) => typeof a === 'string')) {
      throw new BrokerError('invalid_config', `${where} needs "command" (a string) and "args" (strings)`);
    }
    const original = unwrapped(server.command, args as string[]) ?? { command: server.command, args: args as string[] };
    // Its own agent name (the broker:agent tag) when the server's name can be one.
    const agent = AGENT_NAME_RE.test(`mcp-${w.server}`) ? ['--agent', `mcp-${w.server}`] : [];
    const next = w.template
      ? { command: broker.command, args: [...broker.args, 'exec', w.template, ...agent, '--', original.command, ...original.args] }
      : { command: original.command, args: original.args };
    text = applyEdits(text, [[['mcpServers', w.server, 'command'], next.command], [['mcpServers', w.server, 'args'], next.args]]);
  }
  return text;
}
