//! `cargo xtask web`: build flint for the browser and serve its pages (and the models in flint's
//! cache under `/models/`, the test fixtures under `/fixtures/`); `cargo xtask web-test`:
//! the same build, served on a free port, with the page tests of `web/tests` run in headless
//! Chromium.
//!
//! The build is `cargo build -p flint-web --target wasm32-unknown-unknown --release`, bound by
//! `wasm-bindgen --target web` (the CLI's version must equal the `wasm-bindgen` crate's, pinned
//! in the workspace) into `target/web/pkg`, next to a copy of `web/`'s pages.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The wasm-bindgen CLI version that matches the `wasm-bindgen` crate in Cargo.lock.
pub const WASM_BINDGEN: &str = "0.2.130";
const TARGET: &str = "wasm32-unknown-unknown";

/// Where the built site goes.
pub fn site_dir() -> PathBuf {
    PathBuf::from("target/web")
}

/// Why the browser build cannot run here, or `None` when it can.
pub fn missing_tools() -> Option<String> {
    if !super::target_installed(TARGET) {
        return Some(format!("the {TARGET} target is not installed (rustup target add {TARGET})"));
    }
    match Command::new("wasm-bindgen").arg("--version").output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains(WASM_BINDGEN) => None,
        Ok(o) => Some(format!(
            "wasm-bindgen is {}, flint binds with {WASM_BINDGEN} (cargo install wasm-bindgen-cli --version ={WASM_BINDGEN})",
            String::from_utf8_lossy(&o.stdout).trim()
        )),
        Err(_) => {
            Some(format!("wasm-bindgen is not installed (cargo install wasm-bindgen-cli --version ={WASM_BINDGEN})"))
        }
    }
}

/// Build the wasm module, bind it and copy the pages into [`site_dir`].
pub fn build(cargo: &str) -> Result<PathBuf> {
    if let Some(why) = missing_tools() {
        bail!("cannot build the browser version: {why}");
    }
    super::run(cargo, &["build", "-p", "flint-web", "--target", TARGET, "--release", "--locked"], &[])?;
    let site = site_dir();
    let wasm = format!("target/{TARGET}/release/flint_web.wasm");
    let pkg = site.join("pkg");
    super::run("wasm-bindgen", &["--target", "web", "--out-dir", &pkg.to_string_lossy(), &wasm], &[])?;
    copy_pages(Path::new("web"), &site)?;
    Ok(site)
}

/// Copy the page files of `from` (not its tests or npm packages) into `to`.
fn copy_pages(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if path.is_file() && matches!(ext, "html" | "js" | "css" | "svg") {
            let name = path.file_name().context("a page without a name")?;
            std::fs::copy(&path, to.join(name)).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// `cargo xtask web [--port N]`: build, then serve on localhost until interrupted.
pub fn serve_site(cargo: &str, args: &[String]) -> Result<()> {
    let port = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).context("--port needs a number")?.parse::<u16>().context("--port")?,
        None => 8000,
    };
    let site = build(cargo)?;
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("binding 127.0.0.1:{port}"))?;
    eprintln!(
        "serving {} at http://127.0.0.1:{port}/ (the chat; conformance.html runs the kernels), and the models \
         `flint fetch` cached at /models/ (Chromium on Linux needs --enable-unsafe-webgpu)",
        site.display()
    );
    serve(listener, site);
    Ok(())
}

/// `cargo xtask web-test`: build, serve on a free port, run the browser tests against it.
pub fn test(cargo: &str) -> Result<()> {
    // The page tests load the default model and Gemma 3 from flint's cache, as `flint fetch`
    // leaves them.
    for model in [flint_runtime::fetch::DEFAULT_MODEL, "gemma3-270m"] {
        flint_runtime::fetch::resolve(Some(model), &mut |_| {})
            .with_context(|| format!("fetching {model} for the page tests"))?;
    }
    let site = build(cargo)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding a free port")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || serve(listener, site));
    super::run("node", &["web/tests/run.mjs", &url], &[])
}

