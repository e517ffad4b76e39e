use super::*;
use tokio::sync::mpsc;

fn spec(kind: SessionKind) -> SessionSpec {
    SessionSpec {
        owner: "alice".into(),
        effective_user: "alice".into(),
        kind,
        submit: crate::engine::SubmitSpec::default(),
        heartbeat_timeout_secs: 0,
        ttl: None,
        idle_timeout: None,
    }
}

fn session() -> Session {
    let limits = SessionLimits {
        idle_timeout: None,
        ttl: None,
        heartbeat_timeout: None,
        statement_retention: 3,
        max_output_bytes: 1 << 20,
        max_queued_statements: 8,
        max_retained_bytes: 4 << 20,
    };
    let s = Session::new(
        0,
        spec(SessionKind::PySpark),
        limits,
        SessionSecret::generate(),
        LogBuffer::new(10, None),
        PathBuf::new(),
    );
    s.transition(SessionState::Starting).unwrap();
    s
}

fn connect(s: &Session, conn: u64) -> mpsc::UnboundedReceiver<ToDriver> {
    let (tx, rx) = mpsc::unbounded_channel();
    s.attach(DriverLink::for_test(conn, tx));
    rx
}

fn result(id: u32, state: &str) -> FromDriver {
    FromDriver::StatementResult {
        id,
        state: state.into(),
        output: json!({"status":"ok","execution_count":id,"data":{"text/plain":"2"}}),
        completed: None,
    }
}

#[test]
fn statements_posted_while_starting_are_queued_then_run_in_order() {
    let s = session();
    let a = s.submit("1+1".into(), CodeKind::PySpark).unwrap();
    let b = s.submit("2+2".into(), CodeKind::PySpark).unwrap();
    assert_eq!((a.id, a.state), (0, StatementState::Waiting));
    assert_eq!(b.id, 1);
    let mut rx = connect(&s, 1);
    assert!(rx.try_recv().is_err(), "nothing runs before the driver says it is ready");
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    assert_eq!(rx.try_recv().unwrap(), ToDriver::Execute { id: 0, kind: "pyspark".into(), code: "1+1".into() });
    assert!(rx.try_recv().is_err(), "one statement at a time");
    assert_eq!(s.state(), SessionState::Busy);
    let ack = s.on_driver_message(1, result(0, "available")).expect("a result is to be acknowledged");
    assert!(matches!(rx.try_recv().unwrap(), ToDriver::Execute { id: 1, .. }));
    assert!(rx.try_recv().is_err(), "not acknowledged before it is stored");
    ack.send();
    assert_eq!(rx.try_recv().unwrap(), ToDriver::Ack { id: 0 });
    s.on_driver_message(1, result(1, "available"));
    assert_eq!(s.state(), SessionState::Idle);
    let done = s.statement(0).unwrap();
    assert_eq!(done.state, StatementState::Available);
    assert_eq!(done.progress, 1.0);
    assert!(done.completed >= done.started && done.started > 0);
}

#[test]
fn cancel_waiting_is_immediate_and_running_asks_the_driver() {
    let s = session();
    let mut rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    s.submit("sleep".into(), CodeKind::PySpark).unwrap();
    s.submit("later".into(), CodeKind::PySpark).unwrap();
    let _ = rx.try_recv();
    s.cancel(1).unwrap();
    assert_eq!(s.statement(1).unwrap().state, StatementState::Cancelled);
    s.cancel(0).unwrap();
    assert_eq!(s.statement(0).unwrap().state, StatementState::Cancelling);
    assert_eq!(rx.try_recv().unwrap(), ToDriver::Cancel { id: 0 });
    s.on_driver_message(1, result(0, "cancelled"));
    assert_eq!(s.statement(0).unwrap().state, StatementState::Cancelled);
    assert_eq!(s.state(), SessionState::Idle);
    assert!(matches!(s.cancel(9), Err(EngineError::StatementNotFound { .. })));
}

