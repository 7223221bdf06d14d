/**
 * Edits the AWS shared config file (`~/.aws/config`) as text, so that everything the broker does not
 * own stays byte for byte as the user wrote it: comments, blank lines, order, CRLF, other profiles,
 * unknown keys. Only the INI the AWS CLI and SDKs accept is understood (botocore reads it with
 * Python's configparser): `[section]` headers, `key = value` / `key: value` lines, full-line `#`/`;`
 * comments, and indented continuation lines that belong to the key above (nested `s3 =` blocks).
 */

/** The line right above each section the broker wrote, so it can tell its own from the user's. */
export const MANAGED_MARKER = '# managed by broker';

export interface ProfileSpec {
  /** Profile name, e.g. `broker-deploy-lambda` (written as `[profile broker-deploy-lambda]`). */
  name: string;
  /** Keys to set, in order (`credential_process`, `region`); other keys in the section are kept. */
  settings: Record<string, string>;
}

export interface UpsertResult {
  text: string;
  changed: boolean;
  added: string[];
  updated: string[];
}

interface Line {
  text: string;
  /** The line's own terminator ('' for a last line without one), kept as it was. */
  eol: string;
}

type Kind = 'blank' | 'comment' | 'section' | 'key' | 'continuation' | 'other';

function splitLines(text: string): Line[] {
  const lines: Line[] = [];
  const re = /([^\r\n]*)(\r\n|\n|\r|$)/g;
  for (const m of text.matchAll(re)) {
    if (m[0] === '') break;
    lines.push({ text: m[1]!, eol: m[2]! });
  }
  return lines;
}

function kindOf(text: string): Kind {
  const t = text.trim();
  if (t === '') return 'blank';
  if (t.startsWith('#') || t.startsWith(';')) return 'comment';
  if (/^\[.*\]$/.test(t)) return 'section';
  if (/^[ \t]/.test(text)) return 'continuation';
  return /[=:]/.test(text) ? 'key' : 'other';
}

/** `[profile  x ]`, `[ profile x]` → `x`; `[default]`, `[sso-session s]` → undefined. */
export function profileNameOf(headerText: string): string | undefined {
  const inner = headerText.trim().slice(1, -1).trim();
  const m = /^profile\s+(.+)$/.exec(inner);
  return m ? m[1]!.trim() : undefined;
}

/** configparser's option name: text before the first `=` or `:`, trimmed, compared case-insensitively. */
function keyOf(text: string): string {
  return text.slice(0, text.search(/[=:]/)).trim().toLowerCase();
}

function valueOf(text: string): string {
  return text.slice(text.search(/[=:]/) + 1).trim();
}

interface Section { header: number; end: number }

function findProfile(lines: Line[], name: string): Section | undefined {
  const header = lines.findIndex((l) => kindOf(l.text) === 'section' && profileNameOf(l.text) === name);
  if (header < 0) return undefined;
  let end = header + 1;
  while (end < lines.length && kindOf(lines[end]!.text) !== 'section') end++;
  return { header, end };
}

/**
 * Adds or updates one `[profile <name>]` section per spec, idempotently: running it again on its own
 * output changes nothing. Our keys are replaced in place; missing ones are added after the section's
 * last key; a new section goes at the end of the file, behind the marker comment.
 */
export function upsertBrokerProfiles(original: string, profiles: ProfileSpec[]): UpsertResult {
  const eol = original.includes('\r\n') ? '\r\n' : '\n';
  const lines = splitLines(original);
  const added: string[] = [];
  const updated: string[] = [];
  /** Inserts lines at index `at`, giving the line before them a terminator if it lacked one. */
  const insert = (at: number, texts: string[]) => {
    if (at > 0 && lines[at - 1]!.eol === '') lines[at - 1]!.eol = eol;
    lines.splice(at, 0, ...texts.map((text) => ({ text, eol })));
  };

  for (const p of profiles) {
    for (const [k, v] of Object.entries(p.settings)) {
      // configparser trims values, so an untrimmed one would never compare equal (no idempotence).
      if (/[\r\n]/.test(v) || v !== v.trim() || !/^[\w-]+$/.test(k)) throw new TypeError(`profile ${p.name}: setting ${JSON.stringify(k)} cannot be written as one INI line`);
    }
    if (!/^[\w.+@-]+$/.test(p.name)) throw new TypeError(`profile name ${JSON.stringify(p.name)} is not safe in an INI section header`);

    const section = findProfile(lines, p.name);
    if (!section) {
      const block = [MANAGED_MARKER, `[profile ${p.name}]`, ...Object.entries(p.settings).map(([k, v]) => `${k} = ${v}`)];
      const last = lines.at(-1);
      if (last && kindOf(last.text) !== 'blank') block.unshift('');
      insert(lines.length, block);
      added.push(p.name);
      continue;
    }

    let changed = false;
    let { header, end } = section;
    if (lines[header - 1]?.text.trim() !== MANAGED_MARKER) {
      insert(header, [MANAGED_MARKER]);
      header++;
      end++;
      changed = true;
    }
    const missing: string[] = [];
    for (const [k, v] of Object.entries(p.settings)) {
      const want = `${k} = ${v}`;
      const at = lines.findIndex((l, i) => i > header && i < end && kindOf(l.text) === 'key' && keyOf(l.text) === k.toLowerCase());
      if (at < 0) {
        missing.push(want);
        continue;
      }
      // The old value is the key line plus any continuation lines under it (all replaced together).
      let drop = 1;
      while (at + drop < end && kindOf(lines[at + drop]!.text) === 'continuation') drop++;
      if (drop === 1 && valueOf(lines[at]!.text) === v) continue;
      lines.splice(at, drop, { text: want, eol: lines[at + drop - 1]!.eol });
      end -= drop - 1;
      changed = true;
    }
    if (missing.length) {
      // After the last key or continuation line, so trailing blank lines/comments stay between sections.
      let after = header;
      for (let i = header + 1; i < end; i++) if (['key', 'continuation', 'other'].includes(kindOf(lines[i]!.text))) after = i;
      insert(after + 1, missing);
      changed = true;
    }
    if (changed) updated.push(p.name);
  }

  const text = lines.map((l) => l.text + l.eol).join('');
  return { text, changed: text !== original, added, updated };
}

/**
 * Quotes one word of a `credential_process` command. botocore splits the command with shlex (POSIX)
 * and the JS and Go SDKs hand it to `sh -c`; plain double quotes mean the same to both as long as the
 * word holds none of `"`, `\`, `$`, `` ` ``, which the two read differently. On Windows, botocore and
 * cmd.exe both take a double-quoted path with backslashes as is.
 */
export function quoteCommandWord(word: string, platform: NodeJS.Platform = process.platform): string {
  if (/^[\w@%+=:,./-]+$/.test(word)) return word;
  if (platform === 'win32') {
    if (word.includes('"')) throw new TypeError(`cannot quote ${JSON.stringify(word)} for credential_process`);
    return `"${word}"`;
  }
  if (/["\\$`\r\n]/.test(word)) throw new TypeError(`cannot quote ${JSON.stringify(word)} for credential_process`);
  return `"${word}"`;
}
