/** Task templates the tests write into a service's policiesDir while it runs (reloads, limits). */

/** A small AWS template on the test role; `action` is what its session policy allows. */
export function probeTemplate(name: string, o: { action?: string; groups?: string[]; limits?: Record<string, number>; comment?: string; confirm?: 'none' | 'self' } = {}): string {
  return [
    `# ${o.comment ?? 'a template written by the test'}`,
    `name: ${name}`,
    'description: A template the test writes while the service runs',
    `allowed: { groups: [${(o.groups ?? ['developers', 'contractors']).join(', ')}] }`,
    'session: { maxDuration: 1h }',
    `confirm: { mode: ${o.confirm ?? 'none'} }`,
    ...(o.limits ? ['limits:', ...Object.entries(o.limits).map(([k, v]) => `  ${k}: ${v}`)] : []),
    'aws:',
    '  roleArn: arn:aws:iam::123456789012:role/broker-reload-probe',
    '  region: eu-west-1',
    '  policy:',
    "    Version: '2012-10-17'",
    '    Statement:',
    '      - Effect: Allow',
    `        Action: ${o.action ?? 'logs:DescribeLogGroups'}`,
    '        Resource: arn:aws:logs:eu-west-1:123456789012:log-group:*',
    '',
  ].join('\n');
}
