use super::*;
use crate::engine::kind::SessionKind;
use crate::engine::SubmitSpec;
use std::collections::BTreeMap;

fn spec(owner: &str) -> SessionSpec {
    SessionSpec {
        owner: owner.into(),
        effective_user: owner.into(),
        kind: SessionKind::PySpark,
        submit: SubmitSpec {
            proxy_user: Some(owner.into()),
            driver_memory: Some("1g".into()),
            ..SubmitSpec::default()
        },
        ..SessionSpec::default()
    }
}

fn config(max_drivers: usize) -> WarmConfig {
    WarmConfig { max_drivers, others: 1, ..WarmConfig::default() }
}

#[test]
fn the_class_is_everything_the_driver_starts_with_and_no_term_of_the_request() {
    let base = spec("alice");
    let class = class_of(&base).unwrap();
    // A request's own terms are not the driver's: the same class.
    let terms = SessionSpec {
        heartbeat_timeout_secs: 60,
        ttl: Some("2h".into()),
        idle_timeout: Some("10m".into()),
        ..base.clone()
    };
    assert_eq!(class_of(&terms).as_deref(), Some(class.as_str()));
    // Anything the driver is started with is.
    let mut others = vec![
        SessionSpec { owner: "bob".into(), ..base.clone() },
        SessionSpec { effective_user: "carol".into(), ..base.clone() },
        SessionSpec { kind: SessionKind::Spark, ..base.clone() },
    ];
    let submits = [
        SubmitSpec { proxy_user: Some("carol".into()), ..base.submit.clone() },
        SubmitSpec { driver_memory: Some("2g".into()), ..base.submit.clone() },
        SubmitSpec { conf: BTreeMap::from([("spark.x".into(), "1".into())]), ..base.submit.clone() },
        SubmitSpec { py_files: vec!["/srv/lib.py".into()], ..base.submit.clone() },
        SubmitSpec { queue: Some("q".into()), ..base.submit.clone() },
        SubmitSpec { num_executors: Some(2), ..base.submit.clone() },
    ];
    others.extend(submits.into_iter().map(|submit| SessionSpec { submit, ..base.clone() }));
    for other in others {
        assert_ne!(class_of(&other).unwrap(), class, "{other:?}");
    }
    // A named request is never served warm.
    let named = SessionSpec { submit: SubmitSpec { name: Some("etl".into()), ..base.submit.clone() }, ..base };
    assert_eq!(class_of(&named), None);
}

#[test]
fn a_template_keeps_the_class_and_drops_the_terms() {
    let asked = SessionSpec { heartbeat_timeout_secs: 60, ttl: Some("2h".into()), ..spec("alice") };
    let t = template(&asked);
    assert_eq!(class_of(&t), class_of(&asked));
    assert_eq!((t.heartbeat_timeout_secs, t.ttl, t.idle_timeout), (0, None, None));
}

#[test]
fn sizes_come_from_the_user_then_their_groups_then_everyone_else() {
    let mut c = WarmConfig { max_drivers: 8, others: 1, ..WarmConfig::default() };
    c.users.insert("alice".into(), 3);
    c.users.insert("mallory".into(), 0);
    c.groups.insert("analysts".into(), 2);
    c.groups.insert("ops".into(), 1);
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(size_for(&c, "alice", &groups(&["ops"])), 3);
    assert_eq!(size_for(&c, "mallory", &groups(&["analysts"])), 0, "a user's own 0 opts them out");
    assert_eq!(size_for(&c, "bob", &groups(&["ops", "analysts"])), 2);
    assert_eq!(size_for(&c, "carol", &[]), 1);
    c.others = 0;
    assert_eq!(size_for(&c, "carol", &[]), 0);
    c.max_drivers = 0;
    assert_eq!(size_for(&c, "alice", &[]), 0, "off");
}

fn warm(id: u32, class: &str, state: SessionState) -> WarmDriver {
    WarmDriver { id, class: class.into(), state, connected: state == SessionState::Idle }
}

fn demand(size: usize, ago: Duration, now: Instant) -> Demand {
    Demand { template: spec("alice"), quota: Quota::default(), size, last: now - ago, failed: false }
}

