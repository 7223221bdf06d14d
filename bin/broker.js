#!/usr/bin/env node
// Entry point. credential_process is called by the AWS CLI on every command, so it gets a path that
// loads only its own small module (no commander, zod, YAML or AWS SDK).
if (process.argv[2] === 'credential-process') {
  await import('../dist/cli/credential-process.js').then((m) => m.main(process.argv.slice(3)));
} else {
  await import('../dist/cli/main.js').then((m) => m.main(process.argv));
}
