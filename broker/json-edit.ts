/**
 * Edits of a JSON document (RFC 8259) that leave every byte outside the edited value as it was:
 * other keys, their order, the file's indentation, line endings and final newline. A settings file
 * another program owns (Claude Code's) is changed the way a person would change it, so its diff
 * shows only what the broker set.
 *
 * The parser is strict RFC 8259 (no comments, no trailing commas): a document it refuses is not
 * rewritten; the error names the line and column (1-based) of the first problem.
 */

export class JsonSyntaxError extends Error {
  constructor(message: string, readonly line: number, readonly column: number, readonly offset: number) {
    super(message);
  }
}

interface Span { start: number; end: number }
export type JsonNode =
  | (Span & { kind: 'object'; members: JsonMember[] })
  | (Span & { kind: 'array'; items: JsonNode[] })
  | (Span & { kind: 'scalar'; value: string | number | boolean | null });
export interface JsonMember { key: string; keyStart: number; value: JsonNode }

/** Parses `text` into nodes with their offsets; JsonSyntaxError on anything RFC 8259 refuses. */
export function parseJson(text: string): JsonNode {
  let i = 0;
  const fail = (what: string, at = i): never => {
    const before = text.slice(0, at);
    const line = before.split('\n').length;
    const column = at - (before.lastIndexOf('\n') + 1) + 1;
    throw new JsonSyntaxError(what, line, column, at);
  };
  // RFC 8259 §2: insignificant whitespace is space, tab, LF, CR only.
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++; };
  const describe = () => (i >= text.length ? 'unexpected end of the file' : `unexpected ${JSON.stringify(text[i])}`);
  const string = (): string => {
    const start = i;
    i++; // opening quote
    for (;;) {
      if (i >= text.length) fail('unterminated string', start);
      const c = text.charCodeAt(i);
      if (c === 0x22) break;
      if (c < 0x20) fail('control character in a string (escape it)');
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === 'u') {
          if (!/^[0-9A-Fa-f]{4}$/.test(text.slice(i + 2, i + 6))) fail('bad \\u escape');
          i += 6;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) {
          i += 2;
        } else {
          fail('bad escape in a string');
        }
        continue;
      }
      i++;
    }
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const value = (): JsonNode => {
    ws();
    const start = i;
    const c = text[i];
    if (c === '{') {
      i++;
      const members: JsonMember[] = [];
      ws();
      if (text[i] === '}') { i++; return { kind: 'object', start, end: i, members }; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail(`${describe()}: expected a key in double quotes`);
        const keyStart = i;
        const key = string();
        ws();
        if (text[i] !== ':') fail(`${describe()}: expected ":" after the key`);
        i++;
        members.push({ key, keyStart, value: value() });
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return { kind: 'object', start, end: i, members }; }
        fail(`${describe()}: expected "," or "}"`);
      }
    }
    if (c === '[') {
      i++;
      const items: JsonNode[] = [];
      ws();
      if (text[i] === ']') { i++; return { kind: 'array', start, end: i, items }; }
      for (;;) {
        items.push(value());
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return { kind: 'array', start, end: i, items }; }
        fail(`${describe()}: expected "," or "]"`);
      }
    }
    if (c === '"') {
      const v = string();
      return { kind: 'scalar', start, end: i, value: v };
    }
    const lit = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i, i + 400));
    if (!lit) fail(`${describe()}: expected a value`);
    i += lit![0].length;
    return { kind: 'scalar', start, end: i, value: JSON.parse(lit![0]) as string | number | boolean | null };
  };
  const root = value();
  ws();
  if (i < text.length) fail(`${describe()} after the end of the document`);
  return root;
}

/** The plain value of a node. */
export function valueOf(n: JsonNode): unknown {
  if (n.kind === 'scalar') return n.value;
  if (n.kind === 'array') return n.items.map(valueOf);
  const o: Record<string, unknown> = {};
  for (const m of n.members) o[m.key] = valueOf(m.value);
  return o;
}

