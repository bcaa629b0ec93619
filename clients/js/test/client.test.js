// The client against real roomcast nodes on one real Redis: resume across
// SIGTERM and SIGKILL, URL rotation, backoff bounds, dead-link detection,
// token refresh, publish acks and errors.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { gzipSync } from "node:zlib";
import path from "node:path";
import WebSocket from "ws";
import { minify } from "terser";

import { backoff, connect, DEFAULTS, RoomcastError } from "../roomcast.js";
import { freePort, jwt, now, publish, publishAll, root, startNode, startRedis, until } from "./support.js";

const source = path.join(root, "clients/js/roomcast.js");

/** Collects a subscription's events and gaps. */
function collect(sub) {
  const got = { ids: [], gaps: [] };
  sub.on("event", (e) => got.ids.push(e.id));
  sub.on("gap", (g) => got.gaps.push(g.after));
  return got;
}

/** Records every connection attempt (URL, time) on top of `ws`. */
function recordingWebSocket(log) {
  return class extends WebSocket {
    constructor(url, ...rest) {
      log.push({ url, at: Date.now() });
      super(url, ...rest);
    }
  };
}

describe("the client on two nodes and one Redis", () => {
  let redis, a, b;
  before(async () => {
    redis = await startRedis();
    a = await startNode({ redis, args: ["--heartbeat-secs", "1"] });
    b = await startNode({ redis, args: ["--heartbeat-secs", "1"] });
  });
  after(async () => {
    await a?.stop("SIGKILL");
    await b?.stop("SIGKILL");
    await redis?.stop();
  });

  test("every event exactly once and in order across SIGTERM and SIGKILL", async () => {
    const client = connect([a.ws, b.ws], { WebSocket, minDelay: 50, maxDelay: 400 });
    const sub = client.subscribe("resume-1");
    const got = collect(sub);
    await new Promise((r) => sub.once("subscribed", r));
    const publishing = publishAll([a, b], "resume-1", 400, { pause: 4 });
    await until(() => got.ids.length > 50, "the first events");
    await a.restart("SIGTERM");
    await until(() => got.ids.length > 150, "events after the SIGTERM");
    await b.restart("SIGKILL");
    await until(() => got.ids.length > 250, "events after the SIGKILL");
    await a.restart("SIGKILL");
    const ids = await publishing;
    await until(() => got.ids.length >= ids.length, "every event", 20000);
    assert.deepEqual(got.ids, ids, "each event once, in publish order");
    assert.deepEqual(got.gaps, [], "nothing was lost, so no gap");
    assert.equal(sub.lastEventId, ids.at(-1));
    client.close();
  });

  test("a drop before the first event still resumes from where the subscription joined", async () => {
    const client = connect([a.ws], { WebSocket, minDelay: 50, maxDelay: 200 });
    const sub = client.subscribe("resume-2");
    const got = collect(sub);
    await new Promise((r) => sub.once("subscribed", r));
    assert.ok(sub.lastEventId, "the node says where live delivery starts");
    await a.stop("SIGTERM");
    const missed = await publishAll([b], "resume-2", 5, { pause: 0 });
    await a.start();
    await until(() => got.ids.length === 5, "the events published while it was away");
    assert.deepEqual(got.ids, missed);
    client.close();
  });

  test("a late viewer rewinds, gets the state, scrolls back, and follows keyed events", async () => {
    const ids = [];
    for (let i = 0; i < 30; i++) ids.push(await publish(a, "join-1", { n: i }));
    const lead = await fetch(`${b.http}/rooms/join-1/events?key=lead`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ bid: 10 }),
    }).then((r) => r.json());
    ids.push(lead.id);
    const client = connect([b.ws], { WebSocket });
    const sub = client.subscribe("join-1", { rewind: 10, state: true });
    const got = collect(sub);
    const states = [];
    sub.on("state", (s) => states.push(s));
    await until(() => got.ids.length === 10, "the rewound events");
    assert.deepEqual(got.ids, ids.slice(-10), "the last 10, oldest first");
    assert.deepEqual(sub.state, { lead: { id: lead.id, data: { bid: 10 } } });
    assert.equal(states[0].lastEventId, lead.id, "the state frame says where it stands");
    // Scrolling back from the oldest shown.
    const older = await sub.history({ before: got.ids[0], limit: 15 });
    assert.deepEqual(older.events.map((e) => e.id), ids.slice(6, 21));
    assert.equal(older.more, true);
    const newest = await sub.history({ limit: 2 });
    assert.deepEqual(newest.events.map((e) => e.id), ids.slice(-2));
    // A keyed publish from this client moves the value; live events follow.
    const id = await client.publish("join-1", { bid: 12 }, { key: "lead" });
    await until(() => sub.state.lead?.id === id, "the new lead");
    assert.deepEqual(sub.state.lead.data, { bid: 12 });
    await assert.rejects(client.publish("join-1", 1, { key: "two words" }), (e) => e.code === "bad_key");
    client.close();
  });

  test("audience and reactions reach the subscription", async () => {
    const watcher = connect(a.ws, { WebSocket });
    const sub = watcher.subscribe("live-1", { audience: true });
    const counts = [];
    sub.on("audience", ({ count }) => counts.push(count));
    const viewer = connect(b.ws, { WebSocket });
    const other = viewer.subscribe("live-1");
    await new Promise((r) => other.once("subscribed", r));
    await until(() => counts.at(-1) === 2, "an audience of two");
    let clapped = 0;
    sub.on("reactions", ({ counts }) => (clapped += counts["👏"] || 0));
    for (let i = 0; i < 5; i++) other.react("👏");
    await until(() => clapped === 5, "five claps, summed across nodes");
    viewer.close();
    await until(() => counts.at(-1) === 1, "the viewer leaving the count");
    watcher.close();
  });

  test("rotates across URLs and comes back to a live one", async () => {
    const dead = `ws://127.0.0.1:${await freePort()}/ws`;
    const log = [];
    const client = connect([dead, b.ws], { WebSocket: recordingWebSocket(log), minDelay: 20, maxDelay: 50 });
    await until(() => client.state === "connected", "a connection");
    assert.deepEqual(
      log.map((l) => l.url),
      [dead, b.ws],
    );
    // The live node goes away: the client moves on, tries the dead URL, and returns.
    await b.restart("SIGKILL");
    await until(() => log.length >= 4 && client.state === "connected", "a reconnection");
    const urls = log.map((l) => l.url);
    for (let i = 1; i < urls.length; i++) assert.notEqual(urls[i], urls[i - 1], "each attempt goes to the next URL");
    client.close();
  });

  test("after a 1012 it reconnects promptly, to the next URL", async () => {
    const log = [];
    const client = connect([a.ws, b.ws], { WebSocket: recordingWebSocket(log), minDelay: 5000, maxDelay: 5000 });
    await until(() => client.state === "connected", "a connection");
    const stopped = a.stop("SIGTERM");
    await until(() => log.length === 2 && client.state === "connected", "the reconnection");
    const pause = log[1].at - log[0].at;
    assert.equal(log[1].url, b.ws);
    // restartDelay (1 s), not the 5 s backoff: a drain is not a failure.
    assert.ok(pause < DEFAULTS.restartDelay + 2000, `reconnected after ${pause} ms`);
    await stopped;
    await a.start();
    client.close();
  });

  test("silence past the heartbeat timeout is a dead link", async () => {
    const log = [];
    const client = connect([a.ws, b.ws], { WebSocket: recordingWebSocket(log), heartbeatTimeout: 2500, minDelay: 20 });
    await until(() => client.state === "connected", "a connection");
    // The node beats every second: a quiet but live link stays up.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(log.length, 1, "heartbeats keep a quiet link alive");
    // Frozen, the node keeps the socket open but says nothing.
    a.child.kill("SIGSTOP");
    try {
      await until(() => log.length === 2 && client.state === "connected", "a move to the other node", 10000);
      assert.equal(log[1].url, b.ws);
    } finally {
      a.child.kill("SIGCONT");
    }
    client.close();
  });

  test("publish resolves with the stored id, rejects with the node's code", async () => {
    const client = connect(a.ws, { WebSocket });
    const id = await client.publish("pub-1", { text: "hi" });
    const history = await (await fetch(`${a.http}/rooms/pub-1/events?after=0`)).json();
    assert.deepEqual(history.events, [{ id, data: { text: "hi" } }]);
    await assert.rejects(client.publish("bad room!", 1), (e) => e instanceof RoomcastError && e.code === "bad_room");
    // Too big for the node's frame limit: the node closes with 1009, the
    // client rejects that publish (never resends it) and carries on.
    await assert.rejects(client.publish("pub-1", "x".repeat(70000)), (e) => e.code === "too_large");
    await until(() => client.state === "connected", "the reconnection");
    // The same key twice: one stored event, the same id.
    const again = await client.publish("pub-1", 2, { idempotencyKey: "once" });
    assert.equal(await client.publish("pub-1", 2, { idempotencyKey: "once" }), again);
    // The same key for another payload is a client bug: refused, not answered as a repeat.
    await assert.rejects(
      client.publish("pub-1", 3, { idempotencyKey: "once" }),
      (e) => e.code === "idempotency_conflict",
    );
    client.close();
    await assert.rejects(client.publish("pub-1", 4), (e) => e.code === "closed");
  });

  test("a publish made while disconnected waits for the connection, and times out if it never comes", async () => {
    const client = connect(a.ws, { WebSocket, minDelay: 50, maxDelay: 100 });
    await until(() => client.state === "connected", "a connection");
    await a.stop("SIGKILL");
    await until(() => client.state !== "connected", "the drop");
    const waiting = client.publish("pub-2", { queued: true });
    const doomed = client.publish("pub-2", { late: true }, { timeout: 200 });
    await assert.rejects(doomed, (e) => e.code === "timeout");
    await a.start();
    const id = await waiting;
    const history = await (await fetch(`${b.http}/rooms/pub-2/events?after=0`)).json();
    assert.deepEqual(history.events, [{ id, data: { queued: true } }], "stored once, and the timed-out one never");
    client.close();
  });

  test("GET /client.js is this package's module, byte for byte, and cacheable", async () => {
    const res = await fetch(`${a.http}/client.js`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /^text\/javascript/);
    assert.match(res.headers.get("cache-control"), /max-age/);
    assert.equal(await res.text(), readFileSync(source, "utf8"));
    const again = await fetch(`${a.http}/client.js`, { headers: { "if-none-match": res.headers.get("etag") } });
    assert.equal(again.status, 304);
  });
});

