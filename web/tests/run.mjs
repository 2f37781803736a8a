// flint's page tests in headless Chromium (run by `cargo xtask web-test`, which builds the site
// and serves it): node web/tests/run.mjs http://127.0.0.1:PORT
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM), started with WebGPU on and kept off
// the network. Each test prints one line; the run fails if any test fails. Screenshots and the
// conformance rows are written under target/web/results for a person to look at.
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { bench } from "./bench.mjs";
import { chat } from "./chat.mjs";
import { conformance } from "./conformance.mjs";
import { gemma } from "./gemma.mjs";
import { vision } from "./vision.mjs";

// Paths (fixtures, results) are the repository's: run from wherever.
process.chdir(new URL("../..", import.meta.url).pathname);
const url = process.argv[2];
if (!url) {
  console.error("usage: node web/tests/run.mjs http://127.0.0.1:PORT");
  process.exit(2);
}
const results = "target/web/results";
mkdirSync(results, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
  ],
});

const tests = [
  ["chat with the default model", chat],
  ["a multimodal model from its files", vision],
  ["Gemma 3 from GGUF", gemma],
  ["benches", bench],
  ["conformance table", conformance],
];
// FLINT_WEB_TEST=part runs only the tests whose name contains it.
const only = process.env.FLINT_WEB_TEST;
const selected = tests.filter(([name]) => !only || name.includes(only));
if (selected.length === 0) {
  console.error(`FLINT_WEB_TEST=${only} matches none of: ${tests.map(([n]) => n).join(", ")}`);
  process.exit(2);
}
let failed = 0;
try {
  for (const [name, test] of selected) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
    const started = Date.now();
    try {
      const note = await test(page, url, results);
      console.log(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${note}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${e.message}`);
      for (const l of logs.slice(-20)) console.log(`     ${l}`);
    } finally {
      await page.close();
    }
  }
} finally {
  await browser.close();
}
writeFileSync(`${results}/summary.txt`, `${selected.length - failed} passed, ${failed} failed\n`);
console.log(`${selected.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
