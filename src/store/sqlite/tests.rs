use super::*;
use std::os::unix::fs::PermissionsExt;

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("store.db");
    (dir, path)
}

#[tokio::test]
async fn records_are_created_once_changed_by_version_and_deleted_with_their_name() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, (0, 0)).unwrap();
    crate::store::tests::records_are_created_once_changed_by_version_and_deleted_with_their_name(&store).await;
}

#[tokio::test]
async fn listing_is_paged_by_id() {
    let (_dir, path) = fresh();
    crate::store::tests::listing_is_paged_by_id(&SqliteStore::open(&path, (0, 0)).unwrap()).await;
}

#[tokio::test]
async fn records_and_counters_survive_a_reopen_and_floors_only_raise_counters() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, (5, 0)).unwrap();
    assert_eq!(store.next_id(ResourceKind::Session).await.unwrap(), 5, "the floor is where ids start");
    assert_eq!(store.next_id(ResourceKind::Batch).await.unwrap(), 0);
    let meta = Meta { name: Some("etl".into()), effective_user: "bob".into() };
    store.create(ResourceKind::Session, 5, meta.clone(), b"{\"id\":5}".to_vec()).await.unwrap();
    store.update(ResourceKind::Session, 5, 1, b"{\"id\":5,\"v\":2}".to_vec()).await.unwrap();
    drop(store);

    // A lower floor does not bring ids back; a higher one raises the counter.
    let store = SqliteStore::open(&path, (0, 3)).unwrap();
    assert_eq!(store.next_id(ResourceKind::Session).await.unwrap(), 6);
    assert_eq!(store.next_id(ResourceKind::Batch).await.unwrap(), 3);
    let got = store.get(ResourceKind::Session, 5).await.unwrap().unwrap();
    assert_eq!((got.version, got.meta, got.bytes), (2, meta, b"{\"id\":5,\"v\":2}".to_vec()));
    assert_eq!(store.find_name(ResourceKind::Session, "etl").await.unwrap(), Some(5));
    drop(store);
    assert_eq!(SqliteStore::peek_counters(&path), Some((7, 4)));
    assert_eq!(SqliteStore::peek_counters(&path.with_file_name("absent.db")), None);
}

#[test]
fn the_file_is_owner_only_in_a_private_directory_and_journaled_with_full_sync() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, (0, 0)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    let conn = store.conn.lock().unwrap();
    let journal: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!((journal.as_str(), sync, version), ("wal", 2, SCHEMA_VERSION), "WAL, FULL (2), latest schema");
}

#[test]
fn migrations_run_in_order_from_any_earlier_version_and_only_once() {
    let (_dir, path) = fresh();
    // An empty file is a database at version 0: every migration runs.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"").unwrap();
    drop(SqliteStore::open(&path, (0, 0)).unwrap());
    let conn = Connection::open(&path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["counters", "records"]);
    drop(conn);
    // Opened again, nothing is applied twice (a second CREATE TABLE would fail).
    let store = SqliteStore::open(&path, (0, 0)).unwrap();
    let conn = store.conn.lock().unwrap();
    assert_eq!(conn.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0)).unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_garbage_truncated_or_newer_file_is_refused_by_name_and_left_as_it_was() {
    let (_dir, path) = fresh();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let garbage = b"this is not a database, it is a shopping list\n".repeat(200);
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open(&path, (0, 0)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OpenError::Damaged { .. }), "{text}");
    assert!(text.starts_with(&format!("{}: not a usable sparkgate store", path.display())), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "nothing was overwritten");

    // A real store cut short.
    std::fs::remove_file(&path).unwrap();
    let store = SqliteStore::open(&path, (0, 0)).unwrap();
    drop(store);
    // Fold the WAL into the file, then cut the file in the middle of its pages.
    Connection::open(&path).unwrap().pragma_update(None, "journal_mode", "DELETE").unwrap();
    let whole = std::fs::read(&path).unwrap();
    assert!(whole.len() > 4096, "{}", whole.len());
    std::fs::write(&path, &whole[..whole.len() / 2 + 100]).unwrap();
    let cut = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path, (0, 0)).unwrap_err();
    assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), cut, "nothing was overwritten");

    // Written by a newer sparkgate.
    std::fs::remove_file(&path).unwrap();
    drop(SqliteStore::open(&path, (0, 0)).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    let err = SqliteStore::open(&path, (0, 0)).unwrap_err();
    assert!(matches!(err, OpenError::TooNew { found, .. } if found == SCHEMA_VERSION + 1), "{err}");
    assert!(err.to_string().contains("newer than this sparkgate"), "{err}");
}
