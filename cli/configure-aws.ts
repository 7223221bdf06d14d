import { resolve } from 'node:path';
import type { Command } from 'commander';
import { quoteCommandWord } from '../broker/aws-config-file.js';
import { configureAws, defaultAwsConfigFile, type ConfigureAwsResult } from '../broker/aws-config-writer.js';
import { callDaemon } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../broker/limits/names.js';
import { action, info, out, printJson } from './output.js';

interface Options { configFile?: string; dryRun?: boolean; json?: boolean; templates?: string; region?: string }

/**
 * The command AWS clients run for credentials: absolute node + absolute bin/broker.cjs, so it works
 * without PATH (IDEs and agents often start with a minimal environment).
 */
export function brokerCommand(): string {
  const script = process.argv[1];
  if (!script) throw new BrokerError('internal', 'cannot tell where the broker executable is');
  try {
    return `${quoteCommandWord(process.execPath)} ${quoteCommandWord(resolve(script))}`;
  } catch (e) {
    throw new BrokerError('invalid_config', (e as Error).message, { hint: 'install node and the broker under paths without ", \\, $ or ` in them' });
  }
}

export function register(program: Command): void {
  const configure = program.command('configure').description('set up local tools to use the broker');
  configure
    .command('aws')
    .description('add or update one [profile broker-<template>] per task template you may start, using credential_process')
    .option('--config-file <path>', 'AWS config file (default: $AWS_CONFIG_FILE or ~/.aws/config)')
    .option('--templates <a,b>', 'only these templates (default: every template the broker lets you start)')
    .option('--region <region>', 'region for templates that name none')
    .option('--dry-run', 'print the diff on stdout and change nothing')
    .option('--json', 'print the result as JSON on stdout')
    .action(action(async (opts: Options) => {
      const templates = opts.templates
        ? parseTemplateList(opts.templates).map((name) => ({ name, region: opts.region ?? null }))
        // Only templates that grant AWS credentials get a profile (a Vault-only task has nothing to offer the AWS CLI).
        : (await callDaemon({ op: 'templates' })).filter((t) => !t.grants || t.grants.includes('aws'))
          .map((t) => ({ name: t.name, region: t.region ?? opts.region ?? null }));
      if (templates.length === 0) {
        throw new BrokerError('not_found', 'no task templates to configure', { hint: 'ask an admin which templates you may start, or pass --templates a,b' });
      }
      const result = await configureAws({
        templates,
        configFile: opts.configFile ?? defaultAwsConfigFile(),
        dryRun: !!opts.dryRun,
        command: brokerCommand(),
      });
      if (opts.json) printJson(result);
      else report(result);
    }));
}

/**
 * `--templates a,b`: each a template name by the rule every other part applies (the service, the
 * daemon and `broker credential-process --task`), so no profile is written that credential_process
 * would later refuse.
 */
function parseTemplateList(value: string): string[] {
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = names.filter((n) => !TEMPLATE_NAME_RE.test(n));
  if (bad.length || names.length === 0) {
    throw new BrokerError('invalid_request', names.length ? `--templates names ${bad.length} invalid template name(s)` : '--templates names no template', {
      details: bad.map((n) => ({ path: '--templates', message: `"${n.slice(0, 60)}" is not a template name (${TEMPLATE_NAME_RULE})` })),
      hint: 'e.g. --templates deploy-lambda,s3-artifacts; see the ones you may start with: broker templates',
    });
  }
  return names;
}

/**
 * What was done, on stdout. A dry run's result is its diff, alone on stdout (it can be piped or
 * saved as a patch); what it would do is said on stderr then.
 */
function report(r: ConfigureAwsResult): void {
  if (r.dryRun && r.diff) process.stdout.write(r.diff);
  const say = r.dryRun ? info : out;
  for (const n of r.added) say(`${r.dryRun ? 'would add' : 'added'} profile ${n}`);
  for (const n of r.updated) say(`${r.dryRun ? 'would update' : 'updated'} profile ${n}`);
  for (const n of r.unchanged) say(`profile ${n} is up to date`);
  if (r.backup) say(`backup of the previous file: ${r.backup}`);
  if (!r.diff) say(`${r.configFile}: nothing to change`);
  else if (r.dryRun) say(`${r.configFile}: dry run, nothing written`);
  else say(`${r.configFile}: written; use a profile with e.g. AWS_PROFILE=${[...r.added, ...r.updated, ...r.unchanged][0]}`);
}
