import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { quoteCommandWord } from '../broker/aws-config-file.js';
import { configureAws, defaultAwsConfigFile } from '../broker/aws-config-writer.js';
import { applyEdits, claudeSettingsEdits, editJsonFile, wrapMcpServers, type JsonEditResult, type McpWrap } from '../broker/claude-settings.js';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { REGION_RE } from '../broker/limits/aws.js';
import { TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../broker/limits/names.js';
import { brokerCommand } from './configure-aws.js';
import { action, collectParam, info, out, printJson } from './output.js';

interface Options {
  user?: boolean;
  project?: boolean;
  template?: string;
  region?: string;
  param: Record<string, string>;
  mcp: string[];
  unwrapMcp: string[];
  dryRun?: boolean;
  json?: boolean;
}

/**
 * Claude Code's user settings file: `$CLAUDE_CONFIG_DIR/settings.json` when that is set (Claude
 * Code keeps its user configuration there then), else `~/.claude/settings.json`.
 */
export function userSettingsFile(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.CLAUDE_CONFIG_DIR ? resolve(env.CLAUDE_CONFIG_DIR.replace(/^~(?=$|\/)/, homedir())) : join(homedir(), '.claude');
  return join(dir, 'settings.json');
}

export function register(program: Command): void {
  const configure = program.commands.find((c) => c.name() === 'configure');
  if (!configure) throw new Error('register configure-aws first');
  configure
    .command('claude')
    .description('set up Claude Code for a task template: awsAuthRefresh, awsCredentialExport (with Expiration), env (AWS_PROFILE, AWS_REGION, CLAUDE_CODE_SUBPROCESS_ENV_SCRUB); every other key stays')
    .option('--user', 'write ~/.claude/settings.json (the default)')
    .option('--project', 'write .claude/settings.json in this directory (shared with the team: commands name `broker` on PATH)')
    .option('--template <name>', 'the task template (default: the one AWS template you may start)')
    .option('--region <region>', 'AWS_REGION, when the template names none')
    .option('-p, --param <name=value>', 'template parameter for the sessions awsAuthRefresh starts (repeatable)', collectParam, {})
    .option('--mcp <name=template>', 'run this stdio MCP server of ./.mcp.json under broker exec <template> (repeatable)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('--unwrap-mcp <name>', 'run this MCP server of ./.mcp.json as it was before --mcp (repeatable)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('--dry-run', 'print the diff on stdout and change nothing')
    .option('--json', 'print the result as JSON on stdout')
    .action(action(async (opts: Options) => {
      if (opts.user && opts.project) throw new BrokerError('invalid_request', '--user and --project exclude each other', { hint: 'run the command once for each file' });
      const project = !!opts.project;
      const dryRun = !!opts.dryRun;
      const wraps = mcpWraps(opts.mcp, opts.unwrapMcp);
      const { template, region } = await pickTemplate(opts.template, opts.region);
      // A shared file must work on every developer's machine: `broker` on PATH, not this machine's paths.
      const words = project ? { command: 'broker', args: [] as string[] } : { command: process.execPath, args: [resolve(process.argv[1] ?? 'broker')] };
      const command = project ? 'broker' : brokerCommand();
      const params = Object.entries(opts.param).map(([k, v]) => quoted(`${k}=${v}`));
      const settingsFile = project ? resolve('.claude', 'settings.json') : userSettingsFile();
      const edits = claudeSettingsEdits({ command, template, params, region });
      const results: JsonEditResult[] = [await editJsonFile(settingsFile, (t) => applyEdits(t, edits), dryRun)];
      if (wraps.length) {
        const mcpFile = resolve('.mcp.json');
        results.push(await editJsonFile(mcpFile, (t) => wrapMcpServers(t, wraps, words, mcpFile), dryRun));
      }
      // AWS_PROFILE=broker-<template> must name a profile that exists.
      const aws = await configureAws({ templates: [{ name: template, region }], configFile: defaultAwsConfigFile(), dryRun, command: brokerCommand() });
      if (opts.json) {
        printJson({ template, region, files: results, awsConfig: aws });
        return;
      }
      for (const r of results) {
        if (dryRun) process.stdout.write(r.diff);
        const say = dryRun ? info : out;
        if (!r.changed) say(`${r.file}: up to date`);
        else say(`${r.file}: ${dryRun ? 'dry run, nothing written' : 'written'}`);
        if (r.backup) say(`  backup of the file as it was: ${r.backup}`);
      }
      if (dryRun) process.stdout.write(aws.diff);
      if (aws.diff) (dryRun ? info : out)(`${aws.configFile}: ${dryRun ? 'would add' : 'added'} profile broker-${template}`);
      if (!dryRun) info(`Claude Code now gets ${template}'s credentials through the broker; start the task with: broker task ${template}`);
    }));
}

function quoted(word: string): string {
  try {
    return quoteCommandWord(word);
  } catch {
    throw new BrokerError('invalid_request', '--param value cannot be written into a command line', { hint: 'a value with ", \\, $ or ` cannot be used here' });
  }
}

function mcpWraps(wrap: string[], unwrap: string[]): McpWrap[] {
  const out: McpWrap[] = [];
  for (const v of wrap) {
    const eq = v.lastIndexOf('=');
    const server = eq > 0 ? v.slice(0, eq) : '';
    const template = eq > 0 ? v.slice(eq + 1) : '';
    if (!server || !TEMPLATE_NAME_RE.test(template)) {
      throw new BrokerError('invalid_request', `--mcp "${v.slice(0, 80)}" is not NAME=TEMPLATE`, { hint: `e.g. --mcp aws-docs=read-cloudwatch-logs; a template name is ${TEMPLATE_NAME_RULE}` });
    }
    out.push({ server, template });
  }
  for (const server of unwrap) out.push({ server });
  return out;
}

/** The template and its region: as given, or asked of the daemon (which needs the login). */
async function pickTemplate(name: string | undefined, region: string | undefined): Promise<{ template: string; region: string | null }> {
  if (name !== undefined && !TEMPLATE_NAME_RE.test(name)) {
    throw new BrokerError('invalid_request', `--template "${name.slice(0, 60)}" is not a template name (${TEMPLATE_NAME_RULE})`, { hint: 'see the ones you may start: broker templates' });
  }
  if (region !== undefined && !REGION_RE.test(region)) throw new BrokerError('invalid_request', `--region "${region.slice(0, 40)}" is not an AWS region name`, { hint: 'e.g. us-east-1' });
  if (name && region) return { template: name, region };
  const aws = (await callDaemon({ op: 'templates' })).filter((t) => !t.grants || t.grants.includes('aws'));
  if (name) {
    const t = aws.find((x) => x.name === name);
    if (!t) throw new BrokerError('not_found', `no AWS task template "${name}" you may start`, { hint: `yours: ${aws.map((x) => x.name).join(', ') || 'none'}` });
    return { template: name, region: region ?? t.region };
  }
  if (aws.length !== 1) {
    throw new BrokerError(aws.length ? 'invalid_request' : 'not_found', aws.length ? 'say which task template Claude Code works under' : 'no AWS task template you may start', {
      hint: aws.length ? `--template one of: ${aws.map((x) => x.name).join(', ')}` : 'ask an admin which templates you may start',
    });
  }
  return { template: aws[0]!.name, region: region ?? aws[0]!.region };
}
