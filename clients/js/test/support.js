// Real parts for the client's tests: redis-server and roomcast nodes on
// free loopback ports, started and stopped as the tests need them.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, "../../..");
export const binary = process.env.ROOMCAST_BIN || path.join(root, "target/debug/roomcast");

/** A free loopback port. */
export async function freePort() {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** Resolves once `check()` is truthy, polling every `every` ms; rejects after `timeout`. */
export async function until(check, what, timeout = 15000, every = 20) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let value;
    try {
      value = await check();
    } catch {
      value = undefined;
    }
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : once(child, "exit");
}

/** A redis-server of the test's own. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const url = `redis://127.0.0.1:${port}`;
  await until(() => ping(port), "redis-server to answer");
  return {
    url,
    async stop() {
      child.kill("SIGKILL");
      await exited(child);
    },
  };
}

async function ping(port) {
  const { connect } = await import("node:net");
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      s.destroy();
      resolve(d.toString().startsWith("+PONG"));
    });
    s.on("error", () => resolve(false));
  });
}

/** A roomcast node on a port of its own; `restart()` brings it back on the same port. */
export async function startNode({ redis, args = [] } = {}) {
  const port = await freePort();
  const node = {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/ws`,
    child: null,
    async start() {
      const all = ["serve", "--listen", `127.0.0.1:${port}`, "--shutdown-grace", "2", ...args];
      if (redis) all.push("--redis", redis.url);
      const child = spawn(binary, all, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
      child.stderr.on("data", (d) => process.env.ROOMCAST_TEST_LOGS && process.stderr.write(d));
      this.child = child;
      await until(async () => (await fetch(`${this.http}/readyz`)).ok, `node on ${port} to be ready`);
    },
    /** Stops the process with `signal` and waits for it to exit. */
    async stop(signal = "SIGTERM") {
      const child = this.child;
      if (!child) return;
      this.child = null;
      child.kill(signal);
      await exited(child);
    },
    async restart(signal = "SIGTERM") {
      await this.stop(signal);
      await this.start();
    },
  };
  await node.start();
  return node;
}

/** Publishes over HTTP; returns the stored id. */
export async function publish(node, room, data, headers = {}) {
  const res = await fetch(`${node.http}/rooms/${room}/events`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(data),
  });
  if (res.status !== 201 && res.status !== 200) throw new Error(`publish answered ${res.status}`);
  return (await res.json()).id;
}

/**
 * Publishes `count` events to `room`, each retried on another node until it
 * is stored (one idempotency key per event, so a retry never doubles it).
 * Returns the stored ids in publish order.
 */
export async function publishAll(nodes, room, count, { pause = 5 } = {}) {
  const ids = [];
  const batch = Math.random().toString(36).slice(2);
  for (let i = 0; i < count; i++) {
    const key = `${batch}-${i}`;
    for (let attempt = 0; ; attempt++) {
      const node = nodes[(i + attempt) % nodes.length];
      try {
        ids.push(await publish(node, room, { n: i }, { "idempotency-key": key }));
        break;
      } catch {
        if (attempt > 400) throw new Error(`event ${i} could not be published`);
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    if (pause) await new Promise((r) => setTimeout(r, pause));
  }
  return ids;
}

/** An HS256 JWT. */
export function jwt(secret, claims) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Seconds since the epoch. */
export const now = () => Math.floor(Date.now() / 1000);
