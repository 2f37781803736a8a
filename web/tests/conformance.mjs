// The whole conformance table on the browser's adapter: every test-tier case passes or is
// skipped with a reason (as `flint conformance` on a native adapter).
import { writeFileSync } from "node:fs";

export async function conformance(page, url, results) {
  await page.goto(`${url}/conformance.html?run=1`);
  await page.waitForFunction(() => window.flintConformance?.done, null, { timeout: 30 * 60 * 1000, polling: 1000 });
  const state = await page.evaluate(() => window.flintConformance);
  await page.screenshot({ path: `${results}/conformance.png`, fullPage: false });
  writeFileSync(`${results}/conformance.json`, JSON.stringify(state, null, 1));
  if (state.error) throw new Error(`the page reported: ${state.error}`);
  if (state.rows.length === 0) throw new Error("no case ran");
  const bad = state.rows.filter((r) => r.status === "fail");
  const unexplained = state.rows.filter((r) => r.status === "skip" && !r.reason);
  if (bad.length || unexplained.length) {
    const lines = bad.slice(0, 15).map((r) => `${r.case}: ${r.reason}`);
    throw new Error(`${bad.length} failed, ${unexplained.length} skipped without a reason\n     ${lines.join("\n     ")}`);
  }
  const skips = [...new Set(state.rows.filter((r) => r.status === "skip").map((r) => r.reason))];
  return `${state.passed} passed, ${state.skipped} skipped on ${state.adapter.label} in ${state.seconds.toFixed(1)} s` +
    (skips.length ? ` (skip reasons: ${skips.join("; ")})` : "");
}
