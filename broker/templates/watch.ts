/**
 * Watches `policiesDir` and calls `onChange` once the directory has been quiet for `debounceMs`.
 * The directory is watched, not its files: editors that save by writing a temporary file and
 * renaming it over the old one (vim, many IDEs), and Kubernetes' ConfigMap volumes (a symlink
 * swapped in one rename), replace the file, which a watch on the file itself would lose. Any event
 * counts (a reload that finds nothing changed records nothing), and a burst of them (one save is
 * several events) makes one call. If the watch itself fails (the directory removed or replaced), it
 * is set up again every `retryMs`, with a call once it is back.
 */
import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from '../log.js';

export interface PolicyDirWatch {
  close(): void;
}

export function watchPolicyDir(o: { dir: string; onChange: () => void; log: Logger; debounceMs?: number; retryMs?: number }): PolicyDirWatch {
  const debounceMs = o.debounceMs ?? 300;
  const retryMs = o.retryMs ?? 5000;
  let watcher: FSWatcher | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let retry: NodeJS.Timeout | undefined;
  let closed = false;

  const changed = () => {
    if (debounce) clearTimeout(debounce);
    debounce = setTimeout(() => { debounce = undefined; if (!closed) o.onChange(); }, debounceMs);
    debounce.unref();
  };
  const arm = (again: boolean): void => {
    if (closed) return;
    try {
      watcher = watch(o.dir, { persistent: false }, changed);
      watcher.on('error', (e) => {
        o.log.warn({ dir: o.dir, err: e.message }, `the watch on the templates directory failed; retrying every ${retryMs} ms (SIGHUP reloads meanwhile)`);
        watcher?.close();
        watcher = undefined;
        schedule();
      });
      if (again) {
        o.log.info({ dir: o.dir }, 'watching the templates directory again');
        changed();
      }
    } catch (e) {
      if (!again) o.log.warn({ dir: o.dir, err: (e as Error).message }, `cannot watch the templates directory; retrying every ${retryMs} ms (SIGHUP reloads meanwhile)`);
      schedule();
    }
  };
  const schedule = () => {
    if (closed || retry) return;
    retry = setTimeout(() => { retry = undefined; arm(true); }, retryMs);
    retry.unref();
  };
  arm(false);
  return {
    close: () => {
      closed = true;
      watcher?.close();
      if (debounce) clearTimeout(debounce);
      if (retry) clearTimeout(retry);
    },
  };
}
