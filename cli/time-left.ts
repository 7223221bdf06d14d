import { formatDuration } from '../broker/duration.js';

export function timeLeft(expiresAt: string, now = Date.now()): string {
  return formatDuration(Math.max(0, Math.floor((Date.parse(expiresAt) - now) / 1000)));
}
