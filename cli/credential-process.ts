/**
 * `broker credential-process --task <template>`: the AWS SDKs' credential_process contract.
 * stdout carries exactly one complete JSON document (Version 1, Expiration always set, so clients
 * refresh) or nothing at all; every failure is one line on stderr and a non-zero exit (FACTS.md).
 * Loaded by bin/broker.js without commander/zod/YAML/AWS SDK, since the AWS CLI runs it per command.
 */
import { activeSessionFor, authenticatedApi, type ProcessCredentials } from '../broker/client/api.js';
import { BrokerError, isBrokerError } from '../broker/errors.js';

function parseArgs(args: string[]): string {
  let task: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--task') task = args[++i];
    else if (a.startsWith('--task=')) task = a.slice('--task='.length);
    else if (a === '-h' || a === '--help') {
      throw new BrokerError('invalid_request', 'usage: broker credential-process --task <template>');
    } else throw new BrokerError('invalid_request', `unknown argument "${a}"`, { hint: 'usage: broker credential-process --task <template>' });
  }
  if (!task || !/^[a-z0-9-]{1,40}$/.test(task)) {
    throw new BrokerError('invalid_request', '--task <template> is required', { hint: 'e.g. credential_process = broker credential-process --task deploy-lambda' });
  }
  return task;
}

export async function main(args: string[]): Promise<void> {
  try {
    const task = parseArgs(args);
    const api = await authenticatedApi();
    const session = await activeSessionFor(api, task);
    const r = await api.request<{ credentials: ProcessCredentials }>('POST', `/v1/sessions/${encodeURIComponent(session.id)}/credentials`);
    const c = r.credentials;
    if (c.Version !== 1 || !c.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
      throw new BrokerError('upstream_error', 'the broker service returned incomplete credentials');
    }
    const doc: ProcessCredentials = {
      Version: 1, AccessKeyId: c.AccessKeyId, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken,
      Expiration: c.Expiration, ...(c.AccountId ? { AccountId: c.AccountId } : {}),
    };
    process.stdout.write(`${JSON.stringify(doc)}\n`);
  } catch (e) {
    const line = isBrokerError(e) ? `${e.message}${e.hint ? ` (${e.hint})` : ''}` : `unexpected error: ${(e as Error)?.message ?? String(e)}`;
    process.stderr.write(`broker credential-process: ${line.replace(/\s*\n\s*/g, ' ')}\n`);
    process.exitCode = 1;
  }
}