describe("tokens", () => {
  const secret = "client-test-secret";
  let node;
  before(async () => {
    node = await startNode({ args: ["--jwt-secret", secret] });
  });
  after(async () => node?.stop("SIGKILL"));

  const token = (life, claims = {}) => jwt(secret, { sub: "t", exp: now() + life, rooms: ["*"], publish: ["*"], ...claims });

  test("refreshed in band before it expires: no reconnect", async () => {
    let issued = 0;
    const states = [];
    const client = connect(node.ws, {
      WebSocket,
      getToken: async () => (issued++, token(3)),
    });
    client.on("state", (s) => states.push(s));
    const refreshed = [];
    client.on("refreshed", (r) => refreshed.push(r));
    const sub = client.subscribe("tok-1");
    const got = collect(sub);
    await new Promise((r) => sub.once("subscribed", r));
    await until(() => refreshed.length >= 3, "three in-band refreshes", 15000);
    const id = await publish(node, "tok-1", 1, { authorization: `Bearer ${token(60)}` });
    await until(() => got.ids.includes(id), "an event after the first token expired");
    assert.deepEqual(states, ["connected"], "the connection never dropped");
    assert.ok(issued >= 4, `getToken called ${issued} times`);
    client.close();
  });

  test("after a 1008 token expiry getToken is called again and the room resumes", async () => {
    let issued = 0;
    const states = [];
    // In-band refresh off: only the close can renew this token.
    const client = connect(node.ws, {
      WebSocket,
      minDelay: 20,
      autoRefresh: false,
      getToken: async () => (issued++, token(2)),
    });
    client.on("state", (s) => states.push(s));
    const sub = client.subscribe("tok-2");
    const got = collect(sub);
    await new Promise((r) => sub.once("subscribed", r));
    await until(() => issued >= 2 && client.state === "connected", "a reconnection with a fresh token", 10000);
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await publish(node, "tok-2", i, { authorization: `Bearer ${token(60)}` }));
    await until(() => got.ids.length === 3, "the events");
    assert.deepEqual(got.ids, ids);
    assert.ok(states.includes("disconnected"), "the node ended the expired connection");
    client.close();
  });

  test("without getToken an expired token ends the client with token_expired", async () => {
    const client = connect(node.ws, { WebSocket, token: token(2) });
    const errors = [];
    client.on("error", (e) => errors.push(e.code));
    await until(() => client.state === "closed", "the client to close", 10000);
    assert.deepEqual(errors, ["token_expired"]);
  });

  test("a refused publish rejects with forbidden, a bad refresh with bad_token", async () => {
    const client = connect(node.ws, { WebSocket, token: token(60, { publish: ["other-*"] }) });
    await assert.rejects(client.publish("tok-3", 1), (e) => e.code === "forbidden");
    const errors = [];
    client.on("error", (e) => errors.push(e.code));
    client._send({ type: "refresh", token: jwt("wrong", { exp: now() + 60 }) });
    await until(() => errors.length === 1, "the refusal");
    assert.deepEqual(errors, ["bad_token"]);
    assert.equal(client.state, "connected", "a refused refresh keeps the connection");
    client.close();
  });
});

