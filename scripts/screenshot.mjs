// Renders the demo page (docs/demo.png) the way a viewer sees it: a node on
// the embedded store, a few chat events, a second viewer, a reaction burst.
// Usage: node scripts/screenshot.mjs [path] (after `cargo build`; needs the
// client's dev packages: cd clients/js && npm ci).
import { chromium } from "../clients/js/node_modules/playwright-core/index.mjs";
import { execFileSync } from "node:child_process";
import { publish, startNode } from "../clients/js/test/support.js";

const out = process.argv[2] || "docs/demo.png";
const node = await startNode();
const browser = await chromium.launch({
  executablePath: execFileSync("sh", ["-c", "command -v chromium"]).toString().trim(),
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
});
try {
  const room = "show-42";
  const viewer = await browser.newPage();
  await viewer.goto(`${node.http}/?room=${room}`);
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  await page.goto(`${node.http}/?room=${room}`);
  await page.locator("#state.connected").waitFor();
  const lines = [
    { text: "Welcome to the final! Doors open in five minutes." },
    { text: "Round 1: Ana leads 3-1" },
    { bid: 1200, lot: "signed guitar" },
    { text: "Round 2 starts now" },
  ];
  for (const data of lines) await publish(node, room, data);
  for (const key of ["👏", "👏", "🔥", "❤️"]) await page.click(`button[data-key="${key}"]`);
  await page.waitForFunction(() => document.querySelector("#audience").textContent === "2");
  await page.waitForTimeout(1200);
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await node.stop("SIGKILL");
}
