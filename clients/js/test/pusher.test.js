// Pusher's own libraries against three roomcast nodes on one Redis:
// pusher-js (Node), Laravel Echo over it, Pusher's Node server library and
// its Python one. Public, private and presence channels, client events,
// socket exclusion, the HTTP API, one room seen through both protocols,
// and a node restart.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:http";
import WebSocket from "ws";
import Pusher from "pusher-js";
import PusherServer from "pusher";
import Echo from "laravel-echo";

import { startNode, startRedis, until } from "./support.js";

const APP = { id: "1001", key: "key-1", secret: "secret-of-app-1" };
const pusherArgs = ["--pusher-app-id", APP.id, "--pusher-key", APP.key, "--pusher-secret", APP.secret];

/** A webhook receiver that checks Pusher's signature and keeps the events. */
async function receiver() {
  const hooks = { events: [], bad: 0 };
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const expected = createHmac("sha256", APP.secret).update(body).digest("hex");
      if (req.headers["x-pusher-key"] !== APP.key || req.headers["x-pusher-signature"] !== expected) hooks.bad++;
      else hooks.events.push(...JSON.parse(body).events);
      res.end("{}");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  hooks.url = `http://127.0.0.1:${server.address().port}/pusher-hooks`;
  hooks.close = () => server.close();
  return hooks;
}

