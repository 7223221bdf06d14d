import type { Command } from 'commander';

export function register(_program: Command): void {
  // TODO: implemented by its owner
}
