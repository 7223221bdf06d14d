import type { Command } from 'commander';
import * as sessions from './admin-sessions.js';
import * as session from './admin-session.js';
import * as end from './admin-end.js';
import * as offboard from './admin-offboard.js';
import * as freeze from './admin-freeze.js';
import * as unfreeze from './admin-unfreeze.js';
import * as freezes from './admin-freezes.js';
import * as reload from './admin-reload.js';
import * as status from './admin-status.js';

export function register(program: Command): void {
  const admin = program
    .command('admin')
    .description('the control plane, for the service\'s admins: see every task session, end them, offboard a developer, freeze templates, reload them, see what needs attention');
  for (const m of [sessions, session, end, offboard, freeze, unfreeze, freezes, reload, status]) m.register(admin);
}
