import type { Command } from 'commander';

export function register(_policy: Command): void {
  // TODO: implemented by its owner
}
