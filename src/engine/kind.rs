//! Session and statement kinds with Livy's names and aliases.

use std::fmt;

/// The kind of an interactive session. `Shared` lets each statement choose (and is what a
/// request without `kind` gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionKind {
    /// Scala (`spark`, alias `scala`).
    Spark,
    /// Python (`pyspark`, alias `python`).
    PySpark,
    /// R (`sparkr`, alias `r`).
    SparkR,
    /// SQL.
    Sql,
    /// Any; each statement says which.
    #[default]
    Shared,
}

impl SessionKind {
    /// Parses Livy's session kind names and aliases.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "spark" | "scala" => Self::Spark,
            "pyspark" | "python" => Self::PySpark,
            "sparkr" | "r" => Self::SparkR,
            "sql" => Self::Sql,
            "shared" => Self::Shared,
            _ => return None,
        })
    }

    /// The name Livy shows in a session's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spark => "spark",
            Self::PySpark => "pyspark",
            Self::SparkR => "sparkr",
            Self::Sql => "sql",
            Self::Shared => "shared",
        }
    }

    /// The interpreter a statement runs in, from its own kind (if any) and the session's.
    pub fn resolve_statement(self, statement_kind: Option<&str>) -> Result<CodeKind, String> {
        match statement_kind {
            Some(k) => CodeKind::parse(k).ok_or_else(|| {
                "field `kind`: unknown statement kind; use one of spark, scala, pyspark, python, sparkr, r, sql".into()
            }),
            None => match self {
                Self::Spark => Ok(CodeKind::Scala),
                Self::PySpark => Ok(CodeKind::PySpark),
                Self::SparkR => Ok(CodeKind::SparkR),
                Self::Sql => Ok(CodeKind::Sql),
                Self::Shared => Err("field `kind` is required for statements in a session of kind `shared` \
                     (spark, pyspark, sparkr or sql)"
                    .into()),
            },
        }
    }
}

impl fmt::Display for SessionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The interpreter that runs one statement (the protocol's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeKind {
    /// Scala REPL.
    Scala,
    /// Python.
    PySpark,
    /// R.
    SparkR,
    /// Spark SQL.
    Sql,
    /// A job of Livy's programmatic API: a cloudpickled Python callable (base64).
    PySparkJob,
    /// A job of Livy's programmatic API: a Kryo-serialized `org.apache.livy.Job` (base64).
    SparkJob,
}

impl CodeKind {
    /// Parses Livy's code kind names and aliases.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "spark" | "scala" => Self::Scala,
            "pyspark" | "python" => Self::PySpark,
            "sparkr" | "r" => Self::SparkR,
            "sql" => Self::Sql,
            _ => return None,
        })
    }

    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scala => "scala",
            Self::PySpark => "pyspark",
            Self::SparkR => "sparkr",
            Self::Sql => "sql",
            Self::PySparkJob => "pyspark_job",
            Self::SparkJob => "spark_job",
        }
    }

    /// A kind as the store keeps it ([`CodeKind::as_str`]): statements' and jobs'. Only
    /// [`CodeKind::parse`] reads what a client sends, so no statement can pose as a job.
    pub fn from_stored(name: &str) -> Option<Self> {
        match name {
            "pyspark_job" => Some(Self::PySparkJob),
            "spark_job" => Some(Self::SparkJob),
            other => Self::parse(other),
        }
    }

    /// Whether it is a job of the programmatic API rather than a statement.
    pub fn is_job(self) -> bool {
        matches!(self, Self::PySparkJob | Self::SparkJob)
    }

    /// The job kind of Livy's `jobType` (`pyspark` or `spark`) for a session of `session`
    /// kind: Python jobs in pyspark and shared sessions, JVM jobs in spark and shared ones.
    pub fn job(job_type: &str, session: SessionKind) -> Result<Self, String> {
        let kind = match job_type {
            "pyspark" => Self::PySparkJob,
            "spark" => Self::SparkJob,
            _ => return Err("field `jobType`: unknown job type; use pyspark or spark".into()),
        };
        let runs = match kind {
            Self::PySparkJob => matches!(session, SessionKind::PySpark | SessionKind::Shared),
            _ => matches!(session, SessionKind::Spark | SessionKind::Shared),
        };
        if !runs {
            return Err(format!(
                "field `jobType`: a session of kind {session} cannot run {job_type} jobs (pyspark jobs run in pyspark \
                 and shared sessions, spark jobs in spark and shared sessions)"
            ));
        }
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_kinds_are_no_statement_kinds_and_run_only_in_fitting_sessions() {
        // A client cannot send a statement of a job kind; only the store names them.
        assert_eq!(CodeKind::parse("pyspark_job"), None);
        assert_eq!(CodeKind::from_stored("pyspark_job"), Some(CodeKind::PySparkJob));
        assert_eq!(CodeKind::from_stored("spark_job"), Some(CodeKind::SparkJob));
        assert_eq!(CodeKind::from_stored("scala"), Some(CodeKind::Scala));
        for kind in [CodeKind::PySparkJob, CodeKind::SparkJob] {
            assert_eq!(CodeKind::from_stored(kind.as_str()), Some(kind));
            assert!(kind.is_job());
        }
        use SessionKind::*;
        let runs = |job: &str, session| CodeKind::job(job, session).is_ok();
        assert!(runs("pyspark", PySpark) && runs("pyspark", Shared));
        assert!(!runs("pyspark", Spark) && !runs("pyspark", Sql) && !runs("pyspark", SparkR));
        assert!(runs("spark", Spark) && runs("spark", Shared));
        assert!(!runs("spark", PySpark) && !runs("spark", Sql) && !runs("spark", SparkR));
        assert!(CodeKind::job("scala", Shared).unwrap_err().contains("unknown job type"));
    }

    #[test]
    fn aliases() {
        assert_eq!(SessionKind::parse("python"), Some(SessionKind::PySpark));
        assert_eq!(SessionKind::parse("scala"), Some(SessionKind::Spark));
        assert_eq!(SessionKind::parse("r"), Some(SessionKind::SparkR));
        assert_eq!(SessionKind::parse("cobol"), None);
        assert_eq!(CodeKind::parse("spark"), Some(CodeKind::Scala));
    }

    #[test]
    fn statement_kind_resolution() {
        assert_eq!(SessionKind::PySpark.resolve_statement(None), Ok(CodeKind::PySpark));
        assert_eq!(SessionKind::PySpark.resolve_statement(Some("sql")), Ok(CodeKind::Sql));
        assert!(SessionKind::Shared.resolve_statement(None).unwrap_err().contains("kind"));
        let err = SessionKind::Shared.resolve_statement(Some("cobol")).unwrap_err();
        assert!(err.contains("`kind`") && !err.contains("cobol"), "the field, not the value: {err}");
    }
}