/// Why the browser tests cannot run here, or `None` when they can.
pub fn test_missing() -> Option<String> {
    if let Some(why) = missing_tools() {
        return Some(why);
    }
    if chromium().is_none() {
        return Some("Chromium is not installed (apt-get install chromium)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("Node.js is not installed".into());
    }
    if !Path::new("web/node_modules/playwright-core").is_dir() {
        return Some("the page tests' npm packages are not installed (npm ci --prefix web)".into());
    }
    None
}

/// The Chromium binary: `$CHROMIUM`, else Debian's.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.exists())
}

/// Answer GET requests for files under `root`, for `models/NAME` with the models in flint's
/// cache (`flint fetch` puts them there) and for `fixtures/PATH` with the test fixtures, one
/// thread per connection.
fn serve(listener: TcpListener, root: PathBuf) {
    let models = flint_runtime::fetch::cache_dir().join("models");
    for stream in listener.incoming().flatten() {
        let (root, models) = (root.clone(), models.clone());
        std::thread::spawn(move || {
            if let Err(e) = answer(stream, &root, &models) {
                eprintln!("web: {e:#}");
            }
        });
    }
}

fn answer(mut stream: TcpStream, root: &Path, models: &Path) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Read the headers to the blank line; none of them matters here.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = percent_decoded(target.split(['?', '#']).next().unwrap_or("/"));
    let path = path.as_str();
    let file = if let Some(name) = path.strip_prefix("/models/") {
        resolve(models, name).filter(|_| !name.is_empty())
    } else if let Some(name) = path.strip_prefix("/fixtures/") {
        // The test fixtures (the tiny Idefics3 models and their images) for the page tests.
        resolve(Path::new("tests/fixtures"), name).filter(|_| !name.is_empty())
    } else {
        resolve(root, path)
    };
    let opened = file.and_then(|f| {
        let file = std::fs::File::open(&f).ok()?;
        let len = file.metadata().ok().filter(|m| m.is_file())?.len();
        Some((f, file, len))
    });
    let head = |status: &str, kind: &str, len: u64| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
    };
    match (method, opened) {
        ("GET", Some((f, mut file, len))) => {
            stream.write_all(head("200 OK", mime(&f), len).as_bytes())?;
            std::io::copy(&mut file, &mut stream)?;
        }
        (method, _) => {
            let (status, body) = if method == "GET" {
                ("404 Not Found", "not found\n")
            } else {
                ("405 Method Not Allowed", "GET only\n")
            };
            stream.write_all(head(status, "text/plain", body.len() as u64).as_bytes())?;
            stream.write_all(body.as_bytes())?;
        }
    }
    Ok(())
}

/// A URL path with its `%XX` escapes decoded (before [`resolve`] checks its components, so an
/// escaped `..` is refused like a plain one); malformed escapes stay as they are.
fn percent_decoded(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file a URL path names under `root` (`/` is `index.html`); `None` for paths that climb
/// out of it.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let rel = Path::new(rel);
    rel.components().all(|c| matches!(c, Component::Normal(_))).then(|| root.join(rel))
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "wasm" => "application/wasm",
        "css" => "text/css",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_site() {
        let root = Path::new("/site");
        assert_eq!(resolve(root, "/"), Some(PathBuf::from("/site/index.html")));
        assert_eq!(resolve(root, "/pkg/flint_web.js"), Some(PathBuf::from("/site/pkg/flint_web.js")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/pkg/../../x"), None);
        assert_eq!(resolve(root, "//etc/passwd"), Some(PathBuf::from("/site/etc/passwd")));
    }

    #[test]
    fn escaped_paths_are_decoded_then_confined() {
        let root = Path::new("/site");
        assert_eq!(percent_decoded("/a%20b.gguf"), "/a b.gguf");
        assert_eq!(percent_decoded("/x%zz%4"), "/x%zz%4");
        assert_eq!(resolve(root, &percent_decoded("/%2e%2e/etc/passwd")), None);
        assert_eq!(resolve(root, &percent_decoded("/pkg%2f..%2f..%2fx")), None);
    }

    #[test]
    fn wasm_is_served_as_wasm() {
        assert_eq!(mime(Path::new("a/flint_web_bg.wasm")), "application/wasm");
        assert_eq!(mime(Path::new("flint.js")), "text/javascript");
    }
}
