//! An environment's secrets, gathered at each start: its `env_file` read and its `secrets`
//! commands run (see [`crate::runtime::Secrets`]). Every value joins the redactor before it
//! is returned, so from then on it is masked in step output, messages and the app log.
//!
//! Whatever starts the app's code with its secrets asks here: a deploy's or rollback's
//! start, a release started again (a crashed instance, `serve`'s restore), and the commands
//! that run with the app's environment.

use super::Engine;
use crate::config::Environment;
use crate::runtime::{RuntimeError, Secrets};

impl Engine {
    /// `env`'s secrets now: the env file as it is, and what each command prints (run one
    /// after another, in name order). The first failure is the error (never a value).
    pub async fn secrets(&self, env: &Environment) -> Result<Secrets, RuntimeError> {
        let mut secrets = match super::env_file_path(&self.config, env) {
            None => Secrets::default(),
            Some(path) => Secrets::read(&path)?,
        };
        self.redactor.add(secrets.values());
        let vars = [
            ("FERRY_APP", self.config.app.name.as_str()),
            ("FERRY_ENVIRONMENT", env.name.as_str()),
        ];
        for secret in &env.secrets {
            let value = crate::runtime::run_secret_command(secret, &vars).await?;
            // masked before anything can print it
            self.redactor.add([value.as_str()]);
            secrets.insert_from_command(&secret.name, value);
        }
        Ok(secrets)
    }
}

impl Engine {
    /// Masks the values of `env`'s command secrets that `left`, an instance left running by
    /// the previous ferry, was started with: called before it is adopted and its output read.
    pub(super) fn learn_secrets(&self, env: &Environment, left: &crate::runtime::Leftover) {
        let names: Vec<&str> = env.secrets.iter().map(|s| s.name.as_str()).collect();
        self.redactor
            .add(crate::runtime::started_with(left, &names));
    }
}
