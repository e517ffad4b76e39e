//! A real browser for tests: Debian's headless `chromium` driven through `chromedriver` over
//! the W3C WebDriver protocol (plain JSON over HTTP with reqwest; no browser is downloaded).
//! The browser trusts exactly one extra key — the gateway's TLS key, by its SPKI hash — and
//! nothing else is relaxed. Needs the Debian packages chromium and chromium-driver
//! (`scripts/setup.sh`). Each `Browser` has its own chromedriver, profile and temp dir, and is
//! closed (and its processes killed) when dropped.

use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
    dir: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver, then every Chromium process of this browser's own profile (a test that
        // panicked never closed its session).
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = self.dir.path().join("profile").display().to_string();
        for pid in chromium_processes(&profile) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Processes whose command line names `profile` (the browser's `--user-data-dir`).
fn chromium_processes(profile: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("--user-data-dir={profile}")))
        })
        .collect()
}

/// The base64 SHA-256 of the public key in `cert_pem` (what `--ignore-certificate-errors-spki-list`
/// takes), by the openssl command-line tool.
fn spki_hash(cert_pem: &Path) -> String {
    let run = |args: &[&str], input: &[u8]| -> Vec<u8> {
        use std::io::Write;
        let mut child =
            Command::new("openssl").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("openssl");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl {args:?} failed");
        out.stdout
    };
    let pem = std::fs::read(cert_pem).unwrap();
    let key = run(&["x509", "-pubkey", "-noout"], &pem);
    let der = run(&["pkey", "-pubin", "-outform", "der"], &key);
    let digest = run(&["dgst", "-sha256", "-binary"], &der);
    base64::engine::general_purpose::STANDARD.encode(digest)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that accepts the TLS key of `server_cert`.
    pub async fn start(server_cert: &Path) -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let mut args = vec![
            "--headless=new".to_string(),
            "--disable-gpu".into(),
            "--window-size=1280,900".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--ignore-certificate-errors-spki-list={}", spki_hash(server_cert)),
        ];
        // Chromium's own sandbox needs user namespaces it may not get as root in a container.
        if nix::unistd::geteuid().is_root() {
            args.push("--no-sandbox".into());
        }
        let port = crate::cluster::free_port();
        let log = dir.path().join("chromedriver.log");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) is missing: run scripts/setup.sh");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        // From here a panic drops the browser, which stops whatever started.
        let mut browser =
            Browser { driver, http, base: format!("http://127.0.0.1:{port}"), session: String::new(), dir };
        let ready = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = browser.http.get(format!("{}/status", browser.base)).send().await {
                if r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true) {
                    break;
                }
            }
            assert!(
                Instant::now() < ready,
                "chromedriver did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let url = format!("{}/session", browser.base);
        let r: Value = browser.http.post(url).json(&caps).send().await.unwrap().json().await.unwrap();
        browser.session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {r}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
            .to_string();
        browser
    }

    /// Ends the session (Chromium quits and is reaped by its driver), then the driver.
    pub async fn close(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut r = self.http.request(method, url);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    /// Opens `url` and waits for the page to load.
    pub async fn open(&self, url: &str) {
        let v = self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
        assert!(v.is_null(), "opening {url}: {v}");
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_string()
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_string()
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v =
            self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits (up to `limit`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            assert!(
                Instant::now() < end,
                "no `{css}` within {limit:?} at {}:\n{}",
                self.url().await,
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Types `text` into the element.
    pub async fn type_into(&self, element: &str, text: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    /// Clicks the element.
    pub async fn click(&self, element: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    /// The element's rendered text.
    pub async fn text(&self, element: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element's DOM property `name` (e.g. an image's `naturalWidth`).
    pub async fn property(&self, element: &str, name: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/element/{element}/property/{name}"), None).await
    }

    /// Resizes the window (a phone: 390 × 844).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    /// Runs `script` (a function body) in the page through the driver and returns its value.
    pub async fn script(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// Deletes the cookie `name` of the current page's site (a login that ended).
    pub async fn delete_cookie(&self, name: &str) {
        self.call(reqwest::Method::DELETE, &format!("/cookie/{name}"), None).await;
    }

    /// The text of an open `alert()`, if a script opened one.
    pub async fn alert(&self) -> Option<String> {
        let v = self.call(reqwest::Method::GET, "/alert/text", None).await;
        v.as_str().map(str::to_string)
    }

    /// The browser console's messages since the last call (CSP violations are among them).
    pub async fn console(&self) -> Vec<String> {
        let v = self.call(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"}))).await;
        v.as_array()
            .map(|entries| {
                entries.iter().map(|e| format!("{} {}", e["level"], e["message"].as_str().unwrap_or(""))).collect()
            })
            .unwrap_or_default()
    }

    /// Saves a screenshot of the page as `<name>.png` in the browser's temp dir (and in
    /// `SPARKGATE_SCREENSHOTS` when that is set) and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap();
        let path = self.dir.path().join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        if let Some(dir) = std::env::var_os("SPARKGATE_SCREENSHOTS") {
            let _ = std::fs::create_dir_all(&dir);
            std::fs::write(Path::new(&dir).join(format!("{name}.png")), &png).unwrap();
        }
        path
    }
}
