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
 * The command that opens `url` in the person's browser: `$BROWSER` when set (its first
 * colon-separated entry, `%s` replaced by the URL as the convention goes, else the URL appended),
 * else xdg-open (freedesktop.org xdg-utils) or macOS `open`; undefined where none can be opened.
 */
function browserCommand(url: string, env: NodeJS.ProcessEnv): [string, string[]] | undefined {
  if (!canOpenBrowser(env)) return undefined;
  const browser = env.BROWSER?.split(':').find((s) => s.trim() !== '');
  if (browser) {
    const words = browser.trim().split(/\s+/);
    let args = words.slice(1);
    if (args.some((a) => a.includes('%s'))) args = args.map((a) => a.replaceAll('%s', url));
    else args.push(url);
    return [words[0]!, args];
  }
  if (process.platform === 'darwin') return ['open', [url]];
  if (process.platform === 'win32') return undefined;
  return ['xdg-open', [url]];
}

/**
 * Opens `url` in the person's browser, in the background (see browserCommand). Every failure is
 * ignored: the URL is printed anyway. True when a command was started.
 */
export function openBrowser(url: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const command = browserCommand(url, env);
  if (!command) return false;
  try {
    // No shell: the URL is one argument, whatever it holds.
    const child = spawn(command[0], command[1], { stdio: 'ignore', detached: true, env });
    child.on('error', () => { /* no such command: the URL is on the screen */ });
    child.unref();
    return true;
  } catch {
    return false;
  }
}

/**
 * As openBrowser, but says whether the command could be started at all (a missing xdg-open or
 * $BROWSER is false), for a caller that has another way when it cannot (broker login: the device flow).
 */
export function launchBrowser(url: string, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  const command = browserCommand(url, env);
  if (!command) return Promise.resolve(false);
  return new Promise((resolve) => {
    try {
      const child = spawn(command[0], command[1], { stdio: 'ignore', detached: true, env });
      child.once('spawn', () => { child.unref(); resolve(true); });
      child.once('error', () => resolve(false));
    } catch {
      resolve(false);
    }
  });
}
