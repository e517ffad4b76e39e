//! What every store must do, run against each (see the `tests` of each store).

use super::{Meta, Store, StoreError, Stored, Write};
use crate::acl::ResourceKind;

fn meta(name: Option<&str>) -> Meta {
    Meta { name: name.map(str::to_string), effective_user: "alice".into() }
}

/// Ids count per kind; a record is created once, its name claimed with it; writes are
/// compare-and-set on the version; a delete releases the name.
pub(crate) async fn records_are_created_once_changed_by_version_and_deleted_with_their_name(store: &impl Store) {
    let kind = ResourceKind::Session;
    assert_eq!((store.next_id(kind).await.unwrap(), store.next_id(kind).await.unwrap()), (0, 1));
    assert_eq!(store.next_id(ResourceKind::Batch).await.unwrap(), 0, "each kind counts on its own");
    assert_eq!(store.create(kind, 0, meta(Some("etl")), b"a".to_vec()).await.unwrap(), 1);
    assert!(matches!(store.create(kind, 0, meta(None), vec![]).await, Err(StoreError::Exists { id: 0, .. })));
    assert!(matches!(store.create(kind, 1, meta(Some("etl")), vec![]).await, Err(StoreError::NameTaken)));
    assert!(store.get(kind, 1).await.unwrap().is_none(), "a refused create leaves nothing");
    assert!(store.create(ResourceKind::Batch, 0, meta(Some("etl")), vec![]).await.is_ok(), "names per kind");
    assert_eq!(store.find_name(kind, "etl").await.unwrap(), Some(0));
    let got = store.get(kind, 0).await.unwrap().unwrap();
    assert_eq!(got, Stored { id: 0, version: 1, meta: meta(Some("etl")), bytes: b"a".to_vec() });

    // Compare-and-set: a writer holding an old version is refused and changes nothing.
    assert_eq!(store.update(kind, 0, 1, b"b".to_vec()).await.unwrap(), 2);
    let stale = store.update(kind, 0, 1, b"c".to_vec()).await.unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { expected: 1, found: 2, .. }), "{stale}");
    assert!(matches!(store.delete(kind, 0, 1).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.get(kind, 0).await.unwrap().unwrap().bytes, b"b");
    assert!(matches!(store.update(kind, 7, 1, vec![]).await, Err(StoreError::Missing { id: 7, .. })));

    store.delete(kind, 0, 2).await.unwrap();
    assert!(store.get(kind, 0).await.unwrap().is_none());
    assert_eq!(store.find_name(kind, "etl").await.unwrap(), None, "the name is free again");
    assert!(store.create(kind, 2, meta(Some("etl")), vec![]).await.is_ok(), "and can be claimed again");
}

/// Listing is by id, in pages after a given id.
pub(crate) async fn listing_is_paged_by_id(store: &impl Store) {
    for id in [5, 1, 3, 9] {
        store.create(ResourceKind::Batch, id, meta(None), vec![id as u8]).await.unwrap();
    }
    let ids = |page: Vec<Stored>| page.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list(ResourceKind::Batch, None, 2).await.unwrap()), [1, 3]);
    assert_eq!(ids(store.list(ResourceKind::Batch, Some(3), 2).await.unwrap()), [5, 9]);
    assert!(store.list(ResourceKind::Batch, Some(9), 2).await.unwrap().is_empty());
    assert!(store.list(ResourceKind::Session, None, 10).await.unwrap().is_empty());
    assert_eq!(store.list(ResourceKind::Batch, Some(4), 1).await.unwrap()[0].bytes, [5]);
}

/// Statements are created once, replaced by version, listed in order per session, and go when
/// their session's record is deleted.
pub(crate) async fn statements_are_written_by_version_listed_in_order_and_go_with_their_session(store: &impl Store) {
    let session = ResourceKind::Session;
    store.create(session, 4, meta(None), vec![]).await.unwrap();
    store.create(session, 5, meta(None), vec![]).await.unwrap();
    for id in [2, 0, 1] {
        assert_eq!(store.put_statement(4, id, None, vec![id as u8]).await.unwrap(), 1);
    }
    store.put_statement(5, 0, None, b"other".to_vec()).await.unwrap();
    assert!(matches!(store.put_statement(4, 0, None, vec![]).await, Err(StoreError::Exists { .. })));
    assert_eq!(store.put_statement(4, 0, Some(1), b"done".to_vec()).await.unwrap(), 2);
    assert!(matches!(store.put_statement(4, 0, Some(1), vec![]).await, Err(StoreError::Conflict { found: 2, .. })));
    assert!(matches!(store.put_statement(4, 9, Some(1), vec![]).await, Err(StoreError::Missing { .. })));
    let ids = |page: Vec<Stored>| page.iter().map(|s| (s.id, s.version)).collect::<Vec<_>>();
    assert_eq!(ids(store.list_statements(4, None, 10).await.unwrap()), [(0, 2), (1, 1), (2, 1)]);
    assert_eq!(ids(store.list_statements(4, Some(0), 1).await.unwrap()), [(1, 1)]);
    assert_eq!(store.list_statements(4, None, 1).await.unwrap()[0].bytes, b"done");
    // A batch is all or nothing: one stale write and none is made.
    let batch = vec![
        Write::Update { kind: session, id: 4, expected: 1, bytes: b"new".to_vec() },
        Write::PutStatement { session: 4, statement: 7, expected: None, bytes: vec![7] },
        Write::PutStatement { session: 4, statement: 0, expected: Some(1), bytes: vec![] },
    ];
    assert!(matches!(store.apply(batch).await, Err(StoreError::Conflict { found: 2, .. })));
    assert_eq!(store.get(session, 4).await.unwrap().unwrap().version, 1);
    assert_eq!(ids(store.list_statements(4, None, 10).await.unwrap()), [(0, 2), (1, 1), (2, 1)]);
    let batch = vec![
        Write::Update { kind: session, id: 4, expected: 1, bytes: b"new".to_vec() },
        Write::PutStatement { session: 4, statement: 7, expected: None, bytes: vec![7] },
        Write::DeleteStatement { session: 4, statement: 2 },
    ];
    assert_eq!(store.apply(batch).await.unwrap(), [2, 1, 0]);
    assert_eq!(ids(store.list_statements(4, None, 10).await.unwrap()), [(0, 2), (1, 1), (7, 1)]);
    store.delete_statement(4, 7).await.unwrap();
    store.put_statement(4, 2, None, vec![2]).await.unwrap();
    store.delete_statement(4, 1).await.unwrap();
    assert_eq!(ids(store.list_statements(4, None, 10).await.unwrap()), [(0, 2), (2, 1)]);
    store.delete(session, 4, 2).await.unwrap();
    assert!(store.list_statements(4, None, 10).await.unwrap().is_empty(), "they go with their session");
    assert_eq!(store.list_statements(5, None, 10).await.unwrap().len(), 1, "another session's stay");
}

/// The gateway's own values: set, replaced, read back; absent until set.
pub(crate) async fn values_are_set_replaced_and_read(store: &impl Store) {
    assert_eq!(store.value(super::AUDIT_HEAD).await.unwrap(), None);
    store.put_value(super::AUDIT_HEAD, b"one".to_vec()).await.unwrap();
    store.put_value(super::AUDIT_HEAD, b"two".to_vec()).await.unwrap();
    assert_eq!(store.value(super::AUDIT_HEAD).await.unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(store.value("other").await.unwrap(), None);
}
