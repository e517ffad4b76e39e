//! Records kept in this process only (gone with it), with the id counters of
//! [`crate::engine::ids`] — durable files, or in memory for tests.

use super::{Meta, Store, StoreError, Stored, Version, Write};
use crate::acl::ResourceKind;
use crate::engine::ids::IdCounter;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
struct Table {
    records: BTreeMap<u32, Stored>,
    names: HashMap<String, u32>,
}

/// A store in memory.
#[derive(Debug)]
pub struct MemoryStore {
    sessions: IdCounter,
    batches: IdCounter,
    tables: Mutex<[Table; 2]>,
    statements: Mutex<BTreeMap<(u32, u32), Stored>>,
    values: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryStore {
    /// A store whose ids come from these counters.
    pub fn new(sessions: IdCounter, batches: IdCounter) -> Self {
        Self {
            sessions,
            batches,
            tables: Mutex::new(Default::default()),
            statements: Mutex::default(),
            values: Mutex::default(),
        }
    }

    /// A store with counters in memory too (tests).
    pub fn ephemeral() -> Self {
        Self::new(IdCounter::in_memory("sessions"), IdCounter::in_memory("batches"))
    }

    fn statements_lock(&self) -> MutexGuard<'_, BTreeMap<(u32, u32), Stored>> {
        self.statements.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn table(&self, kind: ResourceKind) -> (MutexGuard<'_, [Table; 2]>, usize) {
        (self.tables.lock().unwrap_or_else(PoisonError::into_inner), index(kind))
    }
}

fn index(kind: ResourceKind) -> usize {
    match kind {
        ResourceKind::Session => 0,
        ResourceKind::Batch => 1,
    }
}

fn version_of(table: &Table, kind: ResourceKind, id: u32, expected: Version) -> Result<(), StoreError> {
    let kind = kind.as_str();
    match table.records.get(&id) {
        None => Err(StoreError::Missing { kind, id }),
        Some(stored) if stored.version != expected => {
            Err(StoreError::Conflict { kind, id, expected, found: stored.version })
        }
        Some(_) => Ok(()),
    }
}

impl Store for MemoryStore {
    async fn next_id(&self, kind: ResourceKind) -> Result<u32, StoreError> {
        let counter = match kind {
            ResourceKind::Session => &self.sessions,
            ResourceKind::Batch => &self.batches,
        };
        counter.next().map_err(|e| StoreError::Failed(e.to_string()))
    }

    async fn create(&self, kind: ResourceKind, id: u32, meta: Meta, bytes: Vec<u8>) -> Result<Version, StoreError> {
        let (mut tables, i) = self.table(kind);
        let table = &mut tables[i];
        if table.records.contains_key(&id) {
            return Err(StoreError::Exists { kind: kind.as_str(), id });
        }
        if let Some(name) = &meta.name {
            if table.names.contains_key(name) {
                return Err(StoreError::NameTaken);
            }
            table.names.insert(name.clone(), id);
        }
        table.records.insert(id, Stored { id, version: 1, meta, bytes });
        Ok(1)
    }

    async fn update(
        &self,
        kind: ResourceKind,
        id: u32,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        self.apply(vec![Write::Update { kind, id, expected, bytes }]).await.map(|v| v[0])
    }

    async fn delete(&self, kind: ResourceKind, id: u32, expected: Version) -> Result<(), StoreError> {
        let (mut tables, i) = self.table(kind);
        let table = &mut tables[i];
        version_of(table, kind, id, expected)?;
        if let Some(name) = table.records.remove(&id).and_then(|s| s.meta.name) {
            table.names.remove(&name);
        }
        drop(tables);
        if kind == ResourceKind::Session {
            self.statements_lock().retain(|(session, _), _| *session != id);
        }
        Ok(())
    }

    async fn get(&self, kind: ResourceKind, id: u32) -> Result<Option<Stored>, StoreError> {
        let (tables, i) = self.table(kind);
        Ok(tables[i].records.get(&id).cloned())
    }