#[test]
fn reconnect_resends_the_running_statement_and_ignores_the_old_connection() {
    let s = session();
    let mut first = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    s.submit("x".into(), CodeKind::PySpark).unwrap();
    assert!(matches!(first.try_recv().unwrap(), ToDriver::Execute { id: 0, .. }));
    s.detach(1);
    assert!(!s.driver_connected());
    let mut second = connect(&s, 2);
    assert!(matches!(second.try_recv().unwrap(), ToDriver::Execute { id: 0, .. }));
    s.on_driver_message(1, result(0, "available")); // stale connection: ignored
    assert_eq!(s.statement(0).unwrap().state, StatementState::Running);
    s.on_driver_message(2, result(0, "available"));
    assert_eq!(s.statement(0).unwrap().state, StatementState::Available);
    // A duplicate result (re-sent after a reconnect) is acknowledged and changes nothing.
    s.on_driver_message(
        2,
        FromDriver::StatementResult { id: 0, state: "available".into(), output: json!(null), completed: None },
    );
    assert_eq!(s.statement(0).unwrap().output.unwrap().value()["status"], "ok");
}

#[test]
fn process_death_ends_pending_statements_visibly() {
    let s = session();
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    s.submit("running".into(), CodeKind::PySpark).unwrap();
    s.submit("queued".into(), CodeKind::PySpark).unwrap();
    s.process_exited(137);
    assert_eq!(s.state(), SessionState::Dead);
    let running = s.statement(0).unwrap();
    assert_eq!(running.state, StatementState::Available);
    assert_eq!(running.output.unwrap().value()["status"], "error");
    assert_eq!(s.statement(1).unwrap().state, StatementState::Cancelled);
    assert!(s.log.snapshot().iter().any(|l| l.contains("137") && l.contains("SIGKILL")));
    assert!(matches!(s.submit("more".into(), CodeKind::PySpark), Err(EngineError::NotAccepting { .. })));
}

#[test]
fn driver_error_state_refuses_statements() {
    let s = session();
    let _rx = connect(&s, 1);
    s.submit("x".into(), CodeKind::PySpark).unwrap();
    s.on_driver_message(1, FromDriver::State { state: "error".into(), message: Some("no memory".into()) });
    assert_eq!(s.state(), SessionState::Error);
    assert_eq!(s.statement(0).unwrap().state, StatementState::Cancelled);
    assert!(s.submit("y".into(), CodeKind::PySpark).is_err());
}

#[test]
fn retention_forgets_only_finished_statements() {
    let s = session();
    let _rx = connect(&s, 1);
    for i in 0..5 {
        s.submit(format!("{i}"), CodeKind::PySpark).unwrap();
    }
    // Driver never became idle: all five are waiting and nothing is dropped.
    assert_eq!(s.statements().len(), 5);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    for i in 0..5 {
        s.on_driver_message(1, result(i, "available"));
    }
    s.submit("next".into(), CodeKind::PySpark).unwrap();
    let ids: Vec<u32> = s.statements().iter().map(|st| st.id).collect();
    assert_eq!(ids, vec![3, 4, 5]);
}

#[test]
fn waiting_statements_are_capped() {
    // The driver is not ready: everything waits.
    let s = session();
    for i in 0..8 {
        s.submit(format!("{i}"), CodeKind::PySpark).unwrap();
    }
    let err = s.submit("one more".into(), CodeKind::PySpark).unwrap_err();
    assert!(matches!(err, EngineError::StatementsQueued { limit: 8, .. }), "{err}");
    assert!(err.to_string().contains("max_queued_statements"), "{err}");
    // Cancelling one makes room.
    s.cancel(0).unwrap();
    s.submit("now it fits".into(), CodeKind::PySpark).unwrap();
}

