// flint's JavaScript entry point: loads the WebAssembly module that `cargo xtask web` built and
// binds (pkg/flint_web.js) and wraps its API so that a Rust panic reaches the caller as an
// Error carrying the panic's message instead of a bare "unreachable" trap.
import init, { Flint, lastPanic, onPanic } from "./pkg/flint_web.js";

/** Largest model file the page loads: wasm32's memory holds at most 4 GiB, and the file's
 * bytes and flint's copy of what it parses share it. */
export const MAX_MODEL_BYTES = 2 ** 31;

let ready = null;
let dead = null;
// Rejects when flint panics: a trap inside an awaited call would otherwise leave its promise
// pending for ever.
let rejectPanicked;
const panicked = new Promise((_, reject) => { rejectPanicked = reject; });
panicked.catch(() => {});

/** Load the module once. */
function load() {
  ready ??= init().then(() => onPanic((message) => {
    dead = `flint panicked: ${message} (reload the page to start again)`;
    rejectPanicked(new Error(dead));
  }));
  return ready;
}

/** Rethrow a WebAssembly trap as the panic that caused it; after one, the module is unusable. */
function rethrow(e) {
  if (e instanceof WebAssembly.RuntimeError) {
    const message = lastPanic() ?? e.message;
    dead = `flint panicked: ${message} (reload the page to start again)`;
    throw new Error(dead);
  }
  throw e;
}

/** Call `f`, turning a trap into an Error with the panic's message. */
async function guarded(f) {
  if (dead) throw new Error(dead);
  try {
    return await Promise.race([f(), panicked]);
  } catch (e) {
    rethrow(e);
  }
}

/**
 * Open the browser's WebGPU adapter for flint. Rejects with the reason when the browser has no
 * WebGPU (`navigator.gpu` missing) or gives no adapter.
 */
export async function open() {
  if (!("gpu" in navigator)) {
    throw new Error("this browser has no WebGPU (navigator.gpu is missing); Chromium needs --enable-unsafe-webgpu on Linux");
  }
  await load();
  const flint = await guarded(() => Flint.open());
  return {
    /** The adapter: name, backend, driver, features and limits. */
    adapter: () => JSON.parse(flint.adapter()),
    /** Names of the conformance cases whose op or name starts with `filter`. */
    cases: (filter = "", bench = false) => flint.cases(filter, bench),
    /**
     * Run the conformance table (as `flint conformance --json`): `onRow(row)` is called as each
     * case finishes; resolves to every row.
     */
    conformance: (filter = "", { bench = false, onRow } = {}) =>
      guarded(async () => {
        const rows = await flint.conformance(filter, bench, onRow ? (r) => onRow(JSON.parse(r)) : undefined);
        return JSON.parse(rows);
      }),
    /** The adapter's measured peaks: {gflops, gbs, source} (as `flint bench` measures them). */
    roofline: () => guarded(async () => JSON.parse(await flint.roofline())),
    /**
     * Time the bench-tier kernel cases whose op or name starts with `filter` (`all` adds the
     * test tier), `iters` launches each, against `roofline` (measured when not given); rows as
     * `flint bench --json` prints them, each passed to `onRow` as it finishes.
     */
    bench: (filter = "", { all = false, iters = 20, roofline, onRow } = {}) =>
      guarded(async () => {
        const peaks = roofline ?? JSON.parse(await flint.roofline());
        const cb = onRow ? (r) => onRow(JSON.parse(r)) : undefined;
        return JSON.parse(await flint.bench(filter, all, iters, JSON.stringify(peaks), cb));
      }),
    /**
     * Fetch a GGUF model from `url` and load it onto the device. `onProgress({phase, done,
     * total})` reports the download (`phase` "download", bytes) and then the upload ("load").
     * Rejects with a message naming the URL on an HTTP error, a file that is not GGUF or one
     * larger than the page can hold.
     */
    loadModel: (url, { onProgress } = {}) =>
      guarded(async () => {
        const name = decodeURIComponent(new URL(url, location.href).pathname.split("/").pop() || url);
        const bytes = await fetchBytes(url, onProgress);
        onProgress?.({ phase: "load", done: 0, total: bytes.length });
        // Let the page paint the progress before the upload holds the thread.
        await new Promise((r) => setTimeout(r, 0));
        const model = await guarded(async () => flint.loadGguf(name, bytes));
        onProgress?.({ phase: "load", done: bytes.length, total: bytes.length });
        return wrapModel(model);
      }),
    /**
     * Load a Hugging Face model directory from its files: `files` maps each file name
     * (config.json, model.safetensors, tokenizer.json, ...) to its bytes (Uint8Array); `name`
     * stands for the directory in errors.
     */
    loadHfFiles: (name, files) => guarded(async () => wrapModel(flint.loadHf(name, files))),
    /**
     * Fetch a Hugging Face model directory served under `baseUrl` and load it: config.json,
     * tokenizer.json and the weights (model.safetensors, or the shards its index lists), with
     * the tokenizer, chat template and processor configs where the directory has them.
     * Progress as for loadModel, with the `file` being fetched.
     */
    loadHf: (baseUrl, { onProgress } = {}) =>
      guarded(async () => {
        const base = baseUrl.replace(/\/+$/, "");
        const files = {};
        const get = async (n, optional) => {
          try {
            files[n] = await fetchBytes(`${base}/${n}`, onProgress && ((p) => onProgress({ ...p, file: n })));
          } catch (e) {
            if (!optional || !/HTTP 404/.test(e.message)) throw e;
          }
        };
        for (const n of ["config.json", "tokenizer.json"]) await get(n, false);
        for (const n of HF_OPTIONAL) await get(n, true);
        let shards = ["model.safetensors"];
        if (files["model.safetensors.index.json"]) {
          const index = JSON.parse(new TextDecoder().decode(files["model.safetensors.index.json"]));
          shards = [...new Set(Object.values(index.weight_map ?? {}))];
        }
        for (const n of shards) await get(n, false);
        const name = decodeURIComponent(base.split("/").pop() || base);
        return wrapModel(flint.loadHf(name, files));
      }),
  };
}

