//! What sessions and batches are submitted with: Livy's resource fields, one struct for both
//! and for what the launcher hands spark-submit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fields of a Livy create request that say how the Spark application is submitted,
/// checked (see `api::AppState::checked_submit`). Sessions and batches carry one each. Read
/// back from a stored record, a field it does not have (written before the field existed) is
/// empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubmitSpec {
    /// Unique name, if given.
    pub name: Option<String>,
    /// `--proxy-user`: the effective user, unless that is the gateway's own OS account.
    pub proxy_user: Option<String>,
    /// `jars`.
    pub jars: Vec<String>,
    /// `pyFiles`.
    pub py_files: Vec<String>,
    /// `files`.
    pub files: Vec<String>,
    /// `archives`.
    pub archives: Vec<String>,
    /// `driverMemory`.
    pub driver_memory: Option<String>,
    /// `driverCores`.
    pub driver_cores: Option<u32>,
    /// `executorMemory`.
    pub executor_memory: Option<String>,
    /// `executorCores`.
    pub executor_cores: Option<u32>,
    /// `numExecutors`.
    pub num_executors: Option<u32>,
    /// `queue`.
    pub queue: Option<String>,
    /// `conf`.
    pub conf: BTreeMap<String, String>,
}
