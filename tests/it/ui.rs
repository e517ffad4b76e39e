//! The web UI over real HTTPS with a real directory (`ldap_dir.rs`) and real Spark: the login
//! form, the browser headers, what each user sees, and user-controlled text (a session name,
//! code, outputs, a SQL column) served only as escaped text. (The same pages in a real browser
//! are the next step; this checks the HTML the browser would get.)

use crate::ldap_dir::{Directory, USERS};
use crate::support::TestGateway;
use crate::webdriver::Browser;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

const POLICY: &str = "[create]\nusers = [\"alice\", \"bob\"]\n[admin]\nusers = [\"carol\"]\n";

/// Payloads that would run if a page put them into HTML as markup.
const NAME: &str = "<img src=x onerror=alert(1)>";
const CODE_MARK: &str = "<script>alert(2)</script>";

/// `text` as the pages escape it (askama: numeric character references).
fn escaped(text: &str) -> String {
    text.replace('&', "&#38;").replace('<', "&#60;").replace('>', "&#62;").replace('"', "&#34;").replace('\'', "&#39;")
}

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).map(|(_, p)| *p).unwrap()
}

struct Client {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Client {
    fn new(gw: &TestGateway) -> Self {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&gw.ca_pem).unwrap())
            .tls_built_in_root_certs(false)
            .redirect(Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self { client, base: gw.base.clone(), cookie: None }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            r = r.header(COOKIE, cookie);
        }
        r
    }

    async fn page(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let r = self.request(reqwest::Method::GET, path).send().await.unwrap();
        (r.status().as_u16(), r.headers().clone(), r.text().await.unwrap())
    }

    /// Posts the login form as the page would (same origin).
    async fn log_in(&mut self, user: &str, password: &str) -> reqwest::Response {
        let r = self
            .request(reqwest::Method::POST, "/ui/login")
            .header(ORIGIN, &self.base)
            .form(&[("user", user), ("password", password), ("next", "/ui/sessions")])
            .send()
            .await
            .unwrap();
        if let Some(set) = r.headers().get(SET_COOKIE) {
            self.cookie = Some(set.to_str().unwrap().split(';').next().unwrap().to_string());
        }
        r
    }

    /// A call of the REST API as the UI's script makes it (cookie and CSRF header).
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.request(method, path).header("X-Requested-By", "sparkgate-ui");
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            let (status, body) = self.api(reqwest::Method::GET, path, None).await;
            assert_eq!(status, 200, "{body}");
            if done(&body) {
                return body;
            }
            assert!(Instant::now() < end, "timed out waiting on {path}: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// No markup the page did not write itself: no inline script or style, no event handler
/// attribute, and none of the payloads unescaped.
fn assert_inert(html: &str) {
    for needle in [NAME, CODE_MARK, "<b>bold</b>", "<i>col</i>", " style=", "onerror=alert"] {
        // The escaped payload reads `onerror=alert` inside text, never in a tag.
        if needle == "onerror=alert" {
            assert!(!html.contains("<img src=x onerror"), "raw payload in the page");
            continue;
        }
        assert!(!html.contains(needle), "`{needle}` reached the page as markup");
    }
    for tag in html.split("<script").skip(1) {
        assert!(
            tag.trim_start().starts_with("src=\"/ui/static/"),
            "an inline script: <script{}",
            &tag[..tag.len().min(80)]
        );
    }
}

/// A directory of its own, and a gateway logging users in against it (LDAPS, DN pattern).
fn ldap_gateway() -> (Directory, TestGateway) {
    let directory = Directory::start();
    let overrides = [
        "auth.methods=[\"ldap\"]".to_string(),
        format!("auth.ldap.url=\"{}\"", directory.ldaps_url),
        format!("auth.ldap.ca=\"{}\"", directory.ca_pem.display()),
        format!("auth.ldap.user_dn_pattern=\"uid={{user}},{}\"", directory.people_dn),
        "auth.ldap.max_failures=100".into(),
    ];
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let gw = TestGateway::start_with_policy(&overrides, POLICY);
    (directory, gw)
}

#[tokio::test]
async fn the_ui_logs_in_by_form_and_shows_each_user_only_their_sessions_as_text() {
    let (_directory, gw) = ldap_gateway();
    let mut alice = Client::new(&gw);

    // Not logged in: pages lead to the login form, which is served with the UI's headers.
    let (status, headers, _) = alice.page("/ui/sessions?state=idle").await;
    assert_eq!(status, 303);
    assert_eq!(headers[LOCATION], "/ui/login?next=%2Fui%2Fsessions%3Fstate%3Didle");
    let (status, headers, html) = alice.page("/ui/login").await;
    assert_eq!(status, 200);
    let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(html.contains("type=\"password\""), "{html}");
    assert_inert(&html);
    let (status, _, css) = alice.page("/ui/static/ui.css").await;
    assert!(status == 200 && css.contains("font"), "{status}");

    // Another site cannot post the form (login CSRF); a wrong password is refused.
    let r = alice
        .request(reqwest::Method::POST, "/ui/login")
        .header(ORIGIN, "https://evil.example")
        .form(&[("user", "alice"), ("password", password("alice"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(SET_COOKIE).is_none());
    let r = alice.log_in("alice", "not-her-password").await;
    assert_eq!(r.status(), 401);
    let page = r.text().await.unwrap();
    assert!(page.contains("Wrong user name or password.") && !page.contains("not-her-password"), "{page}");
    assert!(alice.cookie.is_none());

    // A Basic login a moment before (remembered) does not keep the form from issuing a cookie.
    let basic =
        alice.client.get(gw.url("/sessions")).basic_auth("alice", Some(password("alice"))).send().await.unwrap();
    assert_eq!(basic.status(), 200);
    let r = alice.log_in("alice", password("alice")).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/sessions");
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Strict"), "{set}");

    // A session whose name, code and outputs are markup.
    let (status, created) =
        alice.api(reqwest::Method::POST, "/sessions", Some(json!({"kind": "shared", "name": NAME}))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    alice.until(&format!("/sessions/{id}/state"), |b| b["state"] == "idle").await;
    for (kind, code) in [
        ("pyspark", format!("print(\"{CODE_MARK}\")\nprint(\"{NAME}\")")),
        ("sql", "SELECT '<b>bold</b>' AS `<i>col</i>`".to_string()),
        ("pyspark", format!("raise ValueError(\"{CODE_MARK}\")")),
    ] {
        let (status, st) = alice
            .api(
                reqwest::Method::POST,
                &format!("/sessions/{id}/statements"),
                Some(json!({"kind": kind, "code": code})),
            )
            .await;
        assert_eq!(status, 201, "{st}");
        let sid = st["id"].as_u64().unwrap();
        alice.until(&format!("/sessions/{id}/statements/{sid}"), |b| b["state"] == "available").await;
    }

    let (status, _, list) = alice.page("/ui/sessions").await;
    assert_eq!(status, 200);
    assert!(list.contains(&format!("href=\"/ui/sessions/{id}\"")), "{list}");
    assert!(list.contains(&escaped(NAME)), "{list}");
    assert_inert(&list);
    let (status, headers, detail) = alice.page(&format!("/ui/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert!(headers[CONTENT_SECURITY_POLICY].to_str().unwrap().contains("img-src 'self' data:"));
    for shown in [CODE_MARK, NAME, "<b>bold</b>", "<i>col</i>", "ValueError"] {
        assert!(detail.contains(&escaped(shown)), "`{shown}` missing:\n{detail}");
    }
    assert!(detail.contains("<table class=\"output\">"), "the SQL result is a table:\n{detail}");
    assert!(detail.contains("id=\"run\""), "alice may run statements");
    assert_inert(&detail);
    // Errors are pages too: an unknown page, a bad query string.
    for (path, status) in [("/ui/nope", 404), ("/ui/sessions?from=abc", 400)] {
        let (got, headers, html) = alice.page(path).await;
        assert_eq!(got, status, "{path}: {html}");
        assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        assert!(headers[CONTENT_SECURITY_POLICY].to_str().unwrap().contains("default-src 'none'"));
        assert_inert(&html);
    }
    // Filters: by state and by owner.
    let (_, _, dead) = alice.page("/ui/sessions?state=dead").await;
    assert!(!dead.contains(&format!("href=\"/ui/sessions/{id}\"")));
    let (_, _, by_owner) = alice.page("/ui/sessions?owner=alice").await;
    assert!(by_owner.contains(&format!("href=\"/ui/sessions/{id}\"")));

    // bob sees neither it in the list nor its page.
    let mut bob = Client::new(&gw);
    assert_eq!(bob.log_in("bob", password("bob")).await.status(), 303);
    let (status, _, bobs) = bob.page("/ui/sessions").await;
    assert_eq!(status, 200);
    assert!(!bobs.contains(&format!("/ui/sessions/{id}\"")) && !bobs.contains("onerror"), "{bobs}");
    let (status, _, _) = bob.page(&format!("/ui/sessions/{id}")).await;
    assert_eq!(status, 404);

    // The administrators' pages: only for carol ([admin]).
    let (status, _, refused) = alice.page("/ui/admin/audit").await;
    assert_eq!(status, 403, "{refused}");
    assert!(!list.contains("/ui/admin"), "no Admin link for alice");
    let mut carol = Client::new(&gw);
    assert_eq!(carol.log_in("carol", password("carol")).await.status(), 303);
    let (status, _, trail) = carol.page("/ui/admin/audit?user=alice&decision=deny").await;
    assert_eq!(status, 200);
    assert!(trail.contains("wrong user name or password"), "alice's failed login:\n{trail}");
    assert_inert(&trail);
    let (_, _, verified) = carol.page("/ui/admin/audit?verify=1").await;
    assert!(verified.contains("OK: audit chain intact"), "{verified}");
    let (_, _, why) = carol.page(&format!("/ui/admin/policy?user=bob&right=view&resource=session+{id}")).await;
    assert!(why.contains("Denied: "), "{why}");
    let (_, _, why) = carol.page(&format!("/ui/admin/policy?user=alice&right=modify&resource=session+{id}")).await;
    assert!(why.contains("Allowed: "), "{why}");
    let (_, _, figures) = carol.page("/ui/admin/figures").await;
    assert!(figures.contains("sparkgate_sessions"), "{figures}");

    // Logging out clears the cookie (from the page's own origin only).
    let r =
        alice.request(reqwest::Method::POST, "/ui/logout").header(ORIGIN, "https://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = alice.request(reqwest::Method::POST, "/ui/logout").header(ORIGIN, &alice.base).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));

    let (status, _) = alice.api(reqwest::Method::DELETE, &format!("/sessions/{id}"), None).await;
    assert_eq!(status, 200);
}

/// The UI in real headless Chromium: log in through the form, run statements from a session's
/// page and see their results, cancel one, and check that none of the markup in a name, code
/// or output ran and that the page's own assets caused no CSP violation; then bob neither sees
/// nor opens alice's session. Screenshots are saved (SPARKGATE_SCREENSHOTS=dir keeps them).
#[tokio::test]
async fn the_ui_works_in_a_real_browser_and_runs_no_user_markup() {
    let (_directory, gw) = ldap_gateway();
    let browser = Browser::start(&sparkgate::tls::DevCertPaths::in_dir(&gw.data_dir).cert).await;
    let wait = Duration::from_secs(120);

    // A page without a login leads to the form; logging in leads back.
    browser.open(&format!("{}/ui/sessions", gw.base)).await;
    assert!(browser.url().await.contains("/ui/login?next="), "{}", browser.url().await);
    browser.screenshot("login").await;
    let user = browser.wait_for("#user", wait).await;
    browser.type_into(&user, "alice").await;
    let password_field = browser.find("#password").await.unwrap();
    browser.type_into(&password_field, password("alice")).await;
    browser.click(&browser.find("form button[type=submit]").await.unwrap()).await;
    browser.wait_for("table", wait).await;
    assert!(browser.url().await.ends_with("/ui/sessions"), "{}", browser.url().await);

    // A session with markup in its name (created through the API, as a notebook would).
    let mut api = Client::new(&gw);
    assert_eq!(api.log_in("alice", password("alice")).await.status(), 303);
    let (status, created) =
        api.api(reqwest::Method::POST, "/sessions", Some(json!({"kind": "shared", "name": NAME}))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    api.until(&format!("/sessions/{id}/state"), |b| b["state"] == "idle").await;

    browser.open(&format!("{}/ui/sessions", gw.base)).await;
    let link = browser.wait_for(&format!("a[href='/ui/sessions/{id}']"), wait).await;
    browser.screenshot("sessions").await;
    browser.click(&link).await;
    browser.wait_for("#run", wait).await;

    // Statements from the page: Python, SQL (a table), markup in code and output.
    let run = |code: &'static str, kind: &'static str| {
        let browser = &browser;
        async move {
            let before = browser.source().await.matches("class=\"statement\"").count();
            let code_box = browser.wait_for("#code", wait).await;
            browser.type_into(&code_box, code).await;
            browser.click(&browser.find(&format!("#kind option[value='{kind}']")).await.unwrap()).await;
            browser.click(&browser.find("#run button[type=submit]").await.unwrap()).await;
            // The page reloads with the new statement, then refreshes until it is done.
            browser.wait_for(&format!("#statement-{before}"), wait).await;
            before
        }
    };
    let count = run("spark.range(5).count()", "pyspark").await;
    let done = browser.wait_for(&format!("#statement-{count}[data-state='available'] pre.output"), wait).await;
    assert_eq!(browser.text(&done).await.trim(), "5");
    let sql = run("SELECT 1 AS one, '<b>bold</b>' AS `<i>col</i>`", "sql").await;
    let table = browser.wait_for(&format!("#statement-{sql}[data-state='available'] table.output"), wait).await;
    let shown = browser.text(&table).await;
    assert!(shown.contains("<i>col</i>") && shown.contains("<b>bold</b>"), "markup shown as text: {shown}");
    let plot = run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n%matplot plt", "pyspark").await;
    let image = browser.wait_for(&format!("#statement-{plot}[data-state='available'] img.output"), wait).await;
    assert!(browser.property(&image, "naturalWidth").await.as_u64().unwrap_or(0) > 100, "the plot was not drawn");
    let marked = run("print(\"<img src=x onerror=alert(3)><script>alert(4)</script>\")", "pyspark").await;
    browser.wait_for(&format!("#statement-{marked}[data-state='available']"), wait).await;
    browser.screenshot("session").await;

    // On a phone-sized screen nothing runs off the side of the page.
    browser.resize(390, 844).await;
    browser.open(&format!("{}/ui/sessions/{id}", gw.base)).await;
    browser.wait_for("#run", wait).await;
    let fits =
        browser.script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth;").await;
    assert_eq!(fits, Value::Bool(true), "the session page is wider than a phone");
    browser.screenshot("phone").await;
    browser.resize(1280, 900).await;

    // A long statement is cancelled from the page; its progress meanwhile comes live.
    let long = run("import time\ntime.sleep(120)", "pyspark").await;
    let cancel = browser.wait_for(&format!("#statement-{long} button.cancel"), wait).await;
    browser.click(&cancel).await;
    browser.wait_for(&format!("#statement-{long}[data-state='cancelled']"), wait).await;

    // A batch: its page shows the equivalent spark-submit without the secret, and its log.
    let job = gw.jobs_dir.join("ui-batch.py");
    std::fs::write(&job, "print('BATCH-LINE <script>alert(5)</script>', flush=True)\n").unwrap();
    let (status, created) = api
        .api(
            reqwest::Method::POST,
            "/batches",
            Some(json!({"file": job, "args": ["--password", "hunter2"], "name": "ui-batch"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let batch = created["id"].as_u64().unwrap();
    api.until(&format!("/batches/{batch}/state"), |b| b["state"] == "success" || b["state"] == "dead").await;
    browser.open(&format!("{}/ui/batches", gw.base)).await;
    browser.click(&browser.wait_for(&format!("a[href='/ui/batches/{batch}']"), wait).await).await;
    let log = browser.wait_for("#log", wait).await;
    assert!(browser.text(&log).await.contains("BATCH-LINE <script>alert(5)</script>"), "{}", browser.source().await);
    let command = browser.text(&browser.find("#command").await.unwrap()).await;
    assert!(command.starts_with("spark-submit ") && command.contains("--password '<redacted>'"), "{command}");
    assert!(!command.contains("hunter2"), "{command}");
    browser.screenshot("batch").await;

    assert_eq!(browser.alert().await, None, "a user's markup ran a script");
    let console = browser.console().await;
    let violations: Vec<&String> =
        console.iter().filter(|m| m.contains("Content Security Policy") || m.contains("Refused to")).collect();
    assert!(violations.is_empty(), "CSP violations: {violations:?}");

    // Nothing is kept in the browser's storage (the login is an HttpOnly cookie only).
    let stored = browser.script("return localStorage.length + sessionStorage.length + document.cookie.length;").await;
    assert_eq!(stored, json!(0), "a token in storage or a script-readable cookie");

    // alice's login ends (its cookie gone) while her page is open: Run leads to the login form,
    // which leads back to the page.
    browser.open(&format!("{}/ui/sessions/{id}", gw.base)).await;
    let code_box = browser.wait_for("#code", wait).await;
    browser.delete_cookie("sparkgate_auth").await;
    browser.type_into(&code_box, "1 + 1").await;
    browser.click(&browser.find("#run button[type=submit]").await.unwrap()).await;
    let user = browser.wait_for("#user", wait).await;
    assert!(browser.url().await.contains(&format!("next=%2Fui%2Fsessions%2F{id}")), "{}", browser.url().await);

    // bob, by keyboard, from that form: he lands on alice's page, refused as unknown, and his
    // list does not show her session.
    browser.type_into(&user, "bob").await;
    // The password, then Enter (WebDriver's key code) submits the form.
    browser.type_into(&browser.find("#password").await.unwrap(), &format!("{}\u{E007}", password("bob"))).await;
    let refused = browser.wait_for("[role=alert]", wait).await;
    assert!(browser.text(&refused).await.contains("not found"), "{}", browser.source().await);
    browser.open(&format!("{}/ui/sessions", gw.base)).await;
    browser.wait_for("table", wait).await;
    assert!(browser.find(&format!("a[href='/ui/sessions/{id}']")).await.is_none());
    assert_eq!(browser.alert().await, None);

    browser.close().await;
    let (status, _) = api.api(reqwest::Method::DELETE, &format!("/sessions/{id}"), None).await;
    assert_eq!(status, 200);
}
