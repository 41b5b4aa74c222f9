use super::*;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    (dir, store)
}

#[test]
fn migrations_apply_once_and_survive_reopen() {
    let (dir, store) = open();
    let id = store
        .create_deployment(
            "staging",
            "deploy",
            "v1.0.0",
            "ann",
            DeploymentState::Queued,
        )
        .unwrap();
    drop(store);
    let store = Store::open(&dir.path().join("ferry.db")).unwrap();
    assert_eq!(store.deployment(id).unwrap().git_ref, "v1.0.0");
    let conn = store.conn();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn a_newer_schema_is_refused() {
    let (dir, store) = open();
    store
        .conn()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    drop(store);
    let err = Store::open(&dir.path().join("ferry.db")).err().unwrap();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn missing_deployment_is_not_found() {
    let (_dir, store) = open();
    assert!(matches!(store.deployment(42), Err(StoreError::NotFound)));
    assert!(matches!(
        store.set_state(42, DeploymentState::Failed, None),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn lock_admits_one_deployment_per_environment() {
    let (_dir, store) = open();
    let a = store
        .create_deployment("staging", "deploy", "main", "ann", DeploymentState::Running)
        .unwrap();
    let b = store
        .create_deployment("staging", "deploy", "main", "bob", DeploymentState::Running)
        .unwrap();
    store
        .acquire_lock("staging", Some(a), "deploy", "ann")
        .unwrap()
        .unwrap();
    let held = store
        .acquire_lock("staging", Some(b), "deploy", "bob")
        .unwrap()
        .unwrap_err();
    assert_eq!(held.holder, "ann");
    assert_eq!(held.deployment_id, Some(a));
    // another environment is independent
    store
        .acquire_lock("production", Some(b), "deploy", "bob")
        .unwrap()
        .unwrap();
    // only the holder releases
    store.release_lock("staging", Some(b), "deploy").unwrap();
    assert!(store.lock_holder("staging").unwrap().is_some());
    store.release_lock("staging", Some(a), "deploy").unwrap();
    store
        .acquire_lock("staging", Some(b), "deploy", "bob")
        .unwrap()
        .unwrap();
    assert_eq!(store.clear_deploy_locks().unwrap(), 2);
}

#[test]
fn steps_and_states_are_recorded_in_order() {
    let (_dir, store) = open();
    let id = store
        .create_deployment("staging", "deploy", "v1", "ann", DeploymentState::Queued)
        .unwrap();
    store.set_state(id, DeploymentState::Running, None).unwrap();
    let s1 = store.step_started(id, "resolve").unwrap();
    store.step_finished(s1, StepState::Ok, "v1 -> abc").unwrap();
    let s2 = store.step_started(id, "build").unwrap();
    assert_eq!(store.deployment(id).unwrap().step.as_deref(), Some("build"));
    assert_eq!(store.unfinished().unwrap().len(), 1);
    store
        .step_finished(s2, StepState::Failed, "make: error")
        .unwrap();
    store
        .set_state(id, DeploymentState::Failed, Some("build failed"))
        .unwrap();
    let steps = store.steps(id).unwrap();
    assert_eq!(
        steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["resolve", "build"]
    );
    assert_eq!(steps[1].state, StepState::Failed);
    let d = store.deployment(id).unwrap();
    assert!(d.finished_at.is_some());
    assert_eq!(d.reason.as_deref(), Some("build failed"));
    assert!(store.unfinished().unwrap().is_empty());
}

#[test]
fn releases_keep_recorded_order_and_history_is_newest_first() {
    let (_dir, store) = open();
    for name in ["v2-bbb", "v1-aaa", "v3-ccc"] {
        store.upsert_release("staging", name, "v", "sha").unwrap();
    }
    // upserting again keeps the first row
    let again = store
        .upsert_release("staging", "v2-bbb", "v", "sha")
        .unwrap();
    assert_eq!(again.status, "preparing");
    store
        .set_release_status("staging", "v1-aaa", "pruned", None)
        .unwrap();
    let names: Vec<_> = store
        .releases("staging")
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["v2-bbb", "v3-ccc"]);
    for r in ["a", "b"] {
        store
            .create_deployment("staging", "deploy", r, "ann", DeploymentState::Queued)
            .unwrap();
    }
    let refs: Vec<_> = store
        .history(Some("staging"), 10)
        .unwrap()
        .into_iter()
        .map(|d| d.git_ref)
        .collect();
    assert_eq!(refs, ["b", "a"]);
}

fn probe(env: &str, at: &str, ok: bool, deployment: Option<i64>) -> Probe {
    Probe {
        environment: env.into(),
        deployment_id: deployment,
        at: at.into(),
        ok,
        response_ms: 1.5,
        detail: (!ok).then(|| "/ answered 500".into()),
    }
}

#[test]
fn probes_are_kept_per_environment_and_pruned_by_age() {
    let (_dir, store) = open();
    let mut events = store.events().subscribe();
    store
        .add_probe(&probe("staging", "2026-01-01T10:00:00.000Z", true, None))
        .unwrap();
    store
        .add_probe(&probe(
            "staging",
            "2026-01-01T11:00:00.000Z",
            false,
            Some(7),
        ))
        .unwrap();
    store
        .add_probe(&probe("production", "2026-01-01T11:30:00.000Z", true, None))
        .unwrap();
    assert!(matches!(
        events.try_recv().unwrap(),
        crate::events::Event::Probe {
            deployment: None,
            ..
        }
    ));
    let since = store
        .probes_since("staging", "2026-01-01T10:30:00.000Z")
        .unwrap();
    assert_eq!(since.len(), 1);
    assert!(!since[0].ok);
    assert_eq!(since[0].detail.as_deref(), Some("/ answered 500"));
    assert_eq!(store.deployment_probes(7).unwrap().len(), 1);
    assert_eq!(
        store.last_probe("staging").unwrap().unwrap().at,
        "2026-01-01T11:00:00.000Z"
    );
    assert_eq!(store.prune_probes("2026-01-01T10:30:00.000Z").unwrap(), 1);
    assert_eq!(store.probes_since("staging", "").unwrap().len(), 1);
    assert!(store.last_probe("nowhere").unwrap().is_none());
}

#[test]
fn history_pages_are_newest_first_with_a_total() {
    let (_dir, store) = open();
    for i in 0..7 {
        let env = if i % 2 == 0 { "staging" } else { "production" };
        store
            .create_deployment(
                env,
                "deploy",
                &format!("v1.0.{i}"),
                "ann",
                DeploymentState::Queued,
            )
            .unwrap();
    }
    let (first, total) = store.history_page("staging", 0, 3).unwrap();
    assert_eq!(total, 4);
    let refs: Vec<_> = first.iter().map(|d| d.git_ref.as_str()).collect();
    assert_eq!(refs, ["v1.0.6", "v1.0.4", "v1.0.2"]);
    let (second, _) = store.history_page("staging", 1, 3).unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].git_ref, "v1.0.0");
    assert!(store.history_page("staging", 5, 3).unwrap().0.is_empty());
}

#[test]
fn sessions_end_with_their_token_expiry_or_sign_out() {
    let (_dir, store) = open();
    let token = store
        .add_token("alice", "h-alice", &[Scope::Admin])
        .unwrap();
    store
        .add_session("s1", token.id, "2999-01-01T00:00:00.000Z")
        .unwrap();
    store
        .add_session("s2", token.id, "2000-01-01T00:00:00.000Z")
        .unwrap();
    store
        .add_session("s3", token.id, "2999-01-01T00:00:00.000Z")
        .unwrap();
    assert_eq!(store.session_token("s1").unwrap().unwrap().name, "alice");
    assert!(store.session_token("s2").unwrap().is_none(), "expired");
    assert!(store.session_token("nope").unwrap().is_none());
    store.end_session("s3").unwrap();
    assert!(store.session_token("s3").unwrap().is_none(), "signed out");
    store.revoke_token("alice").unwrap();
    assert!(
        store.session_token("s1").unwrap().is_none(),
        "token revoked"
    );
}

#[test]
fn tokens_made_before_scopes_keep_what_they_could_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let scopes = MIGRATIONS
        .iter()
        .position(|m| m.contains("ADD COLUMN scopes"))
        .unwrap();
    for sql in &MIGRATIONS[..scopes] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", scopes as i64)
        .unwrap();
    conn.execute(
        "INSERT INTO tokens (name, hash, read_only, created_at)
         VALUES ('ci', 'h1', 0, 'x'), ('viewer', 'h2', 1, 'x')",
        [],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(&path).unwrap();
    let tokens = store.tokens().unwrap();
    assert_eq!(tokens[0].scopes, [Scope::Admin]);
    assert_eq!(tokens[1].scopes, [Scope::Read]);
    assert!(tokens[0].allows(Scope::Approve) && !tokens[1].allows(Scope::Deploy));
}
