import { pino, type Logger } from 'pino';

/**
 * Structured JSON logs on stderr. Nothing the broker logs should hold a secret in the first place;
 * the redaction list is a second line of defence for fields that must never appear.
 */
const REDACT = [
  '*.SecretAccessKey', '*.SessionToken', '*.secretAccessKey', '*.sessionToken',
  '*.refresh_token', '*.access_token', '*.id_token', '*.token', '*.client_token',
  '*.authorization', 'req.headers.authorization', '*.privateKey', '*.d',
];

export function createLogger(options: { level?: string; destination?: number } = {}): Logger {
  return pino(
    {
      level: options.level ?? process.env.BROKER_LOG_LEVEL ?? 'info',
      base: { service: 'broker' },
      redact: { paths: REDACT, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ fd: options.destination ?? 2, sync: true }),
  );
}

export type { Logger };
