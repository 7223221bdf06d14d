export async function main(_args: string[]): Promise<void> {
  process.stderr.write('broker: credential-process not implemented yet\n');
  process.exitCode = 1;
}
