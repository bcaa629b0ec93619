// Types for roomcast-client.

/** The connection's state. */
export type State = "connecting" | "connected" | "disconnected" | "closed";

/** One stored event: its id (the resume token) and the published value. */
export interface RoomEvent<T = unknown> {
  id: string;
  /** The state key this event is the value of, for a keyed event. */
  key?: string;
  /** Read from history after a moderator edited it: `data` is the latest version. */
  edited?: boolean;
  /** Read from history after a moderator deleted it: no `data`. */
  deleted?: boolean;
  data: T;
}

/** A moderator's edit of an earlier event. */
export interface EditEvent<T = unknown> {
  /** The edit's own id (it is an event of the room). */
  id: string;
  /** The event edited. */
  target: string;
  /** Its new data (absent when the edit was itself deleted since). */
  data?: T;
  deleted?: boolean;
}

/** A moderator's deletion of an earlier event. */
export interface DeleteEvent {
  id: string;
  target: string;
}

/** A room's current values by state key. */
export type StateValues = Record<string, { id: string; data: unknown }>;

/** A page of history read backwards. */
export interface HistoryPage {
  /** Oldest first. */
  events: RoomEvent[];
  /** Older events are still kept: read on with `before` = `events[0].id`. */
  more: boolean;
}

/** Options of {@link connect}. Delays are in milliseconds. */
export interface ConnectOptions {
  /** A JWT sent as `?token=` (never put the API key in a URL). */
  token?: string;
  /** Called before connecting, after a token-expiry close, and shortly before the token expires (in-band refresh). */
  getToken?: () => Promise<string> | string;
  /** A WebSocket constructor, for Node versions without a global one (e.g. `ws`). */
  WebSocket?: unknown;
  /** First retry waits up to this long; each retry doubles the cap (default 500). */
  minDelay?: number;
  /** No retry waits longer (default 15000). */
  maxDelay?: number;
  /** After a 1012 close (node restarting), reconnect to the next URL within this (default 1000). */
  restartDelay?: number;
  /** Silence this long means a dead link (default 40000; the node beats every 15 s). */
  heartbeatTimeout?: number;
  /** A publish not acked in this time rejects with code "timeout" (default 10000). */
  publishTimeout?: number;
  /** Publishes that may wait for a connection (default 100). */
  maxQueued?: number;
  /** Refresh the token in band before it expires (default true; needs `getToken`). */
  autoRefresh?: boolean;
  /** Refresh the token this long before it expires (default 30000). */
  refreshBefore?: number;
  /** A `fetch` for {@link Subscription.history} (default: the global one). */
  fetch?: unknown;
}

/** Options of {@link Client.subscribe}. */
export interface SubscribeOptions {
  /** Resume after this event id (`"0"`: from the oldest kept). Absent: from now on. */
  lastEventId?: string;
  /** Also receive the room's audience count. */
  audience?: boolean;
  /** Start with the room's last N kept events (1-1000), then live. Ignored beside `lastEventId`. */
  rewind?: number;
  /** Start with the room's current values (`sub.state`, the `state` event). */
  state?: boolean;
  /** Also receive who is in the room (`sub.members`, the `presence` event). */
  presence?: boolean;
}

/** What the `presence` event says: the members now, and what changed. */
export interface PresenceEvent {
  /** Every listed member: sub -> the `info` of its token (`{}` without one). */
  members: Map<string, Record<string, unknown>>;
  /** Members, all of them (the list stops at the node's cap). */
  count: number;
  /** Whether `members` lists fewer than `count`. */
  truncated: boolean;
  /** Members that joined (or whose info changed) with this frame. */
  joined: { sub: string; info: Record<string, unknown> }[];
  /** Subjects that left with this frame. */
  left: string[];
  /** A full snapshot (the first, and after each reconnect), not a diff. */
  snapshot: boolean;
}

/** Options of {@link Client.publish}. */
export interface PublishOptions {
  /** Names the publish: a retry with the same key stores nothing twice. Default: a random key per publish. */
  idempotencyKey?: string;
  /** Overrides `publishTimeout` for this publish. */
  timeout?: number;
  /** Makes the event this state key's current value in the room. */
  key?: string;
}

