/**
 * A store file read directly, for commands run on the service's host (`broker audit … --db FILE`):
 * the one door from outside the service to a backend's file, read-only. SQLite is the only backend
 * with a file today.
 */
export { openAuditSearchReadOnly } from './sqlite/audit-search.js';
