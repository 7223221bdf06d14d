/**
 * Where the broker sends secrets over plain http: nowhere but this machine's loopback interface.
 * One rule for every URL that carries tokens or credentials — the broker service's URL (the CLI's
 * `--server`, `BROKER_URL`, the settings file's `serverUrl`; the service's `publicUrl`), the IdP's
 * issuer and Vault's address — applied by the CLI, the daemon and the service alike.
 *
 * Loopback is decided on the URL's host as the WHATWG URL parser normalises it (`http://0x7f.1` and
 * `http://2130706433` are `127.0.0.1`, `[0:0:0:0:0:0:0:1]` is `[::1]`), and only for IP literals:
 * 127.0.0.0/8 (RFC 1122 §3.2.1.3), ::1 (RFC 4291 §2.5.3), and ::1's IPv4-mapped twin
 * `[::ffff:127.x.x.x]` (RFC 4291 §2.5.5.2), which a dual-stack socket connects to 127.x.x.x.
 *
 * `localhost` is refused. The check can only see the name, while the connection goes wherever the
 * name resolves: Node resolves it with getaddrinfo (dns.lookup), i.e. /etc/hosts and then DNS,
 * with the search domains — a host without a localhost line (minimal container images) asks the
 * network. RFC 6761 §6.3 only says resolvers SHOULD answer it with loopback, and RFC 8252 §8.3
 * calls localhost NOT RECOMMENDED in favour of the loopback IP literal for the same reason. So a
 * plain-http URL must say the address: `http://127.0.0.1:8787`.
 */
import { BlockList, isIP } from 'node:net';

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** For people: the hosts plain http may go to. */
export const LOOPBACK_RULE = '127.0.0.1 (any 127.x.x.x) or [::1], written as the address';

/**
 * Whether `hostname` (a URL's `hostname`: IPv6 in brackets) is a loopback IP literal. Node's
 * BlockList matches an IPv4-mapped IPv6 address (`::ffff:7f00:1`) against the IPv4 subnet.
 */
export function isLoopbackHost(hostname: string): boolean {
  const bare = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  const family = isIP(bare);
  if (family === 0) return false;
  return LOOPBACK.check(bare, family === 6 ? 'ipv6' : 'ipv4');
}

/** Whether plain http to this URL stays on this machine (false for anything that does not parse). */
export function isLoopbackHttpUrl(url: URL): boolean {
  return url.protocol === 'http:' && isLoopbackHost(url.hostname);
}

/** The fix for a plain-http URL to `localhost`: the same URL with the loopback address. */
export function localhostFix(u: URL): string {
  return `write the loopback address instead of localhost: http://127.0.0.1${u.port ? `:${u.port}` : ''}${u.pathname === '/' ? '' : u.pathname}`;
}

/** What is wrong with a URL, and how to fix it, for the caller to place (flag, variable, file, field). */
export interface UrlProblem {
  problem: string;
  fix: string;
}

/**
 * A URL as it may be shown in an error: scheme, host, port and path; never a user name, password,
 * query or fragment (a mistaken paste could put a token there). Undefined when it does not parse.
 */
export function shownUrl(raw: string): string | undefined {
  try {
    const u = new URL(raw);
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return undefined;
  }
}

/**
 * The broker service's URL: every command sends the refresh token, access tokens and receives AWS
 * keys and Vault tokens over it, so it is https (RFC 6749 §10.3, §10.4: access and refresh tokens only over TLS), or
 * plain http to a service on this machine (a development service, the tests). No escape hatch: a
 * service elsewhere without TLS would hand every developer's credentials to the network.
 */
export function brokerUrlProblem(raw: string): UrlProblem | undefined {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return { problem: 'is not a URL', fix: 'give the service\'s https URL, e.g. https://broker.example.com' };
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') {
    return { problem: `is not an https URL (${u.protocol})`, fix: 'give the service\'s https URL, e.g. https://broker.example.com' };
  }
  if (u.username || u.password) {
    return { problem: 'holds a user name or password', fix: 'remove them: the broker authenticates with its own tokens' };
  }
  if (u.search || u.hash) {
    return { problem: 'has a query or fragment', fix: 'give the service\'s base URL, e.g. https://broker.example.com' };
  }
  if (u.protocol === 'https:' || isLoopbackHost(u.hostname)) return undefined;
  if (u.hostname === 'localhost') {
    return {
      problem: 'is plain http to localhost, which can resolve to another machine',
      fix: localhostFix(u),
    };
  }
  return {
    problem: `is plain http to ${u.hostname}, which is not this machine's loopback`,
    fix: `use the service's https URL; plain http is accepted only for a service on this machine (${LOOPBACK_RULE})`,
  };
}
