use super::*;
use std::os::unix::fs::PermissionsExt;

/// Counters in memory starting at `sessions` and `batches`.
fn floors(sessions: u32, batches: u32) -> (IdCounter, IdCounter) {
    let counters = (IdCounter::in_memory("sessions"), IdCounter::in_memory("batches"));
    counters.0.raise_to(sessions).unwrap();
    counters.1.raise_to(batches).unwrap();
    counters
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("store.db");
    (dir, path)
}

#[tokio::test]
async fn records_are_created_once_changed_by_version_and_deleted_with_their_name() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    crate::store::tests::records_are_created_once_changed_by_version_and_deleted_with_their_name(&store).await;
}

#[tokio::test]
async fn statements_are_written_by_version_listed_in_order_and_go_with_their_session() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    crate::store::tests::statements_are_written_by_version_listed_in_order_and_go_with_their_session(&store).await;
}

#[tokio::test]
async fn listing_is_paged_by_id() {
    let (_dir, path) = fresh();
    crate::store::tests::listing_is_paged_by_id(&SqliteStore::open(&path, floors(0, 0)).unwrap()).await;
}

#[tokio::test]
async fn values_are_set_replaced_and_read() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    crate::store::tests::values_are_set_replaced_and_read(&store).await;
    drop(store);
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    assert_eq!(store.value(crate::store::AUDIT_HEAD).await.unwrap().as_deref(), Some(&b"two"[..]), "durable");
}

#[tokio::test]
async fn records_and_counters_survive_a_reopen_and_the_file_counters_keep_level() {
    let (dir, path) = fresh();
    let files = |s: u32, b: u32| {
        let state = dir.path().join("counters");
        std::fs::create_dir_all(&state).unwrap();
        (
            IdCounter::open(&state.join("next-session-id"), "sessions", s).unwrap(),
            IdCounter::open(&state.join("next-batch-id"), "batches", b).unwrap(),
        )
    };
    let store = SqliteStore::open(&path, files(5, 0)).unwrap();
    assert_eq!(store.next_id(ResourceKind::Session).await.unwrap(), 5, "the file counter is where ids start");
    assert_eq!(store.next_id(ResourceKind::Batch).await.unwrap(), 0);
    let meta = Meta { name: Some("etl".into()), effective_user: "bob".into() };
    store.create(ResourceKind::Session, 5, meta.clone(), b"{\"id\":5}".to_vec()).await.unwrap();
    store.update(ResourceKind::Session, 5, 1, b"{\"id\":5,\"v\":2}".to_vec()).await.unwrap();
    drop(store);
    // The file counters followed every id handed out.
    let (sessions, batches) = files(0, 0);
    assert_eq!((sessions.peek(), batches.peek()), (6, 1));

    // A higher floor raises the database's counter; a lower one brings no id back.
    let store =
        SqliteStore::open(&path, (sessions, IdCounter::open(&dir.path().join("b"), "batches", 3).unwrap())).unwrap();
    assert_eq!(store.next_id(ResourceKind::Session).await.unwrap(), 6);
    assert_eq!(store.next_id(ResourceKind::Batch).await.unwrap(), 3);
    let got = store.get(ResourceKind::Session, 5).await.unwrap().unwrap();
    assert_eq!((got.version, got.meta, got.bytes), (2, meta, b"{\"id\":5,\"v\":2}".to_vec()));
    assert_eq!(store.find_name(ResourceKind::Session, "etl").await.unwrap(), Some(5));
    drop(store);

    // The database moved aside: the file counters alone carry the ids on.
    std::fs::rename(&path, path.with_extension("aside")).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    let store = SqliteStore::open(&path, files(0, 0)).unwrap();
    assert_eq!(store.next_id(ResourceKind::Session).await.unwrap(), 7, "no id comes back");
}

#[test]
fn the_file_is_owner_only_in_a_private_directory_and_journaled_with_full_sync() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
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
fn a_restored_copy_readable_by_others_is_made_owner_only() {
    let (_dir, path) = fresh();
    drop(SqliteStore::open(&path, floors(0, 0)).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(SqliteStore::open(&path, floors(0, 0)).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn migrations_run_in_order_from_any_earlier_version_and_only_once() {
    let (_dir, path) = fresh();
    // An empty file is a database at version 0: every migration runs.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"").unwrap();
    drop(SqliteStore::open(&path, floors(0, 0)).unwrap());
    let conn = Connection::open(&path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["counters", "meta", "records", "statements"]);
    drop(conn);
    // Opened again, nothing is applied twice (a second CREATE TABLE would fail).
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    let conn = store.conn.lock().unwrap();
    assert_eq!(conn.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0)).unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_garbage_truncated_or_newer_file_is_refused_by_name_and_left_as_it_was() {
    let (_dir, path) = fresh();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let garbage = b"this is not a database, it is a shopping list\n".repeat(200);
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open(&path, floors(0, 0)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OpenError::Damaged { .. }), "{text}");
    assert!(text.starts_with(&format!("{}: not a usable sparkgate store", path.display())), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "nothing was overwritten");

    // A real store cut short.
    std::fs::remove_file(&path).unwrap();
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    drop(store);
    // Fold the WAL into the file, then cut the file in the middle of its pages.
    Connection::open(&path).unwrap().pragma_update(None, "journal_mode", "DELETE").unwrap();
    let whole = std::fs::read(&path).unwrap();
    assert!(whole.len() > 4096, "{}", whole.len());
    std::fs::write(&path, &whole[..whole.len() / 2 + 100]).unwrap();
    let cut = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path, floors(0, 0)).unwrap_err();
    assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), cut, "nothing was overwritten");

    // Another application's database, with tables of its own.
    std::fs::remove_file(&path).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("CREATE TABLE records (x); INSERT INTO records VALUES (1);").unwrap();
    drop(other);
    let theirs = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path, floors(0, 0)).unwrap_err();
    assert!(err.to_string().contains("another application's database"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), theirs, "nothing was overwritten");

    // Written by a newer sparkgate.
    std::fs::remove_file(&path).unwrap();
    drop(SqliteStore::open(&path, floors(0, 0)).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    let err = SqliteStore::open(&path, floors(0, 0)).unwrap_err();
    assert!(matches!(err, OpenError::TooNew { found, .. } if found == SCHEMA_VERSION + 1), "{err}");
    assert!(err.to_string().contains("newer than this sparkgate"), "{err}");
}

#[tokio::test]
async fn forgetting_an_earlier_run_gives_its_disk_back() {
    let (_dir, path) = fresh();
    let store = SqliteStore::open(&path, floors(0, 0)).unwrap();
    store.create(ResourceKind::Session, 0, Meta::default(), vec![]).await.unwrap();
    for id in 0..8 {
        store.put_statement(0, id, None, vec![b'x'; 1 << 20]).await.unwrap();
    }
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = path.with_file_name("store.db-wal");
    assert!(size(&path) + size(&wal) > 8 << 20);
    assert_eq!(store.forget_earlier_run().unwrap(), 1);
    assert!(size(&path) + size(&wal) < 1 << 20, "{} + {}", size(&path), size(&wal));
}