#[test]
fn the_plan_refills_one_at_a_time_within_the_cap_and_evicts_what_nobody_asks_for() {
    let now = Instant::now() + Duration::from_secs(3600);
    let evict_after = Duration::from_secs(600);
    let mut d = HashMap::new();
    d.insert("a".to_string(), demand(2, Duration::from_secs(5), now));
    d.insert("b".to_string(), demand(1, Duration::from_secs(1), now));
    d.insert("old".to_string(), demand(1, Duration::from_secs(601), now));
    let c = config(3);
    // Nothing warm: the most recently asked-for class of those with fewest warm first.
    assert_eq!(plan(&d, &c, evict_after, &[], &|_| true, now), Plan { evict: vec![], launch: Some("b".into()) });
    // One of b ready: a has none, so a.
    let ready_b = warm(1, "b", SessionState::Idle);
    assert_eq!(plan(&d, &c, evict_after, std::slice::from_ref(&ready_b), &|_| true, now).launch.as_deref(), Some("a"));
    // Never two coming up at once.
    let starting_a = warm(2, "a", SessionState::Starting);
    assert_eq!(plan(&d, &c, evict_after, &[ready_b.clone(), starting_a], &|_| true, now).launch, None);
    // b is full, a is one short.
    let ready_a = warm(2, "a", SessionState::Idle);
    assert_eq!(
        plan(&d, &c, evict_after, &[ready_b.clone(), ready_a.clone()], &|_| true, now).launch.as_deref(),
        Some("a")
    );
    // The cap, for everyone together.
    let ready_a2 = warm(3, "a", SessionState::Idle);
    let full = [ready_b.clone(), ready_a.clone(), ready_a2];
    assert_eq!(plan(&d, &c, evict_after, &full, &|_| true, now), Plan::default());
    // A class not asked for within idle_evict (or forgotten) loses its warm drivers, and is
    // not refilled.
    let stale = [warm(7, "old", SessionState::Idle), warm(8, "gone", SessionState::Starting), ready_b];
    let p = plan(&d, &c, evict_after, &stale, &|_| true, now);
    assert_eq!(p.evict, vec![7, 8]);
    assert_eq!(p.launch, None, "one is still coming up (the evicted one until it is stopped)");
}

#[test]
fn a_class_whose_warm_launch_failed_waits_for_its_next_request() {
    let now = Instant::now() + Duration::from_secs(60);
    let mut d = HashMap::new();
    d.insert("a".to_string(), Demand { failed: true, ..demand(1, Duration::from_secs(1), now) });
    assert_eq!(plan(&d, &config(4), Duration::from_secs(600), &[], &|_| true, now).launch, None);
    let pools = Pools::default();
    let c = config(4);
    assert!(pools.note(&c, &spec("alice"), Quota::default(), 1));
    let class = class_of(&spec("alice")).unwrap();
    pools.failed(&class);
    assert!(pools.demand(&class).unwrap().failed);
    assert!(pools.note(&c, &spec("alice"), Quota::default(), 1));
    assert!(!pools.demand(&class).unwrap().failed, "asked for again: tried again");
}

#[test]
fn what_cannot_be_warm_is_not_noted_and_the_classes_remembered_are_bounded() {
    let pools = Pools::default();
    let c = config(4);
    let named = SessionSpec { submit: SubmitSpec { name: Some("n".into()), ..SubmitSpec::default() }, ..spec("a") };
    assert!(!pools.note(&c, &named, Quota::default(), 1));
    assert!(!pools.note(&c, &spec("a"), Quota::default(), 0));
    for i in 0..100 {
        pools.note(&c, &spec(&format!("user{i}")), Quota::default(), 1);
    }
    assert_eq!(pools.lock().len(), 64);
    assert!(pools.demand(&class_of(&spec("user99")).unwrap()).is_some(), "the most recent are kept");
}

#[test]
fn a_class_whose_user_has_no_room_waits_and_does_not_hold_back_the_others() {
    let now = Instant::now() + Duration::from_secs(60);
    let mut d = HashMap::new();
    d.insert("full".to_string(), Demand { template: spec("alice"), ..demand(1, Duration::from_secs(1), now) });
    d.insert("roomy".to_string(), Demand { template: spec("bob"), ..demand(1, Duration::from_secs(9), now) });
    let room = |d: &Demand| d.template.owner != "alice";
    let p = plan(&d, &config(4), Duration::from_secs(600), &[], &room, now);
    assert_eq!(p.launch.as_deref(), Some("roomy"), "alice's is asked for more recently, but she is full");
    d.remove("roomy");
    assert_eq!(plan(&d, &config(4), Duration::from_secs(600), &[], &room, now).launch, None);
    assert!(!d["full"].failed, "no room is not a failure: tried again when there is");
}
