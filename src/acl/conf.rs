//! Which Spark configuration keys a user may set: an allow-list (what a data scientist sets:
//! SQL behaviour, sizing, dynamic allocation, shuffle, serializer, ...) that the operator
//! extends in policies/ (`[conf] allow`, `allow_prefixes`), with a deny list on top that
//! nothing overrides. A deny list alone always has the next hole (a new file system, a mount
//! table, a credential provider): here a key nobody listed is refused. Superusers are exempt
//! (checked by the caller).

use super::policy::ConfRules;

/// Keys no user may set, whatever the allow-list says: they would move the application
/// (master, deploy mode), change who it runs as, mount secrets or host paths, read or write
/// files on the gateway host, or load code or run binaries from it.
pub const BUILTIN_CONF_DENY: &[&str] = &[
    "spark.master",
    "spark.submit.deployMode",
    "spark.yarn.jar",
    "spark.yarn.jars",
    "spark.yarn.archive",
    "spark.submit.proxyUser.allowCustomClasspathInClusterMode",
    "spark.driver.extraClassPath",
    "spark.executor.extraClassPath",
    "spark.driver.extraLibraryPath",
    "spark.executor.extraLibraryPath",
    "spark.driver.extraJavaOptions",
    "spark.executor.extraJavaOptions",
    "spark.driver.defaultJavaOptions",
    "spark.executor.defaultJavaOptions",
    "spark.pyspark.python",
    "spark.pyspark.driver.python",
    "spark.jars",
    "spark.files",
    "spark.archives",
    "spark.submit.pyFiles",
    "spark.kerberos.keytab",
    "spark.kerberos.principal",
    "spark.yarn.keytab",
    "spark.yarn.principal",
    "spark.repl.class.outputDir",
    "spark.repl.class.uri",
    "spark.proxy.user",
    // The gateway names applications (launch tags, standalone look-ups): users do not.
    "spark.app.name",
    // A pod template is read from the gateway host and can mount anything, run as anyone.
    "spark.kubernetes.driver.podTemplateFile",
    "spark.kubernetes.executor.podTemplateFile",
    // spark-submit uploads local dependencies there, with the gateway's credentials.
    "spark.kubernetes.file.upload.path",
    // spark-submit reads this file on the gateway host into a ConfigMap of the application.
    "spark.kubernetes.kerberos.krb5.path",
    "spark.kubernetes.kerberos.krb5.configMapName",
    "spark.kubernetes.hadoop.configMapName",
    // Where and with which cluster credentials spark-submit creates the pods.
    "spark.kubernetes.namespace",
    "spark.kubernetes.context",
    "spark.kubernetes.trust.certificates",
    "spark.kubernetes.container.image",
    "spark.kubernetes.driver.container.image",
    "spark.kubernetes.executor.container.image",
    // Ivy reads its settings file, and writes its cache, on the gateway host.
    "spark.jars.ivySettings",
    "spark.jars.ivy",
    // Programs the driver runs, and the options and libraries YARN's application master loads.
    "spark.r.command",
    "spark.r.driver.command",
    "spark.yarn.am.extraJavaOptions",
    "spark.yarn.am.extraLibraryPath",
    // The UI's filters (the gateway's UI protection) and its own ACLs.
    "spark.ui.filters",
    "spark.acls.enable",
    "spark.authenticate",
    "spark.authenticate.secret",
];

/// Prefixes no user may set (environment of the driver/executors, Kubernetes credentials,
/// secrets and host mounts, the cluster's file systems, gateway-internal keys).
pub const BUILTIN_CONF_DENY_PREFIXES: &[&str] = &[
    "spark.executorEnv.",
    "spark.yarn.appMasterEnv.",
    "spark.kubernetes.driverEnv.",
    "spark.yarn.dist.",
    "spark.sparkgate.",
    "spark.__livy__.",
    // The service account, token and key files spark-submit and the driver authenticate with.
    "spark.kubernetes.authenticate.",
    "spark.kubernetes.driver.secrets.",
    "spark.kubernetes.executor.secrets.",
    "spark.kubernetes.driver.secretKeyRef.",
    "spark.kubernetes.executor.secretKeyRef.",
    "spark.kubernetes.kerberos.tokenSecret.",
    "spark.kubernetes.driver.volumes.hostPath.",
    "spark.kubernetes.executor.volumes.hostPath.",
    "spark.kubernetes.driver.annotation.",
    "spark.kubernetes.executor.annotation.",
    // Filters of the UI, configured through `spark.<filter class>.param.*`.
    "spark.org.apache.spark.ui.",
    "spark.ui.filters.",
];

