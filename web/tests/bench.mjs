// The bench page: SmolLM2's prefill and decode speed, a decode step's GPU time by kind of
// kernel, the adapter's roofline and a few kernel benches, all on the browser's adapter. The
// figures are written to target/web/results/bench.json (the test checks that they are there
// and sane, not how fast they are: speed is measured, not asserted).
import { writeFileSync } from "node:fs";

export async function bench(page, url, results) {
  await page.goto(`${url}/bench.html?run=1&prefill=64&steps=12&iters=5&op=${encodeURIComponent("qmatmul_q4_1_1x1536")}`);
  await page.waitForFunction(() => window.flintBench?.done, null, { timeout: 10 * 60 * 1000, polling: 500 });
  const state = await page.evaluate(() => window.flintBench);
  await page.screenshot({ path: `${results}/bench.png`, fullPage: true });
  writeFileSync(`${results}/bench.json`, JSON.stringify(state, null, 1));
  if (state.error) throw new Error(`the page reported: ${state.error}`);
  const m = state.model;
  if (!(m.prefill_tokens_per_s > 0 && m.decode_tokens_per_s > 0 && m.generated_tokens === 12)) {
    throw new Error(`model figures: ${JSON.stringify(m)}`);
  }
  if (!(state.roofline.gflops > 0 && state.roofline.gbs > 0)) throw new Error(`roofline: ${JSON.stringify(state.roofline)}`);
  const timed = state.rows.filter((r) => r.median_us > 0 && r.gflops > 0);
  if (timed.length === 0 || state.rows.some((r) => r.error)) throw new Error(`kernel rows: ${JSON.stringify(state.rows)}`);
  const top = state.profile ? state.profile.kinds.slice(0, 3).map((k) => `${k.kind} ${(100 * k.us / state.profile.total_us).toFixed(0)}%`) : [];
  return `decode ${m.decode_tokens_per_s.toFixed(2)} tok/s, prefill ${m.prefill_tokens_per_s.toFixed(1)} tok/s` +
    (state.profile ? `; a step is ${(state.profile.total_us / 1e3).toFixed(1)} ms of GPU time (${top.join(", ")})` : "") +
    `; roofline ${state.roofline.gflops.toFixed(1)} GFLOP/s, ${state.roofline.gbs.toFixed(1)} GB/s; ` +
    timed.map((r) => `${r.case} ${r.gbs.toFixed(2)} GB/s`).join(", ");
}
