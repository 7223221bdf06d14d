import { devNull } from 'node:os';

/**
 * The environment `broker exec` gives its child: the parent's, minus every inherited credential the
 * agent could use instead of the task's (the point of running it under a task session).
 */

/**
 * Removed always: every environment variable that an AWS SDK or the AWS CLI reads as a credential,
 * or that points it at one, so the agent's SDK finds only the task's profile. Checked against the
 * sources that define them:
 * - botocore `credentials.py` (AWS CLI, boto3): EnvProvider (AWS_ACCESS_KEY_ID,
 *   AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN, AWS_CREDENTIAL_EXPIRATION),
 *   AssumeRoleWithWebIdentityProvider (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN,
 *   AWS_ROLE_SESSION_NAME), ContainerProvider (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI,
 *   AWS_CONTAINER_CREDENTIALS_FULL_URI, AWS_CONTAINER_AUTHORIZATION_TOKEN,
 *   AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE), OriginalEC2Provider (AWS_CREDENTIAL_FILE), BotoProvider
 *   (BOTO_CONFIG, a boto2 file that may hold keys), SharedCredentialProvider
 *   (AWS_SHARED_CREDENTIALS_FILE); `utils.py`: bearer tokens AWS_BEARER_TOKEN_<SERVICE> (e.g.
 *   Bedrock API keys), the `aws login` token cache AWS_LOGIN_CACHE_DIRECTORY;
 * - aws-sdk-js-v3 credential-provider-env / -web-identity / -http (container) / -login, the chain of
 *   credential-provider-node: the same names;
 * - aws-sdk-go-v2 `config/env_config.go`: also AWS_ACCESS_KEY and AWS_SECRET_KEY (read when the
 *   _ID / _ACCESS_KEY names are unset);
 * - AWS SDK for Java (developer guide, "Environment variables and system properties changes"): v1's
 *   AWS_ACCESS_KEY, AWS_SECRET_KEY and AWS_CREDENTIAL_PROFILES_FILE (its name for the credentials file).
 * Kept: what only goes with keys and is no secret (AWS_ACCOUNT_ID, AWS_CREDENTIAL_SCOPE), the config
 * file (AWS_CONFIG_FILE: the task's profile is written there). The SDKs read no AWS_SSO_* variable: SSO sessions are profile settings in the config file, and
 * the profile is chosen by AWS_PROFILE / AWS_DEFAULT_PROFILE, which are replaced.
 */
export const ALWAYS_SCRUBBED = [
  'AWS_ACCESS_KEY_ID', 'AWS_ACCESS_KEY', 'AWS_SECRET_ACCESS_KEY', 'AWS_SECRET_KEY', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN',
  'AWS_CREDENTIAL_EXPIRATION',
  'AWS_DEFAULT_PROFILE', 'AWS_PROFILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_ROLE_ARN', 'AWS_ROLE_SESSION_NAME',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
  'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CREDENTIAL_PROFILES_FILE', 'AWS_CREDENTIAL_FILE', 'BOTO_CONFIG',
  'AWS_LOGIN_CACHE_DIRECTORY',
  // Vault tokens; the OpenBao CLI reads BAO_* before VAULT_*.
  'VAULT_TOKEN', 'BAO_TOKEN',
] as const;
/** Removed always, by pattern: AWS_BEARER_TOKEN_<SERVICE> (botocore utils.get_token_from_environment). */
export const ALWAYS_SCRUBBED_PATTERNS = ['AWS_BEARER_TOKEN_*'] as const;

/**
 * Set always, so an SDK cannot fall back to a credential source outside the task:
 * - AWS_SHARED_CREDENTIALS_FILE: an empty file. Every SDK reads `~/.aws/credentials` when it is unset,
 *   and keys there under the task's profile name would win over its credential_process (botocore
 *   tries the shared credentials file before the process provider);
 * - AWS_EC2_METADATA_DISABLED=true: no instance role from the EC2 metadata service (botocore
 *   `utils.py`, aws-sdk-js-v3 credential-provider-imds, aws-sdk-go-v2 `config/env_config.go`).
 */
