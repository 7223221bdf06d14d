/**
 * The environment `broker exec` gives its child: the parent's, minus every inherited credential the
 * agent could use instead of the task's (the point of running it under a task session).
 */

/** Removed always: static AWS keys, other AWS credential sources that would win over AWS_PROFILE, and Vault tokens. */
export const ALWAYS_SCRUBBED = [
  'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN', 'AWS_CREDENTIAL_EXPIRATION',
  'AWS_DEFAULT_PROFILE', 'AWS_PROFILE',
  'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_ROLE_ARN', 'AWS_ROLE_SESSION_NAME',
  'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI', 'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
  // Vault tokens; the OpenBao CLI reads BAO_* before VAULT_*.
  'VAULT_TOKEN', 'BAO_TOKEN',
] as const;

/** `GITHUB_*`, `*_TOKEN`, `OPENAI_API_KEY`: `*` matches any run of characters; the rest literally. */
export function namePattern(pattern: string): RegExp {
  if (!/^[A-Za-z0-9_*]+$/.test(pattern)) throw new TypeError(`"${pattern}" is not an environment variable name pattern (letters, digits, _ and *)`);
  return new RegExp(`^${pattern.replace(/\*/g, '.*')}$`);
}

export function scrubEnvironment(env: NodeJS.ProcessEnv, patterns: readonly string[]): { env: NodeJS.ProcessEnv; removed: string[] } {
  const res = patterns.map(namePattern);
  const out: NodeJS.ProcessEnv = {};
  const removed: string[] = [];
  for (const [k, v] of Object.entries(env)) {
    if ((ALWAYS_SCRUBBED as readonly string[]).includes(k) || res.some((re) => re.test(k))) removed.push(k);
    else out[k] = v;
  }
  return { env: out, removed: removed.sort() };
}
