// The chat page with the default model (SmolLM2-135M-Instruct Q4_1, which `cargo xtask web`
// serves from flint's cache): a reply streams into the page (screenshot under
// target/web/results); greedy decoding of the held prompt gives the ids transformers gave,
// which native flint's tests hold too (tests/fixtures/models/smollm2-135m.json), and so do
// four contemplate branches at temperature 0; cancelling stops after the token it was asked
// at; think mode splits its reply; and bad input (a URL
// that 404s, a file that is not GGUF, a malformed request) is an error with a message.
import { readFileSync, writeFileSync } from "node:fs";

const MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

export async function chat(page, url, results) {
  const fixture = JSON.parse(readFileSync("tests/fixtures/models/smollm2-135m.json", "utf8"));
  const prompt = "What is 2 + 2?";
  await page.goto(`${url}/index.html?auto=1&max=24&model=${encodeURIComponent(MODEL)}&prompt=${encodeURIComponent(prompt)}`);
  await page.waitForFunction(() => ["done", "error"].includes(window.flintChat?.state), null, {
    timeout: 10 * 60 * 1000,
    polling: 500,
  });
  await page.screenshot({ path: `${results}/chat.png` });
  const first = await page.evaluate(() => ({ state: window.flintChat.state, error: window.flintChat.error, last: window.flintChat.last }));
  if (first.state !== "done") throw new Error(`the chat page reported: ${first.error}`);
  const shown = await page.locator(".msg.assistant .text").last().textContent();
  if (!first.last.text.trim() || shown.trim() !== first.last.text.trim()) {
    throw new Error(`the page shows ${JSON.stringify(shown)} for the reply ${JSON.stringify(first.last.text)}`);
  }

  const checks = await page.evaluate(async (fx) => {
    const model = window.flintChat.model;
    const out = {};
    // Greedy from the held prompt ids, as native flint's models test runs it.
    const greedy = await model.generate({ ids: fx.logits.ids, max_tokens: fx.greedy.length, temperature: 0 });
    out.greedy = greedy.generated_ids;
    out.timings = greedy.timings;
    // Asked to stop at the third token.
    let seen = 0;
    const cut = await model.generate({ ids: fx.logits.ids, max_tokens: 50, temperature: 0 }, () => ++seen < 3);
    out.cancelled = { stop: cut.stop, ids: cut.generated_ids };
    // Think mode: the reply is split into reasoning and answer.
    const think = await model.generate({ prompt: "What is 3 + 5?", mode: "think", max_tokens: 12 });
    out.think = { mode: think.mode, reasoning: think.reasoning, answer: think.answer, text: think.text };
    // Contemplate: four branches from one prefill (sharing its KV pages) at temperature 0 are
    // the same, and the same as one greedy generation.
    const streamed = [[], [], [], []];
    const many = await model.generate(
      { ids: fx.logits.ids, mode: "contemplate", branches: 4, temperature: 0, max_tokens: fx.greedy.length },
      (piece) => { streamed[piece.branch].push(piece.id); },
    );
    out.contemplate = { branches: many.branches.map((b) => b.generated_ids), streamed, chosen: many.chosen, tally: many.tally };
    // model.cancel() from outside the callback, during a contemplate run.
    let pieces = 0;
    const stopped = await model.generate(
      { ids: fx.logits.ids, mode: "contemplate", branches: 2, temperature: 0, max_tokens: 40 },
      () => { if (++pieces === 4) setTimeout(() => model.cancel(), 0); },
    );
    out.stopped = { stop: stopped.stop, lengths: stopped.branches.map((b) => b.generated_ids.length), chosen: stopped.chosen, timings: stopped.timings };
    // Bad input.
    const error = async (f) => {
      try {
        await f();
        return null;
      } catch (e) {
        return String(e.message ?? e);
      }
    };
    const flint = window.flintChat.flint;
    out.errors = {
      missing: await error(() => flint.loadModel("models/no-such-model.gguf")),
      notGguf: await error(() => flint.loadModel("index.html")),
      neither: await error(() => model.generate({ max_tokens: 4 })),
      unknownField: await error(() => model.generate({ prompt: "hi", max_token: 4 })),
      branches: await error(() => model.generate({ prompt: "hi", mode: "contemplate", branches: 99 })),
      outsideVocab: await error(() => model.generate({ ids: [1, 10_000_000], max_tokens: 2 })),
      noBudget: await error(() => model.generate({ prompt: "hi", max_tokens: 0 })),
    };
    return out;
  }, fixture);
  writeFileSync(`${results}/chat.json`, JSON.stringify({ first: first.last, ...checks }, null, 1));

  if (!same(checks.greedy, fixture.greedy)) {
    throw new Error(`greedy ids ${JSON.stringify(checks.greedy)}, transformers and native flint give ${JSON.stringify(fixture.greedy)}`);
  }
  if (checks.cancelled.stop !== "cancelled" || !same(checks.cancelled.ids, fixture.greedy.slice(0, 3))) {
    throw new Error(`cancelling at the third token gave ${JSON.stringify(checks.cancelled)}`);
  }
  const c = checks.contemplate;
  if (c.branches.length !== 4 || !c.branches.every((b) => same(b, fixture.greedy)) || !same(c.streamed, c.branches)) {
    throw new Error(`contemplate with 4 branches at temperature 0 gave ${JSON.stringify(c)}`);
  }
  const th = checks.think;
  const parts = `${th.reasoning ?? ""}${th.answer ?? ""}`.replace(/\s+/g, "");
  if (th.mode !== "think" || typeof th.reasoning !== "string" || typeof th.answer !== "string" || !parts ||
      !th.text.replace(/\s+/g, "").includes((th.reasoning ?? "").replace(/\s+/g, ""))) {
    throw new Error(`think mode gave ${JSON.stringify(th)}: its reasoning and answer are not the reply split`);
  }
  const st = checks.stopped;
  if (st.stop !== "cancelled" || st.chosen !== null || st.lengths.some((n) => n >= 40) || !(st.timings.generated_tokens > 0)) {
    throw new Error(`model.cancel() during contemplate gave ${JSON.stringify(st)}`);
  }
  const want = {
    missing: /HTTP 404/,
    notGguf: /not a GGUF file/,
    neither: /exactly one of prompt, messages and ids/,
    unknownField: /unknown field `max_token`/,
    branches: /branches is 99; the page runs 1 to 16/,
    outsideVocab: /10000000.*vocabulary|vocabulary.*10000000/,
    noBudget: /max_tokens is 0/,
  };
  for (const [k, re] of Object.entries(want)) {
    if (!checks.errors[k] || !re.test(checks.errors[k])) {
      throw new Error(`bad input ${k}: expected an error matching ${re}, got ${JSON.stringify(checks.errors[k])}`);
    }
  }
  // A second turn through the page carries the conversation; a third is stopped with the stop
  // button once tokens have streamed, and the page takes a turn after it.
  const turn = async (text, max, stopAfter) => {
    await page.fill("#max", String(max));
    await page.fill("#prompt", text);
    await page.click("#send");
    if (stopAfter) {
      await page.waitForFunction((n) => /^(\d+) tokens/.test(document.getElementById("stats").textContent) &&
        Number(document.getElementById("stats").textContent.split(" ")[0]) >= n, stopAfter, { timeout: 5 * 60 * 1000 });
      await page.click("#stop");
    }
    await page.waitForFunction(() => ["done", "error"].includes(window.flintChat.state), null, { timeout: 5 * 60 * 1000 });
    const r = await page.evaluate(() => ({ state: window.flintChat.state, error: window.flintChat.error, last: window.flintChat.last }));
    if (r.state !== "done") throw new Error(`the turn "${text}": ${r.error}`);
    return r.last;
  };
  const second = await turn("And 3 + 3?", 12);
  const carried = first.last.prompt_ids.length + first.last.generated_ids.length;
  if (second.prompt_ids.length <= carried || !same(second.prompt_ids.slice(0, first.last.prompt_ids.length), first.last.prompt_ids)) {
    throw new Error(`the second turn's prompt (${second.prompt_ids.length} ids) does not carry the first turn (${carried})`);
  }
  const third = await turn("Count from one to forty.", 60, 3);
  if (third.stop !== "cancelled" || third.generated_ids.length >= 60) {
    throw new Error(`the stop button: ${JSON.stringify({ stop: third.stop, n: third.generated_ids.length })}`);
  }
  await turn("Thanks.", 4);
  await page.screenshot({ path: `${results}/chat-turns.png`, fullPage: true });
  const t = checks.timings;
  return `greedy ids equal transformers'; reply "${first.last.text.trim().slice(0, 60)}"; ` +
    `prefill ${t.prompt_tokens} tokens at ${t.prefill_tokens_per_s.toFixed(1)} tok/s, decode ${t.decode_tokens_per_s.toFixed(1)} tok/s`;
}
