//! `ferry accessories <env> up|down|restart|logs`: the services of a compose app's file other
//! than the routed one (databases, caches), run once per environment in its long-lived compose
//! project. Deploys start the ones not running and never stop or recreate them; these actions
//! are how a person does.

use super::{Engine, EngineError};

/// What to do with an environment's accessories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessoryAction {
    /// Started, and recreated where their definition or image changed.
    Up,
    /// Stopped and removed; their volumes and data stay.
    Down,
    Restart,
    /// Their last 200 lines.
    Logs,
}

/// Lines of output `logs` answers with.
const LOG_LINES: usize = 200;

impl Engine {
    /// Does `action` to `env`'s accessories, with the compose file of the release serving it
    /// (else the newest built one); what compose printed.
    pub async fn accessories(
        &self,
        env: &str,
        action: AccessoryAction,
    ) -> Result<String, EngineError> {
        let state = self.env(env)?;
        let crate::config::Runtime::Compose { compose: file, .. } = self.runtime.kind() else {
            return Err(EngineError::Conflict(format!(
                "app {} runs with runtime \"{}\": only compose apps have accessories",
                self.config.app.name,
                self.runtime.kind().name()
            )));
        };
        let release = match state.active_release().await {
            Some(r) => r,
            None => self
                .store
                .releases(env)?
                .into_iter()
                .rev()
                .find(|r| r.digest.is_some())
                .map(|r| r.name)
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "nothing was deployed to {env} yet: its compose file comes with a release"
                    ))
                })?,
        };
        let env_dir = self.config.env_dir(env);
        let release_dir = env_dir.join("releases").join(&release);
        let project = self
            .runtime
            .project(env, &release_dir, &env_dir.join("shared"));
        let failed = |e: &dyn std::fmt::Display| EngineError::Conflict(e.to_string());
        let compose = self.runtime.compose().await.map_err(|e| failed(&e))?;
        let services = compose
            .accessories(&project, &file.service)
            .await
            .map_err(|e| failed(&e))?;
        if services.is_empty() {
            return Err(EngineError::Conflict(format!(
                "the compose file {} has no accessories (services besides {})",
                file.file, file.service
            )));
        }
        if matches!(action, AccessoryAction::Up | AccessoryAction::Restart) {
            compose
                .vet(&project, &[env_dir.join("shared"), release_dir.clone()])
                .await
                .map_err(|e| failed(&e))?;
        }
        let timeout = crate::runtime::container::ACCESSORIES_TIMEOUT;
        let said = match action {
            AccessoryAction::Up => {
                compose
                    .accessories_up(&project, &services, true, timeout)
                    .await
            }
            AccessoryAction::Down => compose.accessories_down(&project, &services, timeout).await,
            AccessoryAction::Restart => {
                compose
                    .accessories_restart(&project, &services, timeout)
                    .await
            }
            AccessoryAction::Logs => {
                let out = tempfile::tempfile().map_err(|e| failed(&e))?;
                let mut child = compose
                    .accessories_logs(
                        &project,
                        &services,
                        LOG_LINES,
                        false,
                        out.try_clone().map_err(|e| failed(&e))?,
                    )
                    .map_err(|e| failed(&e))?;
                let _ = tokio::time::timeout(timeout, child.wait()).await;
                let _ = child.start_kill();
                let mut text = String::new();
                use std::io::{Read, Seek};
                let mut out = out;
                out.rewind().map_err(|e| failed(&e))?;
                out.take(4 << 20)
                    .read_to_string(&mut text)
                    .map_err(|e| failed(&e))?;
                // the app log's masking applies to what accessories print too
                return Ok(self.redactor.redact(&text));
            }
        }
        .map_err(|e| failed(&e))?;
        let mut out = self.redactor.redact(&said);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!(
            "{env}: accessories {} {}\n",
            services.join(", "),
            match action {
                AccessoryAction::Up => "up",
                AccessoryAction::Down => "down (their volumes kept)",
                AccessoryAction::Restart => "restarted",
                AccessoryAction::Logs => "",
            }
        ));
        Ok(out)
    }
}
