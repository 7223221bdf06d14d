import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { BROKER_BIN, POLICIES_DIR } from './paths.js';

export interface BrokerServiceOptions {
  issuer: string;
  stsEndpoint: string;
  iamEndpoint: string;
  policiesDir?: string;
  /** Extra keys merged into the config (e.g. limits). */
  extra?: Record<string, unknown>;
  env?: Record<string, string>;
  /** Another build's bin/broker.cjs (a bench comparing with an older broker); default this checkout's. */
  bin?: string;
  /** More arguments of `broker server` (e.g. --accept-broken-audit). */
  args?: string[];
  /** Run with no AWS credentials in the environment at all (a broker that uses web identity only). */
  withoutAwsKeys?: boolean;
}

export interface BrokerService {
  url: string;
  dir: string;
  /** The templates directory the service reads (a copy, unless the options said confirm). */
  policiesDir: string;
  /** Sends the service process a signal (SIGHUP: reload the templates). */
  signal(sig: NodeJS.Signals): void;
  dbPath: string;
  logFile: string;
  /** The service's process id (setpriv execs it, so it is the node process). */
  pid: number | undefined;
  log(): string;
  stop(): Promise<void>;
}

/**
 * A copy of a policies directory with every template's `confirm` section removed, so its templates
 * take the service's `confirm.default` (`none` in tests not about confirmation): a test of Vault
 * tokens or the daemon starts db-migrate directly, as before start requests existed.
 */
export function unconfirmedPolicies(src: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'broker-policies-'));
  const out = join(dir, 'policies');
  mkdirSync(out);
  for (const f of readdirSync(src).filter((n) => /\.ya?ml$/.test(n))) {
    const doc = parse(readFileSync(join(src, f), 'utf8')) as Record<string, unknown>;
    delete doc.confirm;
    writeFileSync(join(out, f), stringify(doc));
  }
  return out;
}

/**
 * Runs `broker server --config …` as a real child process (as an operator would), with its own
 * SQLite file and its log captured to a file the tests can scan for secrets.
 */
export async function startBrokerService(o: BrokerServiceOptions): Promise<BrokerService> {
  const dir = mkdtempSync(join(tmpdir(), 'broker-svc-'));
  const dbPath = join(dir, 'broker.db');
  const logFile = join(dir, 'server.log');
  // Tests about confirmation pass `extra.confirm` and get the templates as they are.
  const policiesDir = o.extra?.confirm ? (o.policiesDir ?? POLICIES_DIR) : unconfirmedPolicies(o.policiesDir ?? POLICIES_DIR);
  const config = {
    listen: { host: '127.0.0.1', port: 0 },
    policiesDir,
    store: { sqlite: dbPath },
    oidc: {
      issuer: o.issuer, audience: 'broker-cli', algorithms: ['RS256', 'ES256'], cliClientId: 'broker-cli',
      scopes: 'openid email profile groups', allowInsecureHttp: true,
    },
    tokens: { signingKeys: 'ephemeral' },
    aws: { region: 'us-east-1', stsEndpoint: o.stsEndpoint, iamEndpoint: o.iamEndpoint },
    log: { level: 'debug' },
    // Tests not about confirmation start directly (test/start-requests.test.ts is about it).
    confirm: { default: 'none' },
    ...o.extra,
  };
  const configFile = join(dir, 'broker.yaml');
  writeFileSync(configFile, stringify(config));
  const out = openSync(logFile, 'a');
  // setpriv --pdeathsig: the service dies with the test process even if that is killed by a signal.
  const argv = [process.execPath, o.bin ?? BROKER_BIN, 'server', '--config', configFile, ...(o.args ?? [])];
  const usePdeath = process.platform === 'linux' && existsSync('/usr/bin/setpriv');
  const child: ChildProcess = spawn(usePdeath ? '/usr/bin/setpriv' : argv[0]!, usePdeath ? ['--pdeathsig', 'KILL', '--', ...argv] : argv.slice(1), {
    stdio: ['ignore', out, out],
    env: {
      PATH: process.env.PATH ?? '', HOME: dir,
      ...(o.withoutAwsKeys ? {} : { AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing' }), AWS_REGION: 'us-east-1',
      AWS_EC2_METADATA_DISABLED: 'true', AWS_CONFIG_FILE: join(dir, 'none'), AWS_SHARED_CREDENTIALS_FILE: join(dir, 'none'),
      ...o.env,
    },
  });
  const log = () => readFileSync(logFile, 'utf8');
  const url = await new Promise<string>((resolve, reject) => {
    const deadline = Date.now() + 15_000;
    const poll = setInterval(() => {
      const m = /"url":"(http:\/\/127\.0\.0\.1:\d+)".*broker service listening/.exec(log());
      if (m) { clearInterval(poll); resolve(m[1]!); }
      else if (child.exitCode !== null || Date.now() > deadline) {
        clearInterval(poll);
        reject(new Error(`broker server did not start:\n${log()}`));
      }
    }, 50);
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  process.once('exit', () => child.kill('SIGKILL'));
  return {
    url, dir, policiesDir, dbPath, logFile, log, pid: child.pid,
    signal: (sig) => { child.kill(sig); },
    stop: async () => { if (child.exitCode === null) { child.kill('SIGTERM'); await exited; } },
  };
}

/**
 * Calls a running service's API as the people the test IdP knows: each person's ID token is
 * exchanged for an access token once, on first use.
 */
export function apiCaller(svc: { url: string }, idp: { loginAs(email: string): Promise<string> }) {
  const tokens = new Map<string, string>();
  return async (method: string, path: string, who: string, body?: unknown) => {
    if (!tokens.has(who)) {
      const r = await fetch(`${svc.url}/v1/auth/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ id_token: await idp.loginAs(who) }) });
      if (r.status !== 200) throw new Error(`token exchange for ${who}: ${r.status} ${await r.text()}`);
      tokens.set(who, ((await r.json()) as { access_token: string }).access_token);
    }
    const res = await fetch(`${svc.url}${path}`, {
      method, headers: { 'content-type': 'application/json', authorization: `Bearer ${tokens.get(who)}` }, body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as any, headers: res.headers };
  };
}
