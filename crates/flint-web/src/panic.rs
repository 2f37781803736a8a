//! Panics in the browser. wasm32 aborts on a panic with an `unreachable` trap that carries no
//! text, and a trap inside an awaited call leaves its promise pending for ever. The hook
//! installed here keeps the panic's message, writes it to the console and hands it to the
//! listener `web/flint.js` registers ([`on_panic`]), which rejects every pending call with it.

use std::cell::RefCell;
use std::sync::Mutex;

use js_sys::Function;
use wasm_bindgen::prelude::*;

static LAST: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static LISTENER: RefCell<Option<Function>> = const { RefCell::new(None) };
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// Keep every panic's message for [`last_panic`] (idempotent).
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            if cfg!(target_arch = "wasm32") {
                console_error(&format!("flint panicked: {message}"));
            }
            if cfg!(target_arch = "wasm32") {
                LISTENER.with(|l| {
                    if let Some(f) = l.borrow().as_ref() {
                        let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&message));
                    }
                });
            }
            if let Ok(mut last) = LAST.lock() {
                *last = Some(message);
            }
        }));
    });
}

/// The message of the last panic, if flint has panicked: after a panic the module's state is
/// lost and the page must load it again.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST.lock().ok().and_then(|l| l.clone())
}

/// Call `listener(message)` when flint panics (it must not call into flint: the module is
/// unusable after a panic).
#[wasm_bindgen(js_name = onPanic)]
pub fn on_panic(listener: Function) {
    install();
    LISTENER.with(|l| *l.borrow_mut() = Some(listener));
}
