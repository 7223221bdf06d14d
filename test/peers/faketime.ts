import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A clock the test controls, for real processes: libfaketime (Debian's `faketime` package) preloaded
 * into the broker service, moto and the daemon, all reading one offset file. Only the wall clock
 * moves (DONT_FAKE_MONOTONIC): timers and timeouts keep real time, as after a laptop wakes up.
 * No code of the broker knows about it.
 */
export interface FakeClock {
  /** Environment that puts a process on this clock. */
  env: Record<string, string>;
  /** This clock's time, in ms since the epoch. */
  now(): number;
  advance(seconds: number): void;
}

const CANDIDATES = [
  '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1',
  '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1',
  '/usr/lib/faketime/libfaketime.so.1',
];

export function faketimeLibrary(): string {
  const lib = CANDIDATES.find((p) => existsSync(p));
  if (!lib) throw new Error('libfaketime not found: install Debian\'s faketime package (bash scripts/setup.sh does)');
  return lib;
}

export function fakeClock(): FakeClock {
  const file = join(mkdtempSync(join(tmpdir(), 'broker-clock-')), 'offset');
  let offset = 0;
  const write = () => writeFileSync(file, `${offset >= 0 ? '+' : ''}${offset}\n`);
  write();
  return {
    env: {
      LD_PRELOAD: faketimeLibrary(),
      FAKETIME_TIMESTAMP_FILE: file,
      // Read the file on every clock call, so an advance is seen at once.
      FAKETIME_NO_CACHE: '1',
      DONT_FAKE_MONOTONIC: '1',
    },
    now: () => Date.now() + offset * 1000,
    advance(seconds) {
      offset += seconds;
      write();
    },
  };
}
