//! One host as the pipeline drives it: the transport (`crate::remote`: ferry installed there,
//! the ssh commands) and the agent client (`crate::agent`) behind one handle, with every
//! failure read as either the host lost (a transport error: the host is recorded `unknown`)
//! or a step that failed there.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::protocol::{StatusAnswer, TaskRequest};
use crate::agent::{
    Agent, AgentError, HealthRequest, InstanceId, SecretVars, ShipReport, StartRequest,
};
use crate::config::{Config, Health, SshServer};
use crate::remote::{Host, InstallError, Ssh};

/// A call to a host that failed.
#[derive(Debug)]
pub(super) enum HostError {
    /// The host could not be reached, or stopped answering: what it runs is unknown.
    Lost(String),
    /// It answered with an error; `output`: the instance's last lines, if any.
    Failed {
        message: String,
        output: Option<String>,
    },
}

impl HostError {
    pub fn is_lost(&self) -> bool {
        matches!(self, HostError::Lost(_))
    }

    /// What went wrong, naming the host.
    pub fn message(&self) -> String {
        match self {
            HostError::Lost(m) => m.clone(),
            HostError::Failed { message, .. } => message.clone(),
        }
    }
}

impl From<AgentError> for HostError {
    fn from(e: AgentError) -> HostError {
        match &e {
            AgentError::Lost { .. } => HostError::Lost(e.to_string()),
            AgentError::Remote { lines, .. } => HostError::Failed {
                message: e.to_string(),
                output: (!lines.is_empty()).then(|| lines.join("\n") + "\n"),
            },
        }
    }
}

impl From<InstallError> for HostError {
    fn from(e: InstallError) -> HostError {
        match &e {
            InstallError::Ssh(ssh) if ssh.is_transport() => HostError::Lost(e.to_string()),
            _ => HostError::Failed {
                message: e.to_string(),
                output: None,
            },
        }
    }
}

/// An instance on a host, as its agent reports it.
#[derive(Debug, Clone)]
pub(super) struct Running {
    pub id: InstanceId,
    pub release: String,
    pub alive: bool,
}

/// What a host runs for an environment.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub serving: Option<Running>,
    pub instances: Vec<Running>,
}

impl From<StatusAnswer> for Seen {
    fn from(s: StatusAnswer) -> Seen {
        let of = |i: &crate::agent::protocol::InstanceInfo| Running {
            id: i.id,
            release: i.release.clone(),
            alive: i.alive,
        };
        Seen {
            serving: s.serving.as_ref().map(of),
            instances: s.instances.iter().map(of).collect(),
        }
    }
}

/// What an instance of a release starts with on a host.
pub(super) struct StartSpec {
    pub release: String,
    pub start: String,
    pub vars: Vec<(String, String)>,
    pub secrets: SecretVars,
    pub stop_timeout: Duration,
}

/// One probe's outcome on a host.
pub(super) struct Probed {
    pub elapsed: Duration,
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl Probed {
    /// Why the probe of `path` failed, if it did.
    pub fn failure(&self, path: &str, expect: u16) -> Option<String> {
        match (&self.error, self.status) {
            (Some(e), _) => Some(format!("{path}: {e}")),
            (None, Some(code)) if code == expect => None,
            (None, Some(code)) => Some(format!("{path} answered {code}")),
            (None, None) => Some(format!("{path}: no answer")),
        }
    }
}

/// A connected host.
pub(super) struct HostConn {
    /// The server as written in `servers`.
    pub name: String,
    host: Host,
    agent: Agent,
}

impl HostConn {
    /// Installs ferry on `server` if needed and connects to its agent.
    pub async fn connect(config: &Config, server: &SshServer) -> Result<HostConn, HostError> {
        let ssh = Arc::new(Ssh::new(&config.ssh, &config.state_dir));
        let host = Host::prepare(ssh, server.clone()).await?;
        let agent = Agent::connect(host.agent_command(), &server.name).await?;
        Ok(HostConn {
            name: server.name.clone(),
            host,
            agent,
        })
    }

    /// What the agent said at hello, for the hosts step.
    pub fn describe(&self) -> String {
        let hello = self.agent.hello();
        format!(
            "agent {} answers ({}, {} MiB free{})",
            hello.version,
            hello.arch,
            hello.free_bytes / (1024 * 1024),
            if self.host.copied {
                ", installed now"
            } else {
                ""
            }
        )
    }