    async fn find_name(&self, kind: ResourceKind, name: &str) -> Result<Option<u32>, StoreError> {
        let (tables, i) = self.table(kind);
        Ok(tables[i].names.get(name).copied())
    }

    async fn list(&self, kind: ResourceKind, after: Option<u32>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let (tables, i) = self.table(kind);
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(tables[i].records.range((from, std::ops::Bound::Unbounded)).take(limit).map(|(_, s)| s.clone()).collect())
    }

    async fn put_statement(
        &self,
        session: u32,
        statement: u32,
        expected: Option<Version>,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        self.apply(vec![Write::PutStatement { session, statement, expected, bytes }]).await.map(|v| v[0])
    }

    async fn list_statements(&self, session: u32, after: Option<u32>, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        if after == Some(u32::MAX) {
            return Ok(Vec::new());
        }
        Ok(self
            .statements_lock()
            .range((session, from)..=(session, u32::MAX))
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn delete_statement(&self, session: u32, statement: u32) -> Result<(), StoreError> {
        self.statements_lock().remove(&(session, statement));
        Ok(())
    }

    async fn put_value(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.values.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_string(), bytes);
        Ok(())
    }

    async fn value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.values.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned())
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Version>, StoreError> {
        // All checked under both locks before any is made: all or none. (The writes of one
        // batch touch distinct items.)
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let mut statements = self.statements_lock();
        for write in &writes {
            match write {
                Write::Update { kind, id, expected, .. } => version_of(&tables[index(*kind)], *kind, *id, *expected)?,
                Write::PutStatement { session, statement, expected, .. } => {
                    let kind = "statement";
                    match (statements.get(&(*session, *statement)), expected) {
                        (Some(_), None) => return Err(StoreError::Exists { kind, id: *statement }),
                        (None, Some(_)) => return Err(StoreError::Missing { kind, id: *statement }),
                        (Some(stored), Some(expected)) if stored.version != *expected => {
                            return Err(StoreError::Conflict {
                                kind,
                                id: *statement,
                                expected: *expected,
                                found: stored.version,
                            })
                        }
                        _ => {}
                    }
                }
                Write::DeleteStatement { .. } => {}
            }
        }
        let versions = writes
            .into_iter()
            .map(|write| match write {
                Write::Update { kind, id, bytes, .. } => tables[index(kind)].records.get_mut(&id).map_or(0, |stored| {
                    stored.version += 1;
                    stored.bytes = bytes;
                    stored.version
                }),
                Write::PutStatement { session, statement, bytes, .. } => {
                    let stored = statements.entry((session, statement)).or_insert_with(|| Stored {
                        id: statement,
                        version: 0,
                        meta: Meta::default(),
                        bytes: Vec::new(),
                    });
                    stored.version += 1;
                    stored.bytes = bytes;
                    stored.version
                }
                Write::DeleteStatement { session, statement } => {
                    statements.remove(&(session, statement));
                    0
                }
            })
            .collect();
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_created_once_changed_by_version_and_deleted_with_their_name() {
        crate::store::tests::records_are_created_once_changed_by_version_and_deleted_with_their_name(
            &MemoryStore::ephemeral(),
        )
        .await;
    }

    #[tokio::test]
    async fn listing_is_paged_by_id() {
        crate::store::tests::listing_is_paged_by_id(&MemoryStore::ephemeral()).await;
    }

    #[tokio::test]
    async fn values_are_set_replaced_and_read() {
        crate::store::tests::values_are_set_replaced_and_read(&MemoryStore::ephemeral()).await;
    }

    #[tokio::test]
    async fn statements_are_written_by_version_listed_in_order_and_go_with_their_session() {
        crate::store::tests::statements_are_written_by_version_listed_in_order_and_go_with_their_session(
            &MemoryStore::ephemeral(),
        )
        .await;
    }
}