#[test]
fn what_a_session_keeps_is_bounded_in_bytes_not_only_in_statements() {
    let s = session(); // keeps 3 statements and 4 MiB
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let big = |id: u32| FromDriver::StatementResult {
        id,
        state: "available".into(),
        // 0.9 MiB each, under the per-output limit (1 MiB here).
        output: json!({"status": "ok", "execution_count": id, "data": {"text/plain": "y".repeat(900 << 10)}}),
        completed: None,
    };
    for id in 0..3 {
        s.submit(format!("{id}"), CodeKind::PySpark).unwrap();
        s.on_driver_message(1, big(id));
    }
    assert_eq!(s.statements().len(), 3, "2.7 MiB: all kept");
    s.submit("3".into(), CodeKind::PySpark).unwrap();
    s.on_driver_message(1, big(3));
    s.submit("4".into(), CodeKind::PySpark).unwrap();
    s.on_driver_message(1, big(4));
    let held: usize = s.statements().iter().map(|st| st.code.len() + st.output.as_ref().map_or(0, |o| o.len())).sum();
    assert!(held <= 4 << 20, "{held}");
    let ids: Vec<u32> = s.statements().iter().map(|st| st.id).collect();
    assert_eq!(ids, vec![2, 3, 4], "the oldest finished ones go first");
    // Code that cannot be held beside what still waits is refused, not accepted and dropped.
    let err = s.submit("x".repeat(5 << 20), CodeKind::PySpark).unwrap_err();
    assert!(matches!(err, EngineError::StatementsTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn what_a_driver_says_is_bounded() {
    // User code can send the gateway anything over its own session's channel.
    let s = Arc::new(session());
    let mut rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.complete(CodeKind::PySpark, "x".into(), 1, Duration::from_secs(5)).await })
    };
    let request_id = loop {
        if let Ok(ToDriver::Complete { request_id, .. }) = rx.try_recv() {
            break request_id;
        }
        tokio::task::yield_now().await;
    };
    let mut candidates = vec!["y".repeat(1 << 20)];
    candidates.extend((0..5000).map(|i| format!("c{i}")));
    s.on_driver_message(1, FromDriver::Completion { request_id, candidates });
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1000, "at most 1000 candidates");
    assert!(got.iter().all(|c| c.len() <= 1024));
    s.on_driver_message(1, FromDriver::State { state: "error".into(), message: Some("z".repeat(4 << 20)) });
    assert!(s.log.snapshot().iter().all(|l| l.len() <= 64 * 1024));
}

#[test]
fn outputs_are_shared_not_copied() {
    let s = session();
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    s.submit("1+1".into(), CodeKind::PySpark).unwrap();
    s.on_driver_message(1, result(0, "available"));
    let (a, b) = (s.statement(0).unwrap(), s.statements().remove(0));
    let (a, b) = (a.output.unwrap(), b.output.unwrap());
    assert!(std::sync::Arc::ptr_eq(&a.0, &b.0), "both copies point at the one output");
    assert!(std::sync::Arc::ptr_eq(&s.statement(0).unwrap().code, &s.statements()[0].code));
}

#[test]
fn illegal_transitions_are_refused() {
    let s = session();
    s.finish(SessionState::Killed, "test");
    assert!(matches!(s.transition(SessionState::Idle), Err(EngineError::IllegalTransition { .. })));
    assert!(!s.begin_shutdown(SessionState::Killed));
}

#[tokio::test]
async fn completion_round_trip_and_timeout() {
    let s = Arc::new(session());
    let mut rx = connect(&s, 1);
    let s2 = s.clone();
    let task =
        tokio::spawn(async move { s2.complete(CodeKind::PySpark, "im".into(), 2, Duration::from_secs(5)).await });
    let request_id = loop {
        if let Ok(ToDriver::Complete { request_id, .. }) = rx.try_recv() {
            break request_id;
        }
        tokio::task::yield_now().await;
    };
    s.on_driver_message(1, FromDriver::Completion { request_id, candidates: vec!["import".into()] });
    assert_eq!(task.await.unwrap().unwrap(), vec!["import".to_string()]);
    let err = s.complete(CodeKind::PySpark, "x".into(), 1, Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(err, EngineError::DriverTimeout(_)));
    assert!(s.lock().completions.is_empty(), "a timed-out request leaves no waiter behind");
}