/** The files of a Hugging Face model directory that flint reads when they are there. */
const HF_OPTIONAL = [
  "model.safetensors.index.json",
  "tokenizer_config.json",
  "chat_template.jinja",
  "chat_template.json",
  "processor_config.json",
  "preprocessor_config.json",
];

/** Download `url` into one byte array, reporting progress. */
async function fetchBytes(url, onProgress) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new Error(`fetching ${url}: ${e.message}`);
  }
  if (!res.ok) {
    throw new Error(`fetching ${url}: HTTP ${res.status} ${res.statusText}`.trim());
  }
  const total = Number(res.headers.get("content-length")) || 0;
  if (total > MAX_MODEL_BYTES) {
    throw new Error(`${url} is ${total} bytes; the page holds models up to ${MAX_MODEL_BYTES} bytes (wasm32 memory)`);
  }
  const reader = res.body.getReader();
  const chunks = [];
  let done = 0;
  for (;;) {
    const { done: end, value } = await reader.read();
    if (end) break;
    chunks.push(value);
    done += value.length;
    if (done > MAX_MODEL_BYTES) {
      await reader.cancel();
      throw new Error(`${url} is over ${MAX_MODEL_BYTES} bytes; the page holds models up to that (wasm32 memory)`);
    }
    onProgress?.({ phase: "download", done, total });
  }
  const bytes = new Uint8Array(done);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}

/**
 * An image as flint takes it: an image file's bytes (Uint8Array, ArrayBuffer, or a File or
 * Blob, read here) or decoded pixels (ImageData; an ImageBitmap or canvas is drawn into one).
 */
async function imageInput(image) {
  if (image instanceof Uint8Array || image instanceof ImageData) return image;
  if (image instanceof ArrayBuffer) return new Uint8Array(image);
  if (typeof Blob !== "undefined" && image instanceof Blob) return new Uint8Array(await image.arrayBuffer());
  if ((typeof ImageBitmap !== "undefined" && image instanceof ImageBitmap) ||
      (typeof OffscreenCanvas !== "undefined" && image instanceof OffscreenCanvas) ||
      (typeof HTMLCanvasElement !== "undefined" && image instanceof HTMLCanvasElement)) {
    const canvas = new OffscreenCanvas(image.width, image.height);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0);
    return ctx.getImageData(0, 0, image.width, image.height);
  }
  return image; // flint says what it expected
}

/** The JavaScript face of a loaded model. */
function wrapModel(model) {
  // A cancel asked for while a generation's images are still being read reaches it once it
  // has started (flint clears its flag when a generation starts).
  let cancelAsked = false;
  return {
    /** Family, sizes, chat template. */
    info: () => JSON.parse(model.info()),
    /** Token ids of `text`. */
    encode: (text, special = true) => Array.from(model.encode(text, special)),
    /**
     * Generate a reply to `request` ({prompt | messages | ids, mode, branches, max_tokens,
     * temperature, top_k, top_p, seed, stop, chat}); `onToken({id, text, reasoning, answer,
     * branch})` per new token may return false to stop; `images` (image files as Uint8Array,
     * ArrayBuffer, File or Blob; pixels as ImageData, ImageBitmap or a canvas) for the prompt's
     * image placeholders, in order. Resolves to the
     * result (ids, text, stop, timings; branches and the vote when contemplating).
     */
    generate: (request, onToken, images) =>
      guarded(async () => {
        const cb = onToken ? (piece) => onToken(JSON.parse(piece)) : undefined;
        cancelAsked = false;
        const given = images ? await Promise.all(Array.from(images, imageInput)) : undefined;
        const running = model.generate(JSON.stringify(request), cb, given);
        if (cancelAsked) model.cancel();
        return JSON.parse(await running);
      }),
    /**
     * Time the prefill of the prompt `ids` and one decode step after it, per dispatch (GPU
     * timestamps): {timestamps, prefill: [[label, us]], step: [[label, us]]}.
     */
    profile: (ids) => guarded(async () => JSON.parse(await model.profile(Uint32Array.from(ids)))),
    /** Stop the running generation after its current token. */
    cancel: () => {
      cancelAsked = true;
      model.cancel();
    },
    /** Free the model's GPU memory now rather than when it is garbage collected. */
    dispose: () => model.free(),
  };
}
