/**
 * The daemon's instance lock on its own (the daemon tests run it with real daemons): O_EXCL
 * creation, and a takeover of a stale lock that removes exactly the file judged stale, so two
 * starters that judged the same file cannot both end up holding the lock.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { breakStaleLock, readHolder, tryInstanceLock } from '../broker/daemon/instance-lock.js';

const dir = mkdtempSync(join(tmpdir(), 'broker-lock-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const lockFile = () => join(dir, `daemon-${++n}.pid`);

describe('instance lock', () => {
  it('one holder at a time; release frees it, and only its own holder can', () => {
    const file = lockFile();
    const a = tryInstanceLock(file);
    assert.ok(a.acquired);
    const b = tryInstanceLock(file);
    assert.ok(!b.acquired);
    assert.equal(b.holder?.pid, process.pid);
    assert.match(readFileSync(file, 'utf8'), new RegExp(`^${process.pid} [0-9a-f-]{36}\\n$`));
    assert.ok(a.lock.owns());
    a.lock.release();
    assert.ok(!existsSync(file));
    const c = tryInstanceLock(file);
    assert.ok(c.acquired);
    a.lock.release(); // a stale release must not remove c's lock
    assert.ok(existsSync(file) && c.lock.owns());
    c.lock.release();
  });

  it('a takeover removes the file it judged stale, and not a newer one', () => {
    const file = lockFile();
    // Left by a daemon that crashed before a reboot; pid 1 exists, but is not a broker daemon.
    writeFileSync(file, '1 0b7c2a4e-0000-4000-8000-000000000000\n');
    utimesSync(file, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000));
    const judged = readHolder(file)!;
    assert.equal(judged.pid, 1);
    assert.ok(judged.ageMs > 3000_000);

    // Two starters judged it stale. The first removes it and takes the lock…
    assert.equal(breakStaleLock(file, judged), true);
    const first = tryInstanceLock(file);
    assert.ok(first.acquired);
    // …the second, acting on its older judgement, must leave the first's lock alone.
    assert.equal(breakStaleLock(file, judged), false);
    assert.ok(first.lock.owns(), 'the first keeps its lock');
    const second = tryInstanceLock(file);
    assert.ok(!second.acquired);
    first.lock.release();
  });

  it('a takeover under way (its guard present) makes others look again, and a guard left by a crash expires', () => {
    const file = lockFile();
    writeFileSync(file, '1 stale\n');
    const judged = readHolder(file)!;
    writeFileSync(`${file}.takeover`, '');
    assert.equal(breakStaleLock(file, judged), false, 'someone else is taking over');
    assert.ok(existsSync(file));
    utimesSync(`${file}.takeover`, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    assert.equal(breakStaleLock(file, judged), false, 'the dead guard is cleared…');
    assert.ok(!existsSync(`${file}.takeover`));
    assert.equal(breakStaleLock(file, judged), true, '…and the next look takes over');
    assert.ok(!existsSync(file));
  });

  it('an empty lock file (its creator has not written yet) has no pid, and an age', () => {
    const file = lockFile();
    writeFileSync(file, '');
    const h = readHolder(file)!;
    assert.equal(h.pid, undefined);
    assert.ok(h.ageMs >= 0 && h.ageMs < 60_000);
  });
});
