import { Hono } from 'hono';
import type { ServiceMetrics } from '../metrics/service-metrics.js';

/**
 * The metrics listener's whole app (`metrics.listen` in the service config): `GET /metrics` and
 * nothing else, without authentication. It serves counts, never a secret or an identity
 * (metrics/service-metrics.ts), and listens on loopback unless configured otherwise, for a
 * Prometheus on the host or a sidecar; none of the API is reachable through it.
 */
export function createMetricsApp(metrics: ServiceMetrics): Hono {
  const app = new Hono();
  app.get('/metrics', async (c) => {
    const { contentType, body } = await metrics.exposition();
    c.header('cache-control', 'no-store');
    return c.body(body, 200, { 'content-type': contentType });
  });
  app.notFound((c) => c.text('only /metrics is served here\n', 404));
  app.onError((_err, c) => c.text('metrics could not be collected\n', 500));
  return app;
}
