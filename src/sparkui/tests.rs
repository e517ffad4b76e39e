use super::*;
use std::path::Path;

fn spark(master: &str, deploy_mode: &str) -> SparkConfig {
    SparkConfig { master: master.into(), deploy_mode: deploy_mode.into(), ..SparkConfig::default() }
}

#[test]
fn every_launch_locks_its_ui_to_the_gateway() {
    let ui = AppUi::new("/sessions/3/sparkui");
    let launch = launch_settings(&spark("local[*]", "client"), None, &BTreeMap::new(), &ui);
    assert_eq!(launch.conf["spark.ui.filters"], JWS_FILTER);
    assert_eq!(launch.conf["spark.ui.proxyBase"], "/sessions/3/sparkui");
    assert_eq!(launch.conf["spark.ui.killEnabled"], "false");
    let key = &launch.conf["spark.org.apache.spark.ui.JWSFilter.param.secretKey"];
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).unwrap();
    assert_eq!(raw.len(), 32, "a 256-bit HMAC key, as JWSFilter requires for HS256");
    assert!(!launch.conf.contains_key("spark.ui.enabled"));
    assert_eq!(launch.env.get("SPARK_LOCAL_IP").map(String::as_str), Some("127.0.0.1"), "loopback in local mode");
    assert!(ui.proxied());
    assert_eq!(launch.conf["spark.ui.port"], "0", "a free port: no 4040 + 16 tries limit on one host");
    let asked = BTreeMap::from([("spark.ui.port".to_string(), "4999".to_string())]);
    let chosen = launch_settings(&spark("local[*]", "client"), None, &asked, &AppUi::new("/sessions/4/sparkui"));
    assert!(!chosen.conf.contains_key("spark.ui.port"), "a port the request chose is left to it");
    // Each application has its own key, and it never shows in a debug print.
    let other =
        launch_settings(&spark("local[*]", "client"), None, &BTreeMap::new(), &AppUi::new("/batches/3/sparkui"));
    assert_ne!(&other.conf["spark.org.apache.spark.ui.JWSFilter.param.secretKey"], key);
    assert!(!format!("{ui:?}").contains(key.as_str()) && format!("{ui:?}").contains("redacted"));
}

#[test]
fn the_key_signs_tokens_the_drivers_filter_accepts() {
    let ui = AppUi::new("/sessions/3/sparkui");
    let bearer = ui.key().bearer().unwrap();
    let token = bearer.strip_prefix("Bearer ").unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = ["exp".to_string()].into();
    validation.validate_aud = false;
    let claims: serde_json::Value =
        jsonwebtoken::decode(token, &jsonwebtoken::DecodingKey::from_secret(&ui.key().0), &validation).unwrap().claims;
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, TOKEN_LIFETIME_SECS);
    let stranger = AppUi::new("/sessions/4/sparkui");
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(&stranger.key().0),
            &validation
        )
        .is_err(),
        "another application's key does not verify it"
    );
}

#[test]
fn clusters_keep_the_ui_where_spark_puts_it_and_cluster_mode_is_not_proxied() {
    let ui = AppUi::new("/sessions/1/sparkui");
    let client = launch_settings(&spark("spark://m:7077", "client"), None, &BTreeMap::new(), &ui);
    assert!(client.env.is_empty(), "executors on other hosts must still reach the driver");
    assert_eq!(client.conf["spark.ui.filters"], JWS_FILTER);
    assert!(ui.proxied(), "client mode: the driver runs here");
    let cluster = launch_settings(&spark("yarn", "cluster"), None, &BTreeMap::new(), &ui);
    assert_eq!(cluster.conf["spark.ui.filters"], JWS_FILTER, "still guarded in the cluster");
    assert!(!cluster.conf.contains_key("spark.ui.proxyBase"), "its links stay the cluster's");
    assert!(!cluster.conf.contains_key("spark.ui.port"), "the cluster's host, the cluster's ports");
    assert!(!ui.proxied(), "the driver's host is only its own word");
    ui.offer_port(4040);
    assert_eq!(ui.path(), None);
}

