import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Tests run compiled from dist/test/…; everything is located from the repository root. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BROKER_BIN = join(REPO_ROOT, 'bin', 'broker.cjs');
export const VENV_BIN = join(REPO_ROOT, '.peers', 'venv', 'bin');
export const POLICIES_DIR = join(REPO_ROOT, 'policies');
export const FIXTURES_DIR = join(REPO_ROOT, 'test', 'fixtures');
