//! Which Spark application ids the gateway believes: only ids in the format of the configured
//! master, and from output only where a line Spark writes carries one.
//!
//! Why so strict: in local and client mode the user's code shares the driver process, its
//! output and its RPC connection, so anything the driver reports (`app_info`) or prints is the
//! user's word. An id is therefore only shown (first believable value wins), never acted on:
//! kills use what the gateway chose itself (a YARN launch tag, a Kubernetes pod name) or what
//! the cluster client printed in cluster mode.

/// The application id format of a master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppIdFormat {
    /// `local`, `local[N]`: `local-<epoch millis>`.
    Local,
    /// `spark://` and `local-cluster[..]` (an in-process standalone cluster):
    /// `app-<yyyyMMddHHmmss>-<n>`.
    Standalone,
    /// `yarn`: `application_<cluster timestamp>_<n>`.
    Yarn,
    /// `k8s://`: `spark-<32 hex digits>`.
    Kubernetes,
    /// Not launched yet (tests drive sessions by hand): any of the formats above.
    Any,
    /// A master whose ids the gateway does not know: none is believed.
    Unknown,
}

/// Longest id believed; every real format is far shorter.
const MAX_ID_LEN: usize = 64;

/// Lines of Spark's (and the sparkgate driver's) own output that carry the application id,
/// by the text right before it. The last occurrence in a line counts: what precedes it (an
/// application name, which users choose) cannot then supply the id.
const MARKERS: &[&str] = &[
    // YARN's client: "Submitted application application_…".
    "Submitted application ",
    // YARN's client: "Application report for application_… (state: RUNNING)".
    "Application report for ",
    // Standalone: "Connected to Spark cluster with app ID app-…".
    "with app ID ",
    // Kubernetes: "Deployed Spark application <name> with application ID spark-… and …".
    "with application ID ",
    // The sparkgate driver: "Spark started in 3.1 s (application local-…)".
    "(application ",
];

impl AppIdFormat {
    /// The format of `master` (`spark.master`).
    pub fn of_master(master: &str) -> Self {
        if master.starts_with("local-cluster") || master.starts_with("spark://") {
            Self::Standalone
        } else if master == "local" || master.starts_with("local[") {
            Self::Local
        } else if master.starts_with("yarn") {
            Self::Yarn
        } else if master.starts_with("k8s://") {
            Self::Kubernetes
        } else {
            Self::Unknown
        }
    }

    /// Whether `id` is an application id in this format.
    pub fn accepts(self, id: &str) -> bool {
        if id.len() > MAX_ID_LEN {
            return false;
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match self {
            Self::Local => id.strip_prefix("local-").is_some_and(|rest| rest.len() >= 10 && digits(rest)),
            Self::Standalone => id.strip_prefix("app-").is_some_and(|rest| {
                // Spark 4 lets the master's id pattern be configured; keep to what cannot
                // carry markup or a path: digits and dashes, starting with a timestamp.
                rest.len() >= 10 && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !rest.starts_with('-')
            }),
            Self::Yarn => id
                .strip_prefix("application_")
                .and_then(|rest| rest.split_once('_'))
                .is_some_and(|(cluster, n)| digits(cluster) && digits(n)),
            Self::Kubernetes => id.strip_prefix("spark-").is_some_and(|rest| {
                rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }),
            Self::Any => [Self::Local, Self::Standalone, Self::Yarn, Self::Kubernetes].iter().any(|f| f.accepts(id)),
            Self::Unknown => false,
        }
    }

    /// The application id a line of Spark's output carries, if it is one of the lines that
    /// carry it (see [`MARKERS`]) and the id is in this format.
    pub fn find_in_line(self, line: &str) -> Option<String> {
        MARKERS.iter().find_map(|marker| {
            let (_, after) = line.rsplit_once(marker)?;
            let id = after.split(|c: char| c.is_whitespace() || matches!(c, ')' | ',' | '.' | '\'' | '"')).next()?;
            self.accepts(id).then(|| id.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_master_believes_only_its_own_format() {
        let cases = [
            ("local[*]", "local-1795472183861", true),
            ("local", "local-1795472183861", true),
            ("local[*]", "app-20240101120000-0003", false),
            ("local[*]", "local-17", false),
            ("local[*]", "local-1795472183861x", false),
            ("local-cluster[2,1,1024]", "app-20240101120000-0003", true),
            ("spark://m:7077", "app-20240101120000-0003", true),
            ("spark://m:7077", "app-20240101120000-0003/../x", false),
            ("spark://m:7077", "application_1700000000000_0042", false),
            ("yarn", "application_1700000000000_0042", true),
            ("yarn", "application_1700000000000__0042", false),
            ("yarn", "application_1700000000000_0042_1", false),
            ("yarn", "application_", false),
            ("k8s://https://api:6443", "spark-0123456789abcdef0123456789abcdef", true),
            ("k8s://https://api:6443", "spark-0123456789ABCDEF0123456789abcdef", false),
            ("k8s://https://api:6443", "spark-pi", false),
            ("mesos://m:5050", "local-1795472183861", false),
        ];
        for (master, id, ok) in cases {
            assert_eq!(AppIdFormat::of_master(master).accepts(id), ok, "{master} {id}");
        }
        for bad in ["javascript:alert(1)", "<script>", "", "local-", &format!("local-{}", "1".repeat(80))] {
            assert!(!AppIdFormat::Any.accepts(bad), "{bad}");
        }
    }

    #[test]
    fn ids_come_only_from_the_lines_spark_writes_them_in() {
        let yarn = AppIdFormat::Yarn;
        assert_eq!(
            yarn.find_in_line("INFO Client: Submitted application application_1700000000000_0042"),
            Some("application_1700000000000_0042".into())
        );
        assert_eq!(
            yarn.find_in_line("INFO Client: Application report for application_1700000000000_0042 (state: RUNNING)"),
            Some("application_1700000000000_0042".into())
        );
        // The application name is the user's: SparkContext echoes it, and it is not an id.
        assert_eq!(yarn.find_in_line("INFO SparkContext: Submitted application: application_1_0001"), None);
        assert_eq!(yarn.find_in_line("user output: application_1700000000000_0042"), None);
        let k8s = AppIdFormat::Kubernetes;
        let id = "spark-0123456789abcdef0123456789abcdef";
        let line = format!(
            "Deployed Spark application x with application ID spark-ffffffffffffffffffffffffffffffff \
             with application ID {id} and submission ID etl:sparkgate-batch-1-0a1b2c3d into Kubernetes"
        );
        assert_eq!(k8s.find_in_line(&line), Some(id.into()), "a name cannot supply the id");
        let standalone = AppIdFormat::Standalone;
        assert_eq!(
            standalone.find_in_line(
                "INFO StandaloneSchedulerBackend: Connected to Spark cluster with app ID app-20240101120000-0003"
            ),
            Some("app-20240101120000-0003".into())
        );
        assert_eq!(
            AppIdFormat::Local
                .find_in_line("sparkgate-driver: Spark started in 3.1 s (application local-1795472183861)"),
            Some("local-1795472183861".into())
        );
        assert_eq!(AppIdFormat::Local.find_in_line("(application javascript:alert(1))"), None);
    }
}