describe("moderation", () => {
  const secret = "client-moderation-secret";
  const apiKey = "client-moderation-api-key";
  let node;
  before(async () => {
    node = await startNode({ args: ["--jwt-secret", secret, "--api-key", apiKey] });
  });
  after(async () => node?.stop("SIGKILL"));

  const token = (sub) => jwt(secret, { sub, exp: now() + 600, rooms: ["*"], publish: ["*"] });
  const asKey = { authorization: `Bearer ${apiKey}` };
  const moderate = (method, path, body) =>
    fetch(`${node.http}${path}`, {
      method,
      headers: { ...asKey, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });

  test("edits and deletes arrive as their own events and move the state", async () => {
    const client = connect(node.ws, { WebSocket, token: token("fan") });
    const sub = client.subscribe("mod-1", { state: true });
    const seen = [];
    for (const type of ["event", "edit", "delete"]) sub.on(type, (e) => seen.push([type, e]));
    await new Promise((r) => sub.once("subscribed", r));
    const id = await publish(node, "mod-1", { text: "hi" }, asKey);
    const lead = await fetch(`${node.http}/rooms/mod-1/events?key=lead`, {
      method: "POST",
      headers: { ...asKey, "content-type": "application/json" },
      body: JSON.stringify(10),
    }).then((r) => r.json());
    await until(() => seen.length === 2, "the two events");
    const edit = await (await moderate("PATCH", `/rooms/mod-1/events/${id}`, { text: "hello" })).json();
    const gone = await (await moderate("DELETE", `/rooms/mod-1/events/${lead.id}`)).json();
    await until(() => seen.length === 4, "the edit and the delete");
    assert.deepEqual(seen[2], ["edit", { id: edit.id, target: id, data: { text: "hello" }, deleted: undefined }]);
    assert.deepEqual(seen[3], ["delete", { id: gone.id, target: lead.id }]);
    assert.deepEqual(sub.state, {}, "the deleted value left the state");
    assert.equal(sub.lastEventId, gone.id, "operations are events: the resume point moves past them");
    // History shows the targets as they stand.
    const { events } = await sub.history({ limit: 10 });
    assert.deepEqual(events.slice(0, 2), [
      { id, edited: true, data: { text: "hello" } },
      { id: lead.id, key: "lead", deleted: true },
    ]);
    client.close();
  });

  test("a ban ends the subscription with banned; a disconnect closes the client for good", async () => {
    const client = connect(node.ws, { WebSocket, token: token("troll"), minDelay: 20 });
    const sub = client.subscribe("mod-2");
    await new Promise((r) => sub.once("subscribed", r));
    const errors = [];
    sub.on("error", (e) => errors.push(e.code));
    assert.equal((await moderate("POST", "/rooms/mod-2/bans", { sub: "troll", seconds: 60 })).status, 201);
    await until(() => errors.includes("banned"), "the ban");
    assert.equal(sub.active, false);
    const clientErrors = [];
    client.on("error", (e) => clientErrors.push(e));
    assert.equal((await moderate("POST", "/users/troll/disconnect", { reason: "enough" })).status, 202);
    await until(() => client.state === "closed", "the disconnect");
    assert.equal(clientErrors.at(-1).code, "disconnected");
    assert.match(clientErrors.at(-1).message, /enough/);
  });
});

describe("presence on two nodes and one Redis", () => {
  const secret = "client-presence-secret";
  let redis, a, b;
  before(async () => {
    redis = await startRedis();
    a = await startNode({ redis, args: ["--jwt-secret", secret] });
    b = await startNode({ redis, args: ["--jwt-secret", secret] });
  });
  after(async () => {
    await a?.stop("SIGKILL");
    await b?.stop("SIGKILL");
    await redis?.stop();
  });

  const token = (sub, info) => jwt(secret, { sub, info, exp: now() + 600, rooms: ["*"], publish: ["*"] });

  test("members across tabs and nodes, kept through a reconnect", async () => {
    const host = connect([a.ws], { WebSocket, token: token("host", { name: "Host" }), minDelay: 20, maxDelay: 100 });
    const sub = host.subscribe("pres-1", { presence: true });
    const seen = [];
    sub.on("presence", (p) => seen.push(p));
    await until(() => seen.length > 0, "the snapshot");
    assert.equal(seen[0].snapshot, true);
    assert.deepEqual([...sub.members], [["host", { name: "Host" }]], "the watcher is in its own snapshot");
    const tab1 = connect(b.ws, { WebSocket, token: token("ann", { seat: 7 }) });
    const tab2 = connect(a.ws, { WebSocket, token: token("ann", { seat: 7 }) });
    tab1.subscribe("pres-1");
    tab2.subscribe("pres-1");
    await until(() => sub.members.has("ann"), "ann joins");
    assert.deepEqual(sub.members.get("ann"), { seat: 7 });
    assert.equal(sub.memberCount, 2, "two tabs are one member");
    tab1.close();
    const bob = connect(b.ws, { WebSocket, token: token("bob") });
    bob.subscribe("pres-1");
    await until(() => sub.members.has("bob"), "bob joins");
    assert.ok(sub.members.has("ann"), "ann's other tab keeps her in");
    tab2.close();
    await until(() => !sub.members.has("ann"), "ann leaves with her last tab");
    // The host's node restarts: the client reconnects, and a new snapshot
    // replaces the members.
    const snapshots = seen.filter((p) => p.snapshot).length;
    await a.restart("SIGKILL");
    await until(() => seen.filter((p) => p.snapshot).length > snapshots, "a snapshot after the reconnect", 20000);
    assert.deepEqual([...sub.members.keys()].sort(), ["bob", "host"]);
    assert.equal(sub.memberCount, 2);
    bob.close();
    host.close();
  });
});

describe("the package", () => {
  test("backoff: full jitter under a doubling cap", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const cap = Math.min(DEFAULTS.maxDelay, DEFAULTS.minDelay * 2 ** attempt);
      for (let i = 0; i < 200; i++) {
        const d = backoff(attempt);
        assert.ok(d >= 0 && d < cap, `attempt ${attempt}: ${d} outside [0, ${cap})`);
      }
    }
    assert.ok(DEFAULTS.minDelay < 1000, "the first retry comes well under a second");
  });

  test("reconnect attempts to a dead node stay within the backoff bounds", async () => {
    const dead = `ws://127.0.0.1:${await freePort()}/ws`;
    const log = [];
    const client = connect(dead, { WebSocket: recordingWebSocket(log), minDelay: 40, maxDelay: 160 });
    await until(() => log.length >= 8, "eight attempts");
    client.close();
    const pauses = log.slice(1).map((l, i) => l.at - log[i].at);
    // The cap doubles from 40 ms to 160 ms; 250 ms of slack for a busy machine.
    for (const p of pauses) assert.ok(p <= 160 + 250, `a pause of ${p} ms exceeds the cap`);
  });

  test("at most 6 KB minified and gzipped", async () => {
    const { code } = await minify(readFileSync(source, "utf8"), { module: true, compress: true, mangle: true });
    const size = gzipSync(code, { level: 9 }).length;
    console.log(`roomcast.js: ${size} bytes min+gzip`);
    assert.ok(size <= 6144, `${size} bytes`);
  });

  test("the type declarations check against the documented example", () => {
    const tsc = path.join(root, "clients/js/node_modules/.bin/tsc");
    execFileSync(tsc, ["--noEmit", "--strict", "--module", "nodenext", "test/types-check.ts"], {
      cwd: path.join(root, "clients/js"),
      stdio: "pipe",
    });
  });
});