#[tokio::test]
async fn requests_in_flight_fail_at_once_when_the_connection_drops() {
    let s = Arc::new(session());
    let mut rx = connect(&s, 1);
    let (s2, s3) = (s.clone(), s.clone());
    let completion =
        tokio::spawn(async move { s2.complete(CodeKind::PySpark, "im".into(), 2, Duration::from_secs(3600)).await });
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let file = tokio::spawn(async move { s3.add_file("pyfile", "/jobs/x.py".into(), Duration::from_secs(3600)).await });
    let mut asked = 0;
    while asked < 2 {
        if let Ok(ToDriver::Complete { .. } | ToDriver::AddFile { .. }) = rx.try_recv() {
            asked += 1;
        }
        tokio::task::yield_now().await;
    }
    s.detach(1);
    let err = tokio::time::timeout(Duration::from_secs(10), completion).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, EngineError::DriverUnavailable(_)), "{err}");
    let err = tokio::time::timeout(Duration::from_secs(10), file).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, EngineError::DriverUnavailable(_)), "{err}");
    assert!(s.lock().completions.is_empty() && s.lock().file_adds.is_empty());
}

#[test]
fn an_output_larger_than_the_limit_is_replaced_by_a_clear_error() {
    let s = session();
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    s.submit("print('x' * 2**21)".into(), CodeKind::PySpark).unwrap();
    s.submit("1+1".into(), CodeKind::PySpark).unwrap();
    let huge = "x".repeat(2 << 20);
    s.on_driver_message(
        1,
        FromDriver::StatementResult {
            id: 0,
            state: "available".into(),
            output: json!({"status":"ok","execution_count":0,"data":{"text/plain": huge}}),
            completed: None,
        },
    );
    let big = s.statement(0).unwrap();
    assert_eq!(big.state, StatementState::Available);
    let output = big.output.unwrap().value();
    assert_eq!(output["ename"], "OutputTooLarge", "{output}");
    assert!(output["evalue"].as_str().unwrap().contains("sessions.max_output_bytes"), "{output}");
    assert!(output.to_string().len() < 1024);
    // The session goes on: the next statement runs and keeps its (small) output.
    s.on_driver_message(1, result(1, "available"));
    assert_eq!(s.statement(1).unwrap().output.unwrap().value()["data"]["text/plain"], "2");
}

#[test]
fn a_stop_ends_in_its_own_state_even_when_the_process_exits_first() {
    // The start timeout or a lost driver stop a session as dead; its process usually exits
    // (on the shutdown request) before the stopper records the end.
    let s = session();
    let _rx = connect(&s, 1);
    assert!(s.begin_shutdown(SessionState::Dead));
    s.process_exited(0);
    assert_eq!(s.state(), SessionState::Dead);
    let s = session();
    assert!(s.begin_shutdown(SessionState::Killed));
    s.process_exited(143);
    assert_eq!(s.state(), SessionState::Killed);
}

