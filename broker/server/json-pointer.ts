/** RFC 6901 JSON pointer for a zod issue path, so a 400 names exactly where the body was wrong. */
export function jsonPointer(path: readonly PropertyKey[]): string {
  return path.map((p) => `/${String(p).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('') || '/';
}