describe("Pusher's libraries on three nodes and one Redis", () => {
  let redis, nodes, servers, hooks;
  before(async () => {
    redis = await startRedis();
    hooks = await receiver();
    const args = [...pusherArgs, "--pusher-webhook-url", hooks.url, "--webhook-vacate-delay-ms", "500"];
    nodes = [];
    for (let i = 0; i < 3; i++) nodes.push(await startNode({ redis, args }));
    servers = nodes.map(
      (n) => new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(n.port), useTLS: false }),
    );
  });
  after(async () => {
    for (const n of nodes ?? []) await n.stop("SIGKILL");
    await redis?.stop();
    hooks?.close();
  });

  /** A pusher-js client on node `i`; channels are authorised by node `i`'s server library. */
  function client(i, user = { user_id: "anon" }) {
    const server = servers[i];
    return new Pusher(APP.key, {
      cluster: "local",
      wsHost: "127.0.0.1",
      wsPort: nodes[i].port,
      forceTLS: false,
      enabledTransports: ["ws"],
      disableStats: true,
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, callback) =>
          callback(null, server.authorizeChannel(socketId, channelName, channelName.startsWith("presence-") ? user : undefined)),
      },
    });
  }

  const subscribed = (channel) =>
    new Promise((resolve, reject) => {
      channel.bind("pusher:subscription_succeeded", resolve);
      channel.bind("pusher:subscription_error", reject);
    });

  test("a public channel: triggered on one node, received on the others, stored for roomcast", async () => {
    const a = client(0);
    const b = client(2);
    const got = { a: [], b: [] };
    const ca = a.subscribe("news");
    const cb = b.subscribe("news");
    ca.bind("breaking", (d) => got.a.push(d));
    cb.bind("breaking", (d) => got.b.push(d));
    await Promise.all([subscribed(ca), subscribed(cb)]);
    const response = await servers[1].trigger("news", "breaking", { headline: "one" });
    assert.equal(response.status, 200);
    await servers[1].trigger(["news", "other"], "breaking", "plain text");
    await until(() => got.a.length === 2 && got.b.length === 2, "both events on both clients");
    assert.deepEqual(got.a, [{ headline: "one" }, "plain text"]);
    // The same room through roomcast: its history holds both, named.
    const history = await (await fetch(`${nodes[0].http}/rooms/news/events?after=0`)).json();
    assert.deepEqual(
      history.events.map((e) => [e.name, e.data]),
      [
        ["breaking", { headline: "one" }],
        ["breaking", "plain text"],
      ],
    );
    assert.ok(history.events.every((e) => /^\d+-\d+$/.test(e.id)), "each with a roomcast ID");
    a.disconnect();
    b.disconnect();
  });

  test("roomcast publishes reach Pusher subscribers, named or as message", async () => {
    const a = client(1);
    const got = [];
    const channel = a.subscribe("mixed");
    channel.bind_global((name, data) => name.startsWith("pusher") || got.push([name, data]));
    await subscribed(channel);
    const ws = new WebSocket(nodes[2].ws);
    await new Promise((r) => ws.once("open", r));
    ws.send(JSON.stringify({ type: "publish", room: "mixed", data: { n: 1 }, name: "score", ref: 1 }));
    ws.send(JSON.stringify({ type: "publish", room: "mixed", data: { n: 2 }, ref: 2 }));
    await until(() => got.length === 2, "both publishes");
    assert.deepEqual(got, [
      ["score", { n: 1 }],
      ["message", { n: 2 }],
    ]);
    ws.close();
    a.disconnect();
  });

  test("private channels need the app's signature; client events reach the others only", async () => {
    const a = client(0);
    const b = client(1);
    const ca = a.subscribe("private-chat");
    const cb = b.subscribe("private-chat");
    await Promise.all([subscribed(ca), subscribed(cb)]);
    const got = { a: [], b: [] };
    ca.bind("client-typing", (d) => got.a.push(d));
    cb.bind("client-typing", (d) => got.b.push(d));
    assert.equal(ca.trigger("client-typing", { who: "a" }), true);
    await until(() => got.b.length === 1, "b hears a");
    assert.deepEqual(got.b, [{ who: "a" }]);
    // A forged signature is refused.
    const forger = new Pusher(APP.key, {
      cluster: "local",
      wsHost: "127.0.0.1",
      wsPort: nodes[2].port,
      forceTLS: false,
      enabledTransports: ["ws"],
      disableStats: true,
      channelAuthorization: { customHandler: (_, callback) => callback(null, { auth: `${APP.key}:${"0".repeat(64)}` }) },
    });
    const refused = await subscribed(forger.subscribe("private-chat")).then(
      () => null,
      (e) => e,
    );
    assert.equal(refused?.status, 401);
    // Client events on a public channel are refused.
    const errors = [];
    a.connection.bind("error", (e) => errors.push(e));
    const pub = a.subscribe("lobby");
    await subscribed(pub);
    pub.trigger("client-typing", { who: "a" });
    await until(() => errors.length > 0, "an error for a client event on a public channel");
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(got.a, [], "the sender does not hear itself");
    for (const c of [a, b, forger]) c.disconnect();
  });

  test("socket_id excludes the triggering client", async () => {
    const a = client(0);
    const b = client(1);
    const got = { a: [], b: [] };
    const ca = a.subscribe("excl");
    const cb = b.subscribe("excl");
    ca.bind("e", (d) => got.a.push(d));
    cb.bind("e", (d) => got.b.push(d));
    await Promise.all([subscribed(ca), subscribed(cb)]);
    await servers[2].trigger("excl", "e", { n: 1 }, { socket_id: a.connection.socket_id });
    await servers[2].trigger("excl", "e", { n: 2 });
    await until(() => got.b.length === 2 && got.a.length === 1, "the events");
    assert.deepEqual(got.a, [{ n: 2 }], "a was excluded from the first");
    a.disconnect();
    b.disconnect();
  });

  test("presence: one member per user across tabs and nodes, added and removed once", async () => {
    const host = client(0, { user_id: "host", user_info: { name: "Host" } });
    const hostChannel = host.subscribe("presence-stage");
    const members = await subscribed(hostChannel);
    assert.equal(members.count, 1);
    assert.deepEqual(members.me, { id: "host", info: { name: "Host" } });
    const events = [];
    hostChannel.bind("pusher:member_added", (m) => events.push(["added", m.id, m.info]));
    hostChannel.bind("pusher:member_removed", (m) => events.push(["removed", m.id]));
    const tab1 = client(1, { user_id: "ann", user_info: { seat: 7 } });
    const tab2 = client(2, { user_id: "ann", user_info: { seat: 7 } });
    await subscribed(tab1.subscribe("presence-stage"));
    const second = await subscribed(tab2.subscribe("presence-stage"));
    await until(() => events.length === 1, "ann added");
    assert.deepEqual(events, [["added", "ann", { seat: 7 }]]);
    await until(() => hostChannel.members.count === 2, "two members");
    assert.ok(second.count >= 1);
    // The HTTP API agrees.
    await until(async () => (await servers[1].get({ path: "/channels/presence-stage/users" }).then((r) => r.json())).users.length === 2, "users");
    const users = await (await servers[1].get({ path: "/channels/presence-stage/users" })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ["ann", "host"]);
    const info = await (await servers[2].get({ path: "/channels/presence-stage", params: { info: "user_count,subscription_count" } })).json();
    assert.equal(info.occupied, true);
    assert.equal(info.user_count, 2);
    await until(async () => (await (await servers[2].get({ path: "/channels/presence-stage", params: { info: "subscription_count" } })).json()).subscription_count === 3, "three subscriptions", 10000);
    const listed = await (await servers[0].get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count" } })).json();
    assert.deepEqual(listed.channels["presence-stage"], { user_count: 2 });
    // One tab closes: ann stays; the other: she leaves.
    tab1.disconnect();
    await new Promise((r) => setTimeout(r, 2500));
    assert.deepEqual(events, [["added", "ann", { seat: 7 }]], "still one tab open");
    tab2.disconnect();
    await until(() => events.length === 2, "ann removed");
    assert.deepEqual(events[1], ["removed", "ann"]);
    host.disconnect();
  });

  test("webhooks in Pusher's shape: occupied, members, client events, vacated", async () => {
    const a = client(0, { user_id: "hooked-a" });
    const b = client(1, { user_id: "hooked-b" });
    const ca = a.subscribe("presence-hooked");
    await subscribed(ca);
    const cb = b.subscribe("presence-hooked");
    await subscribed(cb);
    const seen = (name) => hooks.events.filter((e) => e.channel === "presence-hooked" && e.name === name);
    await until(() => seen("member_added").length === 2, "both members added", 20000);
    ca.trigger("client-wave", { hi: 1 });
    await until(() => seen("client_event").length === 1, "the client event", 20000);
    a.disconnect();
    b.disconnect();
    const of = () => hooks.events.filter((e) => e.channel === "presence-hooked");
    await until(() => of().some((e) => e.name === "channel_vacated"), "channel_vacated", 20000);
    const names = of().map((e) => [e.name, e.user_id ?? e.event ?? ""]);
    assert.deepEqual(names[0], ["channel_occupied", ""]);
    assert.deepEqual(names.at(-1), ["channel_vacated", ""]);
    const added = names.filter(([n]) => n === "member_added").map(([, u]) => u).sort();
    const removed = names.filter(([n]) => n === "member_removed").map(([, u]) => u).sort();
    assert.deepEqual([added, removed], [["hooked-a", "hooked-b"], ["hooked-a", "hooked-b"]]);
    const client_event = of().find((e) => e.name === "client_event");
    assert.deepEqual(
      [client_event.event, JSON.parse(client_event.data), client_event.socket_id, client_event.user_id],
      ["client-wave", { hi: 1 }, client_event.socket_id, "hooked-a"],
    );
    assert.equal(hooks.bad, 0, "every webhook signed with the app's secret");
  });

  test("terminate_connections closes a user's sockets on every node", async () => {
    const c = client(1, { user_id: "troll" });
    await subscribed(c.subscribe("presence-terminate"));
    const closed = new Promise((r) => c.connection.bind("state_change", ({ current }) => current !== "connected" && r(current)));
    const response = await servers[0].post({ path: "/users/troll/terminate_connections", body: {} });
    assert.equal(response.status, 200);
    assert.notEqual(await closed, "connected");
    c.disconnect();
  });

  test("an unknown key and an old protocol are told in Pusher's way", async () => {
    const closeOf = async (path) => {
      const ws = new WebSocket(`ws://127.0.0.1:${nodes[0].port}${path}`);
      const messages = [];
      ws.on("message", (m) => messages.push(JSON.parse(m.toString())));
      const [code] = await once(ws, "close");
      return { code, error: messages.find((m) => m.event === "pusher:error") };
    };
    const unknown = await closeOf("/app/no-such-key?protocol=7");
    assert.equal(unknown.code, 4001);
    assert.equal(JSON.parse(unknown.error.data).code, 4001);
    const old = await closeOf(`/app/${APP.key}?protocol=5`);
    assert.equal(old.code, 4007);
    // A client event with a reserved name, and a subscription to an encrypted channel, are refused.
    const ws = new WebSocket(`ws://127.0.0.1:${nodes[0].port}/app/${APP.key}?protocol=7`);
    const messages = [];
    ws.on("message", (m) => messages.push(JSON.parse(m.toString())));
    await until(() => messages.some((m) => m.event === "pusher:connection_established"), "established");
    ws.send(JSON.stringify({ event: "pusher:subscribe", data: { channel: "private-encrypted-x", auth: "x:y" } }));
    ws.send(JSON.stringify({ event: "pusher:something", data: {} }));
    await until(() => messages.some((m) => m.event === "pusher:subscription_error") && messages.some((m) => m.event === "pusher:error"), "refusals");
    ws.send(JSON.stringify({ event: "pusher:ping", data: {} }));
    await until(() => messages.some((m) => m.event === "pusher:pong"), "pong");
    ws.close();
  });

  test("requests with a bad signature are refused", async () => {
    const wrong = new PusherServer({ appId: APP.id, key: APP.key, secret: "not-the-secret", host: "127.0.0.1", port: String(nodes[0].port), useTLS: false });
    await assert.rejects(wrong.trigger("news", "x", {}), (e) => e.status === 401);
    const unknown = new PusherServer({ appId: "nope", key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(nodes[0].port), useTLS: false });
    await assert.rejects(unknown.trigger("news", "x", {}), (e) => e.status === 404);
  });

  test("batch events, and Pusher's Python library", async () => {
    const a = client(2);
    const got = [];
    const channel = a.subscribe("batched");
    channel.bind_global((name, data) => name.startsWith("pusher") || got.push([name, data]));
    await subscribed(channel);
    await servers[0].triggerBatch([
      { channel: "batched", name: "one", data: { n: 1 } },
      { channel: "batched", name: "two", data: { n: 2 } },
    ]);
    const python = [
      "import pusher, sys",
      `c = pusher.Pusher(app_id='${APP.id}', key='${APP.key}', secret='${APP.secret}', host='127.0.0.1', port=${nodes[1].port}, ssl=False)`,
      "c.trigger('batched', 'three', {'n': 3})",
      "print(c.channel_info('batched', ['subscription_count']))",
    ].join("\n");
    const out = execFileSync("python3", ["-c", python]).toString();
    assert.match(out, /occupied/);
    await until(() => got.length === 3, "three events");
    assert.deepEqual(got, [
      ["one", { n: 1 }],
      ["two", { n: 2 }],
      ["three", { n: 3 }],
    ]);
    a.disconnect();
  });

  test("Laravel Echo over pusher-js: listen, join, here and leaving", async () => {
    const echo = (i, user) =>
      new Echo({
        broadcaster: "pusher",
        client: client(i, user),
      });
    const a = echo(0, { user_id: "7", user_info: { name: "Seven" } });
    const shipped = [];
    const orders = a.channel("orders").listen("OrderShipped", (e) => shipped.push(e));
    await new Promise((r) => orders.subscribed(r));
    await servers[1].trigger("orders", "App\\Events\\OrderShipped", { order: 42 });
    await until(() => shipped.length === 1, "the Laravel event");
    assert.deepEqual(shipped, [{ order: 42 }]);
    const here = [];
    const joining = [];
    const leaving = [];
    a.join("chat")
      .here((users) => here.push(users.map((u) => u.name)))
      .joining((u) => joining.push(u.name))
      .leaving((u) => leaving.push(u.name));
    await until(() => here.length === 1, "here");
    const b = echo(2, { user_id: "8", user_info: { name: "Eight" } });
    b.join("chat");
    await until(() => joining.includes("Eight"), "joining");
    b.disconnect();
    await until(() => leaving.length === 1, "leaving");
    assert.deepEqual(here[0], ["Seven"]);
    assert.deepEqual(leaving, ["Eight"]);
    a.disconnect();
  });

  test("a node restart: pusher-js reconnects and resubscribes", async () => {
    const a = client(1);
    const got = [];
    const channel = a.subscribe("restart");
    channel.bind("tick", (d) => got.push(d.n));
    let subscriptions = 0;
    channel.bind("pusher:subscription_succeeded", () => subscriptions++);
    await subscribed(channel);
    await servers[0].trigger("restart", "tick", { n: 1 });
    await until(() => got.length === 1, "before");
    const states = [];
    a.connection.bind("state_change", ({ current }) => states.push(current));
    await nodes[1].restart("SIGKILL");
    await until(() => states.includes("connected") && subscriptions >= 2, "reconnected and subscribed again", 30000);
    await servers[0].trigger("restart", "tick", { n: 2 });
    await until(() => got.length === 2, "after the restart", 20000);
    assert.deepEqual(got, [1, 2]);
    a.disconnect();
  });
});

