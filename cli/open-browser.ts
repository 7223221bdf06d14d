import { spawn } from 'node:child_process';

/**
 * Whether a browser may be opened here: never in CI (no one is there to look), and on Linux and the
 * BSDs only with a graphical session (X11's DISPLAY or WAYLAND_DISPLAY), so an SSH session or a
 * container does not start a text browser on the terminal the CLI is using.
 */
export function canOpenBrowser(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): boolean {
  if (env.CI) return false;
  if (platform === 'darwin' || platform === 'win32') return true;
  return Boolean(env.DISPLAY || env.WAYLAND_DISPLAY);
}

/**
 * Opens `url` in the person's browser, in the background: `$BROWSER` when set (its first
 * colon-separated entry, `%s` replaced by the URL as the convention goes, else the URL appended),
 * else xdg-open (freedesktop.org xdg-utils) or macOS `open`. Every failure is ignored: the URL is
 * printed anyway. True when a command was started.
 */
export function openBrowser(url: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!canOpenBrowser(env)) return false;
  const browser = env.BROWSER?.split(':').find((s) => s.trim() !== '');
  let cmd: string;
  let args: string[];
  if (browser) {
    const words = browser.trim().split(/\s+/);
    cmd = words[0]!;
    args = words.slice(1);
    if (args.some((a) => a.includes('%s'))) args = args.map((a) => a.replaceAll('%s', url));
    else args.push(url);
  } else if (process.platform === 'darwin') {
    [cmd, args] = ['open', [url]];
  } else if (process.platform === 'win32') {
    return false;
  } else {
    [cmd, args] = ['xdg-open', [url]];
  }
  try {
    // No shell: the URL is one argument, whatever it holds.
    const child = spawn(cmd, args, { stdio: 'ignore', detached: true, env });
    child.on('error', () => { /* no such command: the URL is on the screen */ });
    child.unref();
    return true;
  } catch {
    return false;
  }
}
