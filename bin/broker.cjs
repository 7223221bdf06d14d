#!/usr/bin/env node
'use strict';
// Entry point. The AWS CLI runs credential_process for every command, so `credential-process` is
// answered by a few small CommonJS modules (no ESM linking, no commander, zod, YAML or AWS SDK);
// every other command loads the full CLI. bench/credential-process measures the difference.
if (process.argv[2] === 'credential-process') {
  require('../dist/cli/credential-process.cjs').main(process.argv.slice(3));
} else {
  import('../dist/cli/main.js').then((m) => m.main(process.argv));
}
