//! What spark-submit is given: its argument vector (never a shell string, never a secret) and
//! the owner-only properties file with every Spark property of the launch, including the
//! per-application secret local applications require on their ports.

use super::{launch_keytab, LaunchSpec};
use crate::config::SparkConfig;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

/// With a local master, every application requires a secret of its own on its Spark RPC and
/// block-transfer ports (`spark.authenticate`): the drivers of all users share this host's
/// loopback, and without it one session's code could connect to another's driver and fetch its
/// cached blocks and broadcasts. The secret travels in the owner-only properties file (and the
/// UI redacts it by name). Elsewhere nothing is added: on a cluster the executors, and so the
/// secret's distribution, are the cluster manager's (YARN and Kubernetes generate one when the
/// operator sets `spark.authenticate`).
pub fn local_rpc_auth(config: &SparkConfig) -> BTreeMap<String, String> {
    let master = config.master.as_str();
    if !(master == "local" || master.starts_with("local[")) {
        return BTreeMap::new();
    }
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    BTreeMap::from([
        ("spark.authenticate".to_string(), "true".to_string()),
        ("spark.authenticate.secret".to_string(), hex::encode(secret)),
    ])
}

/// The spark-submit argument vector (without the program itself).
///
/// Spark properties are not on it: they may hold secrets (`spark.hadoop.fs.s3a.secret.key`)
/// and argv is readable by every local user (`/proc/*/cmdline`). They go into the owner-only
/// `properties_file` (see [`write_launch_files`]); `--load-spark-defaults` keeps
/// `conf/spark-defaults.conf` in force beneath them, as it would be without the file.
pub fn build_args(config: &SparkConfig, spec: &LaunchSpec, properties_file: &Path) -> Vec<OsString> {
    let mut args: Vec<String> = vec![
        "--master".into(),
        config.master.clone(),
        "--deploy-mode".into(),
        config.deploy_mode.clone(),
        "--name".into(),
        spec.name.clone(),
    ];
    if let Some(class) = &spec.class_name {
        args.extend(["--class".into(), class.clone()]);
    }
    if let Some(user) = &spec.submit.proxy_user {
        args.extend(["--proxy-user".into(), user.clone()]);
    }
    if let Some(queue) = &spec.submit.queue {
        args.extend(["--queue".into(), queue.clone()]);
    }
    if let (Some(principal), Some(keytab)) = (&config.launch_principal, launch_keytab(config, spec)) {
        // A path and a principal name, not secrets: the keytab's contents never leave the file.
        // (With --proxy-user, which spark-submit refuses to combine with --principal, the
        // gateway's ticket travels in KRB5CCNAME instead: see LaunchTicket.)
        args.extend(["--principal".into(), principal.clone(), "--keytab".into(), keytab.display().to_string()]);
    }
    // The file lists go into the properties file too (see spark_properties): their URLs may
    // carry credentials in a query string (a presigned URL), and argv is readable by all.
    args.extend(["--properties-file".into(), properties_file.display().to_string(), "--load-spark-defaults".into()]);
    args.push(spec.app.clone());
    args.extend(spec.args.iter().cloned());
    args.into_iter().map(OsString::from).collect()
}

/// Every Spark property of a launch: the operator's `spark.conf`, the request's `conf`, the
/// cluster bookkeeping (tags, labels) and the resource fields, later ones winning.
pub fn spark_properties(config: &SparkConfig, spec: &LaunchSpec) -> BTreeMap<String, String> {
    let mut conf = config.conf.clone();
    conf.extend(spec.submit.conf.iter().map(|(k, v)| (k.clone(), v.clone())));
    conf.extend(spec.cluster_conf.iter().map(|(k, v)| (k.clone(), v.clone())));
    let resources = [
        ("spark.driver.memory", spec.submit.driver_memory.clone()),
        ("spark.driver.cores", spec.submit.driver_cores.map(|n| n.to_string())),
        ("spark.executor.memory", spec.submit.executor_memory.clone()),
        ("spark.executor.cores", spec.submit.executor_cores.map(|n| n.to_string())),
        ("spark.executor.instances", spec.submit.num_executors.map(|n| n.to_string())),
    ];
    for (key, value) in resources {
        if let Some(value) = value {
            conf.insert(key.to_string(), value);
        }
    }
    // What --jars, --py-files, --files and --archives would say: spark-submit reads these
    // properties when the flags are absent (a request's lists replace the operator's, as the
    // flags did).
    let lists = [
        ("spark.jars", &spec.submit.jars),
        ("spark.submit.pyFiles", &spec.submit.py_files),
        ("spark.files", &spec.submit.files),
        ("spark.archives", &spec.submit.archives),
    ];
    for (key, list) in lists {
        if !list.is_empty() {
            conf.insert(key.to_string(), list.join(","));
        }
    }
    conf
}

/// `properties` in Java's properties-file format. Everything but plain ASCII letters, digits
/// and a few safe punctuation marks is written as `\uXXXX`, so no key or value can break out
/// of its line or change the parse (`=`, `:`, `#`, `\`, newlines, non-ASCII).
pub fn properties_text(properties: &BTreeMap<String, String>) -> String {
    fn escape(text: &str, out: &mut String) {
        let mut units = [0u16; 2];
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || "._-/,+@%()[]{};".contains(c) {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    let mut out = String::from("# Written by sparkgate for one spark-submit (owner-only).\n");
    for (key, value) in properties {
        escape(key, &mut out);
        out.push('=');
        escape(value, &mut out);
        out.push('\n');
    }
    out
}

/// The file in a launch's directory that holds its Spark properties.
pub const PROPERTIES_FILE: &str = "spark-launch.properties";

/// Writes a launch's Spark properties into `dir` (0600) and returns the spark-submit argv.
pub fn write_launch_files(config: &SparkConfig, spec: &LaunchSpec, dir: &Path) -> Result<Vec<OsString>, String> {
    let path = dir.join(PROPERTIES_FILE);
    crate::fs::write_file(&path, properties_text(&spark_properties(config, spec)).as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    let path = path.canonicalize().unwrap_or(path);
    Ok(build_args(config, spec, &path))
}

#[cfg(test)]
mod tests;
