// roomcast-client: the first-party client for roomcast nodes.
//
// One ES module, no dependencies, for browsers and Node. It reconnects by
// itself (exponential backoff with full jitter, rotating across the given
// URLs), resumes every subscription from the last event it delivered, and
// hands the application each event once and in order across reconnects.
// A hole the server can no longer fill is surfaced as a `gap`, never hidden.

/** Compares two event IDs ("ms-seq", or "0") numerically without BigInt. */
function cmp(a, b) {
  const [am, as = "0"] = a.split("-");
  const [bm, bs = "0"] = b.split("-");
  return cmpDigits(am, bm) || cmpDigits(as, bs);
}
function cmpDigits(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** A small event emitter: `on` returns a function that removes the listener. */
class Emitter {
  constructor() {
    this._l = new Map();
  }
  on(type, fn) {
    let set = this._l.get(type);
    if (!set) this._l.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) {
    this._l.get(type)?.delete(fn);
  }
  once(type, fn) {
    const off = this.on(type, (v) => {
      off();
      fn(v);
    });
    return off;
  }
  _emit(type, value) {
    for (const fn of [...(this._l.get(type) || [])]) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/** An error the node answered with (`code` is the protocol's error code). */
export class RoomcastError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "RoomcastError";
    this.code = code;
  }
}

/** Reconnect defaults (milliseconds). */
export const DEFAULTS = {
  minDelay: 500, // the first retry waits 0-500 ms
  maxDelay: 15000, // no retry waits longer than this
  restartDelay: 1000, // after a 1012 (node restarting): 0-1000 ms, to the next URL
  heartbeatTimeout: 40000, // silence this long means the link is dead (node beats every 15 s)
  publishTimeout: 10000, // a publish not acked in this time rejects with "timeout"
  maxQueued: 100, // publishes waiting for a connection; more reject with "queue_full"
  refreshBefore: 30000, // refresh a JWT this long before it expires (or at 90% of its life)
};

/**
 * The delay before reconnect attempt `attempt` (0-based): full jitter,
 * uniformly random in [0, min(maxDelay, minDelay * 2^attempt)).
 */
export function backoff(attempt, minDelay = DEFAULTS.minDelay, maxDelay = DEFAULTS.maxDelay) {
  return Math.random() * Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
}

/** Seconds since the epoch at which a JWT expires, or undefined. */
function jwtExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).exp;
  } catch {
    return undefined;
  }
}

