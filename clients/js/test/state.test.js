// The client's state machine against a fake node, on mocked timers: fast,
// and exact about delays that a real node could only approximate.

import { afterEach, beforeEach, describe, mock, test } from "node:test";
import assert from "node:assert/strict";

import { connect, DEFAULTS } from "../roomcast.js";
import { FakeNode } from "./fake.js";

describe("reconnecting after a node found the client too slow (1013)", () => {
  let node, client, errors;
  beforeEach(() => {
    mock.timers.enable({ apis: ["setTimeout", "Date"] });
    node = new FakeNode();
    client = connect("ws://node/ws", { WebSocket: node.WebSocket });
    errors = [];
    client.on("error", (e) => errors.push(e.code));
    client.subscribe("show");
  });
  afterEach(() => {
    client.close();
    mock.timers.reset();
  });

  /** Ticks until the client opens its next socket; returns how long it took. */
  function untilReconnect(limit = 60_000) {
    const before = node.sockets.length;
    let waited = 0;
    while (node.sockets.length === before && waited < limit) {
      mock.timers.tick(10);
      waited += 10;
    }
    assert.equal(node.sockets.length, before + 1, `no reconnect within ${limit} ms`);
    return waited;
  }

  test("it backs off longer with each 1013 that comes before any event, and says why", () => {
    const waits = [];
    for (let i = 0; i < 5; i++) {
      node.open();
      assert.equal(client.state, "connected");
      node.close(1013, "client too slow");
      assert.equal(client.state, "disconnected");
      assert.deepEqual(client.lastClose, { code: 1013, reason: "client too slow" });
      waits.push(untilReconnect());
    }
    assert.deepEqual(errors, Array(5).fill("too_slow"));
    // The first retry is prompt; every later one waits at least minDelay.
    assert.ok(waits[0] <= DEFAULTS.minDelay, `${waits}`);
    for (const w of waits.slice(1)) assert.ok(w >= DEFAULTS.minDelay, `${waits}`);
  });

  test("a 1013 after events arrived reconnects promptly: the client resumes further on", () => {
    for (let i = 0; i < 4; i++) {
      node.open();
      node.receive({ type: "subscribed", room: "show", resumed: false, last_event_id: `${i}-0` });
      node.receive({ type: "events", room: "show", events: [{ id: `${i + 1}-0`, data: i }] });
      node.close(1013, "client too slow");
      assert.ok(untilReconnect() <= DEFAULTS.minDelay);
    }
    // It resumed from the last event it got.
    node.open();
    const subscribe = node.last.sent.find((f) => f.type === "subscribe");
    assert.equal(subscribe.last_event_id, "4-0");
  });

  test("lastClose is cleared once connected again", () => {
    node.open();
    node.close(1013, "client too slow");
    untilReconnect();
    node.open();
    assert.equal(client.lastClose, null);
  });
});

describe("reconnecting and resuming, against a fake node", () => {
  let node, client;
  beforeEach(() => {
    mock.timers.enable({ apis: ["setTimeout", "Date"] });
    node = new FakeNode();
  });
  afterEach(() => {
    client?.close();
    mock.timers.reset();
  });

  function tickUntil(check, limit = 60_000) {
    let waited = 0;
    while (!check() && waited < limit) {
      mock.timers.tick(10);
      waited += 10;
    }
    assert.ok(check(), `not within ${limit} ms`);
    return waited;
  }

  test("after a 1012 it goes to the next URL within restartDelay", () => {
    client = connect(["ws://a/ws", "ws://b/ws"], { WebSocket: node.WebSocket });
    assert.match(node.last.url, /^ws:\/\/a\//);
    node.open();
    node.close(1012, "server restart");
    const waited = tickUntil(() => node.sockets.length === 2);
    assert.ok(waited <= DEFAULTS.restartDelay, `${waited} ms`);
    assert.match(node.last.url, /^ws:\/\/b\//);
  });

  test("silence past heartbeatTimeout is a dead link: it reconnects", () => {
    client = connect("ws://a/ws", { WebSocket: node.WebSocket, heartbeatTimeout: 5000 });
    node.open();
    mock.timers.tick(4000);
    node.receive({ type: "heartbeat" });
    mock.timers.tick(4000);
    assert.equal(client.state, "connected", "a heartbeat keeps the link alive");
    mock.timers.tick(1100);
    assert.notEqual(client.state, "connected", "silence ends it");
    tickUntil(() => node.sockets.length === 2);
  });

  test("every subscription resumes from its last event, and a repeat is not handed over twice", () => {
    client = connect("ws://a/ws", { WebSocket: node.WebSocket });
    const sub = client.subscribe("show");
    const got = [];
    sub.on("event", (e) => got.push(e.id));
    node.open();
    node.receive({ type: "subscribed", room: "show", resumed: false, last_event_id: "1-0" });
    node.receive({ type: "events", room: "show", events: [{ id: "2-0", data: 1 }, { id: "3-0", data: 2 }] });
    node.close(1006);
    tickUntil(() => node.sockets.length === 2);
    node.open();
    const subscribe = node.last.sent.find((f) => f.type === "subscribe");
    assert.equal(subscribe.last_event_id, "3-0");
    node.receive({ type: "subscribed", room: "show", resumed: true, last_event_id: "3-0" });
    node.receive({ type: "events", room: "show", events: [{ id: "3-0", data: 2 }, { id: "4-0", data: 3 }] });
    assert.deepEqual(got, ["2-0", "3-0", "4-0"]);
    assert.equal(sub.lastEventId, "4-0");
  });
});
