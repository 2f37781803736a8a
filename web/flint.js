// flint's JavaScript entry point: loads the WebAssembly module that `cargo xtask web` built and
// binds (pkg/flint_web.js) and wraps its API so that a Rust panic reaches the caller as an
// Error carrying the panic's message instead of a bare "unreachable" trap.
import init, { Flint, lastPanic, onPanic } from "./pkg/flint_web.js";

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
  };
}