function randomKey() {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

/**
 * One room followed by a client; emits `event`, `edit`, `delete`, `gap`,
 * `subscribed`, `state`, `error`, `audience`, `reactions`, `presence`.
 */
class Subscription extends Emitter {
  constructor(client, room, options) {
    super();
    this.client = client;
    this.room = room;
    this.audience = !!options.audience;
    this.rewind = options.rewind;
    this.wantsState = !!options.state;
    this.wantsPresence = !!options.presence;
    /** Who is in the room (with `presence: true`): sub -> info. */
    this.members = new Map();
    /** Members, all of them (`members` lists at most the node's cap). */
    this.memberCount = 0;
    /** Whether `members` lists fewer than `memberCount`. */
    this.membersTruncated = false;
    /** The room's current values by key, `{ id, data }` each (with `state: true`). */
    this.state = {};
    /** The id of the last event delivered (the resume token). */
    this.lastEventId = options.lastEventId;
    // Events at or below this id were delivered already; null after a gap
    // (the node's position may then lie below a token from the future).
    this._floor = options.lastEventId ?? null;
    this.active = true;
  }

  _frame() {
    const f = { type: "subscribe", room: this.room };
    // A rewind applies to the first subscribe only: after it, the
    // subscription resumes from what it delivered.
    if (this.lastEventId !== undefined) f.last_event_id = this.lastEventId;
    else if (this.rewind) f.rewind = this.rewind;
    if (this.audience) f.audience = true;
    if (this.wantsState) f.state = true;
    if (this.wantsPresence) f.presence = true;
    return f;
  }

  _events(events) {
    for (const e of events) {
      if (!this.active) return;
      if (this._floor !== null && cmp(e.id, this._floor) <= 0) continue;
      this._floor = this.lastEventId = e.id;
      // A moderator's operation: an event of the room, told apart.
      if (e.op === "edit") {
        if (!e.deleted) this._moderated(e.target, { data: e.data });
        this._emit("edit", { id: e.id, target: e.target, data: e.data, deleted: e.deleted });
        continue;
      }
      if (e.op === "delete") {
        this._moderated(e.target, null);
        this._emit("delete", { id: e.id, target: e.target });
        continue;
      }
      if (e.key !== undefined) this._value(e.key, e.id, e.data);
      this._emit("event", e);
    }
  }

  /** A state value that was an operation's target follows it. */
  _moderated(target, edit) {
    for (const [key, value] of Object.entries(this.state)) {
      if (value.id !== target) continue;
      const values = { ...this.state };
      if (edit) values[key] = { id: target, data: edit.data };
      else delete values[key];
      this.state = values;
      this._emit("state", { values: this.state });
    }
  }

  /** A keyed event newer than the value held becomes the key's value. */
  _value(key, id, data) {
    const held = this.state[key];
    if (!held || cmp(id, held.id) > 0) this._set(key, id, data);
  }

  _set(key, id, data) {
    this.state = { ...this.state, [key]: { id, data } };
    this._emit("state", { values: this.state });
  }

  /** A state frame replaces every value (values from before a gap may be gone). */
  _state(frame) {
    this.state = { ...frame.values };
    this._emit("state", { values: this.state, lastEventId: frame.last_event_id });
  }

  /**
   * Reads the room's history backwards over HTTP: up to `limit` events
   * just before `before` (default: the newest), oldest first, and whether
   * older ones are kept (`more`).
   */
  async history({ before, limit = 50 } = {}) {
    return this.client._history(this.room, before, limit);
  }

  // A snapshot replaces the members (first, and after every reconnect); a
  // diff applies on top of it.
  _presence(frame) {
    const joined = frame.type === "presence" ? frame.members : frame.joined;
    const left = frame.type === "presence" ? [] : frame.left;
    if (frame.type === "presence") this.members = new Map();
    for (const m of joined) this.members.set(m.sub, m.info);
    for (const s of left) this.members.delete(s);
    this.memberCount = frame.count;
    this.membersTruncated = !!frame.members_truncated;
    this._emit("presence", {
      members: this.members,
      count: frame.count,
      truncated: this.membersTruncated,
      joined,
      left,
      snapshot: frame.type === "presence",
    });
  }

  _subscribed(frame) {
    // Joined live: remember where, so a drop before the first event still
    // resumes from here and misses nothing.
    if (this.lastEventId === undefined && frame.last_event_id) {
      this.lastEventId = this._floor = frame.last_event_id;
    }
    this._emit("subscribed", { resumed: frame.resumed });
  }

  _gap(after) {
    this._floor = null;
    this._emit("gap", { after });
  }

  /** Stops following the room. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.client._unsubscribe(this);
  }

  /** Sends a reaction (counted by the node, not stored). */
  react(key) {
    this.client._send({ type: "react", room: this.room, key });
  }
}

/** A connection to roomcast nodes; emits `state`, `error`, `refreshed`. */
class Client extends Emitter {
  constructor(urls, options) {
    super();
    this.urls = Array.isArray(urls) ? [...urls] : [urls];
    if (!this.urls.length) throw new TypeError("connect() needs at least one URL");
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError("no WebSocket here: pass options.WebSocket (e.g. the `ws` package)");
    this.token = this.options.token;
    /** "connecting" | "connected" | "disconnected" | "closed" */
    this.state = "disconnected";
    /** Why the last connection ended: `{ code, reason }`, or null. */
    this.lastClose = null;
    this._slow = 0; // 1013 closes in a row with no event received between
    this.subs = new Map();
    this._leaving = new Set(); // rooms whose `unsubscribed` is still to come
    this._pending = new Map(); // ref -> publish awaiting its ack
    this._queue = []; // publishes waiting for a connection
    this._ref = 0;
    this._url = -1;
    this._attempt = 0;
    this._ws = null;
    this._timers = {};
    const g = globalThis;
    if (g.addEventListener && g.navigator && "onLine" in g.navigator) {
      this._offline = () => this._drop();
      this._online = () => this.state === "disconnected" && this._timers.retry && this._open();
      g.addEventListener("offline", this._offline);
      g.addEventListener("online", this._online);
    }
    this._open();
  }

  _set(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  _clear(name) {
    clearTimeout(this._timers[name]);
    this._timers[name] = undefined;
  }

  async _open() {
    this._clear("retry");
    if (this.state === "closed") return;
    this._set("connecting");
    this._url = (this._url + 1) % this.urls.length;
    let url = this.urls[this._url];
    if (this.options.getToken && (this._needToken || this.token === undefined)) {
      try {
        this.token = await this.options.getToken();
        this._needToken = false;
      } catch (e) {
        this._emit("error", e);
        return this._retry(backoff(this._attempt++, this.options.minDelay, this.options.maxDelay));
      }
      if (this.state !== "connecting") return;
    }
    if (this.token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (e) {
      this._emit("error", e);
      return this._retry(backoff(this._attempt++, this.options.minDelay, this.options.maxDelay));
    }
    this._ws = ws;
    this._alive(); // also bounds how long the handshake may take
    ws.onopen = () => {
      this._attempt = 0;
      this.lastClose = null;
      this._leaving.clear();
      this._set("connected");
      this._alive();
      this._scheduleRefresh();
      for (const sub of this.subs.values()) this._send(sub._frame());
      for (const p of this._pending.values()) p.size = this._send(p.frame);
      for (const p of this._queue.splice(0)) this._transmit(p);
    };
    ws.onmessage = (m) => this._message(m.data);
    ws.onclose = (e) => this._closed(e.code, e.reason);
    ws.onerror = () => {};
  }

  _retry(delay) {
    this._set("disconnected");
    this._clear("retry");
    this._timers.retry = setTimeout(() => this._open(), delay);
  }

  /** The socket ended (or is given up on): decide how to come back. */
  _closed(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    this._ws = null;
    this._clear("alive");
    this._clear("refresh");
    if (this.state === "closed") return;
    const o = this.options;
    this.lastClose = { code, reason: reason || "" };
    if (code === 1012) return this._retry(Math.random() * o.restartDelay);
    // Too slow: the node gave up writing to us. Coming straight back is
    // right when we got events meanwhile (we resume further on), but a
    // close before any event means backing off, longer each time.
    if (code === 1013) {
      this._emit("error", new RoomcastError("too_slow", reason || "the node closed the connection as too slow"));
      return this._retry(this._slow++ === 0 ? backoff(0, o.minDelay, o.maxDelay) : backoff(this._slow, o.minDelay, o.maxDelay) + o.minDelay);
    }
    // A moderator disconnected this user: coming back is not wanted.
    if (code === 4403) {
      this._emit("error", new RoomcastError("disconnected", reason || "disconnected by a moderator"));
      return this.close();
    }
    if (code === 1009) this._rejectLargest();
    if (code === 1008 && /token/i.test(reason || "")) {
      if (!o.getToken) {
        this._emit("error", new RoomcastError("token_expired", reason));
        return this.close();
      }
      this._needToken = true;
    }
    this._retry(backoff(this._attempt++, o.minDelay, o.maxDelay));
  }

  /** The node refused a message as too big: the largest unacked publish is
   * the one, and sending it again would only repeat the close. */
  _rejectLargest() {
    let largest;
    for (const p of this._pending.values()) if (!largest || p.size > largest.size) largest = p;
    if (largest) this._settle(largest.frame.ref, new RoomcastError("too_large", "the node refused this publish as too big"));
  }

  /** Gives up on the current socket now (dead link, offline). */
  _drop() {
    const ws = this._ws;
    if (!ws) return;
    try {
      ws.close();
    } catch {}
    this._closed(1006, "");
  }

  /** Any frame proves the link alive; silence past the timeout ends it. */
  _alive() {
    this._clear("alive");
    this._timers.alive = setTimeout(() => this._drop(), this.options.heartbeatTimeout);
  }

  _scheduleRefresh() {
    const exp = this.token && this.options.getToken && this.options.autoRefresh !== false && jwtExpiry(this.token);
    if (!exp) return;
    const left = exp * 1000 - Date.now();
    const before = this.options.refreshBefore;
    const at = left > 2 * before ? left - before : Math.max(0, left * 0.75);
    this._clear("refresh");
    this._timers.refresh = setTimeout(() => this.refreshToken().catch((e) => this._emit("error", e)), at);
  }

  /** Fetches a fresh token with `getToken()` and hands it to the node in band. */
  async refreshToken() {
    if (!this.options.getToken) throw new RoomcastError("no_get_token", "refreshToken() needs options.getToken");
    const token = await this.options.getToken();
    this.token = token;
    this._send({ type: "refresh", token });
  }

  _message(raw) {
    this._alive();
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      return this._emit("error", new RoomcastError("bad_frame", "the node sent a frame that is not JSON"));
    }
    const sub = f.room !== undefined ? this.subs.get(f.room) : undefined;
    switch (f.type) {
      case "events":
        this._slow = 0;
        return sub?._events(f.events);
      case "gap":
        return sub?._gap(f.after);
      case "subscribed":
        return sub?._subscribed(f);
      case "state":
        return sub?._state(f);
      case "unsubscribed":
        if (this._leaving.delete(f.room)) return;
        // The node dropped the room: a moderator banned this user from it,
        // or a refreshed token no longer covers it.
        if (sub) {
          this.subs.delete(f.room);
          sub.active = false;
          const banned = f.reason === "banned";
          const message = banned ? "a moderator banned you from this room" : "the node ended this subscription";
          sub._emit("error", new RoomcastError(banned ? "banned" : "forbidden", message));
        }
        return;
      case "audience":
        return sub?._emit("audience", { count: f.count });
      case "reactions":
        return sub?._emit("reactions", { counts: f.counts });
      case "presence":
      case "presence_diff":
        return sub?._presence(f);
      case "ack":
        return this._settle(f.ref, null, f.id);
      case "refreshed":
        this._scheduleRefresh();
        return this._emit("refreshed", { expiresIn: f.expires_in });
      case "error": {
        const err = new RoomcastError(f.code, f.message);
        if (f.ref !== undefined && this._pending.has(f.ref)) return this._settle(f.ref, err);
        if (sub) sub._emit("error", err);
        return this._emit("error", err);
      }
    }
  }

  _settle(ref, err, id) {
    const p = this._pending.get(ref);
    if (!p) return;
    this._pending.delete(ref);
    clearTimeout(p.timer);
    err ? p.reject(err) : p.resolve(id);
  }

  _send(frame) {
    if (this.state !== "connected" || !this._ws) return 0;
    const text = JSON.stringify(frame);
    this._ws.send(text);
    return text.length;
  }

  _transmit(p) {
    this._pending.set(p.frame.ref, p);
    p.size = this._send(p.frame);
  }

  /** GETs a page of `room`'s history before `before` from the node in use. */
  async _history(room, before, limit) {
    const f = this.options.fetch || globalThis.fetch;
    const ws = new URL(this.urls[Math.max(this._url, 0)]);
    const base = `${ws.protocol === "wss:" ? "https:" : "http:"}//${ws.host}${ws.pathname.replace(/\/ws$/, "")}`;
    const query = `before=${encodeURIComponent(before ?? "latest")}&limit=${limit}`;
    const headers = this.token ? { authorization: `Bearer ${this.token}` } : {};
    const response = await f(`${base}/rooms/${encodeURIComponent(room)}/events?${query}`, { headers });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new RoomcastError(body.error || "http_" + response.status, body.message);
    return { events: body.events, more: body.more };
  }

  /**
   * Follows `room`; `lastEventId` resumes after that event, `rewind: N`
   * starts with the room's last N events, `state: true` with its current
   * values (`sub.state`), `audience` asks for the room's audience count,
   * `presence` for who is in it (`sub.members`, the `presence` event).
   */
  subscribe(room, options = {}) {
    if (this.subs.has(room)) throw new RoomcastError("already_subscribed", `already subscribed to ${room}`);
    const sub = new Subscription(this, room, options);
    this.subs.set(room, sub);
    this._send(sub._frame());
    return sub;
  }

  _unsubscribe(sub) {
    if (this.subs.get(sub.room) !== sub) return;
    this.subs.delete(sub.room);
    if (this._send({ type: "unsubscribe", room: sub.room })) this._leaving.add(sub.room);
  }

  /**
   * Publishes `data` to `room`; resolves with the event's id once the node
   * acks it. Every publish carries an idempotency key (yours, or a random
   * one), so one that was sent but not acked before a drop is sent again
   * after the reconnect and still stored once. While disconnected, up to
   * `maxQueued` publishes wait for the connection; each rejects with
   * "timeout" if not acked within `publishTimeout`.
   */
  publish(room, data, options = {}) {
    if (this.state === "closed") return Promise.reject(new RoomcastError("closed", "the client is closed"));
    if (this._queue.length >= this.options.maxQueued && this.state !== "connected") {
      return Promise.reject(new RoomcastError("queue_full", "too many publishes waiting for a connection"));
    }
    return new Promise((resolve, reject) => {
      const ref = ++this._ref;
      const frame = { type: "publish", room, data, ref, idempotency_key: options.idempotencyKey || randomKey() };
      if (options.key !== undefined) frame.key = options.key;
      const p = { frame, resolve, reject };
      p.timer = setTimeout(() => {
        this._pending.delete(ref);
        const i = this._queue.indexOf(p);
        if (i >= 0) this._queue.splice(i, 1);
        reject(new RoomcastError("timeout", "no ack in time; retrying with the same idempotencyKey is safe"));
      }, options.timeout ?? this.options.publishTimeout);
      this.state === "connected" ? this._transmit(p) : this._queue.push(p);
    });
  }

  /** Closes for good: no reconnect; pending publishes reject with "closed". */
  close() {
    if (this.state === "closed") return;
    this._set("closed");
    for (const name of Object.keys(this._timers)) this._clear(name);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {}
    }
    const err = new RoomcastError("closed", "the client is closed");
    for (const p of [...this._pending.values(), ...this._queue]) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this._pending.clear();
    this._queue = [];
    if (this._offline) {
      globalThis.removeEventListener("offline", this._offline);
      globalThis.removeEventListener("online", this._online);
    }
  }
}

/**
 * Connects to roomcast nodes: `urls` is one WebSocket URL or several (the
 * client rotates across them on every reconnect).
 */
export function connect(urls, options = {}) {
  return new Client(urls, options);
}