/**
 * An error the node answered with, or one of the client's own codes ("timeout", "closed", "queue_full",
 * "token_expired", "too_slow", "disconnected": a moderator disconnected this user; the client does not reconnect).
 * A subscription whose user was banned from its room ends with an error coded "banned".
 */
export class RoomcastError extends Error {
  readonly code: string;
  constructor(code: string, message?: string);
}

/** Removes the listener it was returned for. */
export type Off = () => void;

interface SubscriptionEvents {
  event: RoomEvent;
  /** A moderator edited `target`: show its new data in its place. */
  edit: EditEvent;
  /** A moderator deleted `target`: remove it. */
  delete: DeleteEvent;
  gap: { after: string };
  subscribed: { resumed: boolean };
  error: RoomcastError;
  audience: { count: number };
  /** One window's reactions to the room, summed over every node. */
  reactions: { counts: Record<string, number> };
  /** The values changed: a state frame (with its position) or a newer keyed event. */
  state: { values: StateValues; lastEventId?: string };
  /** Who is in the room changed (at most once a second), or a snapshot arrived. */
  presence: PresenceEvent;
}

/** One followed room. */
export interface Subscription {
  readonly room: string;
  /** The id of the last event delivered: where a resume continues. */
  readonly lastEventId: string | undefined;
  readonly active: boolean;
  /** The room's current values by key (with `state: true`). */
  readonly state: StateValues;
  /** Who is in the room, sub -> info (with `presence: true`). */
  readonly members: Map<string, Record<string, unknown>>;
  /** Members, all of them (with `presence: true`). */
  readonly memberCount: number;
  /** Whether `members` lists fewer than `memberCount`. */
  readonly membersTruncated: boolean;
  /** Reads history backwards over HTTP: before `before` (default the newest), `limit` events (default 50). */
  history(options?: { before?: string; limit?: number }): Promise<HistoryPage>;
  on<K extends keyof SubscriptionEvents>(type: K, fn: (value: SubscriptionEvents[K]) => void): Off;
  once<K extends keyof SubscriptionEvents>(type: K, fn: (value: SubscriptionEvents[K]) => void): Off;
  off<K extends keyof SubscriptionEvents>(type: K, fn: (value: SubscriptionEvents[K]) => void): void;
  /** Sends a reaction (counted, not stored). */
  react(key: string): void;
  unsubscribe(): void;
}

interface ClientEvents {
  state: State;
  error: unknown;
  refreshed: { expiresIn?: number };
}

/** A self-healing connection to one or more roomcast nodes. */
export interface Client {
  readonly state: State;
  /** Why the last connection ended (`1013`: the node found us too slow), or null while connected. */
  readonly lastClose: { code: number; reason: string } | null;
  on<K extends keyof ClientEvents>(type: K, fn: (value: ClientEvents[K]) => void): Off;
  once<K extends keyof ClientEvents>(type: K, fn: (value: ClientEvents[K]) => void): Off;
  off<K extends keyof ClientEvents>(type: K, fn: (value: ClientEvents[K]) => void): void;
  subscribe(room: string, options?: SubscribeOptions): Subscription;
  /** Resolves with the stored event's id on ack; rejects with a {@link RoomcastError}. */
  publish(room: string, data: unknown, options?: PublishOptions): Promise<string>;
  /** Fetches a token with `getToken()` and hands it to the node without reconnecting. */
  refreshToken(): Promise<void>;
  close(): void;
}

/** Reconnect and publish defaults. */
export const DEFAULTS: Required<Omit<ConnectOptions, "token" | "getToken" | "WebSocket">>;

/** The delay before reconnect attempt `attempt`: uniform in [0, min(maxDelay, minDelay * 2^attempt)). */
export function backoff(attempt: number, minDelay?: number, maxDelay?: number): number;

/** Connects to one URL or rotates across several. */
export function connect(urls: string | string[], options?: ConnectOptions): Client;
