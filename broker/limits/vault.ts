/**
 * What the broker checks about Vault/OpenBao names and token settings before calling Vault, so a
 * template or config mistake is reported at load (file and field) instead of as a Vault 400 later.
 * Sources: OpenBao/Vault token auth API (`auth/token/create/:role_name`, token roles), the token
 * store's path patterns, and the identity metadata limits.
 */

/**
 * Token role names: the token store's path pattern `framework.GenericNameRegex("role_name")`,
 * i.e. `\w(([\w-.]+)?\w)?` (word characters, `-` and `.`, starting and ending with a word character).
 */
export const VAULT_ROLE_NAME_RE = /^\w(?:[\w.-]*\w)?$/;

/**
 * Policy names the broker accepts: a conservative subset of what Vault stores. Vault lower-cases
 * policy names (`sys/policies/acl/DB` is stored as `db`), trims whitespace, and `policies` on token
 * create is a comma-separated list, so upper case, spaces and commas would be silently changed or
 * split by Vault; they are refused here instead. 128 chars is our own bound, far above real names.
 */
export const VAULT_POLICY_NAME_RE = /^[a-z0-9](?:[a-z0-9_.-]{0,126}[a-z0-9])?$/;

/** Policies the broker never puts on a task token: `root` is unlimited; `default` is Vault's own. */
export const ROOT_POLICY = 'root';
export const DEFAULT_POLICY = 'default';

/**
 * Token metadata (`meta` on token create) is a string map shown in Vault's audit log. Vault sets no
 * bound of its own on token meta; the broker borrows Vault's identity metadata limits (at most 64
 * pairs, keys up to 128 and values up to 512 chars) so a template cannot bloat every audit entry.
 */
export const MAX_VAULT_METADATA_PAIRS = 64;
export const VAULT_METADATA_KEY_RE = /^[A-Za-z0-9_.-]{1,128}$/;
export const MAX_VAULT_METADATA_VALUE_CHARS = 512;

/** The metadata keys the broker sets on every task token; templates may not redefine them. */
export const BROKER_VAULT_METADATA_KEYS = ['developer', 'task', 'session', 'agent'] as const;

/**
 * Shortest token TTL a template may ask for. Not a Vault limit (Vault accepts 1 s): a token the
 * agent cannot use before the daemon must already replace it is a configuration mistake.
 */
export const MIN_VAULT_TTL_SECONDS = 60;

/** Default token TTL when a template gives none: one hour, capped by the explicit max TTL. */
export const DEFAULT_VAULT_TTL_SECONDS = 3600;

/**
 * Vault's default maximum lease TTL (`max_lease_ttl`, 768h = 32 days). It bounds renewals of a
 * renewable token whose token role sets no `token_explicit_max_ttl` (token store `authRenew` takes
 * the role's value, not the token's own explicit max TTL), unless an operator tuned the token
 * mount's max TTL higher. The broker uses it as the latest a token can live when it knows no better.
 */
export const VAULT_DEFAULT_MAX_TTL_SECONDS = 768 * 3600;