    pub async fn status(&self, app: &str, env: &str) -> Result<Seen, HostError> {
        Ok(self.agent.status(app, env).await?.into())
    }

    pub async fn ship(
        &self,
        app: &str,
        release: &str,
        digest: &str,
        dir: &Path,
        shared: &[String],
    ) -> Result<ShipReport, HostError> {
        let host = &self.host;
        let receive = |args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            host.receive_command(&args)
        };
        Ok(self
            .agent
            .ship(receive, app, release, dir, digest, shared)
            .await?)
    }

    /// Starts an instance; its id and port.
    pub async fn start(
        &self,
        app: &str,
        env: &str,
        spec: &StartSpec,
    ) -> Result<(InstanceId, u16), HostError> {
        let request = StartRequest {
            app: app.into(),
            env: env.into(),
            release: spec.release.clone(),
            start: spec.start.clone(),
            vars: spec.vars.clone(),
            secrets: spec.secrets.clone(),
            stop_timeout_ms: crate::agent::protocol::ms(spec.stop_timeout),
        };
        let answer = self.agent.start(&request).await?;
        Ok((answer.instance, answer.port))
    }

    pub async fn health(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        health: &Health,
    ) -> Result<String, HostError> {
        let request = HealthRequest::new(app, env, instance, health);
        Ok(self.agent.health(&request).await?)
    }

    pub async fn probe(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        path: &str,
        timeout: Duration,
    ) -> Result<Probed, HostError> {
        let p = self.agent.probe(app, env, instance, path, timeout).await?;
        Ok(Probed {
            elapsed: Duration::from_millis(p.ms),
            status: p.status,
            error: p.error,
        })
    }

    /// Traffic on the host to `instance`; the instance that served before.
    pub async fn switch(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        listen: &str,
    ) -> Result<Option<InstanceId>, HostError> {
        Ok(self.agent.switch(app, env, instance, listen).await?)
    }

    /// Drains and stops `instance`; the drain report.
    pub async fn stop(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        drain: Duration,
        stop_timeout: Duration,
    ) -> Result<String, HostError> {
        let report = self
            .agent
            .stop(app, env, instance, drain, stop_timeout)
            .await?;
        Ok(line_ended(report))
    }

    /// Takes `instance` out of traffic if it serves (the environment's proxy on the host
    /// then serves nothing: 503), then drains and stops it; the drain report.
    pub async fn unserve_and_stop(
        &self,
        app: &str,
        env: &str,
        instance: InstanceId,
        drain: Duration,
        stop_timeout: Duration,
    ) -> Result<String, HostError> {
        let report = self
            .agent
            .unserve_and_stop(app, env, instance, drain, stop_timeout)
            .await?;
        Ok(line_ended(report))
    }

    /// Runs `command` in the release once; whether it succeeded, and its output.
    pub async fn task(
        &self,
        app: &str,
        env: &str,
        spec: &StartSpec,
        command: &str,
        timeout: Duration,
    ) -> Result<(bool, String), HostError> {
        let request = TaskRequest {
            app: app.into(),
            env: env.into(),
            release: spec.release.clone(),
            command: command.into(),
            vars: spec.vars.clone(),
            secrets: spec.secrets.clone(),
            stop_timeout_ms: crate::agent::protocol::ms(spec.stop_timeout),
            timeout_ms: crate::agent::protocol::ms(timeout),
        };
        let answer = self.agent.task(&request).await?;
        let mut out: String = answer.output.iter().map(|l| format!("{l}\n")).collect();
        if !answer.success {
            out.push_str(&format!("{}\n", answer.outcome));
        }
        Ok((answer.success, out))
    }

    /// Removes the app's releases on the host but `keep`; the ones removed.
    pub async fn prune(&self, app: &str, keep: &[String]) -> Result<Vec<String>, HostError> {
        Ok(self.agent.prune(app, keep).await?)
    }
}

/// `report` ending with a newline (a drain report goes into a step's output as lines).
fn line_ended(report: String) -> String {
    if report.ends_with('\n') {
        report
    } else {
        format!("{report}\n")
    }
}