#[test]
fn a_drivers_app_info_is_not_taken_on_its_word() {
    // User code shares the driver and can send any app_info: a `javascript:` URL must never
    // reach viewers, and an id in no master's format is not an application id.
    let s = session();
    let local = crate::config::SparkConfig::default();
    crate::sparkui::launch_settings(&local, None, &BTreeMap::new(), &s.ui);
    let _rx = connect(&s, 1);
    s.on_driver_message(
        1,
        FromDriver::AppInfo {
            app_id: Some("<script>alert(1)</script>".into()),
            spark_ui_url: Some("javascript:alert(document.cookie)//:4040".into()),
        },
    );
    let snap = s.snapshot();
    assert_eq!(snap.app_id, None);
    assert_eq!(snap.spark_ui_url, None, "not a UI the gateway can vouch for");
    // A plain address is a port to check, and what viewers are shown is the gateway's proxy.
    s.on_driver_message(1, FromDriver::AppInfo { app_id: None, spark_ui_url: Some("http://evil.example:4040".into()) });
    assert_eq!(s.snapshot().spark_ui_url.as_deref(), Some("/sessions/0/sparkui/"));
    // The first id in a master's format wins; a later report does not replace it.
    s.on_driver_message(1, FromDriver::AppInfo { app_id: Some("local-1795472183861".into()), spark_ui_url: None });
    s.on_driver_message(1, FromDriver::AppInfo { app_id: Some("local-1000000000000".into()), spark_ui_url: None });
    assert_eq!(s.snapshot().app_id.as_deref(), Some("local-1795472183861"));
}

#[test]
fn a_driver_that_floods_results_without_reading_loses_its_connection_not_the_gateways_memory() {
    // User code inside the driver can stop its reader and send results for ids that do not
    // exist; each is acknowledged. The acks must not pile up without bound.
    let s = session();
    let (tx, rx) = mpsc::unbounded_channel();
    let link = DriverLink::for_test(1, tx);
    s.attach(link.clone());
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    for id in 0..3 * crate::rpc::QueueLimits::MESSAGES as u32 {
        if let Some(ack) = s.on_driver_message(1, result(1_000_000 + id, "available")) {
            ack.send();
        }
    }
    assert!(rx.len() <= crate::rpc::QueueLimits::MESSAGES, "{} messages queued", rx.len());
    assert!(link.overflowed(), "the connection is marked for closing");
    // The session itself is unharmed: the statement it knows nothing of was not stored.
    assert!(s.statements().is_empty());
}

#[test]
fn a_statement_stored_as_waiting_that_the_driver_ran_before_a_restart_keeps_its_result_and_runs_once() {
    let original = session();
    let record: SessionRecord =
        crate::engine::record::decode(&super::super::registry::Entry::record(&original)).unwrap();
    let waiting = |id: u32, code: &str| StatementRecord {
        id,
        code: code.into(),
        state: StatementState::Waiting,
        output: None,
        progress: 0.0,
        started: 0,
        completed: 0,
        kind: "pyspark".into(),
    };
    let record = SessionRecord { state: SessionState::Busy, next_statement_id: 2, ..record };
    let s = Session::restore(
        &record,
        spec(SessionKind::PySpark),
        vec![waiting(0, "1+1"), waiting(1, "2+2")],
        original.limits,
        SessionSecret::generate(),
        LogBuffer::new(10, None),
        PathBuf::new(),
    );
    assert_eq!(s.state(), SessionState::Recovering);
    let mut rx = connect(&s, 1);
    // The driver re-sends what it had not had acknowledged, then says it is ready.
    s.on_driver_message(1, result(0, "available")).unwrap().send();
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    assert_eq!(s.statement(0).unwrap().state, StatementState::Available);
    let sent: Vec<ToDriver> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(sent.contains(&ToDriver::Ack { id: 0 }), "{sent:?}");
    assert!(
        sent.iter().all(|m| !matches!(m, ToDriver::Execute { id: 0, .. })),
        "statement 0 is not run a second time: {sent:?}"
    );
    assert!(sent.iter().any(|m| matches!(m, ToDriver::Execute { id: 1, .. })), "the next one runs: {sent:?}");
    assert_eq!(s.submit("3".into(), CodeKind::PySpark).unwrap().id, 2, "ids continue");
}