#[test]
fn the_operators_no_to_a_ui_wins_and_their_filters_stay() {
    let ui = AppUi::new("/sessions/1/sparkui");
    let mut config = spark("local[*]", "client");
    config.conf.insert("spark.ui.enabled".into(), "False".into());
    config.conf.insert("spark.ui.filters".into(), "com.example.Audit, org.apache.spark.ui.JWSFilter".into());
    let asked = BTreeMap::from([("spark.ui.enabled".to_string(), "true".to_string())]);
    let launch = launch_settings(&config, None, &asked, &ui);
    assert_eq!(launch.conf["spark.ui.enabled"], "false", "a request cannot turn it back on");
    assert_eq!(launch.conf["spark.ui.filters"], "com.example.Audit,org.apache.spark.ui.JWSFilter");
    assert!(!ui.proxied());
    ui.offer_port(4040);
    assert_eq!(ui.path(), None, "no sparkUiUrl without a UI");
    // A request may switch its own UI off.
    let ui = AppUi::new("/sessions/2/sparkui");
    let off = BTreeMap::from([("spark.ui.enabled".to_string(), "false".to_string())]);
    launch_settings(&spark("local[*]", "client"), None, &off, &ui);
    assert!(!ui.proxied());
    // spark-defaults.conf counts as the operator's.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("conf")).unwrap();
    std::fs::write(home.path().join("conf/spark-defaults.conf"), "spark.ui.enabled false\n").unwrap();
    if std::env::var_os("SPARK_CONF_DIR").is_none() {
        let env = SparkEnv::for_test(home.path(), Path::new("/x"));
        let ui = AppUi::new("/sessions/5/sparkui");
        let launch = launch_settings(&spark("local[*]", "client"), Some(&env), &asked, &ui);
        assert_eq!(launch.conf["spark.ui.enabled"], "false");
        assert!(!ui.proxied());
    }
}

#[test]
fn what_a_driver_says_about_its_ui_is_only_a_port_to_check() {
    let ui = AppUi::new("/sessions/1/sparkui");
    launch_settings(&spark("local[*]", "client"), None, &BTreeMap::new(), &ui);
    assert_eq!(ui.path(), None, "nothing heard yet");
    for ignored in ["javascript:alert(1)//:4040", "file:///etc/passwd", "http://host", "ftp://h:21/", "not a url"] {
        ui.offer_url(ignored);
    }
    ui.offer_line("INFO SparkContext: Submitted application: app on port 99");
    assert_eq!(ui.path(), None, "{ignored:?}", ignored = ui.lock().candidates);
    assert!(ui.offer_line("INFO Utils: Successfully started service 'SparkUI' on port 4041."));
    assert!(!ui.offer_url("http://localhost:4041"), "heard already");
    assert!(ui.offer_line("INFO SparkUI: Bound SparkUI to 0.0.0.0, and started at http://host:4042"));
    assert_eq!(ui.lock().candidates.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [4041, 4042]);
    assert_eq!(ui.path().as_deref(), Some("/sessions/1/sparkui/"));
    for port in 1..100 {
        ui.offer_port(port);
    }
    assert_eq!(ui.lock().candidates.len(), MAX_CANDIDATES, "bounded");
}

#[tokio::test]
async fn a_port_counts_only_once_the_applications_processes_listen_on_it() {
    let ui = AppUi::new("/sessions/1/sparkui");
    launch_settings(&spark("local[*]", "client"), None, &BTreeMap::new(), &ui);
    // Someone else's loopback service, named first (as user code could), then a process group
    // of "the application" (a real child) that listens.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    ui.offer_port(bait.local_addr().unwrap().port());
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", "import socket,time\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\nprint(s.getsockname()[1], flush=True)\ntime.sleep(60)"])
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pgid = child.id().unwrap() as i32;
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
        .await
        .unwrap();
    let real: u16 = line.trim().parse().unwrap();
    assert_eq!(ui.port(pgid).await, None, "the bait is refused and nothing else is known");
    assert_eq!(ui.path(), None, "a refused port is no UI to show");
    ui.offer_port(real);
    assert_eq!(ui.port(pgid).await, Some(real));
    assert_eq!(ui.path().as_deref(), Some("/sessions/1/sparkui/"));
    // Remembered, and never displaced by a later candidate.
    ui.offer_port(bait.local_addr().unwrap().port() ^ 1);
    assert_eq!(ui.port(pgid).await, Some(real));
    child.kill().await.unwrap();
    // Not proxied: no port at all.
    let cluster = AppUi::new("/sessions/2/sparkui");
    cluster.offer_port(real);
    assert_eq!(cluster.port(pgid).await, None);
}

#[test]
fn the_app_id_is_read_from_the_environment_page_in_the_masters_format() {
    // As Spark 4.0's Environment page writes it.
    let page = "<tbody>\n        <tr><td>spark.app.id</td><td>local-1795472183861</td></tr><tr><td>spark.app.name</td>\
                <td>pyspark-shell</td></tr><tr><td>spark.app.startTime</td><td>1795472182978</td></tr>";
    assert_eq!(app_id_in_environment_page(page, AppIdFormat::Local), Some("local-1795472183861".into()));
    assert_eq!(app_id_in_environment_page(page, AppIdFormat::Yarn), None);
    assert_eq!(app_id_in_environment_page("<tr><td>spark.app.id</td><td>x<script></td>", AppIdFormat::Any), None);
    assert_eq!(
        app_id_in_environment_page("<tr><td>spark.app.name</td><td>local-1795472183861</td>", AppIdFormat::Local),
        None
    );
    assert_eq!(app_id_in_environment_page("", AppIdFormat::Any), None);
}