/// Keys no user may set, as (prefix, suffix): `spark.driver.resource.gpu.discoveryScript`
/// names a script the driver, executor or worker host runs.
pub const BUILTIN_CONF_DENY_PATTERNS: &[(&str, &str)] = &[
    ("spark.driver.resource.", ".discoveryScript"),
    ("spark.executor.resource.", ".discoveryScript"),
    ("spark.worker.resource.", ".discoveryScript"),
];

/// Keys users may set (beside [`BUILTIN_CONF_ALLOW_PREFIXES`]): sizing, scheduling, timeouts,
/// serialisation and compression.
pub const BUILTIN_CONF_ALLOW: &[&str] = &[
    "spark.driver.memory",
    "spark.driver.memoryOverhead",
    "spark.driver.memoryOverheadFactor",
    "spark.driver.cores",
    "spark.driver.maxResultSize",
    "spark.executor.memory",
    "spark.executor.memoryOverhead",
    "spark.executor.memoryOverheadFactor",
    "spark.executor.cores",
    "spark.executor.instances",
    "spark.executor.pyspark.memory",
    "spark.executor.heartbeatInterval",
    "spark.cores.max",
    "spark.task.cpus",
    "spark.task.maxFailures",
    "spark.default.parallelism",
    "spark.memory.fraction",
    "spark.memory.storageFraction",
    "spark.memory.offHeap.enabled",
    "spark.memory.offHeap.size",
    "spark.scheduler.mode",
    "spark.speculation",
    "spark.stage.maxConsecutiveAttempts",
    "spark.network.timeout",
    "spark.rpc.askTimeout",
    "spark.rpc.lookupTimeout",
    "spark.serializer",
    "spark.kryoserializer.buffer",
    "spark.kryoserializer.buffer.max",
    "spark.rdd.compress",
    "spark.broadcast.compress",
    "spark.broadcast.blockSize",
    "spark.checkpoint.compress",
    "spark.files.maxPartitionBytes",
    "spark.files.openCostInBytes",
    "spark.log.level",
    "spark.ui.showConsoleProgress",
    "spark.yarn.queue",
    "spark.yarn.am.memory",
    "spark.yarn.am.cores",
    "spark.yarn.executor.nodeLabelExpression",
    "spark.kubernetes.driver.request.cores",
    "spark.kubernetes.driver.limit.cores",
    "spark.kubernetes.executor.request.cores",
    "spark.kubernetes.executor.limit.cores",
];

/// Key prefixes users may set, minus [`BUILTIN_ALLOW_EXCEPTIONS`].
pub const BUILTIN_CONF_ALLOW_PREFIXES: &[&str] = &[
    "spark.sql.",
    "spark.dynamicAllocation.",
    "spark.shuffle.",
    "spark.kryo.",
    "spark.io.compression.",
    "spark.speculation.",
    "spark.locality.wait",
    "spark.excludeOnFailure.",
    "spark.python.worker.",
    "spark.cleaner.",
    "spark.driver.resource.",
    "spark.executor.resource.",
    "spark.task.resource.",
    "spark.ui.retained",
];

/// Exceptions to the built-in allowed prefixes: keys (or, ending in `.`, prefixes) under them
/// that read or write paths on the gateway host, load classes or jars from it, weaken the
/// redaction of secrets, or reach the metastore with the gateway's credentials. An operator
/// may still allow one explicitly (`[conf] allow`); the deny list cannot be overridden.
pub const BUILTIN_ALLOW_EXCEPTIONS: &[&str] = &[
    "spark.sql.warehouse.dir",
    "spark.sql.extensions",
    "spark.sql.catalog.",
    "spark.sql.hive.metastore.",
    "spark.sql.hive.thriftServer.",
    "spark.sql.queryExecutionListeners",
    "spark.sql.streaming.streamingQueryListeners",
    "spark.sql.streaming.checkpointLocation",
    "spark.sql.redaction.",
    "spark.shuffle.manager",
    "spark.shuffle.sort.io.plugin.class",
    "spark.shuffle.service.",
    // Which executable or module runs as the Python worker: a program on the host, not tuning.
    "spark.sql.execution.pyspark.python",
    "spark.python.worker.module",
];

/// Why a key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// On the deny list (built in or the operator's): nobody but a superuser sets it.
    Denied,
    /// Not on the allow-list.
    NotAllowed,
}

