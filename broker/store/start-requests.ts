/**
 * Start requests (broker/requests/): a task start waiting for humans, and the decisions taken on
 * it. Every change is written with its audit record in one transaction, and conditionally on the
 * request's status (store.ts contract), so two deciders racing cannot both move it.
 */
import type { AuditEvent } from './audit-event.js';

export type StartRequestStatus = 'pending' | 'confirmed' | 'started' | 'denied' | 'expired' | 'cancelled';
export type DecisionKind = 'confirm' | 'approve' | 'deny';

export interface RequestDecision {
  /** The deciding person's identity (the identity claim of their ID token). */
  by: string;
  decision: DecisionKind;
  reason: string;
  /** The IdP login the decision rests on (`auth_time`, ms). */
  authTime: number;
  at: number;
  via: 'page' | 'device';
}

export interface StartRequest {
  id: string;
  requester: string;
  template: string;
  params: Record<string, string>;
  reason: string;
  agent: string;
  ttlSeconds: number | null;
  breakGlass: boolean;
  /** The confirm rule as it was when the request was made (a template edit does not move it). */
  mode: 'self' | 'approvers';
  maxAgeSeconds: number;
  approvals: number;
  approvers: { groups: string[]; emails: string[] };
  /** SHA-256 of canonical JSON {template, params, ttlSeconds}: what the decisions cover. */
  digest: string;
  status: StartRequestStatus;
  createdAt: number;
  expiresAt: number;
  sessionId: string | null;
  decisions: RequestDecision[];
  /** The template version the request was made for (templates/catalog.ts): it starts under that one only. Null for requests made before versions. */
  templateVersion: string | null;
}

export type NewStartRequest = Omit<StartRequest, 'status' | 'sessionId' | 'decisions' | 'templateVersion'> & { templateVersion?: string | null | undefined };

export interface StartRequestRepository {
  /** Creates a pending request and appends `e`, atomically. */
  create(r: NewStartRequest, e: AuditEvent): Promise<void>;
  get(id: string): Promise<StartRequest | undefined>;
  /** A pending request of this requester with this digest, not expired. */
  findPending(requester: string, digest: string): Promise<StartRequest | undefined>;
  /** Requests of one requester, newest first. */
  ofRequester(requester: string, limit?: number): Promise<StartRequest[]>;
  /** Pending requests (not expired) of everyone, oldest first: the domain filters who may approve. */
  pending(limit?: number): Promise<StartRequest[]>;
  /** How many requests are pending and not expired (a count: read at every metrics scrape). */
  countPending(): Promise<number>;
  /**
   * Records a decision and appends `e`, atomically, if the request is still `pending` and not past
   * `expiresAt` at `now`, and moves it to `status` when given; false if it was not.
   */
  decide(id: string, d: RequestDecision, status: StartRequestStatus | undefined, now: number, e: AuditEvent): Promise<boolean>;
  /**
   * Moves a request from one of `from` to `to` (with `sessionId` when started) and appends `e` when
   * given (a start is audited by its own `session.start`); false if it was in none.
   */
  transition(id: string, from: StartRequestStatus[], to: StartRequestStatus, e: AuditEvent | undefined, sessionId?: string): Promise<boolean>;
  /** Pending or confirmed requests past their `expiresAt` (the sweeper expires them). */
  expiredOpen(now: number, limit?: number): Promise<StartRequest[]>;
}
