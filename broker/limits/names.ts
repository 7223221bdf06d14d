/**
 * The broker's own names and the bounds of a task request: one rule each, shared by the templates,
 * the service API, the daemon and the CLI. (The credential_process fast path keeps a literal copy of
 * the template-name rule, since it loads no ES module; test/wire-contract.test.ts checks it is this one.)
 */
import { basename } from 'node:path';
import { parseDuration } from '../duration.js';
import { MAX_DURATION_SECONDS, MIN_DURATION_SECONDS, NOT_TAG_CHAR_RE, TAG_CHARS } from './aws.js';

/**
 * A template name becomes a session tag value (`broker:task`), part of an AWS CLI profile name
 * (`broker-<name>`) and a command argument (`credential-process --task <name>`): a small charset.
 */
export const TEMPLATE_NAME_RE = /^[a-z0-9-]{1,40}$/;
/** The rule in words, for messages. */
export const TEMPLATE_NAME_RULE = '[a-z0-9-], at most 40 chars';

/** Parameter names appear in placeholders (`${param.NAME}`), CLI flags and JSON pointers. */
export const PARAM_NAME_RE = /^[A-Za-z][A-Za-z0-9_]{0,31}$/;
/** What the API accepts as one parameter value; each template bounds its own further (MAX_PARAM_LENGTH). */
export const MAX_PARAM_VALUE_CHARS = 1024;
/** A template's `maxLength` for a parameter is at most this, so its worst-case policy size is known at load. */
export const MAX_PARAM_LENGTH = 256;

/** The reason given for a task (audit log, `--reason`). */
export const MAX_REASON_CHARS = 512;

/**
 * An agent name becomes the `broker:agent` session tag: an STS tag value (charset and 256 chars,
 * limits/aws.ts), and not empty (an empty tag says nothing; the API's default is `unspecified`).
 */
export const MAX_AGENT_NAME_CHARS = 256;
export const AGENT_NAME_RE = new RegExp(`^[${TAG_CHARS}]{1,${MAX_AGENT_NAME_CHARS}}$`, 'u');
export const AGENT_NAME_RULE = 'letters, digits, spaces and _.:/=+-@, at most 256 (STS tag charset)';
export const DEFAULT_AGENT_NAME = 'unspecified';

/** A command's name fitted to the agent-name rule (what `broker exec` names the agent by default). */
export function agentNameFrom(command: string): string {
  return basename(command).replace(NOT_TAG_CHAR_RE, '-').slice(0, MAX_AGENT_NAME_CHARS) || DEFAULT_AGENT_NAME;
}

/** Why a requested session length is refused, said the same way by the API and the CLI. */
export const SESSION_TTL_RANGE_MESSAGE =
  `must be a duration between ${MIN_DURATION_SECONDS}s and ${MAX_DURATION_SECONDS}s, e.g. 30m or 2h`;

/**
 * A requested task-session length (`ttl` of POST /v1/sessions, `--ttl` of `broker task` and
 * `broker policy explain`), in seconds; undefined when it is not a duration within AssumeRole's
 * DurationSeconds bounds (a task session shorter than one credential makes no sense).
 */
export function parseSessionTtl(v: string | number): number | undefined {
  const s = parseDuration(v);
  if (s === undefined || s < MIN_DURATION_SECONDS || s > MAX_DURATION_SECONDS) return undefined;
  return s;
}