/// Whether a user (not a superuser) may set `key` under the operator's `rules`.
pub fn refusal(rules: &ConfRules, key: &str) -> Option<Refusal> {
    let denied = BUILTIN_CONF_DENY.contains(&key)
        || rules.deny.contains(key)
        || BUILTIN_CONF_DENY_PREFIXES.iter().any(|p| key.starts_with(p))
        || rules.deny_prefixes.iter().any(|p| key.starts_with(p.as_str()))
        || BUILTIN_CONF_DENY_PATTERNS.iter().any(|(p, s)| key.starts_with(p) && key.ends_with(s));
    if denied {
        return Some(Refusal::Denied);
    }
    let excepted =
        BUILTIN_ALLOW_EXCEPTIONS.iter().any(|e| if e.ends_with('.') { key.starts_with(e) } else { key == *e });
    let built_in = BUILTIN_CONF_ALLOW.contains(&key)
        || (!excepted && BUILTIN_CONF_ALLOW_PREFIXES.iter().any(|p| key.starts_with(p)));
    let operator = rules.allow.contains(key) || rules.allow_prefixes.iter().any(|p| key.starts_with(p.as_str()));
    if built_in || operator {
        None
    } else {
        Some(Refusal::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], allow_prefixes: &[&str], deny: &[&str]) -> ConfRules {
        ConfRules {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_prefixes: allow_prefixes.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            deny_prefixes: Default::default(),
        }
    }

    #[test]
    fn what_a_data_scientist_sets_is_allowed_and_nothing_unlisted_is() {
        let none = ConfRules::default();
        for ok in [
            "spark.sql.shuffle.partitions",
            "spark.sql.adaptive.enabled",
            "spark.sql.session.timeZone",
            "spark.executor.memory",
            "spark.driver.cores",
            "spark.dynamicAllocation.maxExecutors",
            "spark.shuffle.compress",
            "spark.serializer",
            "spark.kryo.registrator",
            "spark.executor.resource.gpu.amount",
            "spark.locality.wait.node",
            "spark.python.worker.reuse",
            "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled",
        ] {
            assert_eq!(refusal(&none, ok), None, "{ok}");
        }
        // The holes of a deny list: file systems, mount tables, credential providers, Ivy on
        // the gateway host, catalogs and listeners loading classes, paths on the gateway host.
        for unlisted in [
            "spark.hadoop.fs.viewfs.mounttable.x.link./k",
            "spark.hadoop.fs.file.impl",
            "spark.hadoop.hadoop.security.credential.provider.path",
            "spark.jars.packages",
            "spark.jars.repositories",
            "spark.sql.catalog.evil",
            "spark.sql.hive.metastore.jars",
            "spark.sql.warehouse.dir",
            "spark.sql.redaction.string.regex",
            "spark.shuffle.manager",
            "spark.sql.execution.pyspark.python",
            "spark.python.worker.module",
            "spark.eventLog.dir",
            "spark.kubernetes.driver.label.team",
            "spark.some.future.key",
        ] {
            assert_eq!(refusal(&none, unlisted), Some(Refusal::NotAllowed), "{unlisted}");
        }
        for denied in [
            "spark.kubernetes.kerberos.krb5.path",
            "spark.kubernetes.kerberos.tokenSecret.name",
            "spark.kubernetes.hadoop.configMapName",
            "spark.kubernetes.namespace",
            "spark.kubernetes.context",
            "spark.kubernetes.trust.certificates",
            "spark.kubernetes.driver.volumes.hostPath.data.mount.path",
            "spark.kubernetes.executor.annotation.x",
            "spark.kubernetes.container.image",
            "spark.ui.filters",
            "spark.org.apache.spark.ui.JWSFilter.param.secretKey",
            "spark.app.name",
            "spark.driver.resource.gpu.discoveryScript",
        ] {
            assert_eq!(refusal(&none, denied), Some(Refusal::Denied), "{denied}");
        }
    }

    #[test]
    fn the_operator_extends_the_allow_list_but_never_lifts_the_deny_list() {
        let r = rules(
            &["spark.jars.packages", "spark.sql.warehouse.dir", "spark.master"],
            &["spark.hadoop.fs.s3a.", "spark.kubernetes."],
            &["spark.sql.shuffle.partitions"],
        );
        assert_eq!(refusal(&r, "spark.jars.packages"), None);
        assert_eq!(refusal(&r, "spark.sql.warehouse.dir"), None, "an exception the operator lifted");
        assert_eq!(refusal(&r, "spark.hadoop.fs.s3a.access.key"), None);
        assert_eq!(refusal(&r, "spark.hadoop.fs.viewfs.mounttable.x.link./k"), Some(Refusal::NotAllowed));
        assert_eq!(refusal(&r, "spark.master"), Some(Refusal::Denied), "the built-in deny list stays on top");
        assert_eq!(refusal(&r, "spark.kubernetes.namespace"), Some(Refusal::Denied));
        assert_eq!(refusal(&r, "spark.kubernetes.driver.label.team"), None);
        assert_eq!(refusal(&r, "spark.sql.shuffle.partitions"), Some(Refusal::Denied), "the operator's deny wins");
    }
}
