// Gemma 3 (gemma-3-270m Q4_K_M: Q5_0, Q4_K, Q6_K and Q8_0 weights, a 262k-token head, sliding
// window layers) from GGUF in the page: greedy decoding of the held prompt gives the ids
// transformers gave, which native flint's tests hold too (tests/fixtures/models/gemma3-270m.json).
import { readFileSync } from "node:fs";

const MODEL = "models/gemma-3-270m-q4_k_m.gguf";

export async function gemma(page, url) {
  const fixture = JSON.parse(readFileSync("tests/fixtures/models/gemma3-270m.json", "utf8"));
  await page.goto(`${url}/index.html?auto=1&model=${encodeURIComponent(MODEL)}`);
  await page.waitForFunction(() => ["loaded", "error"].includes(window.flintChat?.state), null, {
    timeout: 5 * 60 * 1000,
    polling: 500,
  });
  const loaded = await page.evaluate(() => ({ state: window.flintChat.state, error: window.flintChat.error }));
  if (loaded.state !== "loaded") throw new Error(`loading ${MODEL}: ${loaded.error}`);
  const r = await page.evaluate(
    (fx) => window.flintChat.model.generate({ ids: fx.logits.ids, max_tokens: fx.greedy.length, temperature: 0, stop: [] }),
    fixture,
  );
  if (JSON.stringify(r.generated_ids) !== JSON.stringify(fixture.greedy)) {
    throw new Error(`greedy ids ${JSON.stringify(r.generated_ids)}, transformers and native flint give ${JSON.stringify(fixture.greedy)}`);
  }
  return `greedy ids equal transformers'; decode ${r.timings.decode_tokens_per_s.toFixed(2)} tok/s`;
}
