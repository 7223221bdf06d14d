/**
 * `npm run demo`: the main job on an embedded default, with nothing but local peers. It starts moto
 * (STS/IAM), a local OpenID Provider (oidc-provider) and the broker service on SQLite, then walks
 * through what a developer does: device-flow login, start a deploy-lambda task (confirmed with a
 * fresh IdP login from the terminal, which the demo approves as it approves the login), write the
 * AWS CLI profile, and let the real AWS CLI get the task's identity through credential_process.
 * Then an agent inside `broker exec` tries to start another task and gets a pending request, no
 * credentials. Last, an admin (carol) lists alice's sessions and ends hers: alice's `aws` fails with
 * the admin's reason, and the role's deny document names the session. The audit log shows it all.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startBrokerService } from '../test/peers/broker-service.js';
import { broker, deviceLogin, makeTestHome, run } from '../test/peers/cli.js';
import { startIdp } from '../test/peers/idp.js';
import { startKeyring } from '../test/peers/keyring.js';
import { createRole, startMoto } from '../test/peers/moto.js';
import { BROKER_BIN, VENV_BIN } from '../test/peers/paths.js';

const say = (s: string) => process.stdout.write(`\n\x1b[1m${s}\x1b[0m\n`);
const show = (r: { stdout: string; stderr: string }) => process.stdout.write(`${r.stderr}${r.stdout}`);

async function main(): Promise<void> {
  say('Starting local peers: moto (STS/IAM), a local OpenID Provider, the broker service (SQLite)');
  const moto = await startMoto();
  const idp = await startIdp();
  await createRole(moto.url, 'broker-deploy-lambda', JSON.stringify({
    Version: '2012-10-17',
    Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::123456789012:root' }, Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'] }],
  }), 43200);
  // The shipped templates with their confirm rules: deploy-lambda and s3-artifacts need the developer's confirmation.
  // carol is an admin by her IdP group.
  const svc = await startBrokerService({ issuer: idp.issuer, stsEndpoint: moto.url, iamEndpoint: moto.url, extra: { confirm: { default: 'self' }, admins: { groups: ['admins'] } } });
  // A throwaway developer machine: its own HOME, ~/.aws/config and daemon socket. Its daemon checks
  // the sessions it holds every 5 s (the default, and the most, is 60 s), so the demo need not wait.
  const machine = makeTestHome('broker-demo-home-');
  const { home } = machine;
  const env: Record<string, string> = { ...machine.env, BROKER_STATUS_CHECK_SECONDS: '5' };
  // The admin's machine: another HOME, with its own keychain.
  const adminKeyring = await startKeyring();
  const adminMachine = makeTestHome('broker-demo-admin-');
  const admin = { ...adminMachine.env, ...adminKeyring.env };
  const awsCli = (args: string[], e: Record<string, string>) => run(join(VENV_BIN, 'aws'), [...args, '--endpoint-url', moto.url], { env: { ...process.env, ...e } });
  let failed = false;
  try {
    process.stdout.write(`  moto ${moto.url}   IdP ${idp.issuer}   broker ${svc.url}   HOME ${home}\n`);

    say(`$ broker login --server ${svc.url} --device      (device flow; the demo approves it as alice@example.com)`);
    const login = await deviceLogin(svc.url, env, idp, 'alice@example.com');
    show(login);
    if (login.code !== 0) throw new Error('login failed');

    say('$ broker task deploy-lambda --param function=checkout-api --reason "fix timeout" --agent claude-code --confirm-here');
    process.stdout.write('  (a task start needs a human: a fresh login at the IdP; the demo approves the code as alice@example.com)\n');
    let approval: Promise<void> | undefined;
    const task = await broker(['task', 'deploy-lambda', '--param', 'function=checkout-api', '--reason', 'fix timeout', '--agent', 'claude-code', '--confirm-here'], env, {
      onStderr: (chunk) => {
        const code = /enter code: ([A-Z0-9-]+)/.exec(chunk)?.[1];
        if (code && !approval) approval = idp.approveDevice(code, 'alice@example.com');
      },
    });
    await approval;
    show(task);
    if (task.code !== 0) throw new Error('task failed');

    say('$ broker configure aws');
    const conf = await broker(['configure', 'aws'], env);
    show(conf);
    process.stdout.write(`--- ${env.AWS_CONFIG_FILE}\n${readFileSync(env.AWS_CONFIG_FILE!, 'utf8')}---\n`);

    say(`$ aws sts get-caller-identity --profile broker-deploy-lambda --endpoint-url ${moto.url}`);
    const aws = await run(join(VENV_BIN, 'aws'), ['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda', '--endpoint-url', moto.url],
      { env: { ...process.env, ...env } });
    show(aws);
    if (aws.code !== 0) throw new Error('aws CLI failed');

    say('$ broker exec deploy-lambda -- aws sts get-caller-identity --query Arn   (an agent run: AWS_PROFILE set, static keys removed)');
    show(await broker(['exec', 'deploy-lambda', '--', join(VENV_BIN, 'aws'), 'sts', 'get-caller-identity', '--query', 'Arn', '--endpoint-url', moto.url],
      { ...env, AWS_ACCESS_KEY_ID: 'AKIASTANDINGKEY', AWS_SECRET_ACCESS_KEY: 'a-standing-key-the-agent-never-sees' }));

    say('$ broker exec deploy-lambda -- sh agent.sh   (an injected agent tries to widen its task)');
    const agent = join(home, 'agent.sh');
    writeFileSync(agent, [
      `broker() { "${process.execPath}" "${BROKER_BIN}" "$@"; }`,
      'echo "+ broker task s3-artifacts --param prefix=all --no-wait"',
      'broker task s3-artifacts --param prefix=all --no-wait >/dev/null 2>&1; echo "  exit $? (13: a start request waits for the human; no credentials)"',
    ].join('\n'));
    show(await broker(['exec', 'deploy-lambda', '--agent', 'claude-code', '--', 'sh', agent], env));

    say('$ broker status');
    show(await broker(['status'], env));
    say('The admin: $ broker login (as carol@example.com, in the admins group)');
    const adminLogin = await deviceLogin(svc.url, admin, idp, 'carol@example.com');
    if (adminLogin.code !== 0) throw new Error(`admin login failed: ${adminLogin.stderr}`);
    say('$ broker admin sessions --developer alice@example.com --active');
    const listed = await broker(['admin', 'sessions', '--developer', 'alice@example.com', '--active', '--json'], admin);
    show(await broker(['admin', 'sessions', '--developer', 'alice@example.com', '--active'], admin));
    const sessionId = (JSON.parse(listed.stdout) as { sessions: { id: string }[] }).sessions[0]?.id;
    if (!sessionId) throw new Error(`no session listed: ${listed.stderr}`);
    say(`$ broker admin end ${sessionId} --reason "agent looping on prod"`);
    show(await broker(['admin', 'end', sessionId, '--reason', 'agent looping on prod'], admin));
    say('alice: $ aws sts get-caller-identity --profile broker-deploy-lambda   (until her daemon learns of the end)');
    const t0 = Date.now();
    let refused = await awsCli(['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda'], env);
    while (refused.code === 0 && Date.now() - t0 < 70_000) {
      await new Promise((r) => setTimeout(r, 500));
      refused = await awsCli(['sts', 'get-caller-identity', '--profile', 'broker-deploy-lambda'], env);
    }
    show(refused);
    process.stdout.write(`  (refused ${((Date.now() - t0) / 1000).toFixed(1)} s after the admin's end)\n`);
    if (refused.code === 0) throw new Error('aws still works after the admin ended the session');
    say('$ aws iam get-role-policy --role-name broker-deploy-lambda --policy-name broker-revoked-sessions   (the keys already issued are denied by the role)');
    // Read with moto's own test keys, as the account's IAM admin would with theirs.
    const iamReader: Record<string, string> = { ...admin, AWS_ACCESS_KEY_ID: 'testing', AWS_SECRET_ACCESS_KEY: 'testing', AWS_DEFAULT_REGION: 'us-east-1' };
    delete iamReader.AWS_PROFILE;
    delete iamReader.AWS_SESSION_TOKEN;
    let deny = await awsCli(['iam', 'get-role-policy', '--role-name', 'broker-deploy-lambda', '--policy-name', 'broker-revoked-sessions', '--query', 'PolicyDocument'], iamReader);
    for (let i = 0; deny.code !== 0 && i < 20; i++) {
      await new Promise((r) => setTimeout(r, 500));
      deny = await awsCli(['iam', 'get-role-policy', '--role-name', 'broker-deploy-lambda', '--policy-name', 'broker-revoked-sessions', '--query', 'PolicyDocument'], iamReader);
    }
    show(deny);
    if (!deny.stdout.includes(sessionId)) throw new Error('the deny document does not name the session');

    say('The audit log (SQLite, append-only, hash-chained):');
    const db = new (await import('node:sqlite')).DatabaseSync(svc.dbPath, { readOnly: true });
    for (const r of db.prepare('SELECT seq, event, decision, developer, template, session_id, access_key_id, detail FROM audit ORDER BY seq').all()) {
      // Of the detail, what names a start request (its id, the agent, who decided) and the admin who acted.
      const d = JSON.parse(String(r.detail ?? '{}')) as Record<string, unknown>;
      const req = ['request', 'agent', 'by', 'admin'].filter((k) => typeof d[k] === 'string').map((k) => `${k}=${String(d[k])}`).join(' ');
      const cols = [r.seq, r.event, r.decision, r.developer, r.template, r.session_id, r.access_key_id].map((v) => v ?? '-');
      process.stdout.write(`  ${cols.join('  ')}${req ? `  ${req}` : ''}\n`);
    }
    db.close();
    say('Demo finished: the task started only after a fresh IdP login, the agent never saw a standing key nor got another task, an admin stopped the task at once, and every decision is in the audit log.');
  } catch (e) {
    failed = true;
    process.stderr.write(`demo failed: ${(e as Error).message}\n--- service log ---\n${svc.log()}\n`);
  } finally {
    await machine.stop();
    await adminMachine.stop();
    await adminKeyring.stop();
    await svc.stop();
    await idp.stop();
    await moto.stop();
    rmSync(home, { recursive: true, force: true });
    rmSync(adminMachine.home, { recursive: true, force: true });
  }
  process.exitCode = failed ? 1 : 0;
}

await main();
