// In a real Chromium (Debian's package, driven by playwright-core): the
// demo page, the client module across node restarts, plain EventSource
// resuming with Last-Event-ID, and a page of another origin through CORS.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:http";
import { chromium } from "playwright-core";
import PusherServer from "pusher";

import { freePort, jwt, now, publish, publishAll, startNode, startRedis, until } from "./support.js";

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  return execFileSync("sh", ["-c", "command -v chromium || command -v chromium-browser"]).toString().trim();
}

/** Events the page collected (the page pushes them to `window.got`). */
const pageGot = (page) => page.evaluate(() => window.got);

describe("in Chromium", () => {
  let browser, redis, a, b, other;
  before(async () => {
    browser = await chromium.launch({
      executablePath: chromiumPath(),
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    redis = await startRedis();
    a = await startNode({ redis });
    b = await startNode({ redis });
    // A page of another site: any origin but the nodes'.
    const port = await freePort();
    other = createServer((_, res) => res.end("<!doctype html><title>another site</title>"));
    other.listen(port, "127.0.0.1");
    await once(other, "listening");
    other.url = `http://127.0.0.1:${port}/`;
  });
  after(async () => {
    await browser?.close();
    await a?.stop("SIGKILL");
    await b?.stop("SIGKILL");
    await redis?.stop();
    other?.close();
  });

  test("the demo page shows a published event, publishes, and counts its viewer", async () => {
    const page = await browser.newPage();
    await page.goto(`${a.http}/?room=show-42`);
    await page.locator("#state.connected").waitFor();
    // A live subscription shows what is published after it joined.
    await page.locator('#events[data-subscribed="true"]').waitFor({ state: "attached" });
    const id = await publish(b, "show-42", { text: "hello from the host" });
    const item = page.locator(`#events li[data-id="${id}"]`);
    await item.waitFor();
    assert.equal(await item.locator(".data").textContent(), "hello from the host");
    await until(async () => (await page.locator("#audience").textContent()) === "1", "the audience count");
    // The message box publishes through the client.
    await page.fill("#text", "hi from a viewer");
    await page.click("#sendButton");
    await page.locator("#events li .data", { hasText: "hi from a viewer" }).waitFor();
    const history = await (await fetch(`${a.http}/rooms/show-42/events?after=0`)).json();
    assert.deepEqual(
      history.events.map((e) => e.data),
      [{ text: "hello from the host" }, { text: "hi from a viewer" }],
    );
    // Reaction buttons: counted by the node, shown back from the reactions frames.
    for (let i = 0; i < 3; i++) await page.click('button[data-key="🔥"]');
    await until(async () => (await page.locator('button[data-key="🔥"] .count').textContent()) === "3", "three reactions");
    await page.close();
  });

  test("the demo page opens with the last 50 messages and the current values, and loads older ones", async () => {
    const ids = [];
    for (let i = 0; i < 70; i++) ids.push(await publish(a, "late-1", { text: `message ${i}` }));
    const keyed = await fetch(`${b.http}/rooms/late-1/events?key=score`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify("2 : 1"),
    }).then((r) => r.json());
    ids.push(keyed.id);
    const page = await browser.newPage();
    await page.goto(`${a.http}/?room=late-1`);
    await page.locator(`#events li[data-id="${keyed.id}"]`).waitFor();
    const shown = () => page.locator("#events li").evaluateAll((lis) => lis.map((li) => li.dataset.id));
    assert.deepEqual(await shown(), ids.slice(-50), "the last 50, oldest first");
    assert.equal(await page.locator('#values .value[data-key="score"]').textContent(), "score2 : 1");
    // Older messages, a page at a time.
    await page.click("#older");
    await until(async () => (await shown()).length === 71, "the older messages");
    assert.deepEqual(await shown(), ids);
    await page.locator("#older").waitFor({ state: "hidden" });
    // A new value replaces the shown one.
    await fetch(`${b.http}/rooms/late-1/events?key=score`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify("3 : 1"),
    });
    await page.locator('#values .value[data-key="score"]', { hasText: "3 : 1" }).waitFor();
    await page.close();
  });

  test("the demo page updates an edited message in place and removes a deleted one", async () => {
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await publish(a, "mod-page", { text: `line ${i}` }));
    const page = await browser.newPage();
    await page.goto(`${a.http}/?room=mod-page`);
    await page.locator(`#events li[data-id="${ids[2]}"]`).waitFor();
    await fetch(`${b.http}/rooms/mod-page/events/${ids[1]}`, {
      method: "PATCH",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ text: "line 1, corrected" }),
    });
    await page.locator(`#events li[data-id="${ids[1]}"][data-edited="true"] .data`, { hasText: "corrected" }).waitFor();
    await fetch(`${b.http}/rooms/mod-page/events/${ids[0]}`, { method: "DELETE" });
    await page.locator(`#events li[data-id="${ids[0]}"]`).waitFor({ state: "detached" });
    // A viewer who arrives later sees the room as it stands.
    const late = await browser.newPage();
    await late.goto(`${a.http}/?room=mod-page`);
    await late.locator(`#events li[data-id="${ids[2]}"]`).waitFor();
    const shown = await late.locator("#events li .data").allTextContents();
    assert.deepEqual(shown, ["line 1, corrected", "line 2"]);
    await page.close();
    await late.close();
  });

  test("the demo page lists who is watching when tokens name them, across nodes", async () => {
    const secret = "browser-presence-secret";
    const signed = [await startNode({ redis, args: ["--jwt-secret", secret] }), await startNode({ redis, args: ["--jwt-secret", secret] })];
    try {
      const token = (sub, info) => jwt(secret, { sub, info, exp: now() + 600, rooms: ["*"], publish: ["*"] });
      const page = await browser.newPage();
      await page.goto(`${signed[0].http}/?room=watch-party&token=${token("ann", { name: "Ann" })}`);
      await page.locator('#members .member[data-sub="ann"]', { hasText: "Ann" }).waitFor();
      // Bob watches from the other node, in two tabs: one chip.
      const bob = [await browser.newPage(), await browser.newPage()];
      for (const tab of bob) await tab.goto(`${signed[1].http}/?room=watch-party&token=${token("bob")}`);
      await page.locator('#members .member[data-sub="bob"]', { hasText: "bob" }).waitFor();
      assert.equal(await page.locator("#members .member").count(), 2);
      // He closes both tabs: he leaves the list.
      for (const tab of bob) await tab.close();
      await page.locator('#members .member[data-sub="bob"]').waitFor({ state: "detached" });
      await page.close();
    } finally {
      for (const node of signed) await node.stop("SIGKILL");
    }
  });

  test("pusher-js in the page: a Pusher channel across nodes, with presence", async () => {
    const app = { id: "2002", key: "browser-key", secret: "browser-secret" };
    const args = ["--pusher-app-id", app.id, "--pusher-key", app.key, "--pusher-secret", app.secret];
    const pushers = [await startNode({ redis, args }), await startNode({ redis, args })];
    try {
      const server = new PusherServer({ appId: app.id, key: app.key, secret: app.secret, host: "127.0.0.1", port: String(pushers[1].port), useTLS: false });
      const page = await browser.newPage();
      await page.goto(other.url);
      await page.addScriptTag({ path: new URL("../node_modules/pusher-js/dist/web/pusher.min.js", import.meta.url).pathname });
      // The page asks the test for channel signatures, as it would ask its backend.
      await page.exposeFunction("authorize", (socketId, channel) =>
        server.authorizeChannel(socketId, channel, { user_id: "viewer", user_info: { name: "Viewer" } }),
      );
      await page.evaluate(
        ({ key, port }) => {
          window.got = [];
          const pusher = new window.Pusher(key, {
            cluster: "local",
            wsHost: "127.0.0.1",
            wsPort: port,
            forceTLS: false,
            enabledTransports: ["ws"],
            disableStats: true,
            channelAuthorization: { customHandler: ({ socketId, channelName }, cb) => window.authorize(socketId, channelName).then((a) => cb(null, a)) },
          });
          pusher.subscribe("browser-news").bind("headline", (d) => window.got.push(d));
          const stage = pusher.subscribe("presence-browser");
          stage.bind("pusher:subscription_succeeded", (m) => (window.members = m.count));
        },
        { key: app.key, port: pushers[0].port },
      );
      await page.waitForFunction(() => window.members === 1);
      await server.trigger("browser-news", "headline", { text: "from another node" });
      await page.waitForFunction(() => window.got.length === 1);
      assert.deepEqual(await pageGot(page), [{ text: "from another node" }]);
      const users = await (await server.get({ path: "/channels/presence-browser/users" })).json();
      assert.deepEqual(users.users, [{ id: "viewer" }]);
      await page.close();
    } finally {
      for (const node of pushers) await node.stop("SIGKILL");
    }
  });

  test("the client module keeps every event once and in order while its nodes restart", async () => {
    const page = await browser.newPage();
    await page.goto(`${a.http}/client.js`);
    await page.evaluate(
      async ([urls]) => {
        const { connect } = await import("/client.js");
        window.got = { ids: [], gaps: [] };
        const client = connect(urls, { minDelay: 50, maxDelay: 400 });
        const sub = client.subscribe("browser-1");
        sub.on("event", (e) => window.got.ids.push(e.id));
        sub.on("gap", (g) => window.got.gaps.push(g.after));
        await new Promise((r) => sub.once("subscribed", r));
      },
      [[a.ws, b.ws]],
    );
    const publishing = publishAll([a, b], "browser-1", 300, { pause: 5 });
    await until(async () => (await pageGot(page)).ids.length > 50, "the first events");
    await a.restart("SIGTERM");
    await until(async () => (await pageGot(page)).ids.length > 130, "events after a SIGTERM");
    await b.restart("SIGKILL");
    await until(async () => (await pageGot(page)).ids.length > 210, "events after a SIGKILL");
    await a.restart("SIGKILL");
    const ids = await publishing;
    await until(async () => (await pageGot(page)).ids.length >= ids.length, "every event", 20000);
    const got = await pageGot(page);
    assert.deepEqual(got.ids, ids, "each event once, in order");
    assert.deepEqual(got.gaps, []);
    await page.close();
  });

  test("plain EventSource resumes with Last-Event-ID across a node restart", async () => {
    const page = await browser.newPage();
    await page.goto(other.url);
    await page.evaluate((url) => {
      window.got = { ids: [], opens: 0 };
      const source = new EventSource(url);
      source.onopen = () => window.got.opens++;
      source.onmessage = (e) => window.got.ids.push(e.lastEventId);
    }, `${a.http}/rooms/sse-1/sse`);
    await until(async () => (await pageGot(page)).opens === 1, "the stream to open");
    const first = await publishAll([b], "sse-1", 20, { pause: 0 });
    await until(async () => (await pageGot(page)).ids.length === 20, "the first events");
    // The node restarts; what is published meanwhile must arrive on resume.
    await a.stop("SIGTERM");
    const missed = await publishAll([b], "sse-1", 20, { pause: 0 });
    await a.start();
    await until(async () => (await pageGot(page)).opens === 2, "EventSource to reconnect");
    const live = await publishAll([b], "sse-1", 5, { pause: 0 });
    await until(async () => (await pageGot(page)).ids.length >= 45, "every event");
    assert.deepEqual((await pageGot(page)).ids, [...first, ...missed, ...live]);
    await page.close();
  });

  test("a page of another origin reads history, room info and SSE through CORS", async () => {
    const id = await publish(a, "cors-1", { text: "across origins" });
    const page = await browser.newPage();
    await page.goto(other.url);
    const result = await page.evaluate(async (base) => {
      const history = await (await fetch(`${base}/rooms/cors-1/events?after=0`)).json();
      const info = await (await fetch(`${base}/rooms/cors-1`)).json();
      const streamed = await new Promise((resolve, reject) => {
        const source = new EventSource(`${base}/rooms/cors-1/sse?last_event_id=0`);
        source.onmessage = (e) => {
          source.close();
          resolve({ id: e.lastEventId, data: JSON.parse(e.data) });
        };
        source.onerror = () => reject(new Error("EventSource failed"));
      });
      return { history, info, streamed };
    }, a.http);
    assert.deepEqual(result.history.events, [{ id, data: { text: "across origins" } }]);
    assert.equal(result.info.last_event_id, id);
    assert.deepEqual(result.streamed, { id, data: { text: "across origins" } });
    await page.close();
  });

  test("a node with --allowed-origins refuses other origins' reads", async () => {
    const strict = await startNode({ args: ["--allowed-origins", "http://allowed.example"] });
    try {
      const page = await browser.newPage();
      await page.goto(other.url);
      const outcome = await page.evaluate(async (base) => {
        try {
          await fetch(`${base}/rooms/x/events`);
          return "read";
        } catch {
          return "refused";
        }
      }, strict.http);
      assert.equal(outcome, "refused");
      await page.close();
    } finally {
      await strict.stop("SIGKILL");
    }
  });
});