/** The member a key names (the last one: JSON.parse keeps the last of duplicate keys). */
export function memberOf(obj: JsonNode, key: string): JsonMember | undefined {
  if (obj.kind !== 'object') return undefined;
  return obj.members.findLast((m) => m.key === key);
}

/** Deep equality of plain JSON values (key order does not matter). */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === (b as unknown[]).length && a.every((x, k) => sameJson(x, (b as unknown[])[k]));
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

export class JsonShapeError extends Error {
  constructor(message: string, readonly path: string[]) {
    super(message);
  }
}

/** How the document is laid out, so inserted text looks like the rest. */
interface Style { unit: string; eol: string }

function styleOf(text: string): Style {
  const eol = text.includes('\r\n') ? '\r\n' : '\n';
  const m = /\n([ \t]+)\S/.exec(text);
  return { unit: m ? m[1]! : '  ', eol };
}

/** The whitespace at the start of the line `offset` is on. */
function lineIndent(text: string, offset: number): string {
  const lineStart = text.lastIndexOf('\n', offset - 1) + 1;
  return /^[ \t]*/.exec(text.slice(lineStart))![0];
}

/** `value` as JSON laid out like the document, its lines after the first indented by `indent`. */
function render(value: unknown, indent: string, style: Style): string {
  const s = JSON.stringify(value, null, style.unit);
  return s.split('\n').join(`${style.eol}${indent}`);
}

/**
 * `text` with the value at `path` (object keys from the root) set to `value`; objects missing on the
 * way are created. A value already equal (as JSON) is left as written, so a second run changes no
 * byte. A non-object on the way is a JsonShapeError naming the path.
 */
export function setJsonValue(text: string, path: string[], value: unknown): string {
  if (path.length === 0) throw new TypeError('empty path');
  const style = styleOf(text);
  let node = parseJson(text);
  for (let d = 0; d < path.length; d++) {
    if (node.kind !== 'object') throw new JsonShapeError(`${path.slice(0, d).join('.') || 'the document'} is not a JSON object`, path.slice(0, d));
    const key = path[d]!;
    const m = memberOf(node, key);
    const rest = path.slice(d + 1);
    // What to write for this key: the value itself, or the objects leading to it.
    const wanted = rest.reduceRight<unknown>((v, k) => ({ [k]: v }), value);
    if (!m) return insertMember(text, node, key, wanted, style);
    if (rest.length === 0) {
      if (sameJson(valueOf(m.value), value)) return text;
      const indent = lineIndent(text, m.keyStart);
      return text.slice(0, m.value.start) + render(value, indent, style) + text.slice(m.value.end);
    }
    if (m.value.kind !== 'object') throw new JsonShapeError(`${path.slice(0, d + 1).join('.')} is not a JSON object`, path.slice(0, d + 1));
    node = m.value;
  }
  return text;
}

/** Adds `"key": value` as the last member of `obj`, laid out like its siblings. */
function insertMember(text: string, obj: JsonNode & { kind: 'object' }, key: string, value: unknown, style: Style): string {
  const last = obj.members.at(-1);
  if (!last) {
    const outer = lineIndent(text, obj.start);
    const inner = outer + style.unit;
    return `${text.slice(0, obj.start)}{${style.eol}${inner}${JSON.stringify(key)}: ${render(value, inner, style)}${style.eol}${outer}}${text.slice(obj.end)}`;
  }
  // Members on lines of their own: a new line with the last member's indentation; else on the same line.
  const between = text.slice(obj.start + 1, last.keyStart);
  const multiline = between.includes('\n');
  const indent = multiline ? lineIndent(text, last.keyStart) : '';
  const sep = multiline ? `,${style.eol}${indent}` : ', ';
  // In an object written on one line, the new value is written on one line too.
  const v = multiline ? render(value, indent, style) : JSON.stringify(value);
  return `${text.slice(0, last.value.end)}${sep}${JSON.stringify(key)}: ${v}${text.slice(last.value.end)}`;
}
