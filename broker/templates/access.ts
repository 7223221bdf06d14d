import type { TaskTemplate } from './schema.js';

/**
 * May this person start this task? Yes if one of their IdP groups is among the template's groups
 * (exact names, as the IdP sends them), or their email is among its emails (case-insensitive, as
 * IdPs treat them). The one rule used by the service and by `broker policy explain`.
 */
export function isAllowed(t: TaskTemplate, who: { email: string; groups: readonly string[] }): boolean {
  const email = who.email.toLowerCase();
  return (email !== '' && t.allowed.emails.includes(email)) || t.allowed.groups.some((g) => who.groups.includes(g));
}