describe("Pusher apps from a file are kept apart", () => {
  let node;
  const apps = [
    { id: "a", key: "key-a", secret: "secret-of-a", prefix: "a:" },
    { id: "b", key: "key-b", secret: "secret-of-b", prefix: "b:" },
  ];
  before(async () => {
    const fs = await import("node:fs");
    const file = `/tmp/roomcast-pusher-apps-${process.pid}.json`;
    fs.writeFileSync(file, JSON.stringify(apps));
    node = await startNode({ args: ["--pusher-apps", file, "--max-subscriptions", "2"] });
  });
  after(async () => node?.stop("SIGKILL"));

  test("the same channel name in two apps is two rooms", async () => {
    const mk = (app) =>
      new Pusher(app.key, { cluster: "local", wsHost: "127.0.0.1", wsPort: node.port, forceTLS: false, enabledTransports: ["ws"], disableStats: true });
    const [ca, cb] = [mk(apps[0]), mk(apps[1])];
    const got = { a: [], b: [] };
    const sa = ca.subscribe("room");
    const sb = cb.subscribe("room");
    sa.bind("e", (d) => got.a.push(d));
    sb.bind("e", (d) => got.b.push(d));
    await Promise.all([subscribed(sa), subscribed(sb)]);
    const server = (app) => new PusherServer({ appId: app.id, key: app.key, secret: app.secret, host: "127.0.0.1", port: String(node.port), useTLS: false });
    await server(apps[0]).trigger("room", "e", { for: "a" });
    await server(apps[1]).trigger("room", "e", { for: "b" });
    await until(() => got.a.length === 1 && got.b.length === 1, "one event each");
    assert.deepEqual([got.a, got.b], [[{ for: "a" }], [{ for: "b" }]]);
    // A's secret cannot trigger in B.
    const crossed = new PusherServer({ appId: "b", key: "key-b", secret: "secret-of-a", host: "127.0.0.1", port: String(node.port), useTLS: false });
    await assert.rejects(crossed.trigger("room", "e", {}), (e) => e.status === 401);
    const history = await (await fetch(`${node.http}/rooms/a:room/events?after=0`)).json();
    assert.deepEqual(history.events.map((e) => e.data), [{ for: "a" }]);
    ca.disconnect();
    cb.disconnect();
  });

  test("a connection's channels are bounded like roomcast's subscriptions", async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}/app/${apps[0].key}?protocol=7`);
    const messages = [];
    ws.on("message", (m) => messages.push(JSON.parse(m.toString())));
    await until(() => messages.some((m) => m.event === "pusher:connection_established"), "established");
    for (const channel of ["one", "two", "three"]) ws.send(JSON.stringify({ event: "pusher:subscribe", data: { channel } }));
    await until(() => messages.some((m) => m.event === "pusher:subscription_error"), "the third refused");
    const ok = messages.filter((m) => m.event === "pusher_internal:subscription_succeeded").map((m) => m.channel);
    const refused = messages.find((m) => m.event === "pusher:subscription_error");
    assert.deepEqual(ok, ["one", "two"]);
    assert.equal(refused.channel, "three");
    assert.equal(JSON.parse(refused.data).status, 429);
    ws.close();
  });

  function subscribed(channel) {
    return new Promise((resolve, reject) => {
      channel.bind("pusher:subscription_succeeded", resolve);
      channel.bind("pusher:subscription_error", reject);
    });
  }
});
