//! Moving a test's schema between releases: one migration's down step, then every pending
//! one again, as an upgrade from the release before it would run them. Tests of upgrades
//! fill the schema as the previous release left it in between.

use diesel::migration::MigrationSource;
use diesel_migrations::MigrationHarness;
use order_closer_core::db;

/// Runs the down step of the migration whose name ends with `name` (the schema then has
/// the shape of the release before it, as far as that migration is concerned).
pub async fn revert(url: &str, name: &str) {
    let conn = db::connect(url).await.unwrap();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let all = MigrationSource::<diesel::pg::Pg>::migrations(&db::MIGRATIONS).unwrap();
        let ours = all
            .iter()
            .find(|m| m.name().to_string().ends_with(&name))
            .expect("the migration");
        harness.revert_migration(ours.as_ref()).unwrap();
    })
    .await
    .unwrap();
}

/// Runs every pending migration (the upgrade).
pub async fn run_pending(url: &str) {
    let conn = db::connect(url).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        harness.run_pending_migrations(db::MIGRATIONS).unwrap();
    })
    .await
    .unwrap();
}
