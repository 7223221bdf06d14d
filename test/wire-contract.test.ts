/**
 * The wire contracts (broker/wire/service-api.ts, broker/daemon/protocol.ts) as the receiving side
 * enforces them: an answer that does not match is a clear upstream_error naming where it differs and
 * never what it holds; the credential_process fast path's hand-written check gives the same verdict
 * as the schema; the fast path's literal copies of shared rules are those rules. The real service
 * and daemon answer by the contract in every end-to-end test (the daemon validates each answer it
 * gets); the peers here answer wrongly on purpose, which real ones never do.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { BrokerApi } from '../broker/client/api.js';
import { resultOf } from '../broker/daemon/daemon-client.js';
import { BrokerError } from '../broker/errors.js';
import { TEMPLATE_NAME_RE, TEMPLATE_NAME_RULE } from '../broker/limits/names.js';
import { processCredentials, RFC3339_UTC_RE, sessionsResponse, startSessionResponse } from '../broker/wire/service-api.js';
import { credentialsDocument, RFC3339_UTC_RE as CTS_RFC3339_UTC_RE, TEMPLATE_RE, TEMPLATE_RULE } from '../cli/credential-process.cjs';

const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY-do-not-echo';
const good = { Version: 1, AccessKeyId: 'ASIAEXAMPLE', SecretAccessKey: SECRET, SessionToken: 'FwoGZXIvYXdzEXAMPLE', Expiration: '2026-11-22T12:34:56.789Z' };

/** Documents the daemon could conceivably send, good and bad. */
const documents: Record<string, unknown> = {
  good,
  'good, whole seconds': { ...good, Expiration: '2026-11-22T12:34:56Z' },
  'good, with AccountId': { ...good, AccountId: '123456789012' },
  'good, empty AccountId': { ...good, AccountId: '' },
  'good, an unknown extra field': { ...good, Extra: 'x' },
  'Version 2': { ...good, Version: 2 },
  'Version "1"': { ...good, Version: '1' },
  'no Version': { ...good, Version: undefined },
  'empty AccessKeyId': { ...good, AccessKeyId: '' },
  'numeric AccessKeyId': { ...good, AccessKeyId: 12345 },
  'no SecretAccessKey': { ...good, SecretAccessKey: undefined },
  'null SessionToken': { ...good, SessionToken: null },
  'no Expiration': { ...good, Expiration: undefined },
  'Expiration not a time': { ...good, Expiration: 'tomorrow' },
  'Expiration with an offset': { ...good, Expiration: '2026-11-22T12:34:56+01:00' },
  'Expiration as a number': { ...good, Expiration: 1790000000 },
  'Expiration without seconds': { ...good, Expiration: '2026-11-22T12:34Z' },
  'numeric AccountId': { ...good, AccountId: 123456789012 },
  'null AccountId': { ...good, AccountId: null },
  'an array': [good],
  'a string': 'credentials',
  null: null,
  'an empty object': {},
};

describe('the credential_process fast path agrees with the protocol', () => {
  it('its literal copies of shared rules are those rules', () => {
    assert.equal(TEMPLATE_RE.source, TEMPLATE_NAME_RE.source);
    assert.equal(TEMPLATE_RE.flags, TEMPLATE_NAME_RE.flags);
    assert.equal(TEMPLATE_RULE, TEMPLATE_NAME_RULE);
    assert.equal(CTS_RFC3339_UTC_RE.source, RFC3339_UTC_RE.source);
    assert.equal(CTS_RFC3339_UTC_RE.flags, RFC3339_UTC_RE.flags);
  });

  it('its hand-written check of the credentials document gives the schema\'s verdict on every document', () => {
    let accepted = 0;
    for (const [name, doc] of Object.entries(documents)) {
      const clean = doc && typeof doc === 'object' && !Array.isArray(doc)
        ? Object.fromEntries(Object.entries(doc).filter(([, v]) => v !== undefined)) : doc;
      const byHand = credentialsDocument(clean);
      const bySchema = processCredentials.safeParse(clean);
      assert.equal(byHand !== undefined, bySchema.success, `${name}: hand-written ${byHand ? 'accepts' : 'refuses'}, schema ${bySchema.success ? 'accepts' : 'refuses'}`);
      // What it prints is what the schema keeps (unknown fields dropped), AccountId only when set.
      if (byHand && bySchema.success) {
        accepted++;
        const { AccountId, ...rest } = bySchema.data;
        assert.deepEqual(byHand, { ...rest, ...(AccountId ? { AccountId } : {}) }, name);
      }
    }
    assert.equal(accepted, 5, 'the good documents were accepted by both');
  });
});

