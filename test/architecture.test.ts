/**
 * The dependency directions of the code base, checked on its sources (type-only imports included:
 * they are dependencies too, even if the compiler erases them). Each rule names why it exists.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import ts from 'typescript';
import { REPO_ROOT } from './peers/paths.js';

interface Import {
  /** The importing file, relative to the repository root (`broker/daemon/daemon-core.ts`). */
  from: string;
  specifier: string;
  /** The imported file relative to the root, for relative specifiers; undefined for packages and node: builtins. */
  to: string | undefined;
  typeOnly: boolean;
  /** `import()` or `require()`: loaded when that code runs, not when the module loads. */
  dynamic: boolean;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(join(REPO_ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(path);
    return /\.c?ts$/.test(e.name) && !e.name.endsWith('.d.ts') ? [path] : [];
  });
}

/** `./x.js` → `x.ts`, `./x.cjs` → `x.cts` (NodeNext specifiers name the compiled file). */
function resolveSource(from: string, specifier: string): string | undefined {
  if (!specifier.startsWith('.')) return undefined;
  const abs = resolve(REPO_ROOT, dirname(from), specifier);
  return relative(REPO_ROOT, abs).replace(/\.js$/, '.ts').replace(/\.cjs$/, '.cts');
}

function importsOf(file: string): Import[] {
  const text = readFileSync(join(REPO_ROOT, file), 'utf8');
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: Import[] = [];
  const add = (specifier: string, typeOnly: boolean, dynamic = false) => out.push({ from: file, specifier, to: resolveSource(file, specifier), typeOnly, dynamic });
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      const c = node.importClause;
      // `import type {…}`, or `import { type a, type b }` with nothing else: erased, but still a dependency.
      const named = c?.namedBindings && ts.isNamedImports(c.namedBindings) ? c.namedBindings.elements : undefined;
      const typeOnly = c !== undefined && (c.isTypeOnly || (!c.name && named !== undefined && named.length > 0 && named.every((e) => e.isTypeOnly)));
      add(node.moduleSpecifier.text, typeOnly);
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      add(node.moduleSpecifier.text, node.isTypeOnly);
    } else if (ts.isCallExpression(node) && node.arguments.length === 1 && ts.isStringLiteralLike(node.arguments[0]!)) {
      const callee = node.expression;
      const isDynamicImport = callee.kind === ts.SyntaxKind.ImportKeyword;
      const isRequire = ts.isIdentifier(callee) && callee.text === 'require';
      if (isDynamicImport || isRequire) add((node.arguments[0] as ts.StringLiteralLike).text, false, true);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      // `typeof import('node:os')` in a type position.
      add(node.argument.literal.text, true);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

const FILES = [...sourceFiles('broker'), ...sourceFiles('cli')];
const IMPORTS = FILES.flatMap(importsOf);

/** The top-level unit of broker/ a file belongs to: its first folder (`broker/daemon`), or the file itself at the root. */
function unitOf(file: string): string {
  const parts = file.split('/');
  if (parts[0] === 'cli') return 'cli';
  return parts.length > 2 ? `${parts[0]}/${parts[1]}` : file;
}

const inside = (file: string | undefined, ...dirs: string[]) => file !== undefined && dirs.some((d) => file === d || file.startsWith(`${d}/`));
const show = (list: Import[]) => list.map((i) => `${i.from} → ${i.specifier}${i.typeOnly ? ' (type)' : ''}`);

describe('architecture: dependency directions', () => {
  it('finds the sources and their imports (so the rules below can fail)', () => {
    assert.ok(FILES.length > 80, `${FILES.length} source files`);
    assert.ok(IMPORTS.some((i) => i.from === 'broker/server/start.ts' && i.to?.startsWith('broker/sessions/')), 'the service wires the domain');
    assert.ok(IMPORTS.some((i) => i.from === 'cli/credential-process.cts' && i.to === 'broker/daemon/socket.cts'), '.cjs specifiers resolve to .cts sources');
  });

  it('the daemon and the CLI\'s client side import nothing of the service (its transport, domain, store, or its AWS/Vault clients)', () => {
    const bad = IMPORTS.filter((i) => inside(i.from, 'broker/daemon', 'broker/client')
      && inside(i.to, 'broker/server', 'broker/sessions', 'broker/store', 'broker/templates', 'broker/identity', 'broker/config', 'broker/vault', 'broker/aws'));
    assert.deepEqual(show(bad), []);
  });

  it('the service imports nothing of the daemon or the CLI\'s client side (a transport never imports another)', () => {
    const bad = IMPORTS.filter((i) => inside(i.from, 'broker/server', 'broker/sessions', 'broker/store', 'broker/identity', 'broker/config', 'broker/vault', 'broker/aws')
      && inside(i.to, 'broker/daemon', 'broker/client'));
    assert.deepEqual(show(bad), []);
  });

  it('the wire contracts are leaves: they import only zod, the shared rules and the error type', () => {
    const bad = IMPORTS.filter((i) => inside(i.from, 'broker/wire')
      && !(i.specifier === 'zod' || inside(i.to, 'broker/wire', 'broker/limits') || i.to === 'broker/errors.ts'));
    assert.deepEqual(show(bad), []);
  });

  it('templates and Vault depend one way only: the Vault client knows no templates, templates use its types only', () => {
    const vaultToTemplates = IMPORTS.filter((i) => inside(i.from, 'broker/vault') && inside(i.to, 'broker/templates', 'broker/sessions', 'broker/server', 'broker/store'));
    assert.deepEqual(show(vaultToTemplates), [], 'broker/vault imports no domain');
    const templatesToVault = IMPORTS.filter((i) => inside(i.from, 'broker/templates') && inside(i.to, 'broker/vault') && !i.typeOnly);
    assert.deepEqual(show(templatesToVault), [], 'broker/templates imports only types from broker/vault');
  });

  it('the domain takes interfaces: no AWS SDK in sessions/ or templates/, no STS client in sessions/', () => {
    const bad = IMPORTS.filter((i) => inside(i.from, 'broker/sessions', 'broker/templates') && (i.specifier.startsWith('@aws-sdk/') || inside(i.to, 'broker/aws')));
    assert.deepEqual(show(bad), []);
  });

  it('the domain and the HTTP transport reach the store through its interfaces; only the service start-up opens SQLite', () => {
    // `broker audit verify --db` reads a store file itself, read-only, as an auditor would; `--server`
    // keeps the chain it downloads in a temporary database of its own, read by the same queries.
    const bad = IMPORTS.filter((i) => inside(i.to, 'broker/store/sqlite') && !inside(i.from, 'broker/store') && i.from !== 'broker/server/start.ts'
      && !(i.from === 'cli/audit-verify.ts' && ['broker/store/sqlite/audit-chain-source.ts', 'broker/store/sqlite/audit-parallel.ts', 'broker/store/sqlite/downloaded-chain.ts'].includes(i.to!)));
    assert.deepEqual(show(bad), []);
    const sqlite = IMPORTS.filter((i) => i.specifier === 'node:sqlite' && !inside(i.from, 'broker/store/sqlite'));
    assert.deepEqual(show(sqlite), [], 'node:sqlite only in the SQLite backend');
  });

  it('nothing under broker/ imports cli/', () => {
    assert.deepEqual(show(IMPORTS.filter((i) => inside(i.from, 'broker') && inside(i.to, 'cli'))), []);
  });

  it('the credential_process fast path loads Node builtins and its own three modules only (types aside)', () => {
    // No ES module and no package (zod, commander, the AWS SDK …): it runs for every AWS CLI command.
    // The slow path (no daemon running: start one) is an import() the fast path never reaches;
    // test/daemon.test.ts records, at run time, exactly which builtins really load.
    const fast = ['cli/credential-process.cts', 'broker/daemon/socket.cts', 'broker/exit-codes.cts'];
    const bad = IMPORTS.filter((i) => fast.includes(i.from) && !i.typeOnly && !i.dynamic && !i.specifier.startsWith('node:') && !fast.includes(i.to ?? ''));
    assert.deepEqual(show(bad), []);
  });

  it('no cycle between the top-level units of broker/ (folders, and files at its root)', () => {
    const edges = new Map<string, Set<string>>();
    for (const i of IMPORTS) {
      if (!i.to || !inside(i.from, 'broker') || !inside(i.to, 'broker')) continue;
      const a = unitOf(i.from);
      const b = unitOf(i.to);
      if (a === b) continue;
      if (!edges.has(a)) edges.set(a, new Set());
      edges.get(a)!.add(b);
    }
    // Every cycle shows as a path back to where it started; one per unit is enough to fix it.
    const cycles: string[] = [];
    const path: string[] = [];
    const done = new Set<string>();
    const visit = (u: string): void => {
      if (path.includes(u)) {
        cycles.push([...path.slice(path.indexOf(u)), u].join(' → '));
        return;
      }
      if (done.has(u)) return;
      path.push(u);
      for (const v of edges.get(u) ?? []) visit(v);
      path.pop();
      done.add(u);
    };
    for (const u of [...edges.keys()].sort()) visit(u);
    assert.deepEqual(cycles, []);
  });
});
