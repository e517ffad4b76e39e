//! Uploads and added files in a real session: a Python module uploaded and imported by the next
//! statement (on executors too), a jar uploaded and its class used from Scala, oversize and
//! forbidden paths refused.

use crate::support::{gateway, shared_session};
use serde_json::json;
use std::path::{Path, PathBuf};

fn multipart(field: &str, name: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .part(field.to_string(), reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()))
}

/// A jar with `sparkgate.test.Greeter.hello(String)`, compiled here (nothing downloaded).
fn greeter_jar(dir: &Path) -> PathBuf {
    let src = dir.join("src/sparkgate/test");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("Greeter.java"),
        "package sparkgate.test;\npublic class Greeter { public static String hello(String n) { return \"hello \" + n; } }\n",
    )
    .unwrap();
    let classes = dir.join("classes");
    let ok = std::process::Command::new("javac")
        .arg("-d")
        .arg(&classes)
        .arg(src.join("Greeter.java"))
        .status()
        .expect("javac (scripts/setup.sh installs it)");
    assert!(ok.success());
    let jar = dir.join("greeter.jar");
    let ok = std::process::Command::new("jar").arg("cf").arg(&jar).arg("-C").arg(&classes).arg(".").status().unwrap();
    assert!(ok.success());
    jar
}

#[tokio::test]
async fn an_uploaded_python_module_is_importable_on_the_driver_and_executors() {
    let gw = gateway();
    let id = shared_session().await;
    let form = multipart("file", "sg_helpers.py", b"def triple(x):\n    return 3 * x\n".to_vec());
    let r = gw.client().post(gw.url(&format!("/sessions/{id}/upload-pyfile"))).multipart(form).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let st = gw.run(id, "pyspark", "import sg_helpers\nsg_helpers.triple(14)").await;
    assert_eq!(st["output"]["data"]["text/plain"], "42", "{st}");
    let st = gw
        .run(id, "pyspark", "sc.parallelize([1, 2], 2).map(lambda x: __import__('sg_helpers').triple(x)).collect()")
        .await;
    assert_eq!(st["output"]["data"]["text/plain"], "[3, 6]", "{st}");
    // The upload is stored owner-only inside the session's directory.
    let stored = gw.data_dir.join(format!("sessions/{id}/uploads/sg_helpers.py"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn an_uploaded_jar_is_usable_from_scala() {
    let gw = gateway();
    let id = shared_session().await;
    let dir = tempfile::tempdir().unwrap();
    let jar = std::fs::read(greeter_jar(dir.path())).unwrap();
    let r = gw
        .client()
        .post(gw.url(&format!("/sessions/{id}/upload-jar")))
        .multipart(multipart("jar", "greeter.jar", jar))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let st = gw.run(id, "spark", "sparkgate.test.Greeter.hello(\"spark\")").await;
    assert!(st["output"]["data"]["text/plain"].as_str().unwrap_or("").contains("hello spark"), "{st}");
}

#[tokio::test]
async fn added_files_are_checked_and_uploads_limited() {
    let gw = gateway();
    let id = shared_session().await;
    let (status, body) = gw.post(&format!("/sessions/{id}/add-file"), json!({"uri": "/etc/krb5.keytab"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("local path"), "{body}");
    // A file system that configuration can mount onto this host's disk is not "remote" (the
    // session could otherwise define the mount table itself: see the conf allow-list).
    let policy = gw.policy_dir.join("acl.toml").display().to_string();
    for uri in [format!("viewfs://x/k{policy}"), format!("har://{policy}"), "https://u:p@repo.example/a.jar".into()] {
        let (status, body) = gw.post(&format!("/sessions/{id}/add-file"), json!({"uri": uri})).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert!(!body["msg"].as_str().unwrap().contains(&uri), "the value is not echoed: {body}");
    }
    let (status, body) = gw.post(&format!("/sessions/{id}/add-pyfile"), json!({})).await;
    assert_eq!(status, 400, "{body}");
    // A file inside the allowed directory is added and readable through SparkFiles.
    let data = gw.jobs_dir.join("lookup.txt");
    std::fs::write(&data, "forty-two").unwrap();
    let (status, body) = gw.post(&format!("/sessions/{id}/add-file"), json!({"uri": data.display().to_string()})).await;
    assert_eq!(status, 200, "{body}");
    let st = gw.run(id, "pyspark", "from pyspark import SparkFiles\nopen(SparkFiles.get('lookup.txt')).read()").await;
    assert_eq!(st["output"]["data"]["text/plain"], "'forty-two'", "{st}");
    // The wrong multipart field, and a body over server.max_upload_bytes (2 MiB here).
    let r = gw
        .client()
        .post(gw.url(&format!("/sessions/{id}/upload-jar")))
        .multipart(multipart("file", "x.jar", vec![1, 2, 3]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let big = vec![b'x'; 3 * 1024 * 1024];
    let r = gw
        .client()
        .post(gw.url(&format!("/sessions/{id}/upload-file")))
        .multipart(multipart("file", "big.bin", big))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => panic!("expected a 413 answer, got {e}"),
    }
    assert!(!gw.data_dir.join(format!("sessions/{id}/uploads/big.bin")).exists(), "a refused upload is not kept");
    // Uploads within the per-upload limit, until the session's total (3 MiB here) is reached.
    let upload = |name: &'static str| async move {
        let part = vec![b'y'; 1200 * 1024];
        let r = gw
            .client()
            .post(gw.url(&format!("/sessions/{id}/upload-file")))
            .multipart(multipart("file", name, part))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap_or_default())
    };
    assert_eq!(upload("part-1.bin").await.0, 200);
    assert_eq!(upload("part-2.bin").await.0, 200);
    let (status, body) = upload("part-3.bin").await;
    assert_eq!(status, 413, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("sessions.max_uploaded_bytes"), "{body}");
    assert!(!gw.data_dir.join(format!("sessions/{id}/uploads/part-3.bin")).exists());
    assert_eq!(gw.get("/version").await.0, 200);
}
