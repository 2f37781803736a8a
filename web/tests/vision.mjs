// A multimodal model in the page: the tiny Idefics3 fixture (tests/fixtures/idefics3/tiny-a, a
// Hugging Face directory that `cargo xtask web` serves under fixtures/) loads from its files,
// and its two-image prompt gives the prompt ids and the greedy ids transformers gave (held in
// tiny-a.expected.safetensors, which native flint's vision test checks too). Then an image is
// attached in the chat page as a person would (screenshot under target/web/results).
import { readFileSync, writeFileSync } from "node:fs";

const DIR = "tests/fixtures/idefics3";

/** Integer tensors of a safetensors file, by name. */
function safetensorsInts(path) {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8"));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__" || t.dtype !== "I32") continue;
    const [a, b] = t.data_offsets;
    const data = bytes.subarray(8 + n + a, 8 + n + b);
    out[name] = Array.from({ length: data.length / 4 }, (_, i) => data.readInt32LE(i * 4));
  }
  return out;
}

export async function vision(page, url, results) {
  const expected = safetensorsInts(`${DIR}/tiny-a.expected.safetensors`);
  const prompt = readFileSync(`${DIR}/tiny-a.prompt.txt`, "utf8");
  await page.goto(`${url}/index.html?auto=1&model=${encodeURIComponent("fixtures/idefics3/tiny-a")}`);
  await page.waitForFunction(() => ["loaded", "error"].includes(window.flintChat?.state), null, {
    timeout: 5 * 60 * 1000,
    polling: 250,
  });
  const loaded = await page.evaluate(() => ({ state: window.flintChat.state, error: window.flintChat.error }));
  if (loaded.state !== "loaded") throw new Error(`loading the fixture: ${loaded.error}`);

  const got = await page.evaluate(async ({ prompt, n }) => {
    const model = window.flintChat.model;
    const fetchBytes = async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer());
    const images = [
      await fetchBytes("fixtures/idefics3/tiny-a.image0.png"),
      await fetchBytes("fixtures/idefics3/tiny-a.image1.png"),
    ];
    // As the fixture was made: the raw prompt (its own <image> placeholders), greedy, no stop
    // tokens.
    const r = await model.generate({ prompt, max_tokens: n, temperature: 0, stop: [] }, null, images);
    // The same first image as decoded pixels (ImageData) gives the same ids.
    const bitmap = await createImageBitmap(new Blob([images[0]], { type: "image/png" }));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    const r2 = await model.generate({ prompt, max_tokens: n, temperature: 0, stop: [] }, null, [data, images[1]]);
    // And as an ImageBitmap and a File.
    const file = new File([images[1]], "image1.png", { type: "image/png" });
    const r3 = await model.generate({ prompt, max_tokens: n, temperature: 0, stop: [] }, null, [bitmap, file]);
    let missing = null;
    try {
      await model.generate({ prompt, max_tokens: 2 }, null, [images[0]]);
    } catch (e) {
      missing = String(e.message ?? e);
    }
    let broken = null;
    try {
      await model.generate({ prompt, max_tokens: 2 }, null, [images[0], new Uint8Array([1, 2, 3])]);
    } catch (e) {
      broken = String(e.message ?? e);
    }
    return {
      prompt_ids: r.prompt_ids,
      greedy: r.generated_ids,
      fromImageData: r2.generated_ids,
      fromBitmapAndFile: r3.generated_ids,
      missing,
      broken,
    };
  }, { prompt, n: expected.greedy.length });
  writeFileSync(`${results}/vision.json`, JSON.stringify(got, null, 1));
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  if (!same(got.prompt_ids, expected.input_ids)) throw new Error("the prompt's ids differ from transformers'");
  if (!same(got.greedy, expected.greedy)) {
    throw new Error(`greedy ids ${JSON.stringify(got.greedy)}, transformers and native flint give ${JSON.stringify(expected.greedy)}`);
  }
  if (!same(got.fromImageData, expected.greedy)) throw new Error(`from ImageData: ${JSON.stringify(got.fromImageData)}`);
  if (!same(got.fromBitmapAndFile, expected.greedy)) {
    throw new Error(`from an ImageBitmap and a File: ${JSON.stringify(got.fromBitmapAndFile)}`);
  }
  if (!/image/i.test(got.missing ?? "")) throw new Error(`two placeholders and one image: ${got.missing}`);
  if (!/image 1.*(not a readable image|does not decode)/.test(got.broken ?? "")) {
    throw new Error(`a broken image file: ${got.broken}`);
  }

  // A person's turn: attach an image and ask.
  await page.setInputFiles("#image", `${DIR}/tiny-a.image0.png`);
  await page.fill("#max", "8");
  await page.fill("#prompt", "What is in this image?");
  await page.click("#send");
  await page.waitForFunction(() => ["done", "error"].includes(window.flintChat.state), null, { timeout: 5 * 60 * 1000 });
  await page.screenshot({ path: `${results}/vision.png` });
  const turn = await page.evaluate(() => ({ state: window.flintChat.state, error: window.flintChat.error, last: window.flintChat.last }));
  if (turn.state !== "done") throw new Error(`a chat turn with an image: ${turn.error}`);
  return `${expected.input_ids.length} prompt ids and ${expected.greedy.length} greedy ids equal transformers' (image files, File, ImageData, ImageBitmap); ` +
    `a chat turn with an attached image ran (${turn.last.prompt_ids.length} prompt tokens)`;
}