describe('the client checks what the broker service answers', () => {
  let server: Server;
  let url: string;
  /** What the fake service answers next: a status and a body (an object, or raw text). */
  let answer: { status: number; body: unknown } = { status: 200, body: {} };
  before(async () => {
    server = createServer((req, res) => {
      req.resume();
      res.writeHead(answer.status, { 'content-type': 'application/json' });
      res.end(typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  const session = { id: 'abcdefgh23', template: 'deploy-lambda', params: {}, reason: '', agent: 'x', roleSessionName: 'a.deploy-lambda.abcdefgh23', region: 'us-east-1', vault: null, createdAt: '2026-11-22T12:00:00.000Z', expiresAt: '2026-11-22T14:00:00.000Z' };

  it('passes an answer that matches, dropping fields it does not know (a newer service)', async () => {
    answer = { status: 200, body: { sessions: [{ ...session, newField: 1 }], alsoNew: true } };
    const r = await new BrokerApi(url, 'token').request('GET', '/v1/sessions', sessionsResponse);
    assert.deepEqual(r, { sessions: [session] });
  });

  it('refuses an answer that does not match: upstream_error with the request and the first pointer, and nothing of the body', async () => {
    const cases: [unknown, RegExp][] = [
      [{ session, credentials: { ...good, Expiration: 'soon' } }, /^the broker service sent an unexpected answer to POST \/v1\/sessions \(at \/credentials\/Expiration: must be an RFC 3339 UTC time\)$/],
      [{ session, credentials: { ...good, SessionToken: undefined } }, /\(at \/credentials\/SessionToken: /],
      [{ session: { ...session, expiresAt: 7 } }, /\(at \/session\/expiresAt: /],
      [{ credentials: good }, /\(at \/session: /],
      [[SECRET], /^the broker service sent an unexpected answer to POST \/v1\/sessions \(Invalid input: expected object, received array\)$/],
    ];
    for (const [body, message] of cases) {
      answer = { status: 201, body };
      const e = await new BrokerApi(url, 'token').request('POST', '/v1/sessions', startSessionResponse, { template: 'deploy-lambda' }).catch((x: unknown) => x);
      assert.ok(e instanceof BrokerError, String(e));
      assert.equal(e.code, 'upstream_error');
      assert.match(e.message, message);
      assert.match(e.hint ?? '', /different versions/);
      assert.ok(!JSON.stringify({ m: e.message, h: e.hint, d: e.details }).includes(SECRET), 'nothing of the answer is echoed');
    }
  });

  it('takes error answers by the contract; an unknown code is an upstream error; a malformed error body is refused', async () => {
    answer = { status: 409, body: { code: 'conflict', message: 'a "deploy-lambda" task session is already active', hint: 'end it first', details: [{ path: '/template', message: 'x' }] } };
    const known = await new BrokerApi(url).request('POST', '/v1/sessions', startSessionResponse, {}).catch((x: unknown) => x);
    assert.ok(known instanceof BrokerError);
    assert.deepEqual(known.toJSON(), answer.body);

    answer = { status: 418, body: { code: 'teapot_overheated', message: 'a newer service says so' } };
    const unknown = await new BrokerApi(url).request('GET', '/v1/sessions', sessionsResponse).catch((x: unknown) => x);
    assert.ok(unknown instanceof BrokerError);
    assert.deepEqual([unknown.code, unknown.message], ['upstream_error', 'a newer service says so']);

    answer = { status: 500, body: { error: SECRET } };
    const malformed = await new BrokerApi(url).request('GET', '/v1/sessions', sessionsResponse).catch((x: unknown) => x);
    assert.ok(malformed instanceof BrokerError);
    assert.equal(malformed.code, 'upstream_error');
    assert.equal(malformed.message, 'the broker service sent an unexpected answer to GET /v1/sessions (HTTP 500) (at /code: Invalid input: expected string, received undefined)');
    assert.ok(!malformed.message.includes(SECRET));

    answer = { status: 502, body: '<html>bad gateway</html>' };
    const html = await new BrokerApi(url).request('GET', '/v1/sessions', sessionsResponse).catch((x: unknown) => x);
    assert.ok(html instanceof BrokerError);
    assert.deepEqual([html.code, html.message], ['upstream_error', 'the broker service answered 502 without JSON']);
  });
});

describe('the CLI checks what the daemon answers', () => {
  it('validates each op\'s result by its schema, and errors by the error contract', () => {
    assert.deepEqual(resultOf({ op: 'credentials', task: 'deploy-lambda' }, { ok: true, result: { ...good, Extra: 1 } }), good);
    const bad: [unknown, RegExp][] = [
      [{ ok: true, result: { ...good, Version: 2 } }, /^the broker daemon sent an unexpected answer to credentials \(at \/Version: /],
      [{ ok: true, result: [SECRET] }, /^the broker daemon sent an unexpected answer to credentials \(Invalid input: expected object, received array\)$/],
      [{ result: good }, /^the broker daemon sent an unexpected answer to credentials \(at \/ok: /],
      [{ ok: false, error: { message: SECRET } }, /^the broker daemon sent an unexpected answer to credentials \(at \/error\/code: /],
    ];
    for (const [response, message] of bad) {
      assert.throws(() => resultOf({ op: 'credentials', task: 'deploy-lambda' }, response), (e: unknown) => e instanceof BrokerError
        && e.code === 'upstream_error' && message.test(e.message) && !e.message.includes(SECRET) && /different versions/.test(e.hint ?? ''));
    }
    assert.throws(() => resultOf({ op: 'status' }, { ok: false, error: { code: 'not_logged_in', message: 'not logged in', hint: 'run: broker login' } }),
      (e: unknown) => e instanceof BrokerError && e.code === 'not_logged_in' && e.hint === 'run: broker login');
    assert.throws(() => resultOf({ op: 'status' }, { ok: false, error: { code: 'from_the_future', message: 'newer daemon' } }),
      (e: unknown) => e instanceof BrokerError && e.code === 'internal' && e.message === 'newer daemon');
    // A result shaped for another op is refused for this one.
    assert.throws(() => resultOf({ op: 'ping' }, { ok: true, result: good }), /unexpected answer to ping \(at \/pid: /);
  });
});
