import { constants, type FileHandle, open, stat } from 'node:fs/promises';
import type { Logger } from '../log.js';
import type { AuditRecord } from '../store/audit-event.js';
import { jsonLine, type AuditSink } from './sink.js';

/**
 * JSON lines appended to a file, one audit record a line. Safe under logrotate
 * (logrotate(8), `copytruncate` and the default create/rename):
 * - the file is opened O_APPEND, so after a copytruncate every write lands at the new end of the
 *   shrunk file (never at the old offset, which would leave a hole of NUL bytes);
 * - before each batch the path is stat'ed: a different inode or no file at all (renamed or
 *   removed) and the path is opened again, created 0600, so the new file gets what follows.
 * A batch is written with one write(); with `fsync`, fdatasync(2) makes the file durable before
 * the feeder writes its cursor to the store (at most once a second, audit-sinks.ts), and before a
 * rotated file is let go, so a cursor on disk never counts a record a power cut could take. A
 * batch that failed part-way is written again whole (at least once), on a fresh line so a torn
 * line never swallows a record.
 */
export class JsonlFileSink implements AuditSink {
  readonly type = 'jsonl' as const;
  private fh: FileHandle | undefined;
  private ino = -1;
  private dev = -1;
  /** Check, before the next write, whether the file ends mid-line (after a failure or an open). */
  private checkTail = true;
  /** Written since the last fdatasync. */
  private dirty = false;

  constructor(readonly id: string, private readonly path: string, private readonly opts: { fsync: boolean; log: Logger }) {}

  async deliver(records: readonly AuditRecord[]): Promise<void> {
    try {
      const fh = await this.file();
      let text = records.map(jsonLine).join('');
      if (this.checkTail && !(await endsWithNewline(fh))) text = `\n${text}`;
      this.checkTail = false;
      const buf = Buffer.from(text);
      let off = 0;
      this.dirty = true;
      while (off < buf.length) off += (await fh.write(buf, off, buf.length - off)).bytesWritten;
    } catch (e) {
      this.checkTail = true;
      await this.reset();
      throw e;
    }
  }

  /** The open file for the path as it is now: reopened when it was renamed or removed. */
  private async file(): Promise<FileHandle> {
    let st;
    try {
      st = await stat(this.path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (this.fh && st && st.ino === this.ino && st.dev === this.dev) return this.fh;
    if (this.fh) this.opts.log.info({ sink: this.id, path: this.path }, 'audit sink file was rotated away; writing to a new file at its path');
    await this.reset();
    const fh = await open(this.path, constants.O_RDWR | constants.O_APPEND | constants.O_CREAT, 0o600);
    const now = await fh.stat();
    this.fh = fh;
    this.ino = now.ino;
    this.dev = now.dev;
    this.checkTail = true;
    return fh;
  }

  async sync(): Promise<void> {
    if (!this.opts.fsync || !this.dirty || !this.fh) return;
    await this.fh.datasync();
    this.dirty = false;
  }

  private async reset(): Promise<void> {
    // A rotated file keeps what was written to it: made durable before it is let go.
    await this.sync().catch(() => undefined);
    const fh = this.fh;
    this.fh = undefined;
    this.ino = -1;
    this.dev = -1;
    await fh?.close().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.reset();
  }
}

/** Whether the file is empty or ends with a newline (pread ignores O_APPEND's offset). */
async function endsWithNewline(fh: FileHandle): Promise<boolean> {
  const { size } = await fh.stat();
  if (size === 0) return true;
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, size - 1);
  return b[0] === 0x0a;
}

/**
 * JSON lines on the service's stdout (its logs go to stderr), for a log shipper or a container
 * runtime that collects stdout. Delivered once the stream has taken the batch.
 */
export class StdoutSink implements AuditSink {
  readonly type = 'stdout' as const;

  constructor(readonly id: string, private readonly out: NodeJS.WritableStream = process.stdout) {}

  deliver(records: readonly AuditRecord[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.out.write(records.map(jsonLine).join(''), (e) => (e ? reject(e) : resolve()));
    });
  }

  async close(): Promise<void> { /* the process owns stdout */ }
}