#[test]
fn jobs_come_back_as_jobs_after_a_restart_and_are_run_with_their_kind() {
    let original = session();
    let record: SessionRecord =
        crate::engine::record::decode(&super::super::registry::Entry::record(&original)).unwrap();
    let stored = |id: u32, kind: &str, state: StatementState| StatementRecord {
        id,
        code: "gAWVAAAA".into(),
        state,
        output: None,
        progress: 0.0,
        started: 0,
        completed: 0,
        kind: kind.into(),
    };
    let record = SessionRecord { state: SessionState::Idle, next_statement_id: 3, ..record };
    let mut s = Session::restore(
        &record,
        spec(SessionKind::Shared),
        vec![
            stored(0, "pyspark", StatementState::Available),
            stored(1, "pyspark_job", StatementState::Waiting),
            stored(2, "spark_job", StatementState::Waiting),
        ],
        original.limits,
        SessionSecret::generate(),
        LogBuffer::new(10, None),
        PathBuf::new(),
    );
    let ends = record_job_ends(&mut s);
    // Each is found only as what it is, and jobs are not listed as statements.
    assert_eq!(s.job(1).unwrap().kind, CodeKind::PySparkJob);
    assert_eq!(s.job(2).unwrap().kind, CodeKind::SparkJob);
    assert!(matches!(s.statement(1), Err(EngineError::StatementNotFound { .. })));
    assert!(matches!(s.job(0), Err(EngineError::JobNotFound { .. })));
    assert_eq!(s.statements().iter().map(|st| st.id).collect::<Vec<_>>(), [0]);
    assert!(matches!(s.cancel(1), Err(EngineError::StatementNotFound { .. })));
    // The driver comes back and runs them in order, each with its job kind.
    let mut rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let sent: Vec<ToDriver> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(
        sent.iter().any(|m| matches!(m, ToDriver::Execute { id: 1, kind, .. } if kind == "pyspark_job")),
        "{sent:?}"
    );
    // Its result finishes the job and says so for the audit trail; a repeat does not again.
    let done = json!({"status": "ok", "execution_count": 1, "data": {crate::engine::job::RESULT_KEY: "NDk1MA=="}});
    let finish = |s: &Session| {
        s.on_driver_message(
            1,
            FromDriver::StatementResult { id: 1, state: "available".into(), output: done.clone(), completed: None },
        )
        .expect("a result is acknowledged")
    };
    finish(&s);
    assert_eq!(*ends.lock().unwrap(), [(1, "SUCCEEDED")], "the job's end is reported");
    finish(&s);
    assert_eq!(ends.lock().unwrap().len(), 1, "a result sent again is no second end");
    // The next job runs; cancelling it asks the driver, whose answer ends it.
    s.cancel_job(2).unwrap();
    assert_eq!(crate::engine::job::JobStatus::of(&s.job(2).unwrap()).state, "STARTED");
    let sent: Vec<ToDriver> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(sent.contains(&ToDriver::Cancel { id: 2 }), "{sent:?}");
    let cancelled =
        json!({"status": "error", "execution_count": 2, "ename": "Cancelled", "evalue": "", "traceback": []});
    s.on_driver_message(
        1,
        FromDriver::StatementResult { id: 2, state: "cancelled".into(), output: cancelled, completed: None },
    );
    assert_eq!(*ends.lock().unwrap(), [(1, "SUCCEEDED"), (2, "CANCELLED")]);
}