export const CREDENTIAL_SOURCES_OFF: Readonly<Record<string, string>> = {
  AWS_SHARED_CREDENTIALS_FILE: devNull,
  AWS_EC2_METADATA_DISABLED: 'true',
};

/**
 * Set with the container credentials endpoint (the default of `broker exec`): no config file.
 * Every SDK tries the profile's sources before the container endpoint — botocore
 * (`credentials.py` create_credential_resolver: env, assume-role, web identity, SSO, shared
 * credentials file, login, credential_process, config file, then container; the boto3 guide,
 * "Credentials", https://docs.aws.amazon.com/boto3/latest/guide/credentials.html, lists the same
 * order) and aws-sdk-js-v3 (`credential-provider-node/src/defaultProvider.ts`: env, SSO, ini,
 * process, web identity token file, then remoteProvider, the container endpoint) — so a `[default]`
 * profile with keys, SSO or a credential_process in `~/.aws/config` would win over the task's
 * endpoint. Without a config file there is none; the region comes from AWS_REGION instead.
 */
export const CONTAINER_MODE_OFF: Readonly<Record<string, string>> = {
  AWS_CONFIG_FILE: devNull,
};

/**
 * NO_PROXY/no_proxy with 127.0.0.1 added, when a proxy is configured: botocore fetches the
 * container endpoint through the environment's proxies unless the host is bypassed
 * (`utils.py` get_environ_proxies / should_bypass_proxies), and Node's fetch and http do too with
 * NODE_USE_ENV_PROXY. Through a proxy the exec's token (and the credentials) would leave loopback.
 */
export function loopbackWithoutProxy(env: NodeJS.ProcessEnv): Record<string, string> {
  const proxied = ['HTTP_PROXY', 'http_proxy', 'HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'].some((k) => env[k]);
  if (!proxied) return {};
  const out: Record<string, string> = {};
  for (const k of ['NO_PROXY', 'no_proxy']) {
    const list = (env[k] ?? '').split(',').map((h) => h.trim()).filter(Boolean);
    if (!list.includes('127.0.0.1') && !list.includes('*')) out[k] = [...list, '127.0.0.1'].join(',');
  }
  return out;
}

/**
 * Signals whose default action is to terminate and dump core (signal(7), "Core"): `broker exec`
 * does not raise one of these on itself when its child dies of it (exec.ts, runChild).
 */
export const CORE_DUMP_SIGNALS: readonly NodeJS.Signals[] = [
  'SIGQUIT', 'SIGILL', 'SIGTRAP', 'SIGABRT', 'SIGIOT', 'SIGBUS', 'SIGFPE', 'SIGSEGV', 'SIGXCPU', 'SIGXFSZ', 'SIGSYS',
];

/** Set on `broker exec` re-executed with its child's environment (clean-start.ts); its value: the names removed. */
export const EXEC_CLEAN_MARK = 'BROKER_EXEC_CLEAN_START';

/** `GITHUB_*`, `*_TOKEN`, `OPENAI_API_KEY`: `*` matches any run of characters; the rest literally. */
export function namePattern(pattern: string): RegExp {
  if (!/^[A-Za-z0-9_*]+$/.test(pattern)) throw new TypeError(`"${pattern}" is not an environment variable name pattern (letters, digits, _ and *)`);
  return new RegExp(`^${pattern.replace(/\*/g, '.*')}$`);
}

export function scrubEnvironment(env: NodeJS.ProcessEnv, patterns: readonly string[]): { env: NodeJS.ProcessEnv; removed: string[] } {
  const res = [...ALWAYS_SCRUBBED_PATTERNS, ...patterns].map(namePattern);
  const out: NodeJS.ProcessEnv = {};
  const removed: string[] = [];
  for (const [k, v] of Object.entries(env)) {
    if ((ALWAYS_SCRUBBED as readonly string[]).includes(k) || res.some((re) => re.test(k))) removed.push(k);
    else out[k] = v;
  }
  return { env: out, removed: removed.sort() };
}
