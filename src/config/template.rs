//! The commented `ferry.toml` that `ferry init` writes; `ferry check` must accept it.

/// A starting config; `repo = "."` expects it to be written inside the app's repository.
pub const TEMPLATE: &str = r#"# ferry.toml: how ferry builds, runs and promotes this app.
# Durations are written like "500ms", "30s", "5m". Relative paths are relative to this file.

# Where ferry keeps its database, git mirror, releases, shared data and logs.
state_dir = ".ferry"

[app]
name = "my-app"                 # required
repo = "."                      # required: a local path or any URL git can clone
build = []                      # run in the release directory, in order, e.g. ["make"]
test = []                       # the gate: a failing command stops the deploy
start = "./server --port $PORT" # required: runs one instance; ferry sets $PORT
shared = []                     # live outside releases and linked in, e.g. ["data/", "config/.env"]
keep_releases = 5               # built releases kept per environment
command_timeout = "10m"         # limit for each build or test command
stop_timeout = "10s"            # SIGTERM, then SIGKILL after this long
drain_timeout = "30s"           # requests in flight on the old instance get this long to finish

[health]
paths = ["/"]                   # every path must answer expect_status
expect_status = 200
startup_delay = "0s"            # wait before the first probe
interval = "1s"
timeout = "5s"
retries = 30

[environments.staging]
listen = "127.0.0.1:8081"       # the public address; ferry's proxy owns it
slots = 1                       # 2 makes staging-1 on 8081 and staging-2 on 8082
track = { branch = "main" }     # or { tags = true } for release tags
env = { LOG_LEVEL = "debug" }
# env_file = "config/.env"      # secrets, read from the environment's shared dir at start

[environments.production]
listen = "127.0.0.1:8080"
track = { tags = true }
env = { LOG_LEVEL = "info" }

[server]
listen = "127.0.0.1:7070"       # ferry's API
"#;
