import type { Command } from 'commander';
import { loadServerConfig } from '../broker/config/server-config.js';
import { BrokerError } from '../broker/errors.js';
import { generateSigningJwk } from '../broker/identity/broker-tokens.js';
import { startServer } from '../broker/server/start.js';
import { action, info } from './output.js';

export function register(program: Command): void {
  const server = program
    .command('server')
    .description('run the central broker service (needs --config)')
    // Not a requiredOption: commander checks those of every ancestor too, so `server keygen`
    // could not run without one.
    .option('--config <file>', 'service configuration (YAML), required to run the service; see README "Configuration"')
    .option('--accept-broken-audit', 'start even if the audit log\'s chain is broken since its last checkpoint (recorded in the audit log)')
    .action(action(async (opts: { config?: string; acceptBrokenAudit?: boolean }) => {
      if (!opts.config) {
        throw new BrokerError('invalid_request', 'broker server needs --config <file>', {
          hint: 'broker server --config broker.yaml (see README "Configuration"); a new signing key: broker server keygen',
        });
      }
      const config = loadServerConfig(opts.config);
      const running = await startServer(config, { acceptBrokenAudit: opts.acceptBrokenAudit ?? false });
      const stop = () => { void running.stop().then(() => process.exit(0)); };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      // The daemon convention for "read your configuration again": here the task templates (the
      // service's own configuration needs a restart). The outcome, failures included, is logged (and audited) by reload().
      process.on('SIGHUP', () => { void running.reload({ trigger: 'signal', reason: 'SIGHUP' }).catch(() => undefined); });
    }));
  server
    .command('keygen')
    .description('print a new private signing key (JWK) on stdout, for a secret store or BROKER_SIGNING_KEY')
    .option('--kid <id>', 'key id (default: broker-<date>-<random>)')
    .action(action(async (opts: { kid?: string }) => {
      info('This is private key material: pipe it into your secret store; do not commit it.');
      process.stdout.write(`${JSON.stringify(await generateSigningJwk(opts.kid))}\n`);
    }));
}
