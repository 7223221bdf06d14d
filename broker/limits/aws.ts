/**
 * AWS STS limits the broker enforces itself before calling AWS (moto enforces none of them, and a
 * clear early error beats an opaque MalformedPolicyDocument). Sources: STS API reference, AssumeRole
 * (botocore data/sts/2011-06-15/service-2.json) and IAM User Guide "IAM and AWS STS quotas".
 */

/** DurationSeconds: 900..43200 (AssumeRole; role MaxSessionDuration caps it further). */
export const MIN_DURATION_SECONDS = 900;
export const MAX_DURATION_SECONDS = 43_200;

/** RoleSessionName and SourceIdentity: 2..64 chars of [\w+=,.@-]. */
export const SESSION_NAME_RE = /^[\w+=,.@-]{2,64}$/;
export const SESSION_NAME_CHAR_RE = /[\w+=,.@-]/;
export const SOURCE_IDENTITY_RE = /^[\w+=,.@-]{2,64}$/;

/**
 * Session tag keys are 1..128 and values 0..256 characters of letters, digits, spaces and
 * `_.:/=+-@` (STS `Tag`: `[\p{L}\p{Z}\p{N}_.:/=+\-@]+`); at most 50 tags; the `aws:` prefix is reserved.
 * The character class as regex source (for a `u` regex), so every rule built on it is this one.
 */
export const TAG_CHARS = '\\p{L}\\p{Z}\\p{N}_.:/=+\\-@';
export const TAG_KEY_RE = new RegExp(`^[${TAG_CHARS}]{1,128}$`, 'u');
export const TAG_VALUE_RE = new RegExp(`^[${TAG_CHARS}]{0,256}$`, 'u');
/** One character outside the tag charset (to replace, when a name is fitted to it). */
export const NOT_TAG_CHAR_RE = new RegExp(`[^${TAG_CHARS}]`, 'gu');
export const MAX_SESSION_TAGS = 50;
export const MAX_TRANSITIVE_TAG_KEYS = 50;
export const RESERVED_TAG_PREFIX = /^aws:/i;

/** Session policy: plaintext Policy + PolicyArns together at most 2,048 chars; at most 10 ARNs. */
export const MAX_SESSION_POLICY_CHARS = 2048;
export const MAX_POLICY_ARNS = 10;
/** Policy charset: U+0009, U+000A, U+000D, U+0020..U+00FF. */
export const POLICY_CHARSET_RE = /^[\u0009\u000A\u000D\u0020-\u00FF]*$/;

/**
 * AWS Region names: `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`, `us-isob-east-1` …
 * (AWS General Reference, "AWS Regions": a partition-specific prefix, a geography, a number).
 */
export const REGION_RE = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;

export const ROLE_ARN_RE = /^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@\-/]{1,512}$/;
export const POLICY_ARN_RE = /^arn:aws[a-z-]*:iam::(\d{12}|aws):policy\/[\w+=,.@\-/]{1,512}$/;

/**
 * A role's MaxSessionDuration is 3600..43200 s (IAM CreateRole/UpdateRole; default 3600), and a
 * role-chained session (a role session calling AssumeRole) is capped at 1 h whatever the role allows
 * (IAM User Guide, "Roles terms and concepts: role chaining").
 */
export const DEFAULT_ROLE_MAX_SESSION_SECONDS = 3600;
export const ROLE_CHAINING_MAX_SECONDS = 3600;

/**
 * An OIDC ID token the broker accepts: at most 20,000 chars, the limit STS puts on a web identity
 * token (AssumeRoleWithWebIdentity `WebIdentityToken`, botocore sts service-2.json), so an ID token the
 * broker takes could also be handed to STS. The service's /v1/auth/token body uses the same bound.
 */
export const MAX_ID_TOKEN_CHARS = 20_000;

/**
 * Inline role policies: at most 10,240 characters for all of a role's inline policies together,
 * whitespace not counted (IAM User Guide, "IAM and AWS STS quotas", IAM and STS character limits:
 * "Role policy size cannot exceed 10,240 characters";
 * https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html).
 */
export const MAX_ROLE_INLINE_POLICY_CHARS = 10_240;