/// Every job end the session reports, as (id, Livy state).
type JobEnds = Arc<std::sync::Mutex<Vec<(u32, &'static str)>>>;

fn record_job_ends(s: &mut Session) -> JobEnds {
    let ends = JobEnds::default();
    let seen = ends.clone();
    s.on_job_end = Some(super::JobEnded(Arc::new(move |_, job| {
        seen.lock().unwrap().push((job.id, crate::engine::job::JobStatus::of(job).state));
    })));
    ends
}

#[test]
fn a_job_ended_by_the_gateway_is_reported_too() {
    // Cancelled before it started: reported once, with the job's own words; statements never.
    let mut s = session();
    let ends = record_job_ends(&mut s);
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let statement = s.submit("1".into(), CodeKind::PySpark).unwrap().id;
    let queued = s.submit("gAWVAAAA".into(), CodeKind::PySparkJob).unwrap().id;
    let behind = s.submit("gAWVAAAA".into(), CodeKind::PySparkJob).unwrap().id;
    s.cancel_job(queued).unwrap();
    s.cancel_job(queued).unwrap();
    assert_eq!(*ends.lock().unwrap(), [(queued, "CANCELLED")]);
    assert_eq!(s.job(queued).unwrap().output.unwrap().value()["evalue"], "the job was cancelled before it started");
    // The driver dies: the job still queued ends with the session, and says why.
    s.process_exited(1);
    assert_eq!(*ends.lock().unwrap(), [(queued, "CANCELLED"), (behind, "CANCELLED")]);
    let shown = crate::engine::job::JobStatus::of(&s.job(behind).unwrap());
    assert!(shown.error.as_deref().is_some_and(|e| e.starts_with("SessionStopped: ")), "{shown:?}");
    assert!(s.statement(statement).is_ok());
}

#[test]
fn a_result_keeps_the_time_the_driver_finished_it_when_that_is_plausible() {
    let s = session();
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let a = s.submit("1".into(), CodeKind::PySpark).unwrap();
    let started = s.statement(a.id).unwrap().started;
    let done = |id, completed| FromDriver::StatementResult {
        id,
        state: "available".into(),
        output: json!({"status": "ok", "execution_count": id, "data": {"text/plain": "1"}}),
        completed: Some(completed),
    };
    // Delivered late (after a restart): the driver's time counts.
    std::thread::sleep(Duration::from_millis(30));
    s.on_driver_message(1, done(a.id, started + 1));
    assert_eq!(s.statement(a.id).unwrap().completed, started + 1);
    // A time before the start or in the future is not believed.
    let b = s.submit("2".into(), CodeKind::PySpark).unwrap();
    s.on_driver_message(1, done(b.id, i64::MAX));
    let b = s.statement(b.id).unwrap();
    assert!(b.completed >= b.started && b.completed < i64::MAX, "{}", b.completed);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_the_statement_ends_or_when_its_wait_is_over() {
    let s = Arc::new(session());
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let a = s.submit("1".into(), CodeKind::PySpark).unwrap();
    // Nothing ends it: the wait runs out and the statement is shown as it is.
    let started = Instant::now();
    let st = s.wait_statement(a.id, Duration::from_millis(200)).await.unwrap();
    assert_eq!(st.state, StatementState::Running);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Its result arrives during a long wait: answered at once.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.wait_statement(a.id, Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    s.on_driver_message(1, result(a.id, "available"));
    let st = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(st.state, StatementState::Available);
    assert!(started.elapsed() < Duration::from_secs(5));
    // A finished one is answered without waiting; an unknown one is an error.
    assert_eq!(s.wait_statement(a.id, Duration::from_secs(60)).await.unwrap().state, StatementState::Available);
    assert!(s.wait_statement(99, Duration::from_secs(60)).await.is_err());
}

#[tokio::test]
async fn an_event_stream_sees_each_change_once_and_nothing_when_nothing_changes() {
    let s = Arc::new(session());
    let _rx = connect(&s, 1);
    s.on_driver_message(1, FromDriver::State { state: "idle".into(), message: None });
    let a = s.submit("1".into(), CodeKind::PySpark).unwrap();
    let soon = || Instant::now() + Duration::from_millis(150);
    let first = s.next_statement_change(a.id, None, soon()).await.unwrap().unwrap();
    assert_eq!((first.state, first.progress), (StatementState::Running, 0.0), "the first look is news");
    let seen = Some((first.state, first.progress));
    assert!(s.next_statement_change(a.id, seen, soon()).await.unwrap().is_none(), "no change: nothing");
    s.on_driver_message(1, FromDriver::StatementUpdate { id: a.id, state: "running".into(), progress: 0.5 });
    let next = s.next_statement_change(a.id, seen, soon()).await.unwrap().unwrap();
    assert_eq!(next.progress, 0.5);
}
